"""The one-statement writes of racelab.db against the real PostgreSQL (a scratch database of the
lab's): what each refuses is what keeps the guarded variants exact.

- record_event without a handoff: a new event, a re-send (not fresh, the same seq), a re-send
  naming another task (refused), a cancelled task (nothing recorded), and the outbox row the
  temporal variant writes in the same statement on every delivery;
- commit_batch (locked): a stale fence or a moved cursor writes nothing, state nor cursor;
- write_state (unguarded and the zoo): last writer wins, concurrent writers of a row in turn;
- StateWrites, StateReads (unguarded's pods): a pod's concurrent writes of a row in one round
  trip as their sequence (the last wins, the version moves once per write; only the state
  written can be refused), its concurrent reads of a row answered by one read made after each
  caller asked;
- EffectWriter (the pods' group commit of effect rows): concurrent model calls' rows in one
  round trip, each caller on after its rows are durable; PostgreSQL gone fails them, then it goes on;
- write_state_if_version (temporal's activity): a moved version writes nothing;
- EventRecorder (the pods' group commit): a task's concurrent events in one round trip, in
  arrival order, each with its own outcome (new, re-send, refused id, refused value, cancelled).
"""
from __future__ import annotations

import asyncio
import uuid

import pytest

from racelab import db
from racelab.protocol import Event, TaskRef
from racelab.state import apply_events

VARIANT = "db-writes"
AGENT = "agent-db"


def event(task_id: str, event_id: str | None = None, text: str = "hi") -> Event:
    return Event(agent_id=AGENT, task_id=task_id, task_params={}, event_id=event_id or str(uuid.uuid4()),
                 sequence_id=1, content={"type": "text", "author": "user", "content": text})


def failing_once(round_trip):
    """round_trip, whose first call fails as when PostgreSQL has gone away."""
    failures = iter([ConnectionResetError("PostgreSQL went away")])

    async def flaky(*args):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await round_trip(*args)
    return flaky


class RoundTrips:
    """Counts a group commit's round trips (calls of its _write); `write` is the real one."""

    def __init__(self, group: db.GroupCommit):
        self.count = 0
        self.write = group._write

        async def counted(key, items):
            self.count += 1
            return await self.write(key, items)
        group._write = counted


def test_record_event_in_one_statement(scratch_db):
    asyncio.run(_record(scratch_db))


async def _record(dsn: str) -> None:
    async with await db.create_pool(dsn) as pool:
        task = f"t-{uuid.uuid4().hex[:8]}"
        first = event(task)
        assert await db.record_event(pool, VARIANT, first) is True
        assert await db.record_event(pool, VARIANT, first) is False  # a re-send
        assert await pool.fetchval("SELECT count(*) FROM events WHERE task_id = $1", task) == 1
        with pytest.raises(db.EventIdConflict):
            await db.record_event(pool, VARIANT, event(task + "-other", first.event_id))
        # with an outbox row: written with the event, and again by a re-send once relayed
        second = event(task)
        assert await db.record_event(pool, VARIANT, second, outbox={"event_id": second.event_id}) is True
        assert await pool.fetchval("SELECT payload FROM outbox WHERE event_id = $1", second.event_id) == \
            {"event_id": second.event_id}
        await pool.execute("DELETE FROM outbox WHERE event_id = $1", second.event_id)
        assert await db.record_event(pool, VARIANT, second, outbox={"event_id": second.event_id}) is False
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE event_id = $1", second.event_id) == 1
        # the re-used id under another task, with the first one's outbox row gone: refused, and
        # nothing written for the other task (no event, no outbox row for a relay to signal, no task)
        other = task + "-other"
        with pytest.raises(db.EventIdConflict):
            await db.record_event(pool, VARIANT, event(other, second.event_id), outbox={"event_id": "forged"})
        for table in ("events", "outbox", "tasks"):
            assert await pool.fetchval(f"SELECT count(*) FROM {table} WHERE task_id = $1", other) == 0, table
        # a cancelled task records nothing, outbox included
        await db.cancel_task(pool, VARIANT, TaskRef(AGENT, task, {}))
        third = event(task)
        with pytest.raises(db.TaskCancelled):
            await db.record_event(pool, VARIANT, third, outbox={"event_id": third.event_id})
        assert await pool.fetchval("SELECT count(*) FROM events WHERE event_id = $1", third.event_id) == 0
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE event_id = $1", third.event_id) == 0


def test_an_event_takes_its_seq_after_the_task_order_lock(scratch_db):
    """The locked variant's cursor relies on it: while another transaction holds the task's order
    lock, a new event of that task waits, and its seq is taken after the holder's."""
    asyncio.run(_seq_after_lock(scratch_db))


async def _seq_after_lock(dsn: str) -> None:
    async with await db.create_pool(dsn) as pool:
        task = f"t-{uuid.uuid4().hex[:8]}"
        await db.record_event(pool, VARIANT, event(task))
        async with pool.acquire() as holder:
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT task_order_lock($1, $2, $3)", VARIANT, task, AGENT)
            late = event(task)
            recording = asyncio.create_task(db.record_event(pool, VARIANT, late))
            await asyncio.sleep(0.5)
            assert not recording.done()  # waiting for the task's order lock
            taken = await holder.fetchval("SELECT nextval(pg_get_serial_sequence('events', 'seq'))")
            await tx.commit()
        assert await recording is True
        seq = await pool.fetchval("SELECT seq FROM events WHERE event_id = $1", late.event_id)
        assert seq > taken


def test_commit_batch_refuses_a_stale_holder(scratch_db):
    asyncio.run(_commit_batch(scratch_db))


async def task_with_events(pool, n: int = 3) -> tuple[str, list[str]]:
    """A new task with n events recorded: (its id, the events' ids in seq order)."""
    task = f"t-{uuid.uuid4().hex[:8]}"
    await db.create_task(pool, VARIANT, TaskRef(AGENT, task, {}))
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for eid in ids:
        await db.record_event(pool, VARIANT, event(task, eid))
    return task, ids


async def _commit_batch(dsn: str) -> None:
    async with await db.create_pool(dsn) as pool:
        task, ids = await task_with_events(pool)
        old = await db.take_fence(pool, VARIANT, task, AGENT)
        batch = await pool.fetchrow(db.READ_BATCH, VARIANT, task, AGENT, AGENT, 50)
        assert (batch["fence"], batch["cursor"], batch["event_ids"]) == (old, 0, ids)
        new = await db.take_fence(pool, VARIANT, task, AGENT)  # another holder took the lock meanwhile
        assert not await db.commit_batch(pool, VARIANT, task, AGENT, AGENT, old, 0, batch["seqs"][-1],
                                         apply_events(batch["state"], ids), "stale")
        row = await pool.fetchrow("SELECT last_processed_seq, fence FROM trackers WHERE task_id = $1", task)
        assert (row["last_processed_seq"], row["fence"]) == (0, new)
        assert (await db.read_state(pool, VARIANT, task, AGENT))["state"]["history"] == []
        # the current holder with the cursor it read: written
        assert await db.commit_batch(pool, VARIANT, task, AGENT, AGENT, new, 0, batch["seqs"][1],
                                     apply_events(batch["state"], ids[:2]), "two")
        # the same holder again from the old cursor (a batch it already wrote): refused
        assert not await db.commit_batch(pool, VARIANT, task, AGENT, AGENT, new, 0, batch["seqs"][-1],
                                         apply_events(batch["state"], ids), "again")
        state = (await db.read_state(pool, VARIANT, task, AGENT))["state"]
        assert state["history"] == ids[:2] and state["processing_count"] == 2
        after = await pool.fetchrow(db.READ_BATCH, VARIANT, task, AGENT, AGENT, 50)
        assert (after["cursor"], after["event_ids"]) == (batch["seqs"][1], ids[2:])


def test_fence_and_read_in_one_statement_flags_a_batch_written_after_its_snapshot(scratch_db):
    asyncio.run(_fence_and_read(scratch_db))


async def _fence_and_read(dsn: str) -> None:
    async with await db.create_pool(dsn) as pool:
        task, ids = await task_with_events(pool)
        args = (VARIANT, task, AGENT, AGENT, 50)
        # the first holder of the task: no tracker yet; it is created with fence 1
        first = await pool.fetchrow(db.FENCE_AND_READ_BATCH, *args)
        assert (first["fence"], first["cursor"], first["event_ids"], first["consistent"]) == (1, 0, ids, True)
        # a holder whose lease ran out writes its batch while a new holder takes the lock: the new
        # holder's statement waits for the tracker row, its snapshot predates that batch
        async with pool.acquire() as stale, pool.acquire() as newer:
            tx = stale.transaction()
            await tx.start()
            assert await db.commit_batch(stale, VARIANT, task, AGENT, AGENT, 1, 0, first["seqs"][1],
                                         apply_events(first["state"], ids[:2]), "stale, in flight")
            taking = asyncio.create_task(newer.fetchrow(db.FENCE_AND_READ_BATCH, *args))
            await asyncio.sleep(0.5)
            assert not taking.done()  # waiting for the tracker row
            await tx.commit()
            raced = await taking
        # the fence and cursor are the newest, the state is the older snapshot's: flagged
        assert (raced["fence"], raced["cursor"], raced["consistent"]) == (2, first["seqs"][1], False)
        assert raced["state"] is None or raced["state"]["history"] == []
        again = await pool.fetchrow(db.READ_BATCH, *args)  # what the holder does then
        assert (again["fence"], again["cursor"], again["event_ids"]) == (2, first["seqs"][1], ids[2:])
        assert again["state"]["history"] == ids[:2]
        # no batch in between: consistent, and the read starts at the cursor
        later = await pool.fetchrow(db.FENCE_AND_READ_BATCH, *args)
        assert (later["fence"], later["cursor"], later["event_ids"], later["consistent"]) == \
            (3, first["seqs"][1], ids[2:], True)
        assert later["state"]["history"] == ids[:2]


def test_concurrent_whole_state_writes_take_turns_and_the_last_wins(scratch_db):
    asyncio.run(_write_state(scratch_db))


async def _write_state(dsn: str) -> None:
    async with await db.create_pool(dsn, max_size=10) as pool:
        task = f"t-{uuid.uuid4().hex[:8]}"
        # 30 writers of one row at once (unguarded's burst): every write happens, one after another
        await asyncio.gather(*(db.write_state(pool, VARIANT, task, AGENT, apply_events(None, [f"e{i}"]))
                               for i in range(30)))
        row = await db.read_state(pool, VARIANT, task, AGENT)
        assert row["version"] == 30 and len(row["state"]["history"]) == 1  # last writer wins, whole
        await db.write_state(pool, VARIANT, task, AGENT, apply_events(None, ["x", "y"]))
        row = await db.read_state(pool, VARIANT, task, AGENT)
        assert (row["state"]["history"], row["version"]) == (["x", "y"], 31)
        # a write within a transaction that rolls back leaves nothing, and its turn is let go
        with pytest.raises(RuntimeError):
            async with pool.acquire() as conn, conn.transaction():
                await db.write_state(conn, VARIANT, task, AGENT, apply_events(None, ["rolled back"]))
                raise RuntimeError("roll back")
        await asyncio.wait_for(db.write_state(pool, VARIANT, task, AGENT, apply_events(None, ["z"])), 5)
        assert (await db.read_state(pool, VARIANT, task, AGENT))["state"]["history"] == ["z"]
        # the turn is taken before the row: while another transaction holds it, a write waits
        # (whatever the machine's speed: it cannot finish before the turn is let go)
        async with pool.acquire() as holder:
            turn = holder.transaction()
            await turn.start()
            await holder.execute("SELECT state_write_turn($1, $2, $3)", VARIANT, task, AGENT)
            waiting = asyncio.create_task(db.write_state(pool, VARIANT, task, AGENT, apply_events(None, ["w"])))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            assert (await db.read_state(pool, VARIANT, task, AGENT))["state"]["history"] == ["z"]
            await turn.commit()
            await asyncio.wait_for(waiting, 5)
        assert (await db.read_state(pool, VARIANT, task, AGENT))["state"]["history"] == ["w"]


def test_the_effect_writer_takes_concurrent_calls_in_one_round_trip(scratch_db):
    asyncio.run(_effects(scratch_db))


async def _effects(dsn: str) -> None:
    async with await db.create_pool(dsn) as pool:
        writer = db.EffectWriter(pool)
        task = f"t-{uuid.uuid4().hex[:8]}"
        inserts = RoundTrips(writer)
        calls = [(str(uuid.uuid4()), [f"e{i}", f"e{i}b"] if i % 2 else [f"e{i}"]) for i in range(30)]
        await asyncio.gather(*(writer.record(VARIANT, task, AGENT, call_id, ids) for call_id, ids in calls))
        assert inserts.count == 1  # all 30 were queued before the first round trip began
        rows = await pool.fetch("SELECT call_id::text, event_id FROM effects WHERE task_id = $1 ORDER BY id", task)
        assert [(r["call_id"], r["event_id"]) for r in rows] == [(c, e) for c, ids in calls for e in ids]
        # a value PostgreSQL refuses fails that call alone
        bad, good = str(uuid.uuid4()), str(uuid.uuid4())
        got = await asyncio.gather(writer.record(VARIANT, task, AGENT, str(uuid.uuid4()), ["first"]),
                                   writer.record(VARIANT, task, AGENT, bad, ["nul \u0000"]),
                                   writer.record(VARIANT, task, AGENT, good, ["fine"]), return_exceptions=True)
        assert got[0] is None and isinstance(got[1], db.DATA_ERRORS) and got[2] is None
        assert await pool.fetchval("SELECT count(*) FROM effects WHERE call_id = $1::uuid", good) == 1
        # PostgreSQL gone: every call of the round trip fails (the model call happened, its caller
        # learns its rows are not on record); the next calls are written
        writer._write = failing_once(inserts.write)
        lost = [str(uuid.uuid4()) for _ in range(3)]
        got = await asyncio.gather(*(writer.record(VARIANT, task, AGENT, c, ["x"]) for c in lost), return_exceptions=True)
        assert all(isinstance(g, ConnectionResetError) for g in got)
        after = str(uuid.uuid4())
        await writer.record(VARIANT, task, AGENT, after, ["y"])
        assert await pool.fetchval("SELECT count(*) FROM effects WHERE call_id = ANY($1::uuid[])", lost) == 0
        assert await pool.fetchval("SELECT count(*) FROM effects WHERE call_id = $1::uuid", after) == 1
        # a flush cancelled before its first step (the loop shutting down) does not wedge the writer
        cancelled = asyncio.create_task(asyncio.sleep(0))
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        writer._queued[None] = ([], cancelled)
        await asyncio.wait_for(writer.record(VARIANT, task, AGENT, str(uuid.uuid4()), ["z"]), 5)
        await writer.close()


def test_a_pods_concurrent_writes_of_a_state_row_go_as_their_sequence(scratch_db):
    asyncio.run(_state_writes(scratch_db))


async def _state_writes(dsn: str) -> None:
    async with await db.create_pool(dsn) as pool:
        writes = db.StateWrites(pool)
        task = f"t-{uuid.uuid4().hex[:8]}"
        round_trips = RoundTrips(writes)
        # 30 handlers of a burst write at once: one round trip that stands for all 30, the last
        # one handed in wins, and the version moved once per write (as 30 back-to-back writes)
        await asyncio.gather(*(writes.write(VARIANT, task, AGENT, apply_events(None, [f"e{i}"])) for i in range(30)))
        assert round_trips.count == 1
        row = await db.read_state(pool, VARIANT, task, AGENT)
        assert (row["state"]["history"], row["version"]) == (["e29"], 30)
        # writes handed in while one is in flight go in the next round trip, in their order
        first = asyncio.create_task(writes.write(VARIANT, task, AGENT, apply_events(None, ["a"])))
        async def begun() -> None:
            while round_trips.count == 1:
                await asyncio.sleep(0)
        await asyncio.wait_for(begun(), 5)  # its round trip has begun
        later = [writes.write(VARIANT, task, AGENT, apply_events(None, [x])) for x in "bcd"]
        await asyncio.gather(first, *later)
        assert round_trips.count == 3
        row = await db.read_state(pool, VARIANT, task, AGENT)
        assert (row["state"]["history"], row["version"]) == (["d"], 34)
        # another row is another queue
        other = task + "-other"
        await asyncio.gather(writes.write(VARIANT, task, AGENT, apply_events(None, ["t"])),
                             writes.write(VARIANT, other, AGENT, apply_events(None, ["o"])))
        assert (await db.read_state(pool, VARIANT, other, AGENT))["state"]["history"] == ["o"]
        assert (await db.read_state(pool, VARIANT, task, AGENT))["state"]["history"] == ["t"]
        # the state written (the last) refused by PostgreSQL: each is written on its own, in order,
        # and that one alone fails
        got = await asyncio.gather(writes.write(VARIANT, task, AGENT, apply_events(None, ["f"])),
                                   writes.write(VARIANT, task, AGENT, apply_events(None, ["nul \u0000"])),
                                   return_exceptions=True)
        assert got[0] is None and isinstance(got[1], db.DATA_ERRORS)
        row = await db.read_state(pool, VARIANT, task, AGENT)
        assert (row["state"]["history"], row["version"]) == (["f"], 36)
        # PostgreSQL gone: every write of the round trip fails, the next ones are written
        writes._write = failing_once(round_trips.write)
        got = await asyncio.gather(*(writes.write(VARIANT, task, AGENT, apply_events(None, [x])) for x in "xy"),
                                   return_exceptions=True)
        assert all(isinstance(g, ConnectionResetError) for g in got)
        await writes.write(VARIANT, task, AGENT, apply_events(None, ["z"]))
        row = await db.read_state(pool, VARIANT, task, AGENT)
        assert (row["state"]["history"], row["version"]) == (["z"], 37)
        await writes.close()


def test_a_pods_concurrent_reads_of_a_state_row_share_a_read_made_after_each_asked(scratch_db):
    asyncio.run(_state_reads(scratch_db))


async def _state_reads(dsn: str) -> None:
    async with await db.create_pool(dsn) as pool:
        reads = db.StateReads(pool)
        task = f"t-{uuid.uuid4().hex[:8]}"
        assert await reads.read(VARIANT, task, AGENT) is None
        await db.write_state(pool, VARIANT, task, AGENT, apply_events(None, ["a"]))
        round_trips = 0
        taken, answered = asyncio.Event(), asyncio.Event()
        read = reads._write

        async def slow_answer(key, items):
            """A read whose answer is slow to come back: its row is read, the reply waits."""
            nonlocal round_trips
            round_trips += 1
            rows = await read(key, items)
            if round_trips == 1:
                taken.set()
                await answered.wait()
            return rows
        reads._write = slow_answer
        first = [asyncio.create_task(reads.read(VARIANT, task, AGENT)) for _ in range(5)]
        await asyncio.wait_for(taken.wait(), 5)
        # a write commits while that read is in flight; a read asked after the commit must see it,
        # so it is not answered by the read in flight but by the next one
        await db.write_state(pool, VARIANT, task, AGENT, apply_events(None, ["b"]))
        second = [asyncio.create_task(reads.read(VARIANT, task, AGENT)) for _ in range(5)]
        await asyncio.sleep(0)  # they ask while the first read is in flight
        answered.set()
        assert [r["state"]["history"] for r in await asyncio.gather(*first)] == [["a"]] * 5
        assert [r["state"]["history"] for r in await asyncio.gather(*second)] == [["b"]] * 5
        assert round_trips == 2  # five callers each
        # PostgreSQL gone: the read's callers fail, the next read answers
        reads._write = failing_once(read)
        got = await asyncio.gather(*(reads.read(VARIANT, task, AGENT) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(g, ConnectionResetError) for g in got)
        assert (await reads.read(VARIANT, task, AGENT))["state"]["history"] == ["b"]
        await reads.close()


def test_write_state_if_version(scratch_db):
    asyncio.run(_if_version(scratch_db))


async def _if_version(dsn: str) -> None:
    async with await db.create_pool(dsn) as pool:
        task = f"t-{uuid.uuid4().hex[:8]}"
        await db.create_task(pool, VARIANT, TaskRef(AGENT, task, {}))  # a state at version 0
        assert await db.write_state_if_version(pool, VARIANT, task, AGENT, apply_events(None, ["a"]), 0) == 1
        assert await db.write_state_if_version(pool, VARIANT, task, AGENT, apply_events(None, ["b"]), 0) is None
        assert await db.write_state_if_version(pool, VARIANT, task, AGENT, apply_events(None, ["a", "b"]), 1) == 2
        assert (await db.read_state(pool, VARIANT, task, AGENT))["state"]["history"] == ["a", "b"]
        # no row yet counts as version 0
        assert await db.write_state_if_version(pool, VARIANT, task + "-new", AGENT, apply_events(None, ["c"]), 0) == 1


def test_an_event_behind_a_cancel_is_refused(scratch_db):
    """task/cancel takes the task's order lock: an event that waits behind it reads the cancel
    (a fresh snapshot after the lock), and an event recorded before it commits before it."""
    asyncio.run(_behind_cancel(scratch_db))


async def _behind_cancel(dsn: str) -> None:
    async with await db.create_pool(dsn) as pool:
        task = f"t-{uuid.uuid4().hex[:8]}"
        ref = TaskRef(AGENT, task, {})
        await db.record_event(pool, VARIANT, event(task))
        async with pool.acquire() as holder:
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT task_order_lock($1, $2, $3)", VARIANT, task, AGENT)
            cancelling = asyncio.create_task(db.cancel_task(pool, VARIANT, ref))
            await asyncio.sleep(0.3)  # the cancel waits first
            late = event(task)
            recording = asyncio.create_task(db.record_event(pool, VARIANT, late))
            await asyncio.sleep(0.3)
            assert not cancelling.done() and not recording.done()
            await tx.commit()
        assert await cancelling is True
        with pytest.raises(db.TaskCancelled):
            await recording
        assert await pool.fetchval("SELECT count(*) FROM events WHERE event_id = $1", late.event_id) == 0
        assert await pool.fetchval("SELECT count(*) FROM events WHERE task_id = $1", task) == 1


def test_an_id_taken_by_another_task_meanwhile_leaves_no_task_row(scratch_db):
    """Two first sends of one event id under two tasks at once pass the first check under their
    own order locks; the one that loses the event row must not leave its task row behind."""
    asyncio.run(_taken_meanwhile(scratch_db))


async def _taken_meanwhile(dsn: str) -> None:
    async with await db.create_pool(dsn) as pool:
        first, other = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
        taken = event(first)
        async with pool.acquire() as holder:
            tx = holder.transaction()
            await tx.start()
            await holder.fetchrow(db.RECORD_EVENT, VARIANT, first, AGENT, taken.event_id, 1, {}, None)  # not committed
            losing = asyncio.create_task(db.record_event(pool, VARIANT, event(other, taken.event_id)))
            await asyncio.sleep(0.5)
            assert not losing.done()  # waits on the event id's uncommitted row
            await tx.commit()
        with pytest.raises(db.EventIdConflict):
            await losing
        assert await pool.fetchval("SELECT count(*) FROM tasks WHERE task_id = $1", other) == 0
        assert await pool.fetchval("SELECT task_id FROM events WHERE event_id = $1", taken.event_id) == first


def test_the_recorder_takes_a_tasks_concurrent_events_in_one_round_trip(scratch_db):
    asyncio.run(_group_commit(scratch_db))


async def _group_commit(dsn: str) -> None:
    async with await db.create_pool(dsn) as pool:
        recorder = db.EventRecorder(pool)
        calls = RoundTrips(recorder)
        task, other = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
        events = [event(task) for _ in range(30)]
        seqs = await asyncio.gather(*(recorder.record(VARIANT, e) for e in events))  # a new event's seq each
        assert calls.count == 1
        rows = await pool.fetch("SELECT event_id, seq FROM events WHERE task_id = $1 ORDER BY seq", task)
        assert [r["event_id"] for r in rows] == [e.event_id for e in events]  # seq in arrival order
        assert seqs == [r["seq"] for r in rows]
        # another task's events go in a round trip of their own; a lone event goes at once
        got = await asyncio.gather(recorder.record(VARIANT, event(other)), recorder.record(VARIANT, events[0]))
        assert got[0] > seqs[-1] and got[1] is None  # new, and a re-send
        assert calls.count == 3
        # one batch, an outcome each: a re-send, an id of another task, the same id twice, an
        # outbox row; a value PostgreSQL refuses fails that event alone
        twice = event(task)
        mixed = [events[1], event(task, events[2].event_id), event(other, events[3].event_id), twice, twice,
                 event(task, text="nul \u0000 in jsonb"), event(task)]
        outboxes = [None, None, None, {"event_id": twice.event_id}, None, None, None]
        got = await asyncio.gather(*(recorder.record(VARIANT, e, o) for e, o in zip(mixed, outboxes)),
                                   return_exceptions=True)
        assert got[:5] == [None, None, got[2], got[3], None] and isinstance(got[2], db.EventIdConflict)
        assert isinstance(got[5], db.DATA_ERRORS) and isinstance(got[3], int) and got[6] > got[3] > seqs[-1]
        assert await pool.fetchval("SELECT count(*) FROM events WHERE task_id = $1", task) == 32
        assert await pool.fetchval("SELECT count(*) FROM events WHERE event_id = $1", mixed[5].event_id) == 0
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE event_id = $1", twice.event_id) == 1
        # a cancelled task: every event of the batch refused, nothing written
        await db.cancel_task(pool, VARIANT, TaskRef(AGENT, task, {}))
        late = [event(task) for _ in range(3)]
        got = await asyncio.gather(*(recorder.record(VARIANT, e) for e in late), return_exceptions=True)
        assert all(isinstance(g, db.TaskCancelled) for g in got)
        assert await pool.fetchval("SELECT count(*) FROM events WHERE task_id = $1", task) == 32
        # in one batch, the re-send of an event recorded before the cancel (acked again) and a new
        # event (refused): each gets its own outcome (the re-send's outcome was given to the whole
        # batch, and the new event was acked unrecorded: a broken ack)
        before = calls.count
        got = await asyncio.gather(recorder.record(VARIANT, events[5]), recorder.record(VARIANT, event(task)),
                                   return_exceptions=True)
        assert calls.count == before + 1  # one round trip for the two
        assert isinstance(got[0], db.ResentAfterCancel) and isinstance(got[1], db.TaskCancelled), got
        assert await pool.fetchval("SELECT count(*) FROM events WHERE task_id = $1", task) == 32
        assert not recorder._queued  # nothing left waiting


def test_the_recorder_fails_a_batch_when_postgresql_is_gone_and_keeps_recording(scratch_db):
    asyncio.run(_recorder_down(scratch_db))


async def _recorder_down(dsn: str) -> None:
    async with await db.create_pool(dsn) as pool:
        recorder = db.EventRecorder(pool)
        task = f"t-{uuid.uuid4().hex[:8]}"
        recorder._write = failing_once(recorder._write)
        first = await asyncio.gather(*(recorder.record(VARIANT, event(task)) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(g, ConnectionResetError) for g in first)
        seqs = await asyncio.gather(*(recorder.record(VARIANT, event(task)) for _ in range(3)))
        assert seqs == sorted(seqs) and len(set(seqs)) == 3 and all(isinstance(s, int) for s in seqs)  # new
        assert await pool.fetchval("SELECT count(*) FROM events WHERE task_id = $1", task) == 3
