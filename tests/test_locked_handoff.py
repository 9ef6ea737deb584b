"""locked across two pods: an event acked while another pod holds the task's lock is drained by
that holder, which keeps the lock for another read; if the holder lets go without serving the ask
(its read failed), the pod that asked drains it itself, without waiting for the sweeper. Real
PostgreSQL and Redis of the lab; two Locked variants in this process stand for two pods."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from racelab import db
from racelab.model import Model
from racelab.protocol import Event
from racelab.variants import PodContext
from racelab.variants.locked import BUSY, KEEP, LOST, RELEASED, SERVED, TAKEN, Locked, redis_keys

from helpers import new_id

AGENT = "agent-handoff"


class TwoPodLocked(Locked):
    name = "locked-handoff"  # not "locked": the lab's own locked pods (their sweepers) never see these tasks
MODEL_MS = 1000.0  # pod-b asks about 0.1 s into pod-a's first batch and looks 0.5 s, 1 s, ... later


def event(task_id: str, n: int) -> Event:
    return Event(agent_id=AGENT, task_id=task_id, task_params={}, event_id=new_id(f"e{n}"), sequence_id=n,
                 content={"type": "text", "author": "user", "content": f"message {n}"})


@contextlib.asynccontextmanager
async def pods(settings, pool, *names: str):
    """Started Locked instances, one per name (a pod each), stopped afterwards."""
    variants = []
    try:
        for name in names:
            # no sweeper wake-ups during the test: only the drains below may process anything
            ctx = PodContext(settings=dataclasses.replace(settings, sweep_interval_s=600.0), pool=pool,
                             pod_name=name, model=Model(MODEL_MS, 0.0))
            variants.append(TwoPodLocked(ctx))
            await variants[-1].start()
        yield variants
    finally:
        for variant in variants:
            await variant.stop()


def count_holds(variants) -> dict[str, int]:
    held = {v.ctx.pod_name: 0 for v in variants}
    for variant in variants:
        inner = variant._hold

        async def counted(*args, _inner=inner, _name=variant.ctx.pod_name):
            held[_name] += 1
            return await _inner(*args)
        variant._hold = counted
    return held


async def two_events_two_pods(pool, holder: Locked, other: Locked, task: str) -> tuple[Event, Event, dict]:
    """pod-a drains the first event (holding the lock in its model call) when the second is acked
    by pod-b; returns when both drains are over (or after 10 s)."""
    key = (task, AGENT, AGENT)
    first, second = event(task, 1), event(task, 2)
    assert await db.record_event(pool, TwoPodLocked.name, first) is True
    holder.wake(key)
    for _ in range(100):  # pod-a holds the lock (then 1 s in its model call for the first event)
        await asyncio.sleep(0.02)
        if await holder.redis.exists(redis_keys(TwoPodLocked.name, task, AGENT)[0]):
            break
    await asyncio.sleep(0.1)  # past its read of the first event
    assert await db.record_event(pool, TwoPodLocked.name, second) is True
    other.wake(key)  # asks; the lock is taken
    for _ in range(200):
        await asyncio.sleep(0.05)
        if not holder._drainers and not other._drainers:
            break
    state = await db.read_state(pool, TwoPodLocked.name, task, AGENT)
    assert state is not None, "nothing was applied"
    return first, second, state["state"]


async def test_an_event_acked_while_another_pod_holds_the_lock_is_drained_by_the_holder(lab):
    task = new_id("handoff")
    async with await db.create_pool(lab.settings.pg_dsn) as pool, \
            pods(lab.settings, pool, "pod-a", "pod-b") as (holder, other):
        held = count_holds((holder, other))
        first, second, state = await two_events_two_pods(pool, holder, other, task)
        assert state["history"] == [first.event_id, second.event_id]
        assert state["processing_count"] == 2
        # pod-a took the lock once: it read its own event, found pod-b's ask when its batch was
        # written and kept the lock for a second read; pod-b never held the lock, and one model
        # call served each event
        assert held == {"pod-a": 1, "pod-b": 0}
        assert await pool.fetchval("SELECT count(*) FROM effects WHERE task_id = $1", task) == 2
        # pod-b acks its event again (as for one acked while it waited): written already, so no
        # ask and no lock; acked without a seq (a re-send, as the pod sees one), it asks and takes
        # the lock to look
        seq = await pool.fetchval("SELECT seq FROM events WHERE event_id = $1", second.event_id)
        asks = redis_keys(TwoPodLocked.name, task, AGENT)[1]
        asked = int(await other.redis.hget(asks, "asked"))
        tried, script = [], other._try

        async def recorded(**kwargs):
            tried.append(await script(**kwargs))
            return tried[-1]
        other._try = recorded
        for ack_seq, holds, outcome in ((seq, 0, [0, SERVED, 0]), (None, 1, [asked + 1, TAKEN, asked + 1])):
            tried.clear()
            other.after_ack(second, ack_seq is not None, 0.0, ack_seq)
            await asyncio.wait_for(other._drainers[(task, AGENT, AGENT)], 5)
            assert tried == [outcome] and not other._wanted
            assert held == {"pod-a": 1, "pod-b": holds}
        assert await pool.fetchval("SELECT count(*) FROM effects WHERE task_id = $1", task) == 2


async def test_an_ask_the_holder_did_not_serve_is_drained_by_the_pod_that_asked(lab):
    task = new_id("handoff-failed")
    async with await db.create_pool(lab.settings.pg_dsn) as pool, \
            pods(lab.settings, pool, "pod-a", "pod-b") as (holder, other):
        held = count_holds((holder, other))
        batches = holder.process_batch
        calls = 0

        async def second_read_fails(*args):
            nonlocal calls
            calls += 1
            if calls == 2:  # pod-a's drain for pod-b's ask: PostgreSQL times out
                raise asyncio.TimeoutError("the read timed out")
            return await batches(*args)
        holder.process_batch = second_read_fails
        first, second, state = await two_events_two_pods(pool, holder, other, task)
        assert state["history"] == [first.event_id, second.event_id]
        assert held == {"pod-a": 1, "pod-b": 1}  # pod-b took the lock once pod-a let go unserved


async def test_the_lock_scripts_serve_asks_only_under_the_holders_own_lock(lab):
    """The Redis steps of a drain, one script each: ask and take, look again, serve and keep or let go."""
    task = new_id("scripts")
    async with await db.create_pool(lab.settings.pg_dsn) as pool, pods(lab.settings, pool, "pod-a") as (v,):
        lock, asks = redis_keys(TwoPodLocked.name, task, AGENT)
        ttl = 60
        try:
            assert await v._try(keys=[lock, asks], args=["a", 3000, 0, ttl]) == [1, TAKEN, 1]
            assert await v._try(keys=[lock, asks], args=["b", 3000, 0, ttl]) == [2, BUSY, 0]  # b asks: a holds it
            # a's batches are written: it serves ask 1 (made before its read) and keeps the lock for b's
            assert await v._finish(keys=[lock, asks], args=["a", 1, 3000, 0, ttl]) == [KEEP, 2]
            assert await v._try(keys=[lock, asks], args=["b", 3000, 2, ttl]) == [2, BUSY, 0]  # not served yet
            # a's lease runs out and c takes the lock: a, writing late, serves nothing
            await v.redis.delete(lock)
            assert await v._try(keys=[lock, asks], args=["c", 3000, 0, ttl]) == [3, TAKEN, 3]
            assert await v._finish(keys=[lock, asks], args=["a", 2, 3000, 0, ttl]) == [LOST, 0]
            assert await v.redis.hget(asks, "served") == b"1"
            # c serves up to 3 and lets go; b, looking again, finds its ask served
            assert await v._finish(keys=[lock, asks], args=["c", 3, 3000, 0, ttl]) == [RELEASED, 3]
            assert await v._try(keys=[lock, asks], args=["b", 3000, 2, ttl]) == [2, SERVED, 0]
            assert not await v.redis.exists(lock)
            # with more events on its own pod (keep = 1), a holder keeps the lock though nothing was asked
            assert await v._try(keys=[lock, asks], args=["d", 3000, 0, ttl]) == [4, TAKEN, 4]
            assert await v._finish(keys=[lock, asks], args=["d", 4, 3000, 1, ttl]) == [KEEP, 4]
            assert await v.redis.get(lock) == b"d"
            # d wrote its batches up to seq 120 and lets go; a stale holder's cursor is not noted
            assert await v._finish(keys=[lock, asks], args=["d", 4, 3000, 0, ttl, 120]) == [RELEASED, 4]
            assert await v._finish(keys=[lock, asks], args=["a", 4, 3000, 0, ttl, 500]) == [LOST, 0]
            assert await v.redis.hget(asks, "written") == b"120"
            # a pod whose events go up to seq 120 (or less) has nothing to drain: served, no ask, no lock
            assert await v._try(keys=[lock, asks], args=["e", 3000, 0, ttl, 120]) == [0, SERVED, 0]
            assert await v._try(keys=[lock, asks], args=["e", 3000, 0, ttl, 7]) == [0, SERVED, 0]
            assert await v.redis.hget(asks, "asked") == b"4" and not await v.redis.exists(lock)
            # one event past it, or seqs not known (0): an ask, and the lock
            assert await v._try(keys=[lock, asks], args=["e", 3000, 0, ttl, 121]) == [5, TAKEN, 5]
            assert await v._try(keys=[lock, asks], args=["f", 3000, 0, ttl, 0]) == [6, BUSY, 0]
        finally:
            await v.redis.delete(lock, asks)


def test_the_redis_keys_of_two_tasks_differ_though_their_ids_hold_colons():
    # task "a:b" of agent "c" and task "a" of agent "b:c" share neither lock nor asks (nor `written`)
    assert set(redis_keys("locked", "a:b", "c")).isdisjoint(redis_keys("locked", "a", "b:c"))
    assert set(redis_keys("locked", "t", "a")).isdisjoint(redis_keys("locked-handoff", "t", "a"))
