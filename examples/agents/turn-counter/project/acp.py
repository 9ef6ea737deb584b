"""A multi-turn chat agent in the style of Agentex's async base tutorials: on task/create it
stores a system message and turn_number 0 in adk.state; on each event it reads the state, counts
the turn, appends the user's message, asks the model (litellm, through adk.providers), appends
the answer, sends both as task messages and writes the state back. Like the tutorials it warns
that parallel events race: two messages of one task at once read the same state, and one turn
(its messages and its count) is lost."""
from typing import List

from agentex.lib import adk
from agentex.lib.sdk.fastacp.fastacp import FastACP
from agentex.lib.types.acp import CancelTaskParams, CreateTaskParams, SendEventParams
from agentex.lib.types.fastacp import AsyncACPConfig
from agentex.lib.types.llm_messages import AssistantMessage, LLMConfig, Message, SystemMessage, UserMessage
from agentex.lib.utils.model_utils import BaseModel
from agentex.types.text_content import TextContent

# !!! async base ACPs are fully asynchronous: parallel events of one task race (Agentex's warning)
acp = FastACP.create(acp_type="async", config=AsyncACPConfig(type="base"))


class StateModel(BaseModel):
    messages: List[Message]
    turn_number: int


@acp.on_task_create
async def handle_task_create(params: CreateTaskParams):
    state = StateModel(messages=[SystemMessage(content="You are a helpful assistant.")], turn_number=0)
    await adk.state.create(task_id=params.task.id, agent_id=params.agent.id, state=state)


@acp.on_task_event_send
async def handle_event_send(params: SendEventParams):
    if not params.event.content or params.event.content.type != "text":
        return
    task_state = await adk.state.get_by_task_and_agent(task_id=params.task.id, agent_id=params.agent.id)
    if not task_state:
        raise ValueError("Task state not found - ensure task was properly initialized")
    state = StateModel.model_validate(task_state.state)
    state.turn_number += 1
    state.messages.append(UserMessage(content=params.event.content.content))

    # echo the user's message to the task's message stream
    await adk.messages.create(task_id=params.task.id, content=params.event.content)

    completion = await adk.providers.litellm.chat_completion(
        llm_config=LLMConfig(model="gpt-4o-mini", messages=state.messages))
    answer = completion.choices[0].message.content or "" if completion.choices[0].message else ""
    state.messages.append(AssistantMessage(content=answer))
    await adk.messages.create(task_id=params.task.id, content=TextContent(author="agent", content=answer))

    await adk.state.update(state_id=task_state.id, task_id=params.task.id, agent_id=params.agent.id, state=state)


@acp.on_task_cancel
async def handle_task_cancel(params: CancelTaskParams):
    pass
