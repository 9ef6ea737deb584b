"""locked across two pods: an event acked while another pod holds the task's lock is drained by
that holder, which finds the ask after it lets go of the lock (real PostgreSQL and Redis of the
lab; two Locked variants in this process stand for two pods)."""
from __future__ import annotations

import asyncio
import dataclasses

from racelab import db
from racelab.model import Model
from racelab.protocol import Event
from racelab.variants import PodContext
from racelab.variants.locked import Locked

from helpers import new_id

AGENT = "agent-handoff"


def event(task_id: str, n: int) -> Event:
    return Event(agent_id=AGENT, task_id=task_id, task_params={}, event_id=new_id(f"e{n}"), sequence_id=n,
                 content={"type": "text", "author": "user", "content": f"message {n}"})


async def pod(settings, pool, name: str, model_ms: float) -> Locked:
    # no sweeper wake-ups during the test: only the two drains below may process anything
    ctx = PodContext(settings=dataclasses.replace(settings, sweep_interval_s=600.0), pool=pool, pod_name=name,
                     model=Model(model_ms, 0.0))
    variant = Locked(ctx)
    await variant.start()
    return variant


async def test_an_event_acked_while_another_pod_holds_the_lock_is_drained_by_the_holder(lab):
    task = new_id("handoff")
    key = (task, AGENT, AGENT)
    async with await db.create_pool(lab.settings.pg_dsn) as pool:
        holder, other = await pod(lab.settings, pool, "pod-a", 400.0), await pod(lab.settings, pool, "pod-b", 400.0)
        held = {"pod-a": 0, "pod-b": 0}
        for variant in (holder, other):
            inner = variant._drain_holding

            async def counted(*args, _inner=inner, _name=variant.ctx.pod_name):
                held[_name] += 1
                return await _inner(*args)
            variant._drain_holding = counted
        try:
            first, second = event(task, 1), event(task, 2)
            assert await db.record_event(pool, "locked", first) is True
            holder.wake(key)
            await asyncio.sleep(0.15)  # pod-a holds the lock, in its model call for the first event
            assert await db.record_event(pool, "locked", second) is True
            other.wake(key)  # asks; the lock is taken: the ask is left to pod-a
            for _ in range(100):
                state = await db.read_state(pool, "locked", task, AGENT)
                if state and len(state["state"]["history"]) == 2 and not holder._drainers and not other._drainers:
                    break
                await asyncio.sleep(0.05)
            assert state["state"]["history"] == [first.event_id, second.event_id]
            assert state["state"]["processing_count"] == 2
            # pod-a drained twice (its own event, then the ask it found after letting go); pod-b never
            # held the lock, and one model call served each event
            assert held == {"pod-a": 2, "pod-b": 0}
            assert await pool.fetchval("SELECT count(*) FROM effects WHERE task_id = $1", task) == 2
            assert await lab_redis_has_no_ask(holder, task)
        finally:
            await holder.stop()
            await other.stop()


async def lab_redis_has_no_ask(variant: Locked, task: str) -> bool:
    return not await variant.redis.exists(f"racelab:ask:{task}:{AGENT}")
