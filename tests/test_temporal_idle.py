"""temporal: a task's workflow completes when idle (and so leaves the workers' cache), the next
event starts a new run that applies it exactly once; the workflow code replays its own histories
(it runs unsandboxed, so replay is the check that it stays deterministic)."""
import asyncio
import time

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Replayer

from helpers import counts_for, get_state, new_id, send_events
from racelab.worker.workflow import TaskWorkflow


async def wait_status(handle, status, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while (got := (await handle.describe()).status) != status:
        assert time.monotonic() < deadline, f"workflow still {got}, not {status}"
        await asyncio.sleep(0.2)


async def test_idle_workflow_completes_and_the_next_event_starts_a_new_run(lab):
    task = new_id("idle")
    params = {"idle_complete_s": 1}
    first = [f"{task}-a{i}" for i in range(5)]
    assert await send_events(lab.settings, "temporal", task, first, task_params=params) == [200] * 5
    c = (await counts_for(lab.settings, task))["temporal"]
    assert (c.accepted, c.applied, c.lost, c.duplicates) == (5, 5, 0, 0)
    client = await Client.connect(lab.settings.temporal_address)
    handle = client.get_workflow_handle(task)
    await wait_status(handle, WorkflowExecutionStatus.COMPLETED)
    first_run = (await handle.describe()).run_id
    result = await handle.result()
    assert result["idle"] is True and result["applied"] == 5

    # the next events (one a re-send of an applied event) go to a new run, applied once each
    second = [f"{task}-b{i}" for i in range(5)]
    assert await send_events(lab.settings, "temporal", task, second + first[:1], 6, params) == [200] * 6
    c = (await counts_for(lab.settings, task))["temporal"]
    assert (c.accepted, c.applied, c.lost, c.duplicates, c.duplicate_side_effects) == (10, 10, 0, 0, 0)
    status, body = await get_state(lab.settings, "temporal", task)
    assert status == 200 and sorted(body["state"]["history"]) == sorted(first + second)
    assert (await client.get_workflow_handle(task).describe()).run_id != first_run

    # both runs' histories replay on the current workflow code
    await wait_status(client.get_workflow_handle(task), WorkflowExecutionStatus.COMPLETED)
    replayer = Replayer(workflows=[TaskWorkflow])
    for run_id in (first_run, None):
        history = await client.get_workflow_handle(task, run_id=run_id).fetch_history()
        await replayer.replay_workflow(history)
