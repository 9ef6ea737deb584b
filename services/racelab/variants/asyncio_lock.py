"""asyncio-lock: the seed's "misconception" — an asyncio.Lock per (task, agent) around the
unguarded handler's read–model–write. It serializes the handlers of one process only: with one
replica nothing is lost; behind nginx's round-robin over three pods, three handlers of one task
still run at once (one per pod) and overwrite each other's updates."""
from __future__ import annotations

import asyncio
import time

from .. import db, metrics
from ..model import model_latency_ms
from ..protocol import Event
from ..state import apply_events
from . import Variant

Key = tuple[str, str]  # (task_id, agent_id)


class AsyncioLock(Variant):
    name = "asyncio-lock"

    async def start(self) -> None:
        self._locks: dict[Key, asyncio.Lock] = {}
        self._users: dict[Key, int] = {}  # handlers holding or awaiting each lock

    def after_ack(self, event: Event, fresh: bool, acked_at: float, seq: int | None = None) -> None:
        if fresh:  # a re-sent event was handled by its first delivery (in some pod)
            self.spawn(self.handle(event, acked_at), f"{self.name} {event.event_id}")

    async def handle(self, event: Event, acked_at: float) -> None:
        key = (event.task_id, event.agent_id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            waited = time.perf_counter()
            async with lock:
                metrics.LOCK_WAIT.labels(self.name).observe(time.perf_counter() - waited)
                await self.apply(event)
        finally:
            self._users[key] -= 1
            if not self._users[key]:  # nobody holds or awaits it: do not keep a lock per task forever
                del self._users[key], self._locks[key]
        metrics.APPLY_SECONDS.labels(self.name).observe(time.time() - acked_at)

    async def apply(self, event: Event) -> None:
        """The unguarded handler: read, call the model, write the whole state back."""
        started = time.perf_counter()
        pool = self.ctx.pool
        row = await db.read_state(pool, self.name, event.task_id, event.agent_id)
        await self.ctx.model.call(pool, self.name, event.task_id, event.agent_id, [event.event_id],
                                  model_latency_ms(event.task_params))
        state = apply_events(row["state"] if row else None, [event.event_id])
        await db.write_state(pool, self.name, event.task_id, event.agent_id, state)
        metrics.STATE_WRITES.labels(self.name).inc()
        metrics.HANDLER_SECONDS.labels(self.name).observe(time.perf_counter() - started)


VARIANT = AsyncioLock
