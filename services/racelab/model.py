"""The simulated model call: a latency knob plus one effect row per event it served.

The latency is what opens the race window (read state ... model call ... write state); the
effect rows are the side effect a duplicate processing would repeat, and the checker counts them.
"""
from __future__ import annotations

import asyncio
import random
import uuid

from . import db, metrics


class Model:
    def __init__(self, latency_ms: float, jitter_ms: float, rng: random.Random | None = None,
                 effects: "db.EffectWriter | None" = None):
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self._rng = rng or random.Random()
        self.effects = effects

    def delay_s(self, latency_ms: float | None = None) -> float:
        jitter = self._rng.uniform(-self.jitter_ms, self.jitter_ms)
        return max(0.0, (self.latency_ms if latency_ms is None else latency_ms) + jitter) / 1000.0

    async def call(self, pool, variant: str, task_id: str, agent_id: str, event_ids: list[str],
                   latency_ms: float | None = None) -> str:
        """One model call serving event_ids (one for most variants, a batch for locked); its effect
        rows are durable when it returns, written apart from any state write: a model call is a
        side effect outside the database, and a state write that fails after it (PostgreSQL
        killed, a fenced holder) must still leave it on record. latency_ms: a slower (or faster)
        call than the lab's default, e.g. the task's params.model_latency_ms knob
        (model_latency_ms() below)."""
        await asyncio.sleep(self.delay_s(latency_ms))
        metrics.MODEL_CALLS.labels(variant).inc()
        call_id = str(uuid.uuid4())
        if self.effects is not None:  # a pod's group commit of effect rows
            await self.effects.record(variant, task_id, agent_id, call_id, event_ids)
        else:
            await db.record_effects(pool, variant, task_id, agent_id, call_id, event_ids)
        return call_id


def model_latency_ms(task_params: dict) -> float | None:
    """The per-task knob `task.params.model_latency_ms`: a model slower than the lock lease, for
    the matrix's lease scenario. None: the lab's default latency."""
    value = task_params.get("model_latency_ms")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
