"""The incremental query of `locked`'s sweeper and `sequential` (racelab.variants.behind) against
its full query.

On a database of its own in the lab's PostgreSQL: tasks, events and tracker cursors written
directly. After every change, one sweeper (BehindTasks, incremental after its first sweep) and a
fresh one (its first sweep visits every task) must find the same tasks behind, the same ones
due and the same first event past each cursor (what `sequential` applies next): new tasks,
cursors moved, events that age, an event whose transaction is still open across a sweep and
commits after it, a task-level shared state, and random rounds of all of these.
Then a `locked` pod's sweeper on the lab's PostgreSQL and Redis applies what no drain was woken
for. No timing is asserted.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import random
import time

import asyncpg
import pytest

from racelab import db
from racelab.model import Model
from racelab.protocol import Event
from racelab.state import SHARED_AGENT
from racelab.variants import PodContext
from racelab.variants.behind import BehindTasks
from racelab.variants.locked import Locked

from helpers import new_id

VARIANT = "sweep-test"
OTHER = "sweep-other"  # another variant's events: never this sweeper's


async def add_events(conn, task_id: str, n: int, agent: str = "agent", age_s: float = 0.0,
                     variant: str = VARIANT) -> list[int]:
    """n events of a task (its task row too), stamped age_s ago; their seqs."""
    await conn.execute("INSERT INTO tasks (variant, task_id, agent_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                       variant, task_id, agent)
    rows = await conn.fetch(
        """INSERT INTO events (variant, event_id, task_id, agent_id, sequence_id, content, accepted_at)
           SELECT $1, $2 || '-' || gen_random_uuid(), $2, $3, g, '{"type": "text"}'::jsonb,
                  clock_timestamp() - make_interval(secs => $5)
           FROM generate_series(1, $4) g RETURNING seq""", variant, task_id, agent, n, age_s)
    return sorted(r["seq"] for r in rows)


async def move_cursor(conn, task_id: str, seq: int, agent: str = "agent") -> None:
    await conn.execute(
        """INSERT INTO trackers (variant, task_id, agent_id, last_processed_seq) VALUES ($1, $2, $3, $4)
           ON CONFLICT (variant, task_id, agent_id) DO UPDATE SET last_processed_seq = EXCLUDED.last_processed_seq""",
        VARIANT, task_id, agent, seq)


async def sweep(conn, sweeper: BehindTasks, age_s: float) -> tuple[frozenset, set, set]:
    """The tasks behind, the due ones with their owner, and each behind task's cursor and first
    event past it (what `sequential` applies next: tests/test_sequential.py runs it)."""
    rows = await sweeper.sweep(conn, age_s)
    assert sweeper.behind == {(r["task_id"], r["agent_id"]) for r in rows}
    return (sweeper.behind, {(r["task_id"], r["agent_id"], r["owner"]) for r in rows if r["due"]},
            {(r["task_id"], r["agent_id"], r["cursor"], r["seq"], r["event_id"], r["accepted"]) for r in rows})


async def first_events(conn) -> set:
    """Each task's cursor and first event past it, read directly: every task behind, no other."""
    rows = await conn.fetch(
        """SELECT DISTINCT ON (e.task_id, e.agent_id) e.task_id, e.agent_id,
                  COALESCE(tr.last_processed_seq, 0) AS cursor, e.seq, e.event_id,
                  extract(epoch FROM e.accepted_at)::float8 AS accepted
           FROM events e LEFT JOIN trackers tr USING (variant, task_id, agent_id)
           WHERE e.variant = $1 AND e.seq > COALESCE(tr.last_processed_seq, 0)
           ORDER BY e.task_id, e.agent_id, e.seq""", VARIANT)
    return {(r["task_id"], r["agent_id"], r["cursor"], r["seq"], r["event_id"], r["accepted"]) for r in rows}


async def assert_same(conn, sweeper: BehindTasks, age_s: float, behind: set, due: set,
                      incremental: bool = True) -> None:
    """The sweeper's view equals a fresh sweeper's full one, and both equal what the test expects."""
    got = await sweep(conn, sweeper, age_s)
    assert sweeper.last_was_full is not incremental
    full = BehindTasks(VARIANT)
    assert await sweep(conn, full, age_s) == got
    assert full.last_was_full
    assert got[:2] == (frozenset(behind), due)
    assert got[2] == await first_events(conn)


async def _scenario(dsn: str) -> None:
    async with db.connection(dsn) as conn, db.connection(dsn) as other:
        sweeper = BehindTasks(VARIANT)
        await add_events(conn, "old", 3, age_s=60)
        seqs_young = await add_events(conn, "young", 2)
        await add_events(conn, "elsewhere", 4, age_s=60, variant=OTHER)
        await assert_same(conn, sweeper, 10, {("old", "agent"), ("young", "agent")},
                          {("old", "agent", "agent")}, incremental=False)

        # applied up to its last event: no longer behind; the young task is now old enough,
        # though none of its events is new since the last sweep (kept from it)
        seqs_old = await conn.fetchval("SELECT array_agg(seq) FROM events WHERE variant = $1 AND task_id = 'old'", VARIANT)
        await move_cursor(conn, "old", max(seqs_old))
        await assert_same(conn, sweeper, 0, {("young", "agent")}, {("young", "agent", "agent")})

        # a cursor part of the way: behind still, due by its first event after the cursor
        await move_cursor(conn, "young", seqs_young[0])
        await conn.execute("UPDATE events SET accepted_at = clock_timestamp() WHERE seq = $1", seqs_young[1])
        await assert_same(conn, sweeper, 10, {("young", "agent")}, set())
        await move_cursor(conn, "young", seqs_young[1])
        await assert_same(conn, sweeper, 10, set(), set())

        # an event whose transaction is open across a sweep, and commits after it: found by the
        # next sweep as new (a transaction the last snapshot could not see)
        tx = other.transaction()
        await tx.start()
        await add_events(other, "late", 1, age_s=60)
        # a later transaction commits first: the snapshot's xmax passes the open one, which the
        # snapshot lists as in progress (a scan from its xmax would miss it)
        await add_events(conn, "elsewhere", 1, variant=OTHER)
        await assert_same(conn, sweeper, 10, set(), set())
        await tx.commit()
        await assert_same(conn, sweeper, 10, {("late", "agent")}, {("late", "agent", "agent")})

        # a task-level shared state: the sweeper wakes the task's owner "*"
        await db.write_state(conn, VARIANT, "late", SHARED_AGENT, {"history": []})
        await assert_same(conn, sweeper, 10, {("late", "agent")}, {("late", "agent", SHARED_AGENT)})

        # a new event of a task that was applied already, and of another agent of it
        await add_events(conn, "old", 1, age_s=60)
        await add_events(conn, "old", 1, agent="agent-2", age_s=60)
        await assert_same(conn, sweeper, 10, {("late", "agent"), ("old", "agent"), ("old", "agent-2")},
                          {("late", "agent", SHARED_AGENT), ("old", "agent", "agent"),
                           ("old", "agent-2", "agent-2")})

        # random rounds: new events (old or young), cursors moved to a random event; the
        # incremental view equals the full one after each
        rng = random.Random(20261126)
        tasks = [f"r{i}" for i in range(12)]
        for _ in range(25):
            for _ in range(rng.randint(0, 4)):
                await add_events(conn, rng.choice(tasks), rng.randint(1, 3), age_s=rng.choice((0, 60)))
            for _ in range(rng.randint(0, 4)):
                task = rng.choice(tasks)
                seqs = await conn.fetchval("SELECT array_agg(seq) FROM events WHERE variant = $1 AND task_id = $2",
                                           VARIANT, task)
                cursor = await conn.fetchval("""SELECT last_processed_seq FROM trackers
                                                WHERE variant = $1 AND task_id = $2 AND agent_id = 'agent'""",
                                             VARIANT, task) or 0
                forward = [s for s in seqs or () if s > cursor]
                if forward:
                    await move_cursor(conn, task, rng.choice(forward))
            got = await sweep(conn, sweeper, 10)
            assert not sweeper.last_was_full
            assert got == await sweep(conn, BehindTasks(VARIANT), 10)
            assert got[2] == await first_events(conn)
        assert sweeper.behind  # the rounds left some tasks behind: the comparison was not of empty sets


def test_incremental_sweep_equals_the_full_one(scratch_db):
    asyncio.run(_scenario(scratch_db))


def test_a_full_sweep_comes_back_on_its_interval(scratch_db):
    async def run():
        now = [0.0]
        sweeper = BehindTasks(VARIANT, full_every_s=300.0, full_after_gap_s=1000.0, clock=lambda: now[0])
        async with db.connection(scratch_db) as conn:
            await add_events(conn, "t", 1, age_s=60)
            fulls = []
            for t in (0.0, 100.0, 299.0, 300.0, 301.0, 600.0):
                now[0] = t
                rows = await sweeper.due(conn, 10)
                assert [r["task_id"] for r in rows] == ["t"]
                fulls.append(sweeper.last_was_full)
        assert fulls == [True, False, False, True, False, True]
    asyncio.run(run())


def test_a_sweep_after_a_long_gap_is_a_full_one(scratch_db):
    """A pod that had no turn to sweep for a while visits every task instead of scanning every
    event since its old snapshot."""
    async def run():
        now = [0.0]
        sweeper = BehindTasks(VARIANT, full_every_s=300.0, full_after_gap_s=30.0, clock=lambda: now[0])
        async with db.connection(scratch_db) as conn:
            fulls = []
            for t in (0.0, 2.0, 4.0, 34.0, 65.0, 67.0):
                now[0] = t
                await sweeper.due(conn, 10)
                fulls.append(sweeper.last_was_full)
        assert fulls == [True, False, False, False, True, False]
    asyncio.run(run())


async def incremental_with_one_task_behind(conn) -> BehindTasks:
    """A sweeper past its first (full) sweep, with task "a" behind and due."""
    sweeper = BehindTasks(VARIANT)
    await add_events(conn, "a", 1, age_s=60)
    await sweeper.due(conn, 10)
    await sweeper.due(conn, 10)
    assert not sweeper.last_was_full and sweeper.behind == {("a", "agent")}
    return sweeper


class FailingFetch:
    """The lab's connection, except that its `fetch` (the sweep's query, inside the sweep's
    transaction, after its snapshot) fails as a dropped connection does."""
    def __init__(self, conn):
        self.conn = conn

    def transaction(self, **kwargs):
        return self.conn.transaction(**kwargs)

    async def fetchrow(self, *args):
        return await self.conn.fetchrow(*args)

    async def fetch(self, *args):
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")


def test_a_failed_sweep_is_followed_by_a_full_one(scratch_db):
    """A sweep whose query fails after its snapshot was taken returns nothing and keeps nothing of
    it: the next sweep visits every task, and finds both the task behind before the failure and
    the one that fell behind during it."""
    async def run():
        async with db.connection(scratch_db) as conn:
            sweeper = await incremental_with_one_task_behind(conn)
            await add_events(conn, "b", 1, age_s=60)
            with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
                await sweeper.due(FailingFetch(conn), 10)
            rows = await sweeper.due(conn, 10)
            assert sweeper.last_was_full
            assert sorted(r["task_id"] for r in rows) == ["a", "b"]
    asyncio.run(run())


def test_a_restart_of_postgresql_is_followed_by_a_full_sweep(scratch_db):
    """The sweeper notes the server's start time with each snapshot; a different one (the server
    restarted between two sweeps, neither of which failed) makes the next sweep a full one."""
    async def run():
        async with db.connection(scratch_db) as conn:
            sweeper = await incremental_with_one_task_behind(conn)
            sweeper._server_started = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)  # as if
            assert [r["task_id"] for r in await sweeper.due(conn, 10)] == ["a"]
            assert sweeper.last_was_full
            await sweeper.due(conn, 10)
            assert not sweeper.last_was_full
    asyncio.run(run())


class SweptLocked(Locked):
    name = "locked-sweep"  # not "locked": the lab's own pods never see these tasks


async def test_a_pods_sweeper_applies_the_events_no_drain_was_woken_for(lab):
    """A `locked` pod whose drains were never woken (as if the pod that acked died right after
    the ack): its sweeper applies the events, those of a first task at its first (full) sweep,
    those recorded later at its incremental ones, a task-level shared state's to the state "*"."""
    settings = dataclasses.replace(lab.settings, sweep_interval_s=0.3)
    solo, later, shared = new_id("solo"), new_id("later"), new_id("shared")

    def events(task_id: str, n: int, params=None) -> list[Event]:
        return [Event(agent_id="agent", task_id=task_id, task_params=params or {}, event_id=new_id(f"e{i}"),
                      sequence_id=i, content={"type": "text", "author": "user", "content": f"message {i}"})
                for i in range(n)]

    async def applied(pool, task_id: str, owner: str, want: list[Event], timeout_s: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            row = await db.read_state(pool, SweptLocked.name, task_id, owner)
            history = row["state"]["history"] if row else []
            if len(history) >= len(want) or time.monotonic() > deadline:
                return history
            await asyncio.sleep(0.1)

    async with await db.create_pool(settings.pg_dsn) as pool:
        first = events(solo, 3)
        for e in first:
            assert await db.record_event(pool, SweptLocked.name, e) is True
        pod = SweptLocked(PodContext(settings=settings, pool=pool, pod_name="pod-sweep", model=Model(5.0, 0.0)))
        await pod.start()
        try:
            assert await applied(pool, solo, "agent", first) == [e.event_id for e in first]
            await asyncio.sleep(1.0)  # a few incremental sweeps with nothing to do
            second = events(later, 2)
            await db.write_state(pool, SweptLocked.name, shared, SHARED_AGENT, {"history": [], "applied_at": [],
                                                                                 "processing_count": 0})
            third = events(shared, 2, {"shared_state": True})
            for e in second + third:
                assert await db.record_event(pool, SweptLocked.name, e) is True
            assert await applied(pool, later, "agent", second) == [e.event_id for e in second]
            assert await applied(pool, shared, SHARED_AGENT, third) == [e.event_id for e in third]
            assert await db.read_state(pool, SweptLocked.name, shared, "agent") is None
        finally:
            await pod.stop()
