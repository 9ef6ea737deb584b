"""A Temporal worker process: `python -m racelab.worker --port N`.

Serves GET /healthz and /metrics on its port so the lab can wait for it and Prometheus can
scrape it.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from datetime import timedelta

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Worker

from .. import db, metrics
from ..config import NAIVE_NAMESPACE, TASK_QUEUE, Settings
from ..model import Model
from .activities import TaskActivities
from .naive_activities import NaiveActivities
from .naive_workflow import NaiveTaskWorkflow
from .workflow import TaskWorkflow

MAX_CACHED_WORKFLOWS = 100
STICKY_TIMEOUT_S = 5.0


async def namespace_ready(client: Client, namespace: str, timeout_s: float = 60.0) -> None:
    """Wait until the dev server has created the namespace (it does so at launch, maybe after it
    already answers): a Worker started before refuses to run."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
            return
        except RPCError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def serve(port: int) -> None:
    settings = Settings.from_env()
    metrics.init("temporal")
    metrics.init("temporal-naive")
    pool = await db.create_pool(settings.pg_dsn)
    client = await Client.connect(settings.temporal_address)
    activities = TaskActivities(pool, Model(settings.model_latency_ms, settings.model_jitter_ms))
    worker = Worker(client, task_queue=TASK_QUEUE, workflows=[TaskWorkflow],
                    activities=[activities.load_state, activities.apply_events],
                    # How long a workflow task waits for the worker that has the workflow cached
                    # before any worker may take it (and replay the whole history to do so): a
                    # killed worker's workflows move on after this. The SDK's default is 10 s; 5 s
                    # keeps a killed worker's recovery short. The lab had 2 s: under make load
                    # USERS=100 a saturated machine's workers missed it 2-5 times a second, and
                    # the replays that followed (histories of ~570 events) made it worse, apply
                    # p99 29 s; at 5 s and 10 s they missed it less often
                    # (docs/performance-journal.md, eighth pass).
                    # The pollers stay the SDK's fixed ones: scaled by the server's backlog hints
                    # (PollerBehaviorAutoscaling) they made the dev server fail hundreds of tasks
                    # per make load run with "context deadline exceeded" (same section). 16 of
                    # them (13 on the sticky queue) had most sticky tasks handed over at once
                    # instead of through the dev server's SQLite, but with a worker killed under
                    # make load USERS=100 the other one took on more than it could replay in
                    # time, and the backlog took longer to clear (docs/performance-journal.md,
                    # ninth pass); and on a slower machine the dev server then failed hundreds of
                    # requests with "context deadline exceeded", apply p99 14-40 s against 5-6 s
                    # (tenth pass).
                    sticky_queue_schedule_to_start_timeout=timedelta(seconds=STICKY_TIMEOUT_S),
                    # a task's workflow completes when idle (workflow.IDLE_COMPLETE_S), and the
                    # cache (1000 by default) is bounded too: with many busy tasks an evicted
                    # workflow replays its history when its next event comes
                    max_cached_workflows=MAX_CACHED_WORKFLOWS)
    # temporal-naive's workflow (the seed's tutorial) on the same workers, in its own namespace
    # (config.NAIVE_NAMESPACE); whether its pods run or not (with Docker Compose a profile starts
    # them, whatever RACELAB_VARIANTS says): idle, its pollers only wait
    naive = NaiveActivities(pool, Model(settings.model_latency_ms, settings.model_jitter_ms))
    naive_client = await Client.connect(settings.temporal_address, namespace=NAIVE_NAMESPACE)
    await namespace_ready(naive_client, NAIVE_NAMESPACE)
    naive_worker = Worker(naive_client, task_queue=TASK_QUEUE, workflows=[NaiveTaskWorkflow],
                          activities=[naive.respond],
                          sticky_queue_schedule_to_start_timeout=timedelta(seconds=STICKY_TIMEOUT_S),
                          max_cached_workflows=MAX_CACHED_WORKFLOWS)

    runner = await metrics.serve_health_and_metrics("worker", settings.host, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker, naive_worker:
        await stop.wait()
        await asyncio.gather(worker.shutdown(), naive_worker.shutdown())  # together, not one after the other
    await runner.cleanup()
    await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="racelab Temporal worker")
    parser.add_argument("--port", type=int, required=True, help="health/metrics port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
