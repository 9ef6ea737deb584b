"""`sequential`'s drain on the lab's PostgreSQL, under a variant name and lock of its own (the
lab's pods never see these events): the oldest event of any task first; and when the pod that
took an event loses its lock session during the model call and another pod applies the event,
the first applies it no second time and stops draining."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest

from racelab import db
from racelab.model import Model
from racelab.protocol import Event
from racelab.variants import PodContext
from racelab.variants.sequential import LOCK_KEY, Sequential

from helpers import new_id


class SequentialUnderTest(Sequential):
    name = "sequential-test"
    lock_key = LOCK_KEY + 1  # not the lab's `sequential` pods' lock: they neither wait nor get in the way


class HeldModel(Model):
    """The lab's model, but a call waits, after its effect row is written, until released."""

    def __init__(self) -> None:
        super().__init__(1.0, 0.0)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def call(self, *args, **kwargs) -> str:
        call_id = await super().call(*args, **kwargs)
        self.entered.set()
        await self.release.wait()
        return call_id


def event(task_id: str, i: int) -> Event:
    return Event(agent_id="agent", task_id=task_id, task_params={}, event_id=new_id(f"{task_id}-e{i}"),
                 sequence_id=i, content={"type": "text", "author": "user", "content": f"message {i}"})


def pod(settings, pool, model: Model, name: str) -> SequentialUnderTest:
    # not started: the test calls drain() itself, so no drainer of the pod runs beside it
    return SequentialUnderTest(PodContext(settings=settings, pool=pool, pod_name=name, model=model))


async def test_the_oldest_event_of_any_task_goes_first(lab):
    a, b = new_id("seq-a"), new_id("seq-b")
    order = [event(a, 0), event(b, 0), event(a, 1), event(b, 1), event(b, 2), event(a, 2)]
    async with await db.create_pool(lab.settings.pg_dsn) as pool:
        for e in order:
            assert await db.record_event(pool, SequentialUnderTest.name, e) is True
        await pod(lab.settings, pool, Model(1.0, 0.0), "pod-seq-1").drain()
        calls = await pool.fetch("""SELECT event_id FROM effects WHERE variant = $1 AND task_id = ANY($2::text[])
                                    ORDER BY created_at, id""", SequentialUnderTest.name, [a, b])
        assert [r["event_id"] for r in calls] == [e.event_id for e in order]
        for task in (a, b):
            row = await db.read_state(pool, SequentialUnderTest.name, task, "agent")
            assert row["state"]["history"] == [e.event_id for e in order if e.task_id == task]


async def test_an_event_whose_holder_lost_its_lock_session_is_applied_once(lab):
    task = new_id("seq-lost")
    e = event(task, 0)
    settings = lab.settings
    async with await db.create_pool(settings.pg_dsn) as pool, await db.create_pool(settings.pg_dsn) as pool2:
        # events of an earlier session interrupted before they were applied would go first
        await pod(settings, pool, Model(1.0, 0.0), "pod-seq-0").drain()
        assert await db.record_event(pool, SequentialUnderTest.name, e) is True
        held = HeldModel()
        first = asyncio.create_task(pod(settings, pool, held, "pod-seq-1").drain())
        await asyncio.wait_for(held.entered.wait(), 10)
        # the first pod's lock session dies (its other connections do not)
        holders = await pool2.fetchval(
            """SELECT array_agg(pg_terminate_backend(pid)) FROM pg_locks
               WHERE locktype = 'advisory' AND granted AND classid = 0 AND objid = $1 AND objsubid = 1
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
            SequentialUnderTest.lock_key)
        assert holders == [True]
        # the next holder applies the event (the model call is repeated)
        await asyncio.wait_for(pod(settings, pool2, Model(1.0, 0.0), "pod-seq-2").drain(), 30)
        row = await db.read_state(pool2, SequentialUnderTest.name, task, "agent")
        assert row["state"]["history"] == [e.event_id]
        later = event(task, 1)  # an event the first pod, without its lock, must leave alone
        assert await db.record_event(pool2, SequentialUnderTest.name, later) is True
        # then the first pod's call returns: it must find the cursor moved, apply nothing, and
        # stop there (its lock session is gone)
        held.release.set()
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await asyncio.wait_for(first, 30)  # its next query on the dead lock session
        row = await db.read_state(pool2, SequentialUnderTest.name, task, "agent")
        assert row["state"]["history"] == [e.event_id]
        assert row["state"]["processing_count"] == 1
        calls = await pool2.fetch("SELECT event_id FROM effects WHERE variant = $1 AND task_id = $2",
                                  SequentialUnderTest.name, task)
        assert [r["event_id"] for r in calls] == [e.event_id, e.event_id]  # the repeated model call
        await pod(settings, pool2, Model(1.0, 0.0), "pod-seq-3").drain()
        row = await db.read_state(pool2, SequentialUnderTest.name, task, "agent")
        assert row["state"]["history"] == [e.event_id, later.event_id]
