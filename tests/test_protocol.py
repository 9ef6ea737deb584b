"""JSON-RPC parsing and validation (pure logic, no lab)."""
import json

import pytest

from racelab import protocol
from racelab.clients.burst import event_send
from racelab.protocol import RpcError


def parse(doc) -> protocol.Event:
    return protocol.parse_event_send(protocol.parse_envelope(json.dumps(doc).encode()))


def test_full_agentex_shape_is_accepted_with_extra_fields():
    doc = event_send("task-1", "ev-1", 17, "hello")
    doc["params"]["agent"]["description"] = "extra fields are fine"
    doc["params"]["task"]["status"] = "RUNNING"
    doc["params"]["event"]["content"]["attachments"] = []
    event = parse(doc)
    assert (event.task_id, event.agent_id, event.event_id, event.sequence_id) == ("task-1", "racelab-agent", "ev-1", 17)
    assert event.content["content"] == "hello"


@pytest.mark.parametrize("mutate, code", [
    (lambda d: d.pop("jsonrpc"), protocol.INVALID_REQUEST),
    (lambda d: d.update(method="event/unknown"), protocol.METHOD_NOT_FOUND),
    (lambda d: d.update(params=[1, 2]), protocol.INVALID_PARAMS),
    (lambda d: d["params"]["event"].pop("id"), protocol.INVALID_PARAMS),
    (lambda d: d["params"]["event"].update(id=12), protocol.INVALID_PARAMS),
    (lambda d: d["params"]["event"].update(content="text"), protocol.INVALID_PARAMS),
    (lambda d: d["params"]["event"].update(sequence_id="17"), protocol.INVALID_PARAMS),
    (lambda d: d["params"]["event"].update(sequence_id=True), protocol.INVALID_PARAMS),
    (lambda d: d["params"]["event"].update(task_id="another-task"), protocol.INVALID_PARAMS),
    (lambda d: d["params"]["task"].update(id=""), protocol.INVALID_PARAMS),
    (lambda d: d["params"]["agent"].update(id="x" * 300), protocol.INVALID_PARAMS),
    (lambda d: d.update(id={"not": "scalar"}), protocol.INVALID_REQUEST),
], ids=["no jsonrpc", "unknown method", "params array", "no event.id", "event.id number", "content string",
        "sequence_id string", "sequence_id bool", "event.task_id differs", "empty task.id", "agent.id too long",
        "rpc id object"])
def test_invalid_requests_get_the_standard_code(mutate, code):
    doc = event_send("task-1", "ev-1", 1, "hi")
    mutate(doc)
    with pytest.raises(RpcError) as err:
        parse(doc)
    assert err.value.code == code
    assert 400 <= err.value.http_status < 500


def test_parse_error_and_batches():
    with pytest.raises(RpcError) as err:
        protocol.parse_envelope(b'{"jsonrpc": "2.0",')
    assert err.value.code == protocol.PARSE_ERROR
    with pytest.raises(RpcError) as err:
        protocol.parse_envelope(b"[]")
    assert err.value.code == protocol.INVALID_REQUEST
