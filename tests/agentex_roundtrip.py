"""Round-trip every endpoint of racelab's Agentex-compatible API through agentex-sdk's own
generated client (agentex.AsyncAgentex), so every response parses with the SDK's types.

Runs in the agent's virtualenv (Python >= 3.12, agentex-sdk), never racelab's:
    <agent venv>/bin/python tests/agentex_roundtrip.py <API base URL> <gateway URL>
It sends one event through the lab's ACP front (<gateway>/agent/api) first, so there is a task,
a tracker and an event to read back. Prints "roundtrip ok" and exits 0, or fails an assert.
"""
from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
import uuid


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def event_send(gateway: str, task_id: str, agent_id: str, text: str) -> str:
    event_id = str(uuid.uuid4())
    reply = post_json(f"{gateway}/agent/api", {
        "jsonrpc": "2.0", "id": f"event/send-{task_id}", "method": "event/send",
        "params": {"agent": {"id": agent_id, "name": agent_id, "acp_type": "async"}, "task": {"id": task_id},
                   "event": {"id": event_id, "task_id": task_id, "agent_id": agent_id,
                             "content": {"type": "text", "author": "user", "content": text}}}})
    assert reply.get("result") == {"status": "processing"}, reply
    return event_id


async def main(base_url: str, gateway: str) -> None:
    import httpx
    from agentex import AsyncAgentex, BadRequestError, ConflictError, NotFoundError
    from agentex.lib.core.compat.version_guard import assert_backend_compatible
    from agentex.types import AgentTaskTracker, Event, State, TaskMessage
    from agentex.types.agent import Agent

    await assert_backend_compatible(base_url)  # the SDK's own start-up check (/openapi.json)
    client = AsyncAgentex(base_url=base_url)
    task_id, agent_id = f"roundtrip-{uuid.uuid4().hex[:8]}", "roundtrip-agent"

    # register (the SDK posts a plain dict, and reads id, name, agent_api_key), idempotent by name
    async with httpx.AsyncClient() as http:
        first = (await http.post(f"{base_url}/agents/register", json={
            "name": "roundtrip-agent", "description": "d", "acp_url": "http://127.0.0.1:1", "acp_type": "async"})).json()
        again = (await http.post(f"{base_url}/agents/register", json={
            "name": "roundtrip-agent", "description": "d2", "acp_url": "http://127.0.0.1:2", "acp_type": "async"})).json()
    assert first["id"] == again["id"] and first["agent_api_key"] == again["agent_api_key"]
    Agent.model_validate(again)
    assert (await client.agents.retrieve(first["id"])).description == "d2"

    # two events through the gateway: the task, its tracker and the events exist then
    e1 = event_send(gateway, task_id, agent_id, f"roundtrip one {task_id}")
    e2 = event_send(gateway, task_id, agent_id, f"roundtrip two {task_id}")
    task = await client.tasks.retrieve(task_id)
    assert task.id == task_id and task.status == "RUNNING"

    # events: ordered by sequence_id, after a cursor, limited
    events = await client.events.list(task_id=task_id, agent_id=agent_id)
    assert [e.id for e in events] == [e1, e2] and all(isinstance(e, Event) for e in events)
    assert events[0].sequence_id < events[1].sequence_id and events[0].content.content.startswith("roundtrip one")
    assert [e.id for e in await client.events.list(task_id=task_id, agent_id=agent_id,
                                                   last_processed_event_id=e1)] == [e2]
    assert len(await client.events.list(task_id=task_id, agent_id=agent_id, limit=1)) == 1
    assert (await client.events.retrieve(e2)).id == e2

    # states: create, list, retrieve, full overwrite (no version check), delete (under another agent
    # id: the agent's own on_task_create may have made the task's state for agent_id already)
    other = "roundtrip-other-agent"
    state = await client.states.create(task_id=task_id, agent_id=other, state={"n": 1, "keep": True})
    assert isinstance(state, State) and state.state == {"n": 1, "keep": True}
    listed = await client.states.list(task_id=task_id, agent_id=other)
    assert [s.id for s in listed] == [state.id]
    try:
        await client.states.create(task_id=task_id, agent_id=other, state={})
        raise AssertionError("a second state for one (task, agent) was created")
    except ConflictError:
        pass
    updated = await client.states.update(state.id, state={"n": 2}, extra_body={"task_id": task_id, "agent_id": other})
    assert updated.state == {"n": 2}, "PUT replaces the whole state"
    assert (await client.states.retrieve(state.id)).state == {"n": 2}

    # tracker: created with the task; null cursor leaves it, status always overwritten, no going back
    trackers = await client.tracker.list(task_id=task_id, agent_id=agent_id)
    assert len(trackers) == 1 and isinstance(trackers[0], AgentTaskTracker)
    tracker = trackers[0]
    assert tracker.last_processed_event_id is None
    t = await client.tracker.update(tracker.id, last_processed_event_id=e2, status="PROCESSING", status_reason="batch")
    assert (t.last_processed_event_id, t.status, t.status_reason) == (e2, "PROCESSING", "batch")
    t = await client.tracker.update(tracker.id, status_reason="only reason")
    assert (t.last_processed_event_id, t.status, t.status_reason) == (e2, None, "only reason")
    try:
        await client.tracker.update(tracker.id, last_processed_event_id=e1)
        raise AssertionError("a backwards cursor move was accepted")
    except BadRequestError:
        pass
    try:
        await client.tracker.update(tracker.id, last_processed_event_id="no-such-event")
        raise AssertionError("an unknown event was accepted as cursor")
    except BadRequestError:
        pass
    assert (await client.tracker.retrieve(tracker.id)).last_processed_event_id == e2

    # messages: create, streaming update, retrieve, list
    message = await client.messages.create(task_id=task_id, content={"type": "text", "author": "agent", "content": "hi"},
                                           streaming_status="IN_PROGRESS")
    assert isinstance(message, TaskMessage) and message.streaming_status == "IN_PROGRESS"
    done = await client.messages.update(message.id, task_id=task_id, streaming_status="DONE",
                                        content={"type": "text", "author": "agent", "content": "hi there"})
    assert done.streaming_status == "DONE" and done.content.content == "hi there"
    assert (await client.messages.retrieve(message.id)).content.content == "hi there"
    assert message.id in [m.id for m in await client.messages.list(task_id=task_id)]

    await client.states.delete(state.id)
    try:
        await client.states.retrieve(state.id)
        raise AssertionError("a deleted state was found")
    except NotFoundError:
        pass
    print("roundtrip ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/")))
