"""The seed's cursor batch handler ("Using Agent Task Tracker cursors for safe processing"),
exactly as the seed prints it, as a real agentex-sdk async base agent. Two calls differ from the
seed's text because the SDK's signatures differ (marked "SDK:" below); the logic is the seed's.

Handlers triggered together read the same cursor, list the same events, process them twice and
overwrite each other's state writes: the seed's "reduces race conditions but doesn't eliminate
them", measured."""
from openai import AsyncOpenAI

from agentex.lib import adk
from agentex.lib.sdk.fastacp.fastacp import FastACP
from agentex.lib.types.acp import CancelTaskParams, CreateTaskParams, SendEventParams
from agentex.lib.types.fastacp import AsyncACPConfig

acp = FastACP.create(acp_type="async", config=AsyncACPConfig(type="base"))
model = AsyncOpenAI()


async def process_event(event) -> str:
    """The seed leaves process_event to the reader: here, one model call per event."""
    await model.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": event.content.content}])
    return event.id


@acp.on_task_create
async def handle_task_create(params: CreateTaskParams):
    await adk.state.create(task_id=params.task.id, agent_id=params.agent.id, state={"processing_count": 0})


@acp.on_task_event_send
async def handle_event_send_with_cursor(params: SendEventParams):
    # ✅ CURSOR-BASED COORDINATION: Use Agent Task Tracker to track progress

    # Get current processing position
    tracker = await adk.agent_task_tracker.get_by_task_and_agent(
        task_id=params.task.id,
        agent_id=params.agent.id
    )

    # Get unprocessed events since last cursor (batch processing)
    unprocessed_events = await adk.events.list_events(
        task_id=params.task.id,
        agent_id=params.agent.id,
        last_processed_event_id=tracker.last_processed_event_id,
        limit=10  # Process batches of 10
    )

    if not unprocessed_events:
        return  # No new events to process

    # ✅ RACE CONDITION REDUCTION: Process events in batches
    # instead of individual concurrent handlers

    # Process all events in the batch atomically
    results = []
    for event in unprocessed_events:
        result = await process_event(event)
        results.append(result)

    # Update state with all results at once
    state = await adk.state.get_by_task_and_agent(
        task_id=params.task.id,
        agent_id=params.agent.id
    )

    # Atomic state update with all changes
    state.state["processing_count"] = state.state.get("processing_count", 0) + len(results)
    state.state["last_batch_results"] = results

    # SDK: adk.state.update also takes task_id and agent_id (the seed passes state_id and state only)
    await adk.state.update(state_id=state.id, task_id=params.task.id, agent_id=params.agent.id,
                           state=state.state)

    # ✅ CRITICAL: Update cursor ONLY after processing is complete
    # SDK: the fields are keyword arguments (the seed wraps them in UpdateAgentTaskTrackerRequest)
    await adk.agent_task_tracker.update(
        tracker_id=tracker.id,
        last_processed_event_id=unprocessed_events[-1].id,
        status_reason=f"Processed batch of {len(unprocessed_events)} events"
    )


@acp.on_task_cancel
async def handle_task_cancel(params: CancelTaskParams):
    pass
