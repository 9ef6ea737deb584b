"""The seed's "Option 1: Application-Level Locking" as a real agentex-sdk async base agent: a
Redis lock per (task, agent) around read state, model call, write state. Only one handler of a
task runs at a time, across every replica: nothing is lost while each handler finishes within
the lock's timeout. (It does not dedupe: a redelivered event is processed twice.)"""
import os
from contextlib import asynccontextmanager

import redis.asyncio as redis
from openai import AsyncOpenAI

from agentex.lib import adk
from agentex.lib.sdk.fastacp.fastacp import FastACP
from agentex.lib.types.acp import CancelTaskParams, CreateTaskParams, SendEventParams
from agentex.lib.types.fastacp import AsyncACPConfig

acp = FastACP.create(acp_type="async", config=AsyncACPConfig(type="base"))
model = AsyncOpenAI()
redis_client = redis.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379"))


@asynccontextmanager
async def custom_lock(lock_key: str, timeout: float):
    """A Redis lock that expires after `timeout` seconds (the seed's custom_lock)."""
    lock = redis_client.lock(lock_key, timeout=timeout, sleep=0.01, blocking_timeout=300)
    if not await lock.acquire():
        raise TimeoutError(f"could not take {lock_key}")
    try:
        yield
    finally:
        try:
            await lock.release()
        except redis.lock.LockError:  # expired meanwhile: another handler may hold it now
            pass


@acp.on_task_create
async def handle_task_create(params: CreateTaskParams):
    await adk.state.create(task_id=params.task.id, agent_id=params.agent.id,
                           state={"processing_count": 0, "history": []})


@acp.on_task_event_send
async def handle_event_send(params: SendEventParams):
    lock_key = f"task_lock:{params.task.id}:{params.agent.id}"

    async with custom_lock(lock_key, timeout=30):
        # Only one execution can run at a time
        state = await adk.state.get_by_task_and_agent(task_id=params.task.id, agent_id=params.agent.id)
        # ... process safely ...
        await model.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": params.event.content.content}])
        state.state["processing_count"] = state.state.get("processing_count", 0) + 1
        state.state["history"] = list(state.state.get("history", [])) + [params.event.id]
        await adk.state.update(
            state_id=state.id,
            task_id=params.task.id,
            agent_id=params.agent.id,
            state=state.state,
        )


@acp.on_task_cancel
async def handle_task_cancel(params: CancelTaskParams):
    pass
