"""temporal with continue-as-new (forced every 3 events; at the history cap): nothing lost, nothing
duplicated."""

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Replayer

from helpers import counts_for, get_state, new_id, send_event, send_events, wait_until
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
    params = {"model_latency_ms": 0}
    ids = [f"{task}-e{i}" for i in range(40)]
    for seq, event_id in enumerate(ids, 1):
        assert (await send_event(lab.settings, "temporal", task, event_id, seq, task_params=params))[0] == 200

        async def applied(event_id=event_id):
            status, body = await get_state(lab.settings, "temporal", task)
            return status == 200 and event_id in body["state"]["history"]
        # one batch per event (its signal, a workflow task, the activity, the next workflow task):
        # about 10 history events each, so 40 of them make a history past the cap's upper end
        assert await wait_until(applied, poll_s=0.02), f"{event_id} not applied"
    c = (await counts_for(lab.settings, task, settle_s=1.0))["temporal"]  # (each event seen applied)
    assert (c.accepted, c.applied, c.lost, c.duplicates, c.counter_drift) == (40, 40, 0, 0, 0)
    status, body = await get_state(lab.settings, "temporal", task)
    assert body["state"]["history"] == ids
    assert body["state"]["workflow_runs"] >= 2

    client = await Client.connect(lab.settings.temporal_address)
    continued = [wf async for wf in client.list_workflows(f"WorkflowId = '{task}'")
                 if wf.status == WorkflowExecutionStatus.CONTINUED_AS_NEW]
    assert len(continued) == body["state"]["workflow_runs"] - 1
    replayer = Replayer(workflows=[TaskWorkflow])
    for wf in continued:
        history = await client.get_workflow_handle(task, run_id=wf.run_id).fetch_history()
        # it continued at the end of the batch that took it to the cap (a batch adds about ten)
        assert HISTORY_CAP[0] <= len(history.events) <= HISTORY_CAP[1] + 20, len(history.events)
        await replayer.replay_workflow(history)
