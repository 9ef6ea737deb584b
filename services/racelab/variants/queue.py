"""queue: the seed's "Option 2" — pods enqueue, separate queue workers consume.

The pod adds each event to a Redis stream inside the transaction that records it (like the
temporal variant's signal: acked means logged and enqueued). Queue workers
(`python -m racelab.variants.queue`, ≥ 2 processes) read the stream through one consumer group,
so each entry goes to one worker; a worker applies the entries of one task one after another.
A task is never processed on two workers at once: the apply runs in a transaction holding the
task's state row lock (with task.params.shared_state, the one row all agents of the task share) (SELECT ... FOR UPDATE), and skips an event already in the history, so an
entry delivered twice (reclaimed, re-sent) is applied once. The effect row is written only after
that check, under the lock: a model call is repeated only when a worker dies between the call
and its commit. Entries a worker read and never acknowledged (it was killed) are taken over by
another with XAUTOCLAIM once idle for CLAIM_IDLE_MS; a restarted worker (same name) first
re-reads its own pending entries.

A worker outlives Redis restarts in place: Redis keeps nothing on disk here, so a restart takes
the stream and the group with it; the worker's next read meets NOGROUP and creates the group
again (the pods' next XADD creates the stream). While Redis is down it waits and keeps serving
its health port. It used to exit and let supervisor restart it; one such exit in several dozen
hung (cancellation.py) and left the worker alive with its health port closed.

What such a restart takes with it, the entries no worker had applied yet, the reconciler gives
back: every sweep_interval_s one worker (a Redis lock per turn) adds again each accepted event
that is neither applied nor in the stream ORPHAN_AGE_S after it was recorded. The event log is the
truth, the stream only its delivery: without the reconciler a Redis kill lost the entries no
worker had read (1 of 800 in two of six make chaos runs, 2026-11-27).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import time

import redis.asyncio as redis
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import db, metrics, redis_client
from ..cancellation import cancel_and_wait, raise_if_cancelled
from ..config import Settings
from ..model import Model, model_latency_ms
from ..protocol import Event
from ..state import SHARED_AGENT, apply_events, initial_state, state_agent
from . import Variant

log = logging.getLogger("racelab.queue")
NAME = "queue"
STREAM = "racelab:queue:events"
GROUP = "racelab-queue-workers"
CLAIM_IDLE_MS = 5000  # an entry read this long ago and not acknowledged: its worker is presumed dead
REDIS_RETRY_S = 0.5  # Redis unreachable (each command retries for ~0.5 s first: redis_client.py)
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
Key = tuple[str, str]  # (task_id, agent_id)
# An accepted event this old, neither applied nor in the stream, has lost its entry (a Redis
# restart): the reconciler adds it again. (A pod adds an event's entry before its commit, so an
# event the log shows had its entry; the age only spares the stream a read, and a worker the
# work, for an event that is about to be applied.)
ORPHAN_AGE_S = 3.0
RECONCILER_LOCK = "racelab:queue:reconciler"


def redis_down(exc: BaseException) -> bool:
    """Unreachable or restarting: wait and try again. (A refused password is a ConnectionError
    too, but waiting does not mend it: it ends the worker, which says why.)"""
    return isinstance(exc, REDIS_DOWN) and not isinstance(exc, (AuthenticationError, AuthorizationError))


async def wait_if_down(exc: BaseException, what: str) -> None:
    """Redis down: wait REDIS_RETRY_S (the caller tries again); anything else: raise exc."""
    if not redis_down(exc):
        raise exc
    log.warning("%s failed (%r): trying again in %.1f s", what, exc, REDIS_RETRY_S)
    await asyncio.sleep(REDIS_RETRY_S)


async def ensure_group(r: redis.Redis) -> None:
    try:  # from id 0: entries added before the group existed are delivered too
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def group_gone(exc: Exception) -> bool:
    """Redis restarted: the stream and its consumer group are gone."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


class Queue(Variant):
    """The pod's side: enqueue, nothing else."""
    name = NAME

    async def start(self) -> None:
        self.redis = redis_client.client(self.ctx.settings.redis_url)
        await ensure_group(self.redis)

    async def stop(self) -> None:
        await super().stop()
        await self.redis.aclose()

    async def health(self) -> None:
        await self.redis.ping()

    async def handoff(self, conn, event: Event, fresh: bool, accepted_at: float) -> None:
        # a re-sent event is enqueued again: harmless (the worker dedupes), and it recovers an
        # entry a Redis restart dropped (this Redis keeps nothing on disk)
        latency = model_latency_ms(event.task_params)
        owner = state_agent(event.task_params, event.agent_id)
        if owner == SHARED_AGENT:  # the task's one state, there from its first event: the log does
            # not keep task.params, and the reconciler finds whose state an event is by this row
            await conn.execute("""INSERT INTO task_states (variant, task_id, agent_id, state)
                                  VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
                               NAME, event.task_id, SHARED_AGENT, initial_state())
        await self.redis.xadd(STREAM, {"task_id": event.task_id, "agent_id": event.agent_id,
                                       "event_id": event.event_id, "accepted_at": repr(accepted_at),
                                       "state_agent": owner,
                                       "model_latency_ms": "" if latency is None else repr(latency)})


class QueueWorker:
    """One consumer of the group: per task, one entry at a time; different tasks concurrently."""

    def __init__(self, name: str, settings: Settings, pool, r: redis.Redis):
        self.name, self.settings, self.pool, self.redis = name, settings, pool, r
        self.model = Model(settings.model_latency_ms, settings.model_jitter_ms)
        self.slots = asyncio.Semaphore(8)  # transactions in flight (the pool has 10 connections)
        self._queued: dict[Key, list[tuple[str, dict]]] = {}
        self._runners: dict[Key, asyncio.Task] = {}
        self._held: set[str] = set()  # entry ids queued or in progress here
        self._settled_seq = 0  # the reconciler's scan starts after it (or reconciler_marks', if higher)

    async def run(self) -> None:
        await self._ensure_group()
        async with asyncio.TaskGroup() as group:  # one fails: the others are cancelled, not left behind
            group.create_task(self._read("0"))  # "0": own pending entries first
            group.create_task(self._claim_forever())
            group.create_task(self._reconcile_forever())

    def tasks(self) -> list[asyncio.Task]:
        """The entries in progress (to cancel at shutdown)."""
        return list(self._runners.values())

    async def _ensure_group(self) -> None:
        while True:
            raise_if_cancelled()
            try:
                return await ensure_group(self.redis)
            except REDIS_DOWN as exc:
                await wait_if_down(exc, "creating the group")

    async def _read(self, start: str) -> None:
        last = start
        while True:
            raise_if_cancelled()  # (a Redis command may drop the cancel: cancellation.py)
            try:
                reply = await self.redis.xreadgroup(GROUP, self.name, {STREAM: last}, count=100, block=1000)
            except REDIS_DOWN as exc:
                await wait_if_down(exc, "reading the stream")
                continue
            except ResponseError as exc:
                if not group_gone(exc):
                    raise
                # the entries not read yet went with the stream (README: queue under kill-redis);
                # own pending entries too: read new ones from now on
                log.warning("the stream's consumer group is gone (Redis restarted): creating it again")
                await self._ensure_group()
                last = ">"
                continue
            entries = reply[0][1] if reply else []
            for entry_id, fields in entries:
                if fields:
                    self.dispatch(entry_id, fields)
                else:  # deleted from the stream (applied: _done) while pending here
                    await self._done(entry_id)
            if last != ">":  # own pending entries (a restarted worker): on after the last one read,
                # then new entries once they are done (a read by id does not block: it stayed
                # on its last id and read nothing new, about 8,000 times a second)
                last = entries[-1][0] if entries else ">"

    async def _claim_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            raise_if_cancelled()  # (a Redis command may drop the cancel: cancellation.py)
            try:
                reply = await self.redis.xautoclaim(STREAM, GROUP, self.name, CLAIM_IDLE_MS, "0-0", count=100)
            except Exception as exc:  # Redis down or restarted (the read loop creates the group again)
                if not (group_gone(exc) or redis_down(exc)):
                    log.exception("xautoclaim failed")
                continue
            for entry_id, fields in reply[1]:
                if fields and entry_id not in self._held:
                    log.warning("claimed %s (idle > %d ms): its worker is gone", entry_id, CLAIM_IDLE_MS)
                    self.dispatch(entry_id, fields)

    async def _reconcile_forever(self) -> None:
        interval = self.settings.sweep_interval_s
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))  # the workers out of step
            raise_if_cancelled()  # (a Redis command may drop the cancel: cancellation.py)
            try:  # one worker a turn (a turn that outlasts the lock may overlap the next: harmless)
                if await self.redis.set(RECONCILER_LOCK, self.name, nx=True, px=int(interval * 900)):
                    await self.reconcile_once()
            except (*REDIS_DOWN, *db.PG_DOWN, OSError) as exc:  # Redis or PostgreSQL down, restarting
                # or slow (TimeoutError is an OSError): the next turn tries again
                log.warning("reconciling the stream with the event log failed (%r)", exc)
            except Exception:
                log.exception("reconciling the stream with the event log failed")

    async def reconcile_once(self) -> int:
        """Add again every accepted event that is neither applied nor in the stream ORPHAN_AGE_S
        after it was recorded. Returns how many were added."""
        async with self.pool.acquire() as conn:
            # The scan starts after the highest seq below which every event is visible and applied
            # (reconciler_marks: the workers share it, and it outlives their restarts). A BIGSERIAL
            # commits out of order: a transaction still open may hold a lower seq than one visible
            # now. But it drew that seq after it began; so once the oldest open transaction's start
            # is read here, every transaction the snapshot below cannot see either began after it
            # or is one of those counted in it, and every seq drawn (accepted_at) before it (less
            # 1 s, for the two clocks of one INSERT) is visible in that snapshot or never will be.
            # Needs track_activities (on by default); this session's own statement is counted.
            oldest_open = await conn.fetchval(
                """SELECT min(xact_start) FROM pg_stat_activity WHERE backend_type = 'client backend'
                   AND datname = current_database() AND xact_start IS NOT NULL""")
            async with conn.transaction(isolation="repeatable_read", readonly=True):  # one snapshot
                settled = max(self._settled_seq, await conn.fetchval(
                    "SELECT settled_seq FROM reconciler_marks WHERE variant = $1", NAME) or 0)
                # The events after `settled` not in their state's history, each task's history read
                # once. With task.params.shared_state the state is the task's one row (agent "*"),
                # which the pod writes with the event (Queue.handoff), since the log keeps no params.
                rows = await conn.fetch(
                    """WITH recent AS MATERIALIZED (
                           SELECT seq, task_id, agent_id, event_id, accepted_at FROM events
                           WHERE variant = $1 AND seq > $2),
                       applied AS MATERIALIZED (
                           SELECT DISTINCT h.event_id FROM (SELECT DISTINCT task_id, agent_id FROM recent) t
                           LEFT JOIN task_states s ON s.variant = $1 AND s.task_id = t.task_id
                                                  AND s.agent_id = t.agent_id
                           LEFT JOIN task_states sh ON sh.variant = $1 AND sh.task_id = t.task_id
                                                   AND sh.agent_id = $4
                           CROSS JOIN LATERAL jsonb_array_elements_text(COALESCE(sh.state, s.state)->'history')
                                AS h(event_id))
                       SELECT r.seq, r.task_id, r.agent_id, r.event_id,
                              extract(epoch FROM r.accepted_at)::float8 AS accepted_at,
                              r.accepted_at < clock_timestamp() - make_interval(secs => $3) AS orphan,
                              COALESCE(sh.agent_id, r.agent_id) AS owner
                       FROM recent r LEFT JOIN task_states sh ON sh.variant = $1 AND sh.task_id = r.task_id
                                                             AND sh.agent_id = $4
                       WHERE NOT EXISTS (SELECT 1 FROM applied a WHERE a.event_id = r.event_id)
                       ORDER BY r.seq""",
                    NAME, settled, ORPHAN_AGE_S, SHARED_AGENT)
                # over every variant's events: seq is one sequence, and a queue that is idle must
                # not leave the scan to grow with the others' events
                settled_to = await conn.fetchval(
                    """SELECT max(seq) FROM events WHERE seq > $1
                       AND accepted_at < $2::timestamptz - interval '1 second'""", settled, oldest_open)
        candidates = [r for r in rows if r["orphan"]]
        lost = []
        if candidates:  # then the stream (read only when it may be needed: it holds any backlog)
            in_stream, start = set(), "-"
            while True:
                page = await self.redis.xrange(STREAM, min=start, count=1000)
                in_stream.update(fields.get("event_id") for _, fields in page)
                if len(page) < 1000:
                    break
                start = "(" + page[-1][0]
            # (an entry applied and deleted after the read above looks lost here: added again, the
            # worker finds it in the history and skips it)
            lost = [r for r in candidates if r["event_id"] not in in_stream]
        if lost:
            async with self.redis.pipeline(transaction=False) as pipe:
                for r in lost:  # the pod's fields; a task's model latency knob (task.params) is not
                    # in the log: the lab's default serves
                    pipe.xadd(STREAM, {"task_id": r["task_id"], "agent_id": r["agent_id"],
                                       "event_id": r["event_id"], "accepted_at": repr(r["accepted_at"]),
                                       "state_agent": r["owner"], "model_latency_ms": ""})
                await pipe.execute()
            log.warning("added %d accepted events again that were neither applied nor in the stream "
                        "(Redis restarted?): %s", len(lost), ", ".join(r["event_id"] for r in lost[:5]))
            metrics.RECONCILED.labels(NAME).inc(len(lost))
        if settled_to is not None:
            if rows:  # not past an event that is not applied yet
                settled_to = min(settled_to, rows[0]["seq"] - 1)
            if settled_to > settled:
                await self.pool.execute(
                    """INSERT INTO reconciler_marks (variant, settled_seq) VALUES ($1, $2) ON CONFLICT (variant)
                       DO UPDATE SET settled_seq = GREATEST(reconciler_marks.settled_seq, EXCLUDED.settled_seq)""",
                    NAME, settled_to)
            self._settled_seq = max(settled, settled_to)
        return len(lost)

    def dispatch(self, entry_id: str, fields: dict) -> None:
        if entry_id in self._held:
            return
        self._held.add(entry_id)
        key = (fields["task_id"], fields["agent_id"])
        self._queued.setdefault(key, []).append((entry_id, fields))
        if key not in self._runners:
            self._runners[key] = asyncio.create_task(self._run_task(key))

    async def _run_task(self, key: Key) -> None:
        try:
            while self._queued.get(key):
                raise_if_cancelled()
                entry_id, fields = self._queued[key].pop(0)
                try:
                    try:
                        async with self.slots:
                            await self.apply(fields)
                    except Exception:  # not acknowledged: reclaimed (by any worker) once idle
                        log.exception("entry %s failed; it will be reclaimed", entry_id)
                        continue
                    await self._done(entry_id)
                finally:
                    self._held.discard(entry_id)
        finally:
            self._runners.pop(key, None)
            if not self._queued.get(key):
                self._queued.pop(key, None)

    async def _done(self, entry_id: str) -> None:
        """Acknowledge the entry and delete it from the stream (which grew by every event before,
        acknowledged or not, for as long as Redis ran)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                await pipe.xack(STREAM, GROUP, entry_id).xdel(STREAM, entry_id).execute()
        except Exception as exc:  # (Redis down or restarted) applied all the same: a re-delivery is deduped
            log.warning("entry %s applied; acknowledging it failed (%r)", entry_id, exc)

    async def apply(self, f: dict) -> None:
        task_id, agent_id, event_id = f["task_id"], f["agent_id"], f["event_id"]
        owner = f.get("state_agent") or agent_id  # "*": the task's shared state (task.params.shared_state)
        started = time.perf_counter()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO task_states (variant, task_id, agent_id, state) VALUES ($1, $2, $3, $4)
                   ON CONFLICT DO NOTHING""", NAME, task_id, owner, initial_state())
            row = await conn.fetchrow(
                """SELECT state FROM task_states WHERE variant = $1 AND task_id = $2 AND agent_id = $3
                   FOR UPDATE""", NAME, task_id, owner)  # the task (its state) is ours until commit
            if event_id in row["state"]["history"]:
                return  # applied already: a reclaimed or re-sent entry
            if not await self._logged(event_id):
                log.warning("event %s is in the queue but not in the event log: dropped", event_id)
                return
            await self.model.call(self.pool, NAME, task_id, agent_id, [event_id],
                                  float(f["model_latency_ms"]) if f.get("model_latency_ms") else None)
            await db.write_state(conn, NAME, task_id, owner, apply_events(row["state"], [event_id]))
        metrics.STATE_WRITES.labels(NAME).inc()
        metrics.APPLY_SECONDS.labels(NAME).observe(time.time() - float(f["accepted_at"]))
        metrics.HANDLER_SECONDS.labels(NAME).observe(time.perf_counter() - started)

    async def _logged(self, event_id: str) -> bool:
        """The entry is added before the pod's transaction commits: wait for that commit (a
        moment); an event never committed (its transaction failed after the add) is dropped."""
        for _ in range(100):
            if await self.pool.fetchval("SELECT 1 FROM events WHERE variant = $1 AND event_id = $2", NAME, event_id):
                return True
            await asyncio.sleep(0.05)
        return False


async def serve(port: int, name: str) -> None:
    settings = Settings.from_env()
    metrics.init(NAME)
    pool = await db.create_pool(settings.pg_dsn)
    r = redis_client.client(settings.redis_url, decode_responses=True)
    runner = await metrics.serve_health_and_metrics("queue-worker", settings.host, port)
    worker = QueueWorker(name, settings, pool, r)
    work = asyncio.create_task(worker.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([work, stopping], return_when=asyncio.FIRST_COMPLETED)
    # the worker, then its entries in progress (unacknowledged: reclaimed by the other worker)
    left = await cancel_and_wait([work, stopping]) | await cancel_and_wait(worker.tasks())
    if left:  # (logged by cancel_and_wait) asyncio.run would wait for them forever
        os._exit(1)
    failed = None if work.cancelled() else work.exception()
    await runner.cleanup()
    await r.aclose()
    try:  # close waits for connections in use; none should be left, but never hang here
        async with asyncio.timeout(5):
            await pool.close()
    except TimeoutError:
        log.warning("closing the PostgreSQL pool took over 5 s: terminated")  # (asyncpg terminates it)
    if failed is not None:  # an unexpected error: exit, supervisor restarts us
        raise failed


def main() -> None:
    parser = argparse.ArgumentParser(description="racelab queue worker (the queue variant's consumer)")
    parser.add_argument("--port", type=int, required=True, help="health/metrics port")
    parser.add_argument("--name", required=True, help="consumer name in the group (stable across restarts)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.port, args.name))


if __name__ == "__main__":
    main()


VARIANT = Queue
