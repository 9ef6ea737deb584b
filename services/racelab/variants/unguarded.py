"""unguarded: the seed's handler, run concurrently. Read state, call the model, write the whole
state back. Two events of one task in flight at once read the same state; the later write
drops the earlier one's update. Meant to lose updates, never to crash."""
from __future__ import annotations

import time

from .. import metrics
from ..protocol import Event
from ..state import apply_events, state_agent
from . import Variant


class Unguarded(Variant):
    name = "unguarded"

    def after_ack(self, event: Event, fresh: bool, acked_at: float, seq: int | None = None) -> None:
        # Like the seed's handler, every delivery is handled: a client's retry of an event is
        # processed again (and shows up as a duplicate).
        self.spawn(self.handle(event, acked_at), f"unguarded {event.event_id}")

    async def handle(self, event: Event, acked_at: float) -> None:
        started = time.perf_counter()
        pool = self.ctx.pool
        owner = state_agent(event.task_params, event.agent_id)  # the agent's state, or the task's shared one
        # the pod's concurrent reads (writes) of one row go in one round trip: the same race,
        # fewer round trips (db.StateReads, db.StateWrites)
        row = await self.ctx.state_reads.read(self.name, event.task_id, owner)
        state = row["state"] if row else None
        await self.ctx.model.call(pool, self.name, event.task_id, event.agent_id, [event.event_id])
        await self.ctx.state_writes.write(self.name, event.task_id, owner, apply_events(state, [event.event_id]))
        metrics.STATE_WRITES.labels(self.name).inc()
        metrics.APPLY_SECONDS.labels(self.name).observe(time.time() - acked_at)
        metrics.HANDLER_SECONDS.labels(self.name).observe(time.perf_counter() - started)


VARIANT = Unguarded
