"""After a Redis restart (make chaos kill-redis), the variants that use Redis serve and process
at once: every pooled connection the old server closed is replaced on its next command. Before,
redis-py's clients did not retry: each such connection failed one command, so lock-only's
handlers dropped their events and queue's pods answered 503. The queue workers stay up: they
create the consumer group again in place (they used to exit and be restarted, and one such exit
in several dozen hung with the worker's health port closed: racelab/cancellation.py)."""
import asyncio
import os

import aiohttp
import pytest

from helpers import counts_for, instances_of, new_id, send_event, stopped
from racelab.lab.native import healthy
from racelab.nemesis.runtimes import NativeRuntime

# (cursor-skip uses Redis too, but loses events one after another by design: its skips hide any other)
REDIS_VARIANTS = ("locked", "lock-only", "queue")
EVENTS = 6  # one after another, so each of the 3 pods takes two and meets its old connections


async def test_every_redis_variant_serves_and_applies_at_once_after_a_redis_restart(lab):
    if not lab.owned and os.environ.get("RACELAB_TEST_FAULTS") != "1":
        pytest.skip("--lab=existing: killing its Redis needs RACELAB_TEST_FAULTS=1")
    missing = [v for v in REDIS_VARIANTS if v not in lab.settings.variants]
    if missing:
        pytest.skip(f"the lab does not run {', '.join(missing)} (RACELAB_VARIANTS=all)")
    prefix = new_id("redis-restart") + "-"
    runtime = NativeRuntime(lab.settings)
    queue_workers = instances_of(lab.settings, "queue-worker")
    worker_pids = {w.name: runtime.pid(w.name) for w in queue_workers}
    old = await runtime.kill("redis")  # the nemesis's kill-redis (SIGKILL; supervisor restarts it)
    await runtime.wait_back("redis", old, timeout_s=30)

    async def send(variant: str) -> list[int]:
        task = f"{prefix}{variant}"
        return [(await send_event(lab.settings, variant, task, f"{task}-{i}", i))[0] for i in range(EVENTS)]
    statuses = dict(zip(REDIS_VARIANTS, await asyncio.gather(*map(send, REDIS_VARIANTS))))
    assert statuses == {v: [200] * EVENTS for v in REDIS_VARIANTS}
    counts = await counts_for(lab.settings, prefix)
    assert {v: (counts[v].accepted, counts[v].applied, counts[v].lost, counts[v].duplicates) for v in REDIS_VARIANTS} == {
        v: (EVENTS, EVENTS, 0, 0) for v in REDIS_VARIANTS}
    assert {w.name: runtime.pid(w.name) for w in queue_workers} == worker_pids  # none exited
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        # and each still serves (a hung one kept its pid)
        assert {w.name: await healthy(w, lab.settings, session) for w in queue_workers} == dict.fromkeys(worker_pids, True)


async def test_queue_applies_the_entries_a_redis_restart_took_from_its_stream(lab):
    """Redis keeps nothing on disk here: a restart takes the stream, and with it every entry no
    queue worker had applied. The event log still has those events (an ack means logged), and the
    workers' reconciler adds them to the stream again. The workers are stopped while the events are
    sent, so that none is read before the kill: before the reconciler, all of them were lost."""
    if not lab.owned and os.environ.get("RACELAB_TEST_FAULTS") != "1":
        pytest.skip("--lab=existing: killing its Redis needs RACELAB_TEST_FAULTS=1")
    if "queue" not in lab.settings.variants:
        pytest.skip("the lab does not run queue (RACELAB_VARIANTS=all)")
    task = new_id("redis-restart-queue")
    runtime = NativeRuntime(lab.settings)
    async with stopped(lab.settings, "queue-worker"):
        statuses = [(await send_event(lab.settings, "queue", task, f"{task}-{i}", i))[0] for i in range(EVENTS)]
        assert statuses == [200] * EVENTS
        old = await runtime.kill("redis")
        await runtime.wait_back("redis", old, timeout_s=30)
    c = (await counts_for(lab.settings, task))["queue"]
    assert (c.accepted, c.applied, c.lost, c.duplicates, c.counter_drift) == (EVENTS, EVENTS, 0, 0, 0)
