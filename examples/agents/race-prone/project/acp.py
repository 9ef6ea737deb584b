"""The seed's race-prone handler ("What Happens with Race Conditions"), as a real agentex-sdk
async base agent: read the state, call the model, write the whole state back. Two events of one
task handled at once (on one replica or on two) read the same state; one update is lost.

Beside the seed's processing_count it appends the event id to a history, so racelab.toml can
declare both (which events were lost, not only how many)."""
from openai import AsyncOpenAI

from agentex.lib import adk
from agentex.lib.sdk.fastacp.fastacp import FastACP
from agentex.lib.types.acp import CancelTaskParams, CreateTaskParams, SendEventParams
from agentex.lib.types.fastacp import AsyncACPConfig

acp = FastACP.create(acp_type="async", config=AsyncACPConfig(type="base"))
model = AsyncOpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY from the environment (the lab's model stub)


@acp.on_task_create
async def handle_task_create(params: CreateTaskParams):
    await adk.state.create(task_id=params.task.id, agent_id=params.agent.id,
                           state={"processing_count": 0, "history": []})


@acp.on_task_event_send
async def handle_event_send(params: SendEventParams):
    # 🚨 RACE CONDITION: two events arrive at the same time; both read the same state
    state = await adk.state.get_by_task_and_agent(task_id=params.task.id, agent_id=params.agent.id)

    # both process their events (the model call is what keeps the race window open)
    await model.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": params.event.content.content}])
    processing_count = state.state.get("processing_count", 0)
    new_count = processing_count + 1

    # both write the state back: the last writer wins, the other update is lost
    state.state["processing_count"] = new_count
    state.state["history"] = list(state.state.get("history", [])) + [params.event.id]
    await adk.state.update(state_id=state.id, task_id=params.task.id, agent_id=params.agent.id,
                           state=state.state)


@acp.on_task_cancel
async def handle_task_cancel(params: CancelTaskParams):
    pass
