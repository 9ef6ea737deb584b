"""locked: a Redis lock per (task, agent) plus the agent task tracker's cursor.

Under the lock, list the events after the cursor, serve them with one model call, then write
the state and move the cursor forward in one transaction. Why nothing is skipped:
- every event triggers a drain after the event committed: it asks (a numbered ask in Redis),
  then takes the lock, or, if another pod holds it, waits until a holder whose read began after
  the ask has written its batches (the ask is served; the holder keeps the lock for another read
  while asks come), taking the lock itself if the holder lets go without serving it; so the last
  event of a burst is listed by a read that began after it committed, whoever holds the lock;
- the events of one task commit in seq order (record_events takes their order lock), so the
  cursor never passes an event that commits later.
Why nothing is applied twice, whatever crashes or pauses:
- the fencing token is taken in PostgreSQL, on the tracker row the write checks, right after
  the lock: a Redis restart (which forgets locks and counters) cannot make it go backwards;
- the state write and cursor move happen only if the tracker still carries this holder's token;
  a holder that was paused past its lease (another pod took the lock and a newer token) is
  refused; its one model call in flight shows up as a duplicate effect, which is what such a
  pause really costs. Before each model call the token is checked again, so a stale holder
  makes no further calls.
The lease is short (RACELAB_LOCK_TTL_S, 3 s) and renewed by the holder while it works, so a pod
that dies holding a lock blocks its task for seconds, not a long TTL; the sweeper on the other
pods then drains what the dead pod acked.
Within one pod, triggers for the same task are coalesced into one drainer, so a burst of 30
events costs a few lock round trips, not 30; each step of the lock and the asks is one Redis
script (one round trip).
The lock and the cursor are keyed per (task, agent), as the seed's Option 1 keys its lock: state
several agents of a task share (task.params.shared_state) is not protected by them.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

from redis.exceptions import LockError

from .. import db, metrics, redis_client
from ..cancellation import cancel_and_wait, raise_if_cancelled
from ..protocol import Event
from ..state import apply_events, state_agent
from . import Variant
from .behind import BehindTasks

log = logging.getLogger("racelab.locked")
ASK_CHECK_S = 0.5  # how often a drain that asked looks whether its ask was served (or the lock is free)
ASKS_TTL_S = 3600  # a task's ask numbers: kept while it is drained, gone an hour after its last ask
Key = tuple[str, str, str]  # (task_id, agent_id, whose state: agent_id, or "*" with task.params.shared_state)

# The lock and the asks, one Redis round trip per step (scripts run atomically). KEYS[1] is the
# task's lock (its value the holder's token), KEYS[2] its asks (a hash: asked, served, written:
# the cursor after the last batch a holder wrote, a lower bound of the tracker's).
# TRY: ask (ARGV[3] = 0) or look again (ARGV[3] = the number of the ask made before), then take the
# lock if it is free. -> {ask number, outcome, asked}: outcome TAKEN with the number asked at that
# moment (before the new holder's first read), SERVED when a holder served the ask, BUSY. Served
# at once, without an ask, when the events to drain (the pod's, up to seq ARGV[5]; 0 when not
# known) are written already: the pod's events acked while it waited for an earlier ask are most
# often in the batch that served it (a lock taken only to read nothing was 61 % of the holds).
TRY = """local mine = tonumber(ARGV[3])
local upto = tonumber(ARGV[5] or '0')
if upto > 0 and tonumber(redis.call('HGET', KEYS[2], 'written') or '0') >= upto then
  return {mine, 2, 0}
end
if mine == 0 then
  mine = redis.call('HINCRBY', KEYS[2], 'asked', 1)
  redis.call('EXPIRE', KEYS[2], ARGV[4])
elseif tonumber(redis.call('HGET', KEYS[2], 'served') or '0') >= mine then
  return {mine, 2, 0}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {mine, 1, tonumber(redis.call('HGET', KEYS[2], 'asked') or '0')}
end
return {mine, 0, 0}"""
BUSY, TAKEN, SERVED = 0, 1, 2
# FINISH, by a holder whose batches up to its last read are written: mark the asks up to ARGV[2]
# (the number asked before that read) served and note the cursor it wrote (ARGV[6], 0 for none),
# then keep the lock (renewed) if more was asked since or ARGV[4] = 1 (more events on this pod),
# else let go. -> {outcome, asked}: KEEP with the number asked now (before its next read),
# RELEASED, or LOST (the lock is not its own any more: nothing served).
FINISH = """if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, 0} end
local upto = tonumber(ARGV[2])
if upto > tonumber(redis.call('HGET', KEYS[2], 'served') or '0') then
  redis.call('HSET', KEYS[2], 'served', upto)
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
local written = tonumber(ARGV[6] or '0')
if written > tonumber(redis.call('HGET', KEYS[2], 'written') or '0') then
  redis.call('HSET', KEYS[2], 'written', written)
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
local asked = tonumber(redis.call('HGET', KEYS[2], 'asked') or '0')
if asked > upto or ARGV[4] == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, asked}
end
redis.call('DEL', KEYS[1])
return {0, asked}"""
LOST, RELEASED, KEEP = -1, 0, 1
RENEW = """if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0"""
RELEASE = """if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0"""


def redis_keys(variant: str, task_id: str, agent_id: str) -> tuple[str, str]:
    """The task's lock and asks keys, per variant (`written` is a cursor of the variant's tracker)
    and unambiguous though ids may hold ":" (the task id's length goes first)."""
    return tuple(f"racelab:{kind}:{variant}:{len(task_id)}:{task_id}:{agent_id}" for kind in ("lock", "asks"))


class Locked(Variant):
    name = "locked"

    async def start(self) -> None:
        self.redis = redis_client.client(self.ctx.settings.redis_url)
        await self.redis.ping()
        self._lease_ms = int(self.ctx.settings.lock_ttl_s * 1000)
        self._try, self._finish, self._renew_script, self._release = (
            self.redis.register_script(script) for script in (TRY, FINISH, RENEW, RELEASE))
        # tasks to drain: key -> the highest seq of this pod's events to drain (0: not known,
        # a re-send or the sweeper's wake-up; a read is needed)
        self._wanted: dict[Key, int] = {}
        self._drainers: dict[Key, asyncio.Task] = {}
        self.spawn(self._sweep_forever(), "locked sweeper")

    async def stop(self) -> None:
        await super().stop()
        await cancel_and_wait(list(self._drainers.values()))
        await self.redis.aclose()

    async def health(self) -> None:
        await self.redis.ping()

    def after_ack(self, event: Event, fresh: bool, acked_at: float, seq: int | None = None) -> None:
        # A re-sent event is woken too: if the first delivery's drain failed, this one recovers it.
        self.wake((event.task_id, event.agent_id, state_agent(event.task_params, event.agent_id)), seq or 0)

    def wake(self, key: Key, seq: int = 0) -> None:
        """Drain the task's events up to seq (0: whatever is there)."""
        self._want(key, seq)
        if key not in self._drainers:
            task = asyncio.create_task(self._drainer(key))
            self._drainers[key] = task

    def _want(self, key: Key, seq: int) -> None:
        before = self._wanted.get(key)
        self._wanted[key] = seq if before is None else (0 if 0 in (before, seq) else max(before, seq))

    async def _drainer(self, key: Key) -> None:
        try:
            while key in self._wanted:
                raise_if_cancelled()  # (a Redis command may drop the cancel: cancellation.py)
                await self.drain(key, self._wanted.pop(key))
        except Exception:  # the sweeper retries; the pod keeps serving
            log.exception("drain of %s failed", key)
        finally:
            self._drainers.pop(key, None)

    async def drain(self, key: Key, upto: int = 0) -> None:
        """Ask for the task's events to be drained, and take the lock if it is free. If another
        pod holds it, that holder serves the ask: asks are numbered (a Redis hash per task: asked,
        served); a holder notes the number asked before each read, and once the batches of that
        read are written marks it served, then keeps the lock for another read if more was asked
        meanwhile, so a burst is drained by one holder in a few batches. A drain that asked returns
        once its number is served, and takes the lock itself if the holder let go without serving
        it (a failed read, a lost lease, a dead pod whose lease ran out; a Redis restart forgets the
        numbers and the lock: it drains itself). It looks every ASK_CHECK_S; waiting for the lock
        instead polled every 5 ms (about 8 Redis round trips per event in make bench). upto: the
        highest seq of this pod's events to drain (0: not known); written already, nothing to do."""
        task_id, agent_id, _ = key
        settings = self.ctx.settings
        lock, asks = redis_keys(self.name, task_id, agent_id)
        token = uuid.uuid4().hex
        waited, mine = time.perf_counter(), 0
        while True:
            raise_if_cancelled()
            mine, outcome, asked = await self._try(keys=[lock, asks],
                                                   args=[token, self._lease_ms, mine, ASKS_TTL_S, upto])
            if outcome != BUSY:
                break
            if time.perf_counter() - waited > settings.lock_wait_s:
                metrics.LOCK_FAILURES.labels(self.name, "timeout").inc()
                log.warning("lock of %s not taken in %.0f s; retrying", key, settings.lock_wait_s)
                self._want(key, upto)
                return
            await asyncio.sleep(ASK_CHECK_S)
        if mine:  # (not for a drain served at once, without an ask)
            metrics.LOCK_WAIT.labels(self.name).observe(time.perf_counter() - waited)
        if outcome == TAKEN:
            await self._hold(key, lock, asks, token, asked)

    async def _hold(self, key: Key, lock: str, asks: str, token: str, asked: int) -> None:
        """Drain under the lock until nothing more is asked; asked: the number asked before the
        first read."""
        task_id, agent_id, owner = key
        lease = Lease()
        renewer = asyncio.create_task(self._renew(lock, token, lease, key))
        outcome = LOST
        try:
            self._wanted.pop(key, None)  # this pod's events acked so far: the read below lists them
            batch = await self.ctx.pool.fetchrow(db.FENCE_AND_READ_BATCH, self.name, task_id, agent_id, owner,
                                                 self.ctx.settings.batch_limit)
            fence = batch["fence"]
            if not batch["consistent"]:  # a batch was written after its snapshot: read again
                batch = None
            while True:
                applied = await self.process_batch(task_id, agent_id, owner, fence, lease, batch)
                batch = None
                if applied == self.ctx.settings.batch_limit:
                    continue  # a full batch: there may be more
                if lease.lost:  # fenced or not renewed: a newer holder serves the asks
                    # this pod's events of the pass were not written and it has not asked for
                    # them: its drainer asks again (the newer holder serves it, or it drains)
                    self._want(key, 0)
                    return
                outcome, asked = await self._finish(
                    keys=[lock, asks], args=[token, asked, self._lease_ms, int(key in self._wanted), ASKS_TTL_S,
                                             lease.written])
                if outcome == LOST:
                    metrics.LOCK_FAILURES.labels(self.name, "expired").inc()
                    log.warning("lock of %s expired while held (fencing kept the state safe)", key)
                if outcome != KEEP:
                    return
                self._wanted.pop(key, None)  # this pod's events acked so far: the next read lists them
        finally:
            renewer.cancel()
            if outcome != RELEASED:  # a failure, a lost lease: let go (a no-op if the lock is not its own)
                try:
                    await self._release(keys=[lock], args=[token])
                except Exception as exc:  # Redis down: the lease runs out by itself
                    log.warning("releasing the lock of %s failed: %r", key, exc)

    async def _renew(self, lock: str, token: str, lease: "Lease", key: Key) -> None:
        """Keep the lease while working: renew at a third of its length. A renewal that fails
        (Redis restarted and forgot the lock, another holder has it) marks the lease lost."""
        every = self.ctx.settings.lock_ttl_s / 3
        while True:
            await asyncio.sleep(every)
            raise_if_cancelled()  # (a Redis command may drop the cancel: cancellation.py)
            try:
                if not await self._renew_script(keys=[lock], args=[token, self._lease_ms]):
                    raise LockError("the lock is not this holder's any more")
            except Exception as exc:
                lease.lost = True
                metrics.LOCK_FAILURES.labels(self.name, "lease_lost").inc()
                log.warning("lease of %s lost (%r): no further model call under it", key, exc)
                return

    async def process_batch(self, task_id: str, agent_id: str, owner: str, fence: int, lease: "Lease",
                            batch=None) -> int:
        """Process the events after the cursor (batch: read already, with the fence); return how
        many were applied (0 when there is nothing to do or this holder is stale). Three round
        trips: one read (tracker, events, state in one snapshot), the model call's effect rows,
        one conditional write."""
        pool = self.ctx.pool
        started = time.perf_counter()
        if batch is None:
            batch = await pool.fetchrow(db.READ_BATCH, self.name, task_id, agent_id, owner,
                                        self.ctx.settings.batch_limit)
        if lease.lost or batch is None or batch["fence"] != fence:
            if not lease.lost:  # (a lease the renewer lost is counted there, as lease_lost)
                lease.lost = True  # a newer holder took over: it serves the asks
                metrics.LOCK_FAILURES.labels(self.name, "fenced").inc()
            log.warning("stale lock holder for %s/%s (fence %d): no model call", task_id, agent_id, fence)
            return 0
        event_ids = batch["event_ids"]
        if not event_ids:
            return 0
        await self.ctx.model.call(pool, self.name, task_id, agent_id, event_ids)  # one call serves the batch
        new_state = apply_events(batch["state"], event_ids)
        written = await db.commit_batch(pool, self.name, task_id, agent_id, owner, fence, batch["cursor"],
                                        batch["seqs"][-1], new_state, f"processed batch of {len(event_ids)} events")
        if not written:
            lease.lost = True
            metrics.LOCK_FAILURES.labels(self.name, "fenced").inc()
            log.warning("stale lock holder for %s/%s (fence %d): batch dropped", task_id, agent_id, fence)
            return 0
        lease.written = batch["seqs"][-1]
        metrics.observe_batch(self.name, batch["accepted_at"], started)
        return len(event_ids)

    async def _sweep_forever(self) -> None:
        """Safety net: wake tasks whose events wait behind the cursor for a while (a drain that
        failed on a database error, a pod that died after its ack)."""
        interval = self.ctx.settings.sweep_interval_s
        behind = BehindTasks(self.name)
        while True:
            await asyncio.sleep(interval)
            raise_if_cancelled()  # (a Redis command may drop the cancel: cancellation.py)
            try:
                # one pod of the variant sweeps per interval (three pods each sweeping every 2 s
                # added up when every sweep visited every task; most now check only the tasks
                # with new events and those behind: BehindTasks)
                if not await asyncio.wait_for(self.redis.set(f"racelab:sweep:{self.name}", self.ctx.pod_name,
                                                             nx=True, px=int(interval * 900)), interval):
                    continue
            except Exception as exc:  # Redis down or hung: sweep anyway (the drains it wakes wait for Redis)
                log.warning("sweep turn not taken (%r): sweeping", exc)
            try:
                async with self.ctx.pool.acquire() as conn:
                    rows = await behind.due(conn, interval)
            except Exception:
                log.exception("sweep failed")
                continue
            for row in rows:
                self.wake((row["task_id"], row["agent_id"], row["owner"]))


class Lease:
    """Whether the holder still holds its lock (set by the renewer, or when it was fenced), and
    the cursor after the last batch it wrote (0: none yet)."""
    lost = False
    written = 0


VARIANT = Locked
