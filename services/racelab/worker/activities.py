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
        """Call the model once for the events of a batch that the state does not have yet, apply
        them and write the state if no one wrote it meanwhile; again until every event of the
        batch is in the state. Returns the state's new version.

        The state's history is the check, not the version the workflow expected (params
        "version", kept for the runs that pass it): "the version moved, so my batch was applied"
        holds only if a retry always brings the same batch. It did not with local activities,
        tried on 2026-11-26: a workflow task that timed out after the write ran again with a
        larger batch (signals that came meanwhile), and the events the first attempt had not
        seen were lost (471 of 30,850 under make load USERS=100). A retry of an attempt that
        wrote makes no model call; an attempt that died between its model call and its write
        leaves one repeated model call per event, which the checker counts as duplicate side
        effects (the events in flight at the fault), as does an attempt whose write lost to a
        concurrent one (a stale attempt still running): it calls the model again for what that
        write did not apply.
        """
        variant, task_id, agent_id = params["variant"], params["task_id"], params["agent_id"]
        started = time.perf_counter()
        while True:
            row = await db.read_state(self.pool, variant, task_id, agent_id)
            state, version = (row["state"], row["version"]) if row else (None, 0)
            have = set(state["history"]) if state else set()
            events = [e for e in params["events"] if e["event_id"] not in have]
            if not events:
                return version
            event_ids = [e["event_id"] for e in events]
            await heartbeating(self.model.call(self.pool, variant, task_id, agent_id, event_ids))
            new_state = apply_events(state, event_ids)
            new_state["workflow_runs"] = params["workflow_runs"]
            written = await db.write_state_if_version(self.pool, variant, task_id, agent_id, new_state, version)
            if written is not None:
                break
            activity.logger.warning("state of %s moved past version %d meanwhile: reading it again", task_id, version)
        now = time.time()
        metrics.STATE_WRITES.labels(variant).inc(len(event_ids))
        metrics.BATCH_SIZE.labels(variant).observe(len(event_ids))
        metrics.HANDLER_SECONDS.labels(variant).observe(time.perf_counter() - started)
        for event in events:
            if "accepted_at" in event:
                metrics.APPLY_SECONDS.labels(variant).observe(now - event["accepted_at"])
                metrics.SIGNAL_TO_APPLY.labels(variant).observe(now - event["signalled_at"])
        return written
