"""locked: a Redis lock per (task, agent) plus the agent task tracker's cursor.

Under the lock, list the events after the cursor, serve them with one model call, then write
the state and move the cursor forward in one transaction. Why nothing is skipped:
- every event triggers a drain after the event committed: it asks (a numbered ask in Redis),
  then takes the lock, or, if another pod holds it, waits until a holder whose read began after
  the ask has written its batches (the ask is served), taking the lock itself if the holder lets
  go without serving it; so the last event of a burst is listed by a read that began after it
  committed, whoever holds the lock;
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
events costs a few lock round trips, not 30.
The lock and the cursor are keyed per (task, agent), as the seed's Option 1 keys its lock: state
several agents of a task share (task.params.shared_state) is not protected by them.
"""
from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as redis
from redis.exceptions import LockError

from .. import db, metrics
from ..protocol import Event
from ..state import SHARED_AGENT, apply_events, state_agent
from . import Variant

log = logging.getLogger("racelab.locked")
ASK_CHECK_S = 0.5  # how often a drain that asked looks whether its ask was served (or the lock is free)
ASKS_TTL_S = 3600  # a task's ask numbers: kept while it is drained, gone an hour after its last ask
# served := max(served, ARGV[1]), atomically (two holders one after the other may finish out of order)
SERVE = """local s = tonumber(redis.call('HGET', KEYS[1], 'served') or '0')
if tonumber(ARGV[1]) > s then redis.call('HSET', KEYS[1], 'served', ARGV[1]) end
return 0"""
Key = tuple[str, str, str]  # (task_id, agent_id, whose state: agent_id, or "*" with task.params.shared_state)


class Locked(Variant):
    name = "locked"

    async def start(self) -> None:
        self.redis = redis.Redis.from_url(self.ctx.settings.redis_url)
        await self.redis.ping()
        self._serve = self.redis.register_script(SERVE)
        self._wanted: set[Key] = set()
        self._drainers: dict[Key, asyncio.Task] = {}
        self.spawn(self._sweep_forever(), "locked sweeper")

    async def stop(self) -> None:
        await super().stop()
        for task in list(self._drainers.values()):
            task.cancel()
        await self.redis.aclose()

    async def health(self) -> None:
        await self.redis.ping()

    def after_ack(self, event: Event, fresh: bool, acked_at: float) -> None:
        # A re-sent event is woken too: if the first delivery's drain failed, this one recovers it.
        self.wake((event.task_id, event.agent_id, state_agent(event.task_params, event.agent_id)))

    def wake(self, key: Key) -> None:
        self._wanted.add(key)
        if key not in self._drainers:
            task = asyncio.create_task(self._drainer(key))
            self._drainers[key] = task

    async def _drainer(self, key: Key) -> None:
        try:
            while key in self._wanted:
                self._wanted.discard(key)
                await self.drain(key)
        except Exception:  # the sweeper retries; the pod keeps serving
            log.exception("drain of %s failed", key)
        finally:
            self._drainers.pop(key, None)

    async def drain(self, key: Key) -> None:
        """Ask for the task's events to be drained, then take the lock if it is free. If another
        pod holds it, that holder serves the ask: asks are numbered (a Redis hash per task: asked,
        served); a holder notes the number asked before it reads, marks it served once its batches
        are written, and after letting go of the lock drains again if more was asked. A drain that
        asked returns once its number is served, and takes the lock itself if the holder let go
        without serving it (a failed read, a lost lease, a dead pod whose lease ran out; a Redis
        restart forgets both numbers and the lock: it drains itself). Waiting for the lock instead
        polled Redis every 5 ms per waiting drainer (about 8 Redis round trips per event in make
        bench); this one looks every ASK_CHECK_S."""
        task_id, agent_id, owner = key
        settings = self.ctx.settings
        lock = self.redis.lock(f"racelab:lock:{task_id}:{agent_id}", timeout=settings.lock_ttl_s)
        asks = f"racelab:asks:{task_id}:{agent_id}"
        while True:
            waited = time.perf_counter()
            async with self.redis.pipeline(transaction=True) as pipe:
                mine, _ = await pipe.hincrby(asks, "asked", 1).expire(asks, ASKS_TTL_S).execute()
            while not await lock.acquire(blocking=False):
                await asyncio.sleep(ASK_CHECK_S)
                served = await self.redis.hget(asks, "served")
                if served is not None and int(served) >= mine:  # a holder's batches covered this ask
                    metrics.LOCK_WAIT.labels(self.name).observe(time.perf_counter() - waited)
                    return
                if time.perf_counter() - waited > settings.lock_wait_s:
                    metrics.LOCK_FAILURES.labels(self.name, "timeout").inc()
                    log.warning("lock of %s not taken in %.0f s; retrying", key, settings.lock_wait_s)
                    self._wanted.add(key)
                    return
            metrics.LOCK_WAIT.labels(self.name).observe(time.perf_counter() - waited)
            await self._drain_holding(key, lock, asks)
            asked, served = await self.redis.hmget(asks, "asked", "served")
            if asked is None or int(asked) <= int(served or 0):  # nothing asked that is not served
                return

    async def _drain_holding(self, key: Key, lock, asks: str) -> None:
        task_id, agent_id, owner = key
        lease = Lease()
        renewer = asyncio.create_task(self._renew(lock, lease, key))
        try:
            # before the reads: every ask up to this number was made after its event committed
            asked = int(await self.redis.hget(asks, "asked") or 0)
            fence = await db.take_fence(self.ctx.pool, self.name, task_id, agent_id)
            while await self.process_batch(task_id, agent_id, owner, fence, lease) == self.ctx.settings.batch_limit:
                pass  # a full batch: there may be more
            if not lease.lost:  # written under a lease it still held: those asks are served
                await self._serve(keys=[asks], args=[asked])
        finally:
            renewer.cancel()
            try:
                await lock.release()
            except LockError:
                metrics.LOCK_FAILURES.labels(self.name, "expired").inc()
                log.warning("lock of %s expired while held (fencing kept the state safe)", key)
            except Exception as exc:  # Redis down: the lease runs out by itself
                log.warning("releasing the lock of %s failed: %r", key, exc)

    async def _renew(self, lock, lease: "Lease", key: Key) -> None:
        """Keep the lease while working: renew at a third of its length. A renewal that fails
        (Redis restarted and forgot the lock, another holder has it) marks the lease lost."""
        every = self.ctx.settings.lock_ttl_s / 3
        while True:
            await asyncio.sleep(every)
            try:
                await lock.reacquire()
            except Exception as exc:
                lease.lost = True
                metrics.LOCK_FAILURES.labels(self.name, "lease_lost").inc()
                log.warning("lease of %s lost (%r): no further model call under it", key, exc)
                return

    async def process_batch(self, task_id: str, agent_id: str, owner: str, fence: int, lease: "Lease") -> int:
        """Process the events after the cursor; return how many were applied (0 when there is
        nothing to do or this holder is stale). Three round trips: one read (tracker, events,
        state in one snapshot), the model call's effect rows, one conditional write."""
        pool = self.ctx.pool
        started = time.perf_counter()
        batch = await pool.fetchrow(db.READ_BATCH, self.name, task_id, agent_id, owner, self.ctx.settings.batch_limit)
        if lease.lost or batch is None or batch["fence"] != fence:
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
        metrics.observe_batch(self.name, batch["accepted_at"], started)
        return len(event_ids)

    async def _sweep_forever(self) -> None:
        """Safety net: wake tasks whose events wait behind the cursor for a while (a drain that
        failed on a database error, a pod that died after its ack). The shared_state knob is not
        in the event log: a task that has a task-level state row is taken to use it."""
        interval = self.ctx.settings.sweep_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                rows = await self.ctx.pool.fetch(
                    """SELECT t.task_id, t.agent_id, COALESCE(sh.agent_id, t.agent_id) AS owner FROM tasks t
                       LEFT JOIN trackers tr USING (variant, task_id, agent_id)
                       LEFT JOIN task_states sh ON sh.variant = t.variant AND sh.task_id = t.task_id
                                                AND sh.agent_id = $3
                       WHERE t.variant = $1
                       AND EXISTS (SELECT 1 FROM events e WHERE e.variant = t.variant AND e.task_id = t.task_id
                                   AND e.agent_id = t.agent_id AND e.seq > COALESCE(tr.last_processed_seq, 0)
                                   AND e.accepted_at < clock_timestamp() - make_interval(secs => $2))""",
                    self.name, interval, SHARED_AGENT)
            except Exception:
                log.exception("sweep failed")
                continue
            for row in rows:
                self.wake((row["task_id"], row["agent_id"], row["owner"]))


class Lease:
    """Whether the holder still holds its lock (set by the renewer, or when it was fenced)."""
    lost = False


VARIANT = Locked
