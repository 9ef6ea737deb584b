"""The Agentex-compatible API (racelab.agentex.api) and the model stub (racelab.modelstub), in
process, on the session lab's PostgreSQL, with a fake agent that records what it is sent. The
real SDK's round trip and the real agents run in `make test-agent` (tests/test_agent_examples.py)."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from racelab import db
from racelab.agentex.api import build_app
from racelab.modelstub.app import REPLY, build_app as build_stub


@pytest.fixture
async def stack(lab, tmp_path):
    calls: list[tuple[dict, dict]] = []
    mode = {"fail": False}

    async def fake_agent(request: web.Request) -> web.Response:
        body = await request.json()
        calls.append((body, dict(request.headers)))
        if mode["fail"]:
            return web.json_response({"detail": "down"}, status=502)
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"status": "processing"}})

    agent_app = web.Application()
    agent_app.router.add_post("/api", fake_agent)
    pool = await db.create_pool(lab.settings.pg_dsn)
    (tmp_path / "racelab.toml").write_text('[invariant]\ncounter = "n"\nlist = "h"\n')
    settings = lab.settings.__class__(**{**lab.settings.__dict__, "agent_path": str(tmp_path),
                                         "model_latency_ms": 1.0, "model_jitter_ms": 0.0})
    async with TestServer(agent_app) as agent, \
            TestServer(build_app(settings, str(agent.make_url("")), "fake-agent", pool=pool, create_wait_s=0.2)) as api, \
            TestServer(build_stub(settings, pool=pool)) as stub, aiohttp.ClientSession() as http:
        yield {"api": str(api.make_url("")).rstrip("/"), "stub": str(stub.make_url("")).rstrip("/"), "http": http,
               "calls": calls, "mode": mode, "pool": pool}
    await pool.close()


def send(task_id: str, event_id: str, text: str) -> dict:
    return {"jsonrpc": "2.0", "id": f"event/send-{task_id}", "method": "event/send",
            "params": {"agent": {"id": "ag"}, "task": {"id": task_id},
                       "event": {"id": event_id, "content": {"type": "text", "author": "user", "content": text}}}}


async def test_event_send_records_then_forwards_as_agentex_does(stack):
    http, api, calls = stack["http"], stack["api"], stack["calls"]
    reg = await (await http.post(f"{api}/agents/register", json={"name": "fake-agent", "acp_url": "http://x:1"})).json()
    again = await (await http.post(f"{api}/agents/register", json={"name": "fake-agent", "acp_url": "http://x:2"})).json()
    assert reg["id"] == again["id"] and reg["agent_api_key"] == again["agent_api_key"]
    assert (await (await http.get(f"{api}/openapi.json")).json())["info"]["version"] == "0.1.0"
    task, e1 = f"api-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    for _ in range(2):  # a redelivery is forwarded again, recorded once
        resp = await http.post(f"{api}/acp/api", json=send(task, e1, f"hello {task}"))
        assert resp.status == 200 and (await resp.json())["result"] == {"status": "processing"}
    assert [c[0]["method"] for c in calls] == ["task/create", "event/send", "event/send"]
    body, headers = calls[1]
    assert body["id"] == f"event/send-{task}" and headers["x-agent-api-key"] == reg["agent_api_key"]
    event = body["params"]["event"]
    assert (event["id"], event["task_id"], event["agent_id"]) == (e1, task, "ag")
    assert body["params"]["agent"]["name"] == "fake-agent" and body["params"]["agent"]["id"] == "ag"
    assert await stack["pool"].fetchval("SELECT count(*) FROM events WHERE variant = 'agent' AND task_id = $1", task) == 1
    stack["mode"]["fail"] = True  # the agent refuses: 503 with Retry-After, the event stays logged
    resp = await http.post(f"{api}/acp/api", json=send(task, str(uuid.uuid4()), "x"))
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"


async def test_states_tracker_events_semantics(stack):
    http, api = stack["http"], stack["api"]
    task = f"api-{uuid.uuid4().hex[:8]}"
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for i, e in enumerate(ids):
        assert (await http.post(f"{api}/acp/api", json=send(task, e, f"m{i} {task}"))).status == 200
    events = await (await http.get(f"{api}/events", params={"task_id": task, "agent_id": "ag"})).json()
    assert [e["id"] for e in events] == ids and events[0]["sequence_id"] < events[2]["sequence_id"]
    after = await (await http.get(f"{api}/events", params={"task_id": task, "agent_id": "ag",
                                                           "last_processed_event_id": ids[0], "limit": "1"})).json()
    assert [e["id"] for e in after] == ids[1:2]
    state = await (await http.post(f"{api}/states", json={"task_id": task, "agent_id": "ag",
                                                          "state": {"n": 1, "h": [ids[0]], "x": 1}})).json()
    put = await (await http.put(f"{api}/states/{state['id']}", json={"state": {"n": 2, "h": ids[:2]}})).json()
    assert put["state"] == {"n": 2, "h": ids[:2]}  # whole state replaced
    view = await (await http.get(f"{api}/acp/tasks/{task}/state", params={"agent_id": "ag"})).json()
    assert view["state"]["history"] == ids[:2] and view["state"]["processing_count"] == 2
    tracker = (await (await http.get(f"{api}/tracker", params={"task_id": task, "agent_id": "ag"})).json())[0]
    url = f"{api}/tracker/{tracker['id']}"
    t = await (await http.put(url, json={"last_processed_event_id": ids[1], "status": "RUN", "status_reason": "r"})).json()
    assert (t["last_processed_event_id"], t["status"], t["status_reason"]) == (ids[1], "RUN", "r")
    t = await (await http.put(url, json={"last_processed_event_id": None, "status_reason": "s"})).json()
    assert (t["last_processed_event_id"], t["status"], t["status_reason"]) == (ids[1], None, "s")
    back = await http.put(url, json={"last_processed_event_id": ids[0]})
    assert back.status == 400 and "backwards" in (await back.json())["detail"]
    assert (await http.put(url, json={"last_processed_event_id": ids[1]})).status == 200  # same position: fine
    msg = await (await http.post(f"{api}/messages", json={"task_id": task, "streaming_status": "IN_PROGRESS",
                                                          "content": {"type": "text", "author": "agent", "content": "a"}})).json()
    done = await (await http.put(f"{api}/messages/{msg['id']}", json={
        "task_id": task, "streaming_status": "DONE", "content": {"type": "text", "author": "agent", "content": "ab"}})).json()
    assert done["streaming_status"] == "DONE" and done["content"]["content"] == "ab"


async def test_model_stub_records_the_effect_of_the_event_it_served(stack):
    http, api, stub, pool = stack["http"], stack["api"], stack["stub"], stack["pool"]
    task, e1 = f"api-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    await http.post(f"{api}/acp/api", json=send(task, e1, f"question {task}"))
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": f"question {task}"}]
    plain = await (await http.post(f"{stub}/v1/chat/completions", json={"model": "m", "messages": messages})).json()
    assert plain["choices"][0]["message"]["content"] == REPLY
    async with http.post(f"{stub}/v1/chat/completions", json={"model": "m", "messages": messages, "stream": True}) as r:
        lines = [ln for ln in (await r.text()).splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    text = "".join(json.loads(ln[6:])["choices"][0]["delta"].get("content", "") for ln in lines[:-1])
    assert text.strip() == REPLY
    rows = await pool.fetch("SELECT event_id FROM effects WHERE variant = 'agent' AND task_id = $1", task)
    assert [r["event_id"] for r in rows] == [e1, e1]  # two calls for one event: a duplicate side effect
    assert (await http.post(f"{stub}/v1/chat/completions", json={"messages": [{"role": "user", "content": "?"}]})).status == 200


async def test_a_long_event_text_is_recorded_and_attributed(stack):
    """An event text of 12,000 characters that does not compress: the model stub's index on the text
    itself refused it (400, a btree entry holds at most ~2.7 kB) though content up to 512 KiB is
    allowed; its index is on the text's md5, and the stub still finds the event behind a call."""
    http, api, stub, pool = stack["http"], stack["api"], stack["stub"], stack["pool"]
    task, e1 = f"api-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    text = base64.b64encode(os.urandom(9000)).decode()
    resp = await http.post(f"{api}/acp/api", json=send(task, e1, text))
    assert resp.status == 200 and (await resp.json())["result"] == {"status": "processing"}
    messages = [{"role": "user", "content": text}]
    assert (await http.post(f"{stub}/v1/chat/completions", json={"model": "m", "messages": messages})).status == 200
    rows = await pool.fetch("SELECT event_id FROM effects WHERE variant = 'agent' AND task_id = $1", task)
    assert [r["event_id"] for r in rows] == [e1]


SDK_CONTENTS = [  # one of each kind the agentex SDK's TaskMessageContent takes, extra fields and all
    {"type": "text", "author": "user", "content": "hi", "format": "markdown", "attachments": None},
    {"type": "data", "author": "agent", "data": {"k": [1, 2]}},
    {"type": "tool_request", "author": "agent", "tool_call_id": "c1", "name": "f", "arguments": {"x": 1}},
    {"type": "tool_response", "author": "agent", "tool_call_id": "c1", "name": "f", "content": None, "is_error": False},
    {"type": "reasoning", "author": "agent", "summary": ["s"], "content": ["c"]},
    {"author": "user", "content": "no type: text, the SDK's default"},
]
NOT_SDK_CONTENTS = [{}, {"foo": 1}, {"type": "bogus", "author": "user", "content": "x"},
                    {"type": "text", "content": "x"}, {"type": "text", "author": "robot", "content": "x"},
                    {"type": "text", "author": "user", "content": 5}, {"type": "data", "author": "user", "data": [1]},
                    {"type": "tool_request", "author": "agent", "name": "f", "arguments": {}},
                    {"type": "tool_response", "author": "agent", "tool_call_id": "c", "name": "f"},
                    {"type": "reasoning", "author": "agent", "summary": [1]},
                    {"type": ["text"], "author": "user", "content": "x"},  # (a 500 at first: unhashable)
                    {"type": "text", "author": "user", "content": "x", "style": "bogus"}]


async def test_content_the_agents_sdk_would_refuse_is_refused_before_it_is_recorded(stack):
    """It was recorded, forwarded, refused by the agent's SDK, answered 503 (retry forever) and
    counted lost, the agent blamed."""
    http, api, calls, pool = stack["http"], stack["api"], stack["calls"], stack["pool"]
    task = f"api-{uuid.uuid4().hex[:8]}"
    for content in SDK_CONTENTS:
        body = send(task, str(uuid.uuid4()), "x")
        body["params"]["event"]["content"] = content
        resp = await http.post(f"{api}/acp/api", json=body)
        assert resp.status == 200, (content, await resp.text())
    calls.clear()
    for content in NOT_SDK_CONTENTS:
        body = send(task, str(uuid.uuid4()), "x")
        body["params"]["event"]["content"] = content
        resp = await http.post(f"{api}/acp/api", json=body)
        reply = await resp.json()
        assert (resp.status, reply["error"]["code"]) == (400, -32602), (content, reply)
    assert calls == []  # nothing forwarded
    assert await pool.fetchval("SELECT count(*) FROM events WHERE variant = 'agent' AND task_id = $1",
                               task) == len(SDK_CONTENTS)


async def test_every_answer_is_json(stack):
    """aiohttp's text pages ("500 Internal Server Error / Server got itself in trouble", "405:
    Method Not Allowed") for a body a store refuses or a route that is not there: Agentex's
    {"detail": ...} on the REST routes, a JSON-RPC error on the ACP ones."""
    http, api = stack["http"], stack["api"]
    task = f"api-{uuid.uuid4().hex[:8]}"
    assert (await http.post(f"{api}/acp/api", json=send(task, str(uuid.uuid4()), "x"))).status == 200
    rest = [("GET", "/agents?limit=99999999999999999999", None, 422),
            ("POST", "/states", {"task_id": task, "agent_id": "y", "state": {"a": "\u0000"}}, 422),
            ("POST", "/messages", {"task_id": task, "content": {"a": "\u0000"}}, 422),
            ("POST", "/messages/batch", {"task_id": task, "contents": [1, "a", None]}, 422),
            ("POST", "/agents/register", {"name": "zz", "acp_url": 5}, 422),
            ("POST", "/agents/register", {"name": "zz2", "agent_id": {"a": 1}}, 422),
            ("POST", "/spans", {"id": 5}, 422),
            ("GET", "/nosuch", None, 404), ("DELETE", "/agents", None, 405)]
    for method, path, body, status in rest:
        resp = await http.request(method, api + path, json=body)
        assert resp.status == status and "detail" in await resp.json(), (method, path, resp.status, await resp.text())
    for method, path, status in (("GET", "/acp/api", 405), ("PUT", "/acp/api", 405), ("GET", "/acp/nosuch", 404)):
        resp = await http.request(method, api + path)
        reply = await resp.json()
        assert (resp.status, reply["jsonrpc"], reply["error"]["code"]) == (status, "2.0", -32600), (path, reply)


async def test_task_create_after_cancel_says_cancelled(stack):
    """as the lab's pods answer (it said "running" while the task stayed CANCELED)"""
    http, api = stack["http"], stack["api"]
    task = f"api-{uuid.uuid4().hex[:8]}"
    call = {"jsonrpc": "2.0", "id": 1, "params": {"agent": {"id": "ag"}, "task": {"id": task}}}
    assert (await (await http.post(f"{api}/acp/api", json={**call, "method": "task/create"})).json())["result"] == {
        "status": "running"}
    assert (await http.post(f"{api}/acp/api", json={**call, "method": "task/cancel"})).status == 200
    assert (await (await http.post(f"{api}/acp/api", json={**call, "method": "task/create"})).json())["result"] == {
        "status": "cancelled"}


async def test_a_task_whose_creator_died_is_taken_as_created(stack):
    """A pod killed between announcing a task and marking it ready left `ready` false for good:
    every later event of the task waited 33 s. Past the creator's deadline (counted from the
    task's creation), the next delivery marks it ready and goes on."""
    http, api, pool = stack["http"], stack["api"], stack["pool"]
    task = f"api-{uuid.uuid4().hex[:8]}"
    assert (await http.post(f"{api}/acp/api", json=send(task, str(uuid.uuid4()), "x"))).status == 200
    await pool.execute("UPDATE agentex_tasks SET ready = false, created_at = created_at - interval '1 hour' "
                       "WHERE id = $1", task)
    assert (await http.post(f"{api}/acp/api", json=send(task, str(uuid.uuid4()), "y"))).status == 200
    assert await pool.fetchval("SELECT ready FROM agentex_tasks WHERE id = $1", task) is True


async def test_the_agents_state_writes_give_its_events_apply_times(stack, tmp_path, monkeypatch):
    """The agent's own state says nothing of time: the API keeps when each entry of the
    invariant's list first appeared in a state it wrote, and the checker gives the agent's events
    those apply times (the agent had no apply latency; `make load` reported it applying 0/s)."""
    from racelab.checker.counts import compute
    from racelab.checker.read import snapshot
    http, api, pool = stack["http"], stack["api"], stack["pool"]
    monkeypatch.setenv("RACELAB_AGENT", str(tmp_path))  # the checker reads the invariant the API has
    task = f"api-{uuid.uuid4().hex[:8]}"
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for i, e in enumerate(ids):
        assert (await http.post(f"{api}/acp/api", json=send(task, e, f"m{i} {task}"))).status == 200
    state = await (await http.post(f"{api}/states", json={"task_id": task, "agent_id": "ag",
                                                          "state": {"n": 1, "h": ids[:1]}})).json()
    await asyncio.sleep(0.3)
    await http.put(f"{api}/states/{state['id']}", json={"state": {"n": 3, "h": ids}})
    async with pool.acquire() as conn:
        logged, states, effects = await snapshot(conn, task)
    (view,) = [s.state for s in states if s.variant == "agent"]
    assert view["history"] == ids and len(view["applied_at"]) == 3
    assert view["applied_at"][0] < view["applied_at"][1] == view["applied_at"][2]  # one time per write
    c = compute(logged, states, effects)["agent"]
    assert c.applied == 3 and c.apply_latency_p50_ms is not None and c.apply_latency_p50_ms > 0
    endpoint = await (await http.get(f"{api}/acp/tasks/{task}/state", params={"agent_id": "ag"})).json()
    assert endpoint["state"]["applied_at"] == view["applied_at"]  # the state endpoint agrees with the checker
