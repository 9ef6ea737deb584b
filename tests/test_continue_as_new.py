"""temporal with continue-as-new forced every 3 events: nothing lost, nothing duplicated."""

from helpers import counts_for, get_state, new_id, send_event, send_events


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
