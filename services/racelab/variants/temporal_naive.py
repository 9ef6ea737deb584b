"""temporal-naive: the seed's own Temporal tutorial workflow, which the seed says processes
events "one at a time in the order they were received".

The pod signal-with-starts the task's workflow (racelab.worker.naive) exactly as `temporal`
does, on the same workers and task queue, workflow id = task id, in a namespace of its own
(config.NAIVE_NAMESPACE) so that the same task id can run under both variants. The workflow's `receive_event` handler is
async: it appends the event to the workflow's state, awaits an activity (the model call, which
also writes the state it was given, as the tutorial's streamed agent run does), then assigns
the activity's result back. Temporal runs a signal handler until its first await, then the next
signal's: handlers interleave at the await, and the last result assigned wins."""
from __future__ import annotations

import asyncio
import time

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from ..config import NAIVE_NAMESPACE, NAIVE_WORKFLOW_NAME, SIGNAL_RECEIVE_EVENT, TASK_QUEUE
from ..protocol import Event, TaskRef
from . import Variant
from .temporal import TASK_CALL_TIMEOUT_S, cancel_workflow


class TemporalNaive(Variant):
    name = "temporal-naive"

    async def start(self) -> None:
        self.client = await Client.connect(self.ctx.settings.temporal_address, namespace=NAIVE_NAMESPACE)

    async def health(self) -> None:
        if not await self.client.service_client.check_health():
            raise RuntimeError("temporal frontend is not serving")

    def workflow_input(self, ref: TaskRef) -> dict:
        return {"variant": self.name, "task_id": ref.task_id, "agent_id": ref.agent_id}

    async def handoff(self, conn, event: Event, fresh: bool, accepted_at: float) -> None:
        ref = TaskRef(event.agent_id, event.task_id, event.task_params)
        await self.client.start_workflow(
            NAIVE_WORKFLOW_NAME, self.workflow_input(ref), id=event.task_id, task_queue=TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING, start_signal=SIGNAL_RECEIVE_EVENT,
            start_signal_args=[{**event.to_payload(), "accepted_at": accepted_at, "signalled_at": time.time(),
                                "model_latency_ms": event.task_params.get("model_latency_ms")}])

    async def on_task_created(self, ref: TaskRef) -> None:
        # as the seed's tutorial: its events are signalled in the transaction that records them,
        # so without Temporal it takes neither a task nor an event (503, within TASK_CALL_TIMEOUT_S)
        await asyncio.wait_for(self.client.start_workflow(
            NAIVE_WORKFLOW_NAME, self.workflow_input(ref), id=ref.task_id, task_queue=TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING), TASK_CALL_TIMEOUT_S)

    async def on_task_cancelled(self, ref: TaskRef) -> None:
        await cancel_workflow(self.client, ref.task_id)


VARIANT = TemporalNaive
