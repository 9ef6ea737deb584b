"""temporal: one workflow per task (id = task id), but a task's events may come from several
agents; each agent's events are applied to that agent's state, none to another's."""
import asyncio

from racelab.clients.burst import event_send
from helpers import counts_for, get_state, new_id, post


def from_agent(task_id: str, event_id: str, seq: int, agent_id: str) -> dict:
    body = event_send(task_id, event_id, seq, f"{agent_id} says {seq}")
    body["params"]["agent"] = {"id": agent_id, "name": agent_id, "acp_type": "async"}
    body["params"]["task"]["agent_id"] = agent_id
    body["params"]["event"]["agent_id"] = agent_id
    return body


async def test_two_agents_on_one_task_keep_their_own_states(lab):
    task = new_id("two-agents")
    sends = [from_agent(task, f"{task}-{a}-{i}", i + 1, a) for a in ("agent-a", "agent-b") for i in range(8)]
    replies = await asyncio.gather(*(post(lab.settings, "temporal", body) for body in sends))
    assert [r[0] for r in replies] == [200] * 16
    c = (await counts_for(lab.settings, task))["temporal"]
    assert (c.tasks, c.accepted, c.applied, c.lost, c.phantoms, c.duplicates, c.counter_drift) == (2, 16, 16, 0, 0, 0, 0)
    for agent in ("agent-a", "agent-b"):
        status, body = await get_state(lab.settings, "temporal", task, agent)
        assert status == 200
        assert sorted(body["state"]["history"]) == sorted(f"{task}-{agent}-{i}" for i in range(8))
