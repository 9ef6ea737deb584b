"""cursor-skip: a Redis lock and a cursor done as carefully as `locked` (a drain per event after
it committed, batches under the lock, a fencing token, a forward-only cursor) — over an event
sequence that can commit out of order.

Its events are numbered by a plain BIGSERIAL in a table of its own (skip_events), inserted
without the per-task order lock that record_events takes: the shape of Agentex's events table.
Two inserts of one task take seq 15 and 16; 16 commits first; a drain lists "after the cursor",
sees 16, moves the cursor to 16; 15 commits a moment later and is never listed again. The
event is in the event log (acked) and never applied: lost. The window between taking a seq and
committing is short in real life, so the lab widens it: every odd seq waits
RACELAB_SKIP_COMMIT_DELAY_MS (default 150 ms) before its commit (0 leaves only the natural
window, and the race is then rare: a random 0-50 ms wait lost 2 to 4 of 600 events here)."""
from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import LockError

from .. import db, metrics, redis_client
from ..protocol import Event
from ..state import apply_events
from . import Variant

log = logging.getLogger("racelab.cursor-skip")
Key = tuple[str, str]  # (task_id, agent_id)
LOCK_TIMEOUT_S = 30.0  # long enough that no lock expires mid-batch here: what is lost, the order lost
SCHEMA = """
CREATE TABLE IF NOT EXISTS skip_events (
    seq         bigserial PRIMARY KEY,
    task_id     text NOT NULL,
    agent_id    text NOT NULL,
    event_id    text NOT NULL UNIQUE,
    accepted_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS skip_events_by_task ON skip_events (task_id, agent_id, seq);
"""


class CursorSkip(Variant):
    name = "cursor-skip"

    async def start(self) -> None:
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('racelab skip_events schema'))")
            await conn.execute(SCHEMA)  # the pods start together: one creates, the others find it
        self.redis = redis_client.client(self.ctx.settings.redis_url)
        await self.redis.ping()
        self._wanted: set[Key] = set()
        self._drainers: dict[Key, asyncio.Task] = {}

    async def stop(self) -> None:
        await super().stop()
        for task in list(self._drainers.values()):
            task.cancel()
        await self.redis.aclose()

    async def health(self) -> None:
        await self.redis.ping()

    def after_ack(self, event: Event, fresh: bool, acked_at: float, seq: int | None = None) -> None:
        self.spawn(self.ingest_then_drain(event, acked_at), f"{self.name} {event.event_id}")

    async def ingest_then_drain(self, event: Event, acked_at: float) -> None:
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            seq = await conn.fetchval(
                """INSERT INTO skip_events (task_id, agent_id, event_id, accepted_at) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (event_id) DO NOTHING RETURNING seq""",
                event.task_id, event.agent_id, event.event_id, acked_at)
            # seq is taken; the commit comes later: every odd seq holds its commit for the window,
            # so an even seq taken just after it commits first (the window a later seq can commit in)
            if seq and seq % 2:
                await asyncio.sleep(self.ctx.settings.skip_commit_delay_ms / 1000.0)
        self.wake((event.task_id, event.agent_id))  # this event's own drain, after its commit

    def wake(self, key: Key) -> None:
        self._wanted.add(key)
        if key not in self._drainers:
            self._drainers[key] = asyncio.create_task(self._drainer(key))

    async def _drainer(self, key: Key) -> None:
        try:
            while key in self._wanted:
                self._wanted.discard(key)
                await self.drain(key)
        except Exception:
            log.exception("drain of %s failed", key)
        finally:
            self._drainers.pop(key, None)

    async def drain(self, key: Key) -> None:
        task_id, agent_id = key
        settings = self.ctx.settings
        lock = self.redis.lock(f"racelab:lock:{self.name}:{task_id}:{agent_id}", timeout=LOCK_TIMEOUT_S,
                               blocking_timeout=settings.lock_wait_s, sleep=0.005)
        waited = time.perf_counter()
        if not await lock.acquire():
            metrics.LOCK_FAILURES.labels(self.name, "timeout").inc()
            self._wanted.add(key)
            return
        metrics.LOCK_WAIT.labels(self.name).observe(time.perf_counter() - waited)
        try:
            fence = await self.redis.incr(f"racelab:fence:{self.name}:{task_id}:{agent_id}")
            while await self.process_batch(task_id, agent_id, fence) == settings.batch_limit:
                pass
        finally:
            try:
                await lock.release()
            except LockError:
                metrics.LOCK_FAILURES.labels(self.name, "expired").inc()

    async def process_batch(self, task_id: str, agent_id: str, fence: int) -> int:
        pool = self.ctx.pool
        started = time.perf_counter()
        cursor = await pool.fetchval(
            "SELECT last_processed_seq FROM trackers WHERE variant = $1 AND task_id = $2 AND agent_id = $3",
            self.name, task_id, agent_id) or 0
        events = await pool.fetch(
            """SELECT seq, event_id, accepted_at FROM skip_events WHERE task_id = $1 AND agent_id = $2 AND seq > $3
               ORDER BY seq LIMIT $4""", task_id, agent_id, cursor, self.ctx.settings.batch_limit)
        if not events:
            return 0
        event_ids = [e["event_id"] for e in events]
        await self.ctx.model.call(pool, self.name, task_id, agent_id, event_ids)
        async with pool.acquire() as conn, conn.transaction():
            tracker = await conn.fetchrow(
                """SELECT last_processed_seq, fence FROM trackers WHERE variant = $1 AND task_id = $2
                   AND agent_id = $3 FOR UPDATE""", self.name, task_id, agent_id)
            if tracker is not None and (tracker["fence"] > fence or tracker["last_processed_seq"] != cursor):
                return 0  # a stale lock holder: a newer one has written
            row = await db.read_state(conn, self.name, task_id, agent_id)
            await db.write_state(conn, self.name, task_id, agent_id,
                                 apply_events(row["state"] if row else None, event_ids))
            await db.advance_cursor(conn, self.name, task_id, agent_id, events[-1]["seq"], fence,
                                    f"processed batch of {len(events)} events")
        metrics.observe_batch(self.name, [e["accepted_at"] for e in events], started)
        return len(events)


VARIANT = CursorSkip
