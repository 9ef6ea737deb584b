"""task/create and task/cancel through the gateway, for every variant."""
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from helpers import counts_for, get_state, new_id, post, send_event, table_counts, task_call, wait_until


@pytest.mark.parametrize("variant", ["unguarded", "locked", "temporal"])
async def test_create_send_cancel(lab, variant):
    task = new_id(f"life-{variant}")
    status, reply = await post(lab.settings, variant, task_call("task/create", task))
    assert status == 200 and reply["result"] == {"status": "running"}
    status, body = await get_state(lab.settings, variant, task)
    assert status == 200 and body["state"] == {"processing_count": 0, "history": [], "applied_at": []}

    assert (await send_event(lab.settings, variant, task, f"{task}-e1"))[0] == 200
    c = (await counts_for(lab.settings, task, applied_settle_s=0.5))[variant]  # (duplicates: below)
    assert (c.accepted, c.applied, c.lost) == (1, 1, 0)

    status, reply = await post(lab.settings, variant, task_call("task/cancel", task))
    assert status == 200 and reply["result"] == {"status": "cancelled"}
    before = await table_counts(lab.settings, task)
    status, reply = await send_event(lab.settings, variant, task, f"{task}-e2")
    assert status == 409 and reply["error"]["code"] == -32602 and "cancelled" in reply["error"]["message"]
    assert await table_counts(lab.settings, task) == before
    await assert_resend_after_cancel_is_acked(lab, variant, task, f"{task}-e1", before)


async def assert_resend_after_cancel_is_acked(lab, variant: str, task: str, event_id: str, tables: dict) -> None:
    """A client that lost the ack of an event the task recorded before its cancel retries it: the
    retry is acked as any re-send is (it got 409 "cancelled" for an event that was accepted and
    applied), and nothing is recorded or processed again."""
    for _ in range(2):
        status, reply = await send_event(lab.settings, variant, task, event_id)
        assert (status, reply.get("result")) == (200, {"status": "processing"}), reply
    c = (await counts_for(lab.settings, task))[variant]
    assert (c.accepted, c.applied, c.duplicates, c.counter_drift) == (1, 1, 0, 0), c
    assert await table_counts(lab.settings, task) == tables


@pytest.mark.parametrize("variant", ["temporal-naive", "queue"])
async def test_resend_after_cancel_with_a_handoff(lab, variant):
    """The variants whose event is handed off in the transaction that records it."""
    if variant not in lab.settings.variants:
        pytest.skip(f"the lab does not run {variant}")
    task = new_id(f"life-{variant}")
    assert (await send_event(lab.settings, variant, task, f"{task}-e1"))[0] == 200
    assert (await counts_for(lab.settings, task, applied_settle_s=0.5))[variant].applied == 1  # (duplicates: below)
    assert (await post(lab.settings, variant, task_call("task/cancel", task)))[0] == 200
    await assert_resend_after_cancel_is_acked(lab, variant, task, f"{task}-e1", await table_counts(lab.settings, task))


async def test_cancel_ends_the_temporal_workflow(lab):
    task = new_id("life-wf")
    assert (await send_event(lab.settings, "temporal", task, f"{task}-e1"))[0] == 200
    await counts_for(lab.settings, task, applied_settle_s=0.5)  # applied: the workflow's result says how often
    assert (await post(lab.settings, "temporal", task_call("task/cancel", task)))[0] == 200
    handle = (await Client.connect(lab.settings.temporal_address)).get_workflow_handle(task)

    async def completed():
        return (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert await wait_until(completed, timeout_s=30)
    assert (await handle.result())["applied"] == 1


async def test_cancel_of_unknown_task_is_404(lab):
    status, reply = await post(lab.settings, "locked", task_call("task/cancel", new_id("nobody")))
    assert status == 404 and reply["error"]["code"] == -32602
