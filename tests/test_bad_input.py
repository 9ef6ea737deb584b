"""Bad input to /api gets a JSON-RPC error with the right code and a 4xx, records nothing, and the
pod keeps serving."""
import json

import aiohttp
import pytest

from racelab.clients.burst import AGENT, event_send
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


def raw_valid(old: str, new: str) -> bytes:
    """A valid request's bytes (UTF-8, nothing escaped) with one piece of text replaced."""
    raw = json.dumps(valid(), ensure_ascii=False).encode()
    assert old.encode() in raw
    return raw.replace(old.encode(), new.encode() if isinstance(new, str) else new, 1)


def with_content(**extra):
    d = valid()
    d["params"]["event"]["content"].update(extra)
    return d


def nested(levels: int):
    value = "leaf"
    for _ in range(levels):
        value = [value]
    return value


def with_event(**fields):
    d = valid()
    d["params"]["event"].update(fields)
    return d


def with_agent_id(agent_id: str):
    d = valid()
    d["params"]["agent"]["id"] = d["params"]["task"]["agent_id"] = d["params"]["event"]["agent_id"] = agent_id
    return d


def task_create(task_id: str):
    return {"jsonrpc": "2.0", "id": 1, "method": "task/create",
            "params": {"agent": dict(AGENT), "task": {"id": task_id, "agent_id": AGENT["id"]}}}


# issue 9: what used to answer 500 (or could), and what each gets now: the status and JSON-RPC code.
# -32700: not UTF-8 / not JSON (NaN, Infinity); -32600: nesting, or a bad value outside "params";
# -32602: a bad value inside "params".
CASES.update({
    "nested 100 levels": dict(body=with_content(deep=nested(100)), code=-32600, status=400),
    "nested 100000 levels": dict(raw=raw_valid('"hi"', "[" * 100_000 + "]" * 100_000), code=-32600, status=400),
    "NUL in content": dict(body=with_content(content="a\x00b"), code=-32602, status=400),
    "NUL in a key": dict(body=with_content(**{"k\x00": 1}), code=-32602, status=400),
    "NUL in event.id": dict(body=with_event(id="bad-input-event\x00"), code=-32602, status=400),
    "NUL in task.id": dict(raw=raw_valid('"id": "bad-input-task"', '"id": "bad-input-task\\u0000"'),
                           code=-32602, status=400),
    "NUL in the JSON-RPC id": dict(body=dict(valid(), id="x\x00"), code=-32600, status=400),
    "lone surrogate in content": dict(raw=raw_valid('"hi"', '"\\ud800"'), code=-32602, status=400),
    "lone surrogate in agent.id": dict(raw=raw_valid('"id": "racelab-agent", "name"', '"id": "\\udfff", "name"'), code=-32602, status=400),
    "lone low surrogate in a key": dict(raw=raw_valid('"author"', '"\\udc80"'), code=-32602, status=400),
    "invalid UTF-8": dict(raw=raw_valid('"hi"', b'"\xff\xfe hi"'), code=-32700, status=400),
    "UTF-8 encoded surrogate": dict(raw=raw_valid('"hi"', b'"\xed\xa0\x80"'), code=-32700, status=400),
    "overlong UTF-8": dict(raw=raw_valid('"hi"', b'"\xc0\xaf"'), code=-32700, status=400),
    "UTF-16 body": dict(raw=json.dumps(valid()).encode("utf-16"), code=-32700, status=400),
    "5000-digit integer": dict(raw=raw_valid('"hi"', "9" * 5000), code=-32602, status=400),
    "1e999": dict(raw=raw_valid('"hi"', "1e999"), code=-32602, status=400),
    "-1e999 outside params": dict(raw=raw_valid('"jsonrpc"', '"pad": -1e999, "jsonrpc"'), code=-32600, status=400),
    "NaN": dict(raw=raw_valid('"hi"', "NaN"), code=-32700, status=400),
    "Infinity": dict(raw=raw_valid('"hi"', "-Infinity"), code=-32700, status=400),
    "sequence_id beyond 64 bits": dict(raw=raw_valid('"sequence_id": 1', '"sequence_id": ' + str(2 ** 70)),
                                       code=-32602, status=400),
    "sequence_id 1e30": dict(raw=raw_valid('"sequence_id": 1', '"sequence_id": 1e30'), code=-32602, status=400),
    "duplicate keys": dict(raw=raw_valid('"type": "text"', '"type": "text", "type": "image"'), code=-32602, status=400),
    "duplicate event.id": dict(raw=raw_valid('"id": "bad-input-event"', '"id": "bad-input-event", "id": "other"'),
                               code=-32602, status=400),
    "event.id of 257 characters": dict(body=with_event(id="e" * 257), code=-32602, status=400),
    # under 256 characters, over 768 bytes of UTF-8: Temporal refuses a workflow id over 1,000 bytes,
    # and the temporal variant acked such a task id, then never applied it
    "task.id of 193 emoji (772 bytes)": dict(body=valid(task="\U0001F600" * 193), code=-32602, status=400),
    "agent.id of 193 emoji (772 bytes)": dict(body=with_agent_id("\U0001F600" * 193), code=-32602, status=400),
    "event.id of 193 emoji (772 bytes)": dict(body=with_event(id="\U0001F600" * 193), code=-32602, status=400),
    # a dot segment: nginx resolves it before it routes (GET /locked/tasks/..%2F../state asked for /state)
    "task.id '..'": dict(body=valid(task=".."), code=-32602, status=400),
    "task.id '.'": dict(body=valid(task="."), code=-32602, status=400),
    "task.id 'a/../../b'": dict(body=valid(task="a/../../b"), code=-32602, status=400),
    # (temporal: refused by Temporal after the task's row was written, which stayed)
    "task/create with a task.id of 193 emoji": dict(body=task_create("\U0001F600" * 193), code=-32602, status=400),
    "blank task.id": dict(raw=raw_valid('"id": "bad-input-task"', '"id": "  "'), code=-32602, status=400),
    "content 2.4 MB escaped (emoji)": dict(raw=raw_valid('"hi"', '"' + "\U0001F600" * 200_000 + '"'),
                                          code=-32602, status=400),
    "knob of the wrong type": dict(raw=raw_valid('"agent_id": "racelab-agent"}', '"agent_id": "racelab-agent", '
                                                 '"params": {"continue_as_new_after": "abc"}}'), code=-32602, status=400),
    "shared_state knob not a boolean": dict(raw=raw_valid('"agent_id": "racelab-agent"}', '"agent_id": "racelab-agent", '
                                                          '"params": {"shared_state": 1}}'), code=-32602, status=400),
    "BOM before the body": dict(raw=b"\xef\xbb\xbf" + json.dumps(valid()).encode(), code=-32700, status=400),
    "empty body": dict(raw=b"", code=-32700, status=400),
})


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


@pytest.mark.parametrize("variant", ["unguarded", "locked", "temporal"])
async def test_long_values_within_the_limits_are_accepted(lab, variant):
    """A 300 KB string and a 100 KB key, 530,000 letters, 100,000 emoji (a 400-KB body, 1.2 MB as
    JSON with non-ASCII escaped: refused while the limit was 512 KiB) are valid JSON that every store
    holds: accepted, recorded."""
    for content in ({"content": "x" * 300_000, "k" * 100_000: "v"}, {"content": "x" * 530_000},
                    {"content": "\U0001F642" * 100_000}):
        task = new_id("long-values")
        body = valid(task, new_id("ev"))
        body["params"]["event"]["content"].update(content)
        status, reply = await post(lab.settings, variant, None, raw=json.dumps(body, ensure_ascii=False).encode())
        assert status == 200 and reply["result"] == {"status": "processing"}, reply
        assert (await table_counts(lab.settings, task))["events"] == 1


async def get_raw(url: str):
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:  # the URL is sent as given (already percent-encoded)
            try:
                return resp.status, resp.headers.get("Content-Type", ""), await resp.json(content_type=None)
            except ValueError:
                return resp.status, resp.headers.get("Content-Type", ""), None


STATE_CASES = {  # path and query after /tasks/ -> (status, JSON-RPC code)
    "NUL in agent_id": ("t/state?agent_id=a%00b", 400, -32602),
    "no agent_id": ("t/state", 400, -32602),
    "empty agent_id": ("t/state?agent_id=", 400, -32602),
    "agent_id of 257 characters": ("t/state?agent_id=" + "a" * 257, 400, -32602),
    "task id of 257 characters": ("t" * 257 + "/state?agent_id=a", 400, -32602),
    "task id of 193 emoji (772 bytes)": ("%F0%9F%98%80" * 193 + "/state?agent_id=a", 400, -32602),
    "NUL in task id": ("a%00b/state?agent_id=a", 400, -32602),
    "invalid UTF-8 in task id": ("a%FF%FEb/state?agent_id=a", 404, -32602),
    "UTF-8 surrogate in agent_id": ("t/state?agent_id=%ED%A0%80", 404, -32602),
    "slash in task id": ("a%2Fb/state?agent_id=a", 404, -32602),
    "unknown task": ("never-seen-task/state?agent_id=a", 404, -32602),
}


@pytest.mark.parametrize("variant", ["unguarded", "locked", "temporal"])
@pytest.mark.parametrize("case", sorted(STATE_CASES))
async def test_state_endpoint_refuses_bad_ids(lab, variant, case):
    """The pod answers a JSON-RPC error object with a 4xx; through the gateway the status is 4xx too
    (nginx itself refuses a NUL in the path, with its own page)."""
    tail, want_status, want_code = STATE_CASES[case]
    port = lab.settings.pod_port(variant, 1)
    status, ctype, body = await get_raw(f"http://{lab.settings.host}:{port}/tasks/{tail}")
    assert (status, body["error"]["code"]) == (want_status, want_code), body
    assert ctype.startswith("application/json") and body["jsonrpc"] == "2.0" and body["error"]["message"]
    status, _, _ = await get_raw(f"{lab.settings.gateway_url}/{variant}/tasks/{tail}")
    assert 400 <= status < 500
