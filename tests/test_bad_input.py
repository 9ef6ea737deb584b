"""Bad input to /api gets a JSON-RPC error with the right code and a 4xx, records nothing, and the
pod keeps serving."""
import json

import pytest

from racelab.clients.burst import event_send
from helpers import new_id, post, send_event, table_counts


def valid(task="bad-input-task", event="bad-input-event"):
    return event_send(task, event, 1, "hi")


def without_event_id():
    d = valid()
    del d["params"]["event"]["id"]
    return d


def with_wrong_types():
    d = valid()
    d["params"]["event"]["sequence_id"] = "seventeen"
    d["params"]["task"]["id"] = 42
    return d


CASES = {
    "malformed json": dict(raw=b'{"jsonrpc": "2.0", "method": "event/send", "params": {', code=-32700, status=400),
    "not an object": dict(raw=b'"event/send"', code=-32600, status=400),
    "unknown method": dict(body=dict(valid(), method="event/teleport"), code=-32601, status=404),
    "missing event.id": dict(body=without_event_id(), code=-32602, status=400),
    "wrong types": dict(body=with_wrong_types(), code=-32602, status=400),
    "params not an object": dict(body=dict(valid(), params="x"), code=-32602, status=400),
    "2 MiB body": dict(raw=json.dumps(dict(valid(), pad="x" * (2 * 1024 * 1024))).encode(), code=-32600, status=413),
    "wrong content type": dict(raw=json.dumps(valid()).encode(), content_type="text/plain", code=-32600, status=415),
}


@pytest.mark.parametrize("variant", ["unguarded", "locked", "temporal"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_input_is_refused_and_records_nothing(lab, variant, case):
    spec = CASES[case]
    before = await table_counts(lab.settings)
    status, reply = await post(lab.settings, variant, spec.get("body"), raw=spec.get("raw"),
                               content_type=spec.get("content_type", "application/json"))
    assert status == spec["status"]
    assert reply["jsonrpc"] == "2.0" and reply["error"]["code"] == spec["code"]
    assert reply["error"]["message"]
    assert await table_counts(lab.settings) == before
    assert set((await table_counts(lab.settings, "bad-input-task")).values()) == {0}
    # the pod keeps serving
    status, reply = await send_event(lab.settings, variant, new_id("after-bad-input"), new_id("ev"))
    assert status == 200 and reply["result"] == {"status": "processing"}


@pytest.mark.parametrize("variant", ["locked", "temporal"])
async def test_event_id_reused_for_another_task_is_refused(lab, variant):
    event_id = new_id("ev")
    assert (await send_event(lab.settings, variant, new_id("owner"), event_id))[0] == 200
    before = await table_counts(lab.settings)
    status, reply = await send_event(lab.settings, variant, new_id("thief"), event_id)
    assert status == 409 and reply["error"]["code"] == -32602
    assert (await table_counts(lab.settings))["events"] == before["events"]


async def test_state_of_unknown_task_is_404(lab):
    from helpers import get_state
    status, body = await get_state(lab.settings, "locked", new_id("never-seen"))
    assert status == 404 and "error" in body
