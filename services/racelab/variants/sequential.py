"""sequential: the second seed's "slow but safe" — one event at a time for the whole variant,
across all its replicas.

One PostgreSQL advisory lock stands for the variant: a pod that holds it applies the oldest
unapplied event of any task (one model call, then the state write and the task's cursor in one
transaction), then the next, until none is left. Advisory locks die with their connection, so a
killed pod frees the lock at once and its in-flight event is applied again by the next holder:
a repeated model call, never a lost or doubled application. A pod whose lock session alone died
stops after the event in flight, and writes nothing for it if the next holder moved the cursor
meanwhile. Throughput is at most one event per model latency, whatever the number of pods or
tasks."""
from __future__ import annotations

import asyncio
import logging
import time

from .. import db, metrics
from ..cancellation import raise_if_cancelled
from ..protocol import Event
from ..state import apply_events
from . import Variant
from .behind import BehindTasks

log = logging.getLogger("racelab.sequential")
LOCK_KEY = 0x5E9_0E47  # the advisory lock of the whole variant


class Sequential(Variant):
    name = "sequential"
    lock_key = LOCK_KEY

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._behind = BehindTasks(self.name)  # this pod's view of the tasks behind their cursor

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self.spawn(self._drain_forever(), f"{self.name} drainer")

    def after_ack(self, event: Event, fresh: bool, acked_at: float, seq: int | None = None) -> None:
        self._wake.set()

    async def _drain_forever(self) -> None:
        interval = self.ctx.settings.sweep_interval_s
        while True:
            raise_if_cancelled()  # (wait_for below may drop the cancel: cancellation.py)
            try:  # woken by an ack here, or every interval for events acked by a pod that died
                await asyncio.wait_for(self._wake.wait(), interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.drain()
            except Exception:
                log.exception("drain failed; retrying")
                await asyncio.sleep(0.5)

    async def drain(self) -> None:
        async with self.ctx.pool.acquire() as lock_conn:
            waited = time.perf_counter()
            try:
                await lock_conn.execute("SELECT pg_advisory_lock($1)", self.lock_key)
            except BaseException:  # e.g. a timeout that raced the grant: never pool a held lock
                lock_conn.terminate()
                raise
            metrics.LOCK_WAIT.labels(self.name).observe(time.perf_counter() - waited)
            try:
                # the lock is its session's: a failed query here means it is gone, so stop
                while await lock_conn.fetchval("SELECT true") and await self.apply_next():
                    pass
            finally:
                try:
                    await lock_conn.execute("SELECT pg_advisory_unlock($1)", self.lock_key)
                except BaseException:  # the pool keeps session state (db.create_pool): never pool a held lock
                    lock_conn.terminate()
                    raise

    async def apply_next(self) -> bool:
        """Apply the oldest event after its task's cursor; False when there is none. (The events
        of one task commit in seq order, so a per-task cursor never passes a later commit.) The
        tasks with such an event come from BehindTasks: looking at every task of the variant
        cost 32-48 ms per applied event with 11,111 of its tasks in the log
        (docs/performance-journal.md, ninth pass)."""
        pool = self.ctx.pool
        async with pool.acquire() as conn:
            behind = await self._behind.sweep(conn, 0)
        if not behind:
            return False
        e = min(behind, key=lambda r: r["seq"])
        started = time.perf_counter()
        task_id, agent_id = e["task_id"], e["agent_id"]
        await self.ctx.model.call(pool, self.name, task_id, agent_id, [e["event_id"]])
        async with pool.acquire() as conn, conn.transaction():
            # The variant's lock is a session's: if this pod's lock session died during the model
            # call (not the pod: its connection alone), the next holder applied this event too.
            # So the state and the cursor are written only if the cursor is still the one the
            # sweep saw (commit_batch, as a `locked` holder writes): a repeated model call, never
            # a repeated application. commit_batch needs the tracker row; a task's first
            # application makes it.
            await conn.execute("""INSERT INTO trackers (variant, task_id, agent_id) VALUES ($1, $2, $3)
                                  ON CONFLICT DO NOTHING""", self.name, task_id, agent_id)
            row = await db.read_state(conn, self.name, task_id, agent_id)
            written = await db.commit_batch(conn, self.name, task_id, agent_id, agent_id, 0, e["cursor"], e["seq"],
                                            apply_events(row["state"] if row else None, [e["event_id"]]),
                                            "applied one event")
        if not written:
            log.info("%s of task %s was applied by the next holder of the lock; not again", e["event_id"], task_id)
            return True
        metrics.STATE_WRITES.labels(self.name).inc()
        metrics.APPLY_SECONDS.labels(self.name).observe(time.time() - e["accepted"])
        metrics.HANDLER_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        return True


VARIANT = Sequential
