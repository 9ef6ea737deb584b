"""cursor-only: the seed's cursor batch handler exactly as written, with no lock.

Each event triggers: read the agent task tracker, list the events after its cursor, call the
model for them, read the state, add the batch, write the state, then move the cursor — separate
calls. The tracker refuses to move backwards but accepts the same position, as Agentex's does.
Handlers triggered together read the same cursor, so they serve the same batch twice (duplicate
side effects and applications) and overwrite each other's state writes (lost updates): the
seed's "reduces but doesn't eliminate", measured."""
from __future__ import annotations

import logging
import time

from .. import db, metrics
from ..model import model_latency_ms
from ..protocol import Event
from ..state import apply_events
from . import Variant

log = logging.getLogger("racelab.cursor-only")


class CursorOnly(Variant):
    name = "cursor-only"

    def after_ack(self, event: Event, fresh: bool, acked_at: float, seq: int | None = None) -> None:
        self.spawn(self.handle(event), f"{self.name} {event.event_id}")

    async def handle(self, event: Event) -> None:
        pool, task_id, agent_id = self.ctx.pool, event.task_id, event.agent_id
        started = time.perf_counter()
        cursor = await pool.fetchval(
            "SELECT last_processed_seq FROM trackers WHERE variant = $1 AND task_id = $2 AND agent_id = $3",
            self.name, task_id, agent_id) or 0
        events = await pool.fetch(
            """SELECT seq, event_id, extract(epoch FROM accepted_at)::float8 AS accepted_at FROM events
               WHERE variant = $1 AND task_id = $2 AND agent_id = $3 AND seq > $4 ORDER BY seq LIMIT $5""",
            self.name, task_id, agent_id, cursor, self.ctx.settings.batch_limit)
        if not events:
            return  # no new events to process
        event_ids = [e["event_id"] for e in events]
        await self.ctx.model.call(pool, self.name, task_id, agent_id, event_ids, model_latency_ms(event.task_params))
        row = await db.read_state(pool, self.name, task_id, agent_id)
        await db.write_state(pool, self.name, task_id, agent_id, apply_events(row["state"] if row else None, event_ids))
        try:  # update the cursor only after processing is complete (the seed's rule)
            async with pool.acquire() as conn:
                await db.advance_cursor(conn, self.name, task_id, agent_id, events[-1]["seq"], 0,
                                        f"processed batch of {len(events)} events")
        except db.CursorMovedBackwards:
            log.info("cursor of %s already past %d: another handler got further", task_id, events[-1]["seq"])
        metrics.observe_batch(self.name, [e["accepted_at"] for e in events], started)


VARIANT = CursorOnly
