"""temporal with continue-as-new (forced every 3 events; at the history cap): nothing lost, nothing
duplicated."""

import asyncio

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Replayer

from helpers import counts_for, get_state, new_id, send_event, send_events, wait_until
from racelab.clients.burst import AGENT
from racelab.config import TASK_QUEUE, WORKFLOW_NAME
from racelab.worker.workflow import HISTORY_CAP, TaskWorkflow


async def test_continue_as_new_carries_state_and_pending_events(lab):
    task = new_id("can")
    params = {"continue_as_new_after": 3}
    ids = [f"{task}-e{i}" for i in range(10)]
    assert await send_events(lab.settings, "temporal", task, ids, task_params=params) == [200] * 10
    # a retry of an event applied in an earlier run must still be recognised
    assert (await send_event(lab.settings, "temporal", task, ids[0], 1, task_params=params))[0] == 200
    c = (await counts_for(lab.settings, task))["temporal"]
    assert (c.accepted, c.applied, c.lost, c.duplicates, c.counter_drift) == (10, 10, 0, 0, 0)
    status, body = await get_state(lab.settings, "temporal", task)
    assert status == 200
    assert sorted(body["state"]["history"]) == sorted(ids)
    # 3 + 3 + 3 + 1 events: the last event was applied by the fourth run
    assert body["state"]["workflow_runs"] == 4


async def test_a_run_continues_as_new_before_its_history_grows_past_the_cap(lab):
    """Without any knob, a run continues as new once its history reaches workflow.HISTORY_CAP
    (a length drawn per run), so a worker taking over a killed worker's workflow replays a short
    history; the events go on being applied exactly once across the runs."""
    task = new_id("cap")
    ids: list[str] = []
    runs = 1
    # one event at a time, each applied before the next: a batch per event (its signal, a workflow
    # task, the activity, the next workflow task), 7 to 10 history events each; the cap's upper end
    # is reached within 46 of them
    while runs < 2:
        assert len(ids) < 80, f"one run still after {len(ids)} events: no cap"
        event_id = f"{task}-e{len(ids)}"
        ids.append(event_id)
        assert (await send_event(lab.settings, "temporal", task, event_id, len(ids)))[0] == 200

        async def applied(event_id=event_id):
            status, body = await get_state(lab.settings, "temporal", task)
            return body["state"] if status == 200 and event_id in body["state"]["history"] else None
        state = await wait_until(applied, poll_s=0.02)
        assert state, f"{event_id} not applied"
        runs = state["workflow_runs"]
    c = (await counts_for(lab.settings, task, settle_s=1.0))["temporal"]  # (each event seen applied)
    n = len(ids)
    assert (c.accepted, c.applied, c.lost, c.duplicates, c.counter_drift) == (n, n, 0, 0, 0)
    status, body = await get_state(lab.settings, "temporal", task)
    assert body["state"]["history"] == ids and body["state"]["workflow_runs"] == 2

    client = await Client.connect(lab.settings.temporal_address)
    continued = [wf async for wf in client.list_workflows(f"WorkflowId = '{task}'")
                 if wf.status == WorkflowExecutionStatus.CONTINUED_AS_NEW]
    assert len(continued) == 1  # the second run applied one event: far from its cap
    history = await client.get_workflow_handle(task, run_id=continued[0].run_id).fetch_history()
    # it continued at the end of the batch that took it to the cap
    assert HISTORY_CAP[0] <= len(history.events) <= HISTORY_CAP[1] + 20, len(history.events)
    await Replayer(workflows=[TaskWorkflow]).replay_workflow(history)


async def test_a_cancel_is_carried_to_the_next_run(lab):
    """A run that continues as new passes on a cancel it received (the cap makes continuing
    frequent): the next run ends at once instead of waiting until idle."""
    task = new_id("can-cancel")
    client = await Client.connect(lab.settings.temporal_address)
    params = {"variant": "temporal", "task_id": task, "agent_id": AGENT["id"], "continue_as_new_after": 0,
              "idle_complete_s": 5, "pending": [], "runs": 1, "cancelled": True}
    handle = await client.start_workflow(WORKFLOW_NAME, params, id=task, task_queue=TASK_QUEUE)
    result = await asyncio.wait_for(handle.result(), 30)
    assert result == {"applied": 0, "runs": 2, "idle": False}  # not idle: ended by the cancel
