"""What the Temporal dev server itself can do, measured beside the variant in the same run.

1. signal-with-start as fast as a plain client can (the same client library and concurrency as
   the temporal variant's relay, no PostgreSQL, no outbox): signals per second;
2. a workflow applying as fast as it can: workflows that each run no-op activities back to back
   (the variant runs one apply activity per batch the same way): activities per second.
A worker in this process (the SDK's default settings) serves a task queue of its own, so the lab's
workers are not involved.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

QUEUE = "racelab-bench"


@activity.defn(name="bench_noop")
async def noop(_: int) -> int:
    return 0


@workflow.defn(name="racelab-bench-sink")
class SinkWorkflow:
    """Counts signals; done after `expected` of them."""
    def __init__(self) -> None:
        self.received = 0

    @workflow.signal(name="receive_event")
    def receive_event(self, _event: dict) -> None:
        self.received += 1

    @workflow.run
    async def run(self, expected: int) -> int:
        await workflow.wait_condition(lambda: self.received >= expected)
        return self.received


@workflow.defn(name="racelab-bench-applier")
class ApplierWorkflow:
    """Runs n no-op activities one after another."""
    @workflow.run
    async def run(self, n: int) -> int:
        for i in range(n):
            await workflow.execute_activity("bench_noop", i, start_to_close_timeout=timedelta(seconds=30))
        return n


async def measure(address: str, signals: int = 1500, workflows: int = 50, concurrency: int = 16,
                  appliers: int = 16, activities_each: int = 30) -> dict:
    client = await Client.connect(address)
    run = uuid.uuid4().hex[:8]
    per_wf = signals // workflows
    async with Worker(client, task_queue=QUEUE, workflows=[SinkWorkflow, ApplierWorkflow], activities=[noop]):
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await client.start_workflow(
                    "racelab-bench-sink", per_wf, id=f"bench-sink-{run}-{i % workflows}", task_queue=QUEUE,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    start_signal="receive_event", start_signal_args=[{"event_id": str(i)}])
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(per_wf * workflows)))
        sws_s = time.perf_counter() - started
        await asyncio.gather(*(client.get_workflow_handle(f"bench-sink-{run}-{w}").result() for w in range(workflows)))

        started = time.perf_counter()
        await asyncio.gather(*(client.execute_workflow("racelab-bench-applier", activities_each,
                                                       id=f"bench-applier-{run}-{w}", task_queue=QUEUE)
                               for w in range(appliers)))
        act_s = time.perf_counter() - started
        started = time.perf_counter()
        await client.execute_workflow("racelab-bench-applier", activities_each, id=f"bench-applier-{run}-one",
                                      task_queue=QUEUE)
        one_s = time.perf_counter() - started
    return {"signal_with_start_per_s": per_wf * workflows / sws_s, "signals": per_wf * workflows,
            "signal_concurrency": concurrency,
            "activities_per_s": appliers * activities_each / act_s, "appliers": appliers,
            "activity_round_trip_ms": one_s / activities_each * 1000.0}
