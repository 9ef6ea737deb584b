"""The race zoo (issue 10): each variant's documented outcome on the native lab, from one shared
burst where the outcome is a burst's, and a short scenario of its own where it needs one."""
import asyncio
import os
import time

import aiohttp
import pytest

from racelab import db, redis_client
from racelab.clients.burst import AGENT, burst_and_check, event_send
from racelab.lab import native
from racelab.nemesis.runtimes import NativeRuntime
from racelab.variants.queue import GROUP, STREAM

from helpers import (SHARED_BURSTS, ZOO, counts_for, get_state, new_id, send_event, send_events, stopped,
                     table_counts, wait_until)

pytestmark = pytest.mark.shared_burst("zoo")  # one burst for the module (helpers.SHARED_BURSTS)
TASKS, EVENTS = SHARED_BURSTS["zoo"]["tasks"], SHARED_BURSTS["zoo"]["events"]


@pytest.fixture(scope="module", autouse=True)
def zoo_running(lab):
    missing = [v for v in ZOO + ("sequential",) if v not in lab.settings.variants]
    if missing:
        pytest.skip(f"the lab does not run {', '.join(missing)} (RACELAB_VARIANTS=all)")


@pytest.fixture(scope="module")
def burst(shared_burst):
    return shared_burst("zoo")


def counts(burst, variant):
    return burst["results"][variant]


def test_zoo_burst_acked_everything_and_the_ledger_agrees(burst):
    assert burst["quiescent"] and burst["errors"] == [] and burst["disagreements"] == []
    for variant in ZOO:
        assert counts(burst, variant).accepted == TASKS * EVENTS, variant


@pytest.mark.parametrize("variant", ["queue", "optimistic", "lock-only"])
def test_safe_under_the_burst(burst, variant):
    """lock-only too, as long as every handler finishes within the seed's 30 s timeout."""
    c = counts(burst, variant)
    assert (c.applied, c.lost, c.duplicates, c.counter_drift, c.phantoms) == (TASKS * EVENTS, 0, 0, 0, 0)


def test_temporal_naive_loses_updates_under_a_burst(burst):
    c = counts(burst, "temporal-naive")
    assert c.lost > 0 and c.counter_drift < 0


def test_cursor_only_duplicates(burst):
    """The seed's cursor handler without a lock: handlers that read the same cursor serve the
    same batch ("reduces but doesn't eliminate")."""
    c = counts(burst, "cursor-only")
    assert c.duplicate_applications > 0 and c.duplicate_side_effects > 0 and c.counter_drift > 0


def test_cursor_skip_loses_events_its_cursor_passed(burst):
    c = counts(burst, "cursor-skip")
    assert c.lost > 0 and c.duplicates == 0  # skipped, never applied twice


def test_asyncio_lock_loses_updates_across_three_pods(burst):
    c = counts(burst, "asyncio-lock")
    assert c.lost > 0 and c.duplicates == 0


async def test_optimistic_counts_its_conflicts(lab, burst):
    total = 0.0
    async with aiohttp.ClientSession() as session:
        for r in range(1, lab.settings.replicas + 1):
            async with session.get(f"http://{lab.settings.host}:{lab.settings.pod_port('optimistic', r)}/metrics") as resp:
                for line in (await resp.text()).splitlines():
                    if line.startswith('racelab_optimistic_conflicts_total{variant="optimistic"}'):
                        total += float(line.split()[-1])
    assert total > 0


async def test_asyncio_lock_is_safe_with_one_replica(lab):
    """One replica, emulated: every event of the task goes to one pod, on its own port."""
    task = new_id("zoo-one-pod")
    url = f"http://{lab.settings.host}:{lab.settings.pod_port('asyncio-lock', 1)}/api"
    async with aiohttp.ClientSession() as session:
        async def one(i):
            async with session.post(url, json=event_send(task, f"{task}-{i}", i, "hi")) as resp:
                return resp.status
        assert set(await asyncio.gather(*(one(i) for i in range(EVENTS)))) == {200}
    c = (await counts_for(lab.settings, task))["asyncio-lock"]
    assert (c.applied, c.lost, c.duplicates, c.counter_drift) == (EVENTS, 0, 0, 0)


async def test_temporal_naive_is_safe_one_event_at_a_time(lab):
    task = new_id("zoo-naive-serial")
    for i in range(6):
        status, _ = await send_event(lab.settings, "temporal-naive", task, f"{task}-{i}", i)
        assert status == 200

        async def applied():
            code, body = await get_state(lab.settings, "temporal-naive", task)
            return code == 200 and f"{task}-{i}" in body["state"]["history"]
        deadline = time.monotonic() + 20
        while not await applied():
            assert time.monotonic() < deadline, f"event {i} not applied"
            await asyncio.sleep(0.05)
    c = (await counts_for(lab.settings, task))["temporal-naive"]
    assert (c.applied, c.lost, c.duplicates, c.counter_drift) == (6, 0, 0, 0)


async def test_lock_only_fails_when_processing_outlives_the_lock(lab):
    """A model call of 400 ms under a 150 ms lock: a second handler takes the expired lock and
    reads the state the first has not written yet."""
    task = new_id("zoo-lease")
    params = {"model_latency_ms": 400, "lock_ttl_s": 0.15}
    ids = [f"{task}-{i}" for i in range(8)]
    assert await send_events(lab.settings, "lock-only", task, ids, 0, params) == [200] * 8
    # every handler made its model call (its effect row): only state writes can follow, within
    # milliseconds; no need for the checker's 15-s wait for a safe variant's late applies
    calls = {"n": 0}

    async def every_handler_called() -> bool:
        calls["n"] = (await table_counts(lab.settings, task))["effects"]
        return calls["n"] >= len(ids)
    assert await wait_until(every_handler_called, timeout_s=60), f"{calls['n']} of {len(ids)} model calls"
    c = (await counts_for(lab.settings, task, settle_s=1.0, safe_settle_s=1.0))["lock-only"]
    assert c.lost > 0 and c.counter_drift < 0


async def test_sequential_is_safe_and_one_event_at_a_time(lab):
    prefix = new_id("zoo-seq") + "-"
    out = await burst_and_check(lab.settings, 3, 10, ("sequential",), prefix=prefix)
    c = out["results"]["sequential"]
    assert (c.applied, c.lost, c.duplicates, c.counter_drift) == (30, 0, 0, 0)
    async with db.connection(lab.settings.pg_dsn) as conn:
        calls = [r["t"] for r in await conn.fetch(
            """SELECT extract(epoch FROM created_at)::float8 AS t FROM effects WHERE variant = 'sequential'
               AND task_id LIKE $1 ORDER BY created_at""", prefix + "%")]
    # one model call at a time, each at least the model's minimum latency (50 - 20 ms) after the last
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    min_latency_s = (lab.settings.model_latency_ms - lab.settings.model_jitter_ms) / 1000
    assert len(calls) == 30 and min(gaps) >= min_latency_s * 0.95


async def test_queue_loses_nothing_when_a_queue_worker_is_killed_mid_burst(lab):
    runtime = NativeRuntime(lab.settings)
    prefix = new_id("zoo-qkill") + "-"
    burst_task = asyncio.create_task(burst_and_check(lab.settings, 6, 30, ("queue",), spread_s=2.0, prefix=prefix))
    await asyncio.sleep(1.0)
    old = await runtime.kill("queue-worker-1")
    await runtime.wait_back("queue-worker-1", old)
    c = (await burst_task)["results"]["queue"]
    assert (c.accepted, c.applied, c.lost, c.duplicate_applications, c.counter_drift) == (180, 180, 0, 0, 0)
    assert c.duplicate_side_effects <= 8  # at most the model calls in flight at the kill


async def test_a_restarted_queue_worker_reads_its_pending_entries_then_new_ones(lab):
    """A worker restarted with entries pending (read by it, not acknowledged: it was killed) reads
    those first, then new ones. It used to stay on the id of its last pending entry and read
    nothing new (asking Redis about 8,000 times a second), unseen while the other workers took
    everything: so they stay stopped here."""
    if not lab.owned and os.environ.get("RACELAB_TEST_FAULTS") != "1":
        pytest.skip("--lab=existing: stopping its queue workers needs RACELAB_TEST_FAULTS=1")
    settings = lab.settings
    task = new_id("zoo-qpending")
    r = redis_client.client(settings.redis_url, decode_responses=True)
    try:
        async with stopped(settings, "queue-worker"):
            assert (await send_event(settings, "queue", task, f"{task}-1", 1))[0] == 200
            # what a killed worker leaves behind: the entry read by it and not acknowledged
            reply = await r.xreadgroup(GROUP, "queue-worker-1", {STREAM: ">"}, count=10_000)
            first = [entry_id for entry_id, fields in reply[0][1] if fields["event_id"] == f"{task}-1"]
            assert len(first) == 1
            await asyncio.to_thread(native.supervisorctl, settings, "start", "queue-worker-1")
            assert (await send_event(settings, "queue", task, f"{task}-2", 2))[0] == 200
            c = (await counts_for(settings, task))["queue"]
            assert (c.accepted, c.applied, c.lost, c.duplicates) == (2, 2, 0, 0)
            # applied entries leave the stream (it grew by every event for as long as Redis ran)
            assert [f for _, f in await r.xrange(STREAM, min=first[0]) if f["task_id"] == task] == []
    finally:
        await r.aclose()


async def test_the_queue_reconciler_adds_again_only_what_is_neither_applied_nor_in_the_stream(lab):
    """The queue workers' reconciler (what gives back the entries a Redis restart took): events
    that wait in the stream are left alone, however old; the ones whose entries are gone are added
    again, once, for the state they belong to (with task.params.shared_state the task's one state,
    though the event log does not keep the params); and they are then applied once. The workers
    are stopped, so the entries wait. Two tasks: one with its own state, one with a shared one."""
    if not lab.owned and os.environ.get("RACELAB_TEST_FAULTS") != "1":
        pytest.skip("--lab=existing: stopping its queue workers needs RACELAB_TEST_FAULTS=1")
    from racelab.checker.counts import counted_as
    from racelab.state import SHARED_AGENT
    from racelab.variants.queue import ORPHAN_AGE_S, QueueWorker
    settings = lab.settings
    prefix = new_id("zoo-qreconcile")
    owners = {f"{prefix}-own": AGENT["id"], f"{prefix}-shared": SHARED_AGENT}  # task -> whose state
    ids = {task: [f"{task}-{i}" for i in range(3)] for task in owners}
    r = redis_client.client(settings.redis_url, decode_responses=True)
    pool = await db.create_pool(settings.pg_dsn)
    reconciler = QueueWorker("test-reconciler", settings, pool, r)

    async def entries() -> dict[str, dict]:  # entry id -> fields, these tasks'
        return {entry_id: f for entry_id, f in await r.xrange(STREAM) if f["task_id"] in owners}

    def event_ids(found: dict[str, dict]) -> dict[str, list[str]]:
        return {task: sorted(f["event_id"] for f in found.values() if f["task_id"] == task) for task in owners}
    try:
        async with stopped(settings, "queue-worker"):
            for task, owner in owners.items():
                params = {"shared_state": True} if owner == SHARED_AGENT else None
                assert await send_events(settings, "queue", task, ids[task], task_params=params) == [200] * 3
            await asyncio.sleep(ORPHAN_AGE_S + 0.5)  # old enough to be taken for lost, if they were
            await reconciler.reconcile_once()
            before = await entries()
            assert event_ids(before) == ids  # waiting in the stream: not added again
            gone = [entry_id for entry_id, f in before.items() if not f["event_id"].endswith("-0")]
            await r.xdel(STREAM, *gone)  # what a Redis restart does to entries not applied yet
            assert await reconciler.reconcile_once() >= 4
            await reconciler.reconcile_once()  # (in the stream again now: not added a second time)
            after = await entries()
            assert event_ids(after) == ids and not set(gone) & set(after)
            assert {f["task_id"]: f["state_agent"] for f in after.values()} == owners
    finally:
        await r.aclose()
        await pool.close()
    # (a shared state counts as "queue@shared", which quiescence does not know as safe: its 3-s
    # settle would call events the restarted workers apply a moment later lost)
    counts = await counts_for(settings, prefix, settle_s=15)
    for owner in owners.values():
        c = counts[counted_as("queue", owner)]
        assert (c.accepted, c.applied, c.lost, c.duplicates, c.counter_drift) == (3, 3, 0, 0, 0), owner
    async with db.connection(settings.pg_dsn) as conn:  # the state the events belong to has them
        for task, owner in owners.items():
            state = await conn.fetchval("SELECT state FROM task_states WHERE variant = 'queue' AND task_id = $1"
                                        " AND agent_id = $2", task, owner)
            assert sorted(state["history"]) == ids[task]


async def test_multi_agent_shared_state_needs_a_task_level_key(lab):
    """The matrix's multi-agent scenario (the second seed's case): 3 agents per task append to the
    task's one history (task.params.shared_state). A lock and cursor keyed per (task, agent), as
    the seed's Option 1 keys its lock, let the agents write it concurrently: locked and lock-only
    lose updates. One workflow per task (temporal), the queue's row lock on the task's state and
    optimistic's version check keep it whole."""
    from racelab.clients.matrix import MULTI_AGENT, TASKS as MX_TASKS, run_scenario
    variants = ("locked", "lock-only", "temporal", "queue", "optimistic")
    out = await run_scenario(lab.settings, "multi-agent", new_id("zoo"), variants)
    assert out["quiescent"] and out["errors"] == []
    per_variant = MX_TASKS * MULTI_AGENT["agents"] * MULTI_AGENT["events"]
    for v in variants:
        c = out["cells"][v]["counts"]
        assert out["cells"][v]["ok"] and c["accepted"] == c["acked"] == per_variant and c["broken_acks"] == 0, (v, c)
    for v in ("locked", "lock-only"):
        c = out["cells"][v]["counts"]
        assert c["lost"] > 0 and c["counter_drift"] < 0, (v, c)
    for v in ("temporal", "queue", "optimistic"):
        c = out["cells"][v]["counts"]
        assert (c["applied"], c["lost"], c["duplicates"], c["counter_drift"], c["phantoms"]) == (per_variant, 0, 0, 0, 0), (v, c)


async def test_temporal_and_temporal_naive_never_share_a_workflow(lab):
    """Both Temporal variants take the task id as the workflow id, each in its own namespace. In
    one namespace temporal-naive prefixed its ids ("temporal-naive/<task id>"), and a `temporal`
    task with that id signalled the other variant's workflow."""
    from temporalio.client import Client

    from racelab.config import NAIVE_NAMESPACE, NAIVE_WORKFLOW_NAME, WORKFLOW_NAME
    task = new_id("zoo-namespace")
    sends = [("temporal-naive", task), ("temporal", task), ("temporal", f"temporal-naive/{task}")]
    for variant, task_id in sends:
        status, reply = await send_event(lab.settings, variant, task_id, f"{variant}:{task_id}")
        assert status == 200, reply

    async def each_applied_to_its_own_state():
        for variant, task_id in sends:
            code, body = await get_state(lab.settings, variant, task_id)
            if code != 200 or body["state"]["history"] != [f"{variant}:{task_id}"]:
                return False
        return True
    assert await wait_until(each_applied_to_its_own_state, timeout_s=30), [
        await get_state(lab.settings, v, t) for v, t in sends]
    default = await Client.connect(lab.settings.temporal_address)
    naive = await Client.connect(lab.settings.temporal_address, namespace=NAIVE_NAMESPACE)
    assert (await naive.get_workflow_handle(task).describe()).workflow_type == NAIVE_WORKFLOW_NAME
    for task_id in (task, f"temporal-naive/{task}"):
        assert (await default.get_workflow_handle(task_id).describe()).workflow_type == WORKFLOW_NAME
