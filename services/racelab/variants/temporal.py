"""temporal: one workflow per task (workflow id = task id), events delivered as signals.

The pod signals with signal-with-start inside the transaction that records the event, so an
ack means the event is both in the event log and in the workflow's signal queue. The workers
(racelab.worker) apply the events one at a time and write the state where the others keep it.
A re-sent event is a new signal; the workflow dedupes it on the event id.
"""
from __future__ import annotations

import time

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from ..config import SIGNAL_CANCEL, SIGNAL_RECEIVE_EVENT, TASK_QUEUE, WORKFLOW_NAME
from ..protocol import Event, TaskRef
from . import Variant


def workflow_input(variant: str, ref: TaskRef) -> dict:
    return {"variant": variant, "task_id": ref.task_id, "agent_id": ref.agent_id,
            # lab knob: continue-as-new after this many events (0 = when Temporal suggests it)
            "continue_as_new_after": int(ref.task_params.get("continue_as_new_after") or 0)}


class TemporalVariant(Variant):
    name = "temporal"

    async def start(self) -> None:
        self.client = await Client.connect(self.ctx.settings.temporal_address)

    async def health(self) -> None:
        if not await self.client.service_client.check_health():
            raise RuntimeError("temporal frontend is not serving")

    async def handoff(self, conn, event: Event, fresh: bool, accepted_at: float) -> None:
        ref = TaskRef(event.agent_id, event.task_id, event.task_params)
        await self.client.start_workflow(
            WORKFLOW_NAME, workflow_input(self.name, ref), id=event.task_id, task_queue=TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal=SIGNAL_RECEIVE_EVENT,
            start_signal_args=[{**event.to_payload(), "accepted_at": accepted_at, "signalled_at": time.time()}])

    async def on_task_created(self, ref: TaskRef) -> None:
        await self.client.start_workflow(
            WORKFLOW_NAME, workflow_input(self.name, ref), id=ref.task_id, task_queue=TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)

    async def on_task_cancelled(self, ref: TaskRef) -> None:
        try:
            await self.client.get_workflow_handle(ref.task_id).signal(SIGNAL_CANCEL)
        except RPCError:
            pass  # no running workflow: nothing to cancel


VARIANT = TemporalVariant
