"""Activities of the task workflow: they hold the PostgreSQL pool and the model."""
from __future__ import annotations

import time

from temporalio import activity

from .. import db, metrics
from ..model import Model
from ..state import apply_events


class TaskActivities:
    def __init__(self, pool, model: Model):
        self.pool = pool
        self.model = model

    @activity.defn(name="load_state")
    async def load_state(self, task: dict) -> dict:
        row = await db.read_state(self.pool, task["variant"], task["task_id"], task["agent_id"])
        if row is None:
            return {"version": 0, "history": []}
        return {"version": row["version"], "history": row["state"]["history"]}

    @activity.defn(name="apply_event")
    async def apply_event(self, params: dict) -> int:
        """Call the model for one event and apply it; returns the state's new version.

        The write is guarded by the version the workflow expects: if a previous attempt of this
        activity already wrote (and only its completion was lost), the retry changes nothing.
        Its model call is then a second effect, which the checker counts as a duplicate.
        """
        variant, task_id, agent_id = params["variant"], params["task_id"], params["agent_id"]
        event_id = params["event"]["event_id"]
        started = time.perf_counter()
        await self.model.call(self.pool, variant, task_id, agent_id, [event_id])
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT state, version FROM task_states WHERE variant = $1 AND task_id = $2 AND agent_id = $3
                   FOR UPDATE""", variant, task_id, agent_id)
            version = row["version"] if row else 0
            if version != params["version"]:
                activity.logger.warning("state of %s at version %d, expected %d: already applied",
                                        task_id, version, params["version"])
                return version
            state = apply_events(row["state"] if row else None, [event_id])
            state["workflow_runs"] = params["workflow_runs"]
            await db.write_state(conn, variant, task_id, agent_id, state)
        now = time.time()
        metrics.STATE_WRITES.labels(variant).inc()
        metrics.HANDLER_SECONDS.labels(variant).observe(time.perf_counter() - started)
        if "accepted_at" in params["event"]:
            metrics.APPLY_SECONDS.labels(variant).observe(now - params["event"]["accepted_at"])
            metrics.SIGNAL_TO_APPLY.labels(variant).observe(now - params["event"]["signalled_at"])
        return version + 1
