"""The variants: one module each, behind one interface (Variant).

A pod records every event the same way (db.record_event) and replies; what a variant decides
is what happens inside the recording transaction (handoff) and after the reply (after_ack).
"""
from __future__ import annotations

import asyncio
import importlib
import logging
from dataclasses import dataclass
from typing import Any

from ..cancellation import cancel_and_wait
from ..config import ALL_VARIANTS, Settings
from ..model import Model
from ..protocol import Event, TaskRef

log = logging.getLogger("racelab.variant")


@dataclass
class PodContext:
    settings: Settings
    pool: Any            # asyncpg.Pool
    model: Model
    pod_name: str
    recorder: Any = None  # db.EventRecorder: how the pod records events without a handoff
    state_reads: Any = None   # db.StateReads: a pod's concurrent reads of one state row, grouped
    state_writes: Any = None  # db.StateWrites: a pod's concurrent whole-state writes of one row, grouped


class Variant:
    name = ""

    def __init__(self, ctx: PodContext):
        self.ctx = ctx
        self._background: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Open what the variant needs beyond PostgreSQL."""

    async def stop(self) -> None:
        await cancel_and_wait(list(self._background))  # (one cancel may be lost: cancellation.py)

    async def handoff(self, conn, event: Event, fresh: bool, accepted_at: float) -> None:
        """Runs inside the transaction that records the event (default: nothing)."""

    def outbox_payload(self, event: Event, accepted_at: float) -> dict | None:
        """A row for the outbox, written in the statement that records the event (default: none)."""
        return None

    def after_ack(self, event: Event, fresh: bool, acked_at: float, seq: int | None = None) -> None:
        """Runs once the reply is on its way (acked_at: epoch seconds): processing happens after it.
        seq: the event's seq in the log when the pod knows it (a new event, recorded by the group
        commit), else None."""

    async def on_task_created(self, ref: TaskRef) -> None:
        pass

    async def on_task_cancelled(self, ref: TaskRef) -> None:
        pass

    async def health(self) -> None:
        """Raise if a dependency of the variant is unreachable."""

    def spawn(self, coro, what: str) -> None:
        """Run coro in the background; a failure is logged, never crashes the pod."""
        task = asyncio.create_task(coro)
        self._background.add(task)

        def done(t: asyncio.Task) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed: %r", what, t.exception(), exc_info=t.exception())
        task.add_done_callback(done)


def load_variant(name: str, ctx: PodContext) -> Variant:
    if name not in ALL_VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; expected one of {', '.join(ALL_VARIANTS)}")
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")  # cursor-only -> cursor_only
    return module.VARIANT(ctx)
