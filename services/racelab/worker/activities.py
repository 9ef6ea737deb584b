"""Activities of the task workflow: they hold the PostgreSQL pool and the model."""
from __future__ import annotations

import asyncio
import time

from temporalio import activity

from .. import db, metrics
from ..model import Model
from ..state import apply_events

HEARTBEAT_EVERY_S = 0.5


async def heartbeating(coro):
    """Await coro, heartbeating meanwhile: the server learns within the heartbeat timeout that
    a worker died mid-activity, however long the model takes."""
    task = asyncio.ensure_future(coro)
    while True:
        # the first heartbeat only once the work has run for HEARTBEAT_EVERY_S: one sent at the
        # start (the SDK sends the first at once) costs the dev server a write per activity for
        # nothing (6,313 of them in a 4-minute make load USERS=100), the model answers in 50 ms
        done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY_S)
        if done:
            return task.result()
        activity.heartbeat()


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

    @activity.defn(name="apply_events")
    async def apply_events(self, params: dict) -> int:
        """Call the model once for a batch of events and apply them; returns the state's new version.

        Guarded by the version the workflow expects: if a previous attempt of this activity
        already wrote (only its completion was lost), the retry changes nothing and makes no
        model call. An attempt that died between its model call and its write leaves one
        repeated model call per event of the batch, which the checker counts as duplicate
        side effects (the events in flight at the fault).
        """
        variant, task_id, agent_id = params["variant"], params["task_id"], params["agent_id"]
        event_ids = [e["event_id"] for e in params["events"]]
        started = time.perf_counter()
        row = await db.read_state(self.pool, variant, task_id, agent_id)
        if (row["version"] if row else 0) != params["version"]:
            activity.logger.warning("state of %s at version %d, expected %d: already applied",
                                    task_id, row["version"] if row else 0, params["version"])
            return row["version"] if row else 0
        await heartbeating(self.model.call(self.pool, variant, task_id, agent_id, event_ids))
        state = apply_events(row["state"] if row else None, event_ids)
        state["workflow_runs"] = params["workflow_runs"]
        version = await db.write_state_if_version(self.pool, variant, task_id, agent_id, state, params["version"])
        if version is None:  # written meanwhile: an earlier attempt of this activity got there first
            activity.logger.warning("state of %s moved past version %d: already applied", task_id, params["version"])
            row = await db.read_state(self.pool, variant, task_id, agent_id)
            return row["version"] if row else 0
        now = time.time()
        metrics.STATE_WRITES.labels(variant).inc(len(event_ids))
        metrics.BATCH_SIZE.labels(variant).observe(len(event_ids))
        metrics.HANDLER_SECONDS.labels(variant).observe(time.perf_counter() - started)
        for event in params["events"]:
            if "accepted_at" in event:
                metrics.APPLY_SECONDS.labels(variant).observe(now - event["accepted_at"])
                metrics.SIGNAL_TO_APPLY.labels(variant).observe(now - event["signalled_at"])
        return version
