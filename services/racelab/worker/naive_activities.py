"""The temporal-naive workflow's activity: the tutorial's model call (run_agent_streamed_auto_send),
which answers and returns the conversation it was given plus its reply."""
from __future__ import annotations

import time

from temporalio import activity

from .. import db, metrics
from ..model import Model


class NaiveActivities:
    def __init__(self, pool, model: Model):
        self.pool = pool
        self.model = model

    @activity.defn(name="naive_respond")
    async def respond(self, params: dict) -> dict:
        """Call the model for the event, write the state the workflow passed (the agent's state
        as the tutorial's agent run persists it: whole, last writer wins) and return it."""
        variant, task_id, agent_id = params["variant"], params["task_id"], params["agent_id"]
        event, state = params["event"], params["state"]
        started = time.perf_counter()
        latency = event.get("model_latency_ms")
        await self.model.call(self.pool, variant, task_id, agent_id, [event["event_id"]],
                              float(latency) if isinstance(latency, (int, float)) else None)
        await db.write_state(self.pool, variant, task_id, agent_id, state)
        now = time.time()
        metrics.STATE_WRITES.labels(variant).inc()
        metrics.HANDLER_SECONDS.labels(variant).observe(time.perf_counter() - started)
        metrics.APPLY_SECONDS.labels(variant).observe(now - event["accepted_at"])
        metrics.SIGNAL_TO_APPLY.labels(variant).observe(now - event["signalled_at"])
        return state
