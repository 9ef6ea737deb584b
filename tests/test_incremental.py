"""The incremental checker (racelab.checker.incremental) against the reference, counts.compute.

On a database of its own in the lab's PostgreSQL (so the lab's exporter never sees these rows):
a few thousand events, states and effects written directly, counted incrementally and by a full
recount after every change: new events and tasks, states rewritten (lost, duplicated and phantom
entries), new effect rows (repeated model calls), an event whose seq was taken before a later
one's but which commits after a refresh (a BIGSERIAL commits out of order), a state write in
flight across a refresh, and a client ledger with a broken ack. No timing is asserted.
"""
from __future__ import annotations

import asyncio
import random
import time
import uuid


from racelab import db
from racelab.checker.counts import compute
from racelab.checker.incremental import EXPORTER_FULL_LOAD_CHUNK, IncrementalCounts
from racelab.checker.ledger import LedgerEntry
from racelab.checker.read import snapshot
from racelab.state import SHARED_AGENT, apply_events

VARIANTS = ("inc-a", "inc-b")
AGENT = "agent-inc"


async def insert_events(conn, variant: str, task_id: str, n: int, agent: str = AGENT) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    await conn.execute(
        """INSERT INTO events (variant, event_id, task_id, agent_id, sequence_id, content)
           SELECT $1, e, $2, $3, s, '{"type": "text"}'::jsonb FROM unnest($4::text[]) WITH ORDINALITY AS u(e, s)""",
        variant, task_id, agent, ids)
    return ids


async def add_effects(conn, variant: str, task_id: str, event_ids: list[str]) -> None:
    await db.record_effects(conn, variant, task_id, AGENT, str(uuid.uuid4()), event_ids)


async def assert_equal(conn, counter: IncrementalCounts, prefix: str, ledger=None, now=None, grace_s=0.0,
                       scope: str = "") -> None:
    await counter.refresh(conn)
    logged, states, effects = await snapshot(conn, scope or prefix)
    if ledger is not None:
        ledger = [e for e in ledger if e.task_id.startswith(scope or prefix)]
    expected = compute(logged, states, effects, variants=VARIANTS, now=now, grace_s=grace_s, ledger=ledger)
    got = counter.results(now=now, grace_s=grace_s, prefix=scope)
    skip = () if counter.latencies else ("apply_latency_p50_ms", "apply_latency_p99_ms", "last_applied_at")

    def plain(results):
        return {v: {k: x for k, x in c.as_dict().items() if k not in skip} for v, c in results.items()}
    assert plain(got) == plain(expected)


def test_incremental_counts_equal_a_full_recount(scratch_db):
    asyncio.run(_scenario(scratch_db))


async def _scenario(dsn: str) -> None:
    rng = random.Random(12)
    prefix = "inc-"
    async with db.connection(dsn) as conn, db.connection(dsn) as other, db.connection(dsn) as third:
        # 2 variants x 40 tasks x 30 events, states with a mix of applied, lost and duplicated entries
        events: dict[tuple, list[str]] = {}
        for variant in VARIANTS:
            for t in range(40):
                key = (variant, f"{prefix}{'x' if t % 4 == 0 else 'y'}{t:03d}")
                events[key] = await insert_events(conn, *key, 30)
        for (variant, task_id), ids in events.items():
            applied = [e for e in ids if rng.random() < 0.7]
            if rng.random() < 0.2:
                applied.append(applied[0])  # a duplicate application
            if rng.random() < 0.1:
                applied.append("phantom-" + uuid.uuid4().hex)
            await db.write_state(conn, variant, task_id, AGENT, apply_events(None, applied))
            await add_effects(conn, variant, task_id, applied[: len(applied) - 2])
        ledger = [LedgerEntry(v, t, AGENT, e) for (v, t), ids in events.items() for e in ids[:10]]
        ledger.append(LedgerEntry("inc-a", f"{prefix}y001", AGENT, "acked-but-never-logged"))

        plain = IncrementalCounts(prefix, variants=VARIANTS)
        with_ledger = IncrementalCounts(prefix, variants=VARIANTS, ledger=ledger)
        live = IncrementalCounts(variants=VARIANTS, latencies=False,  # as the exporter keeps it
                                 full_load_chunk=EXPORTER_FULL_LOAD_CHUNK)
        await assert_equal(conn, plain, prefix)
        await assert_equal(conn, with_ledger, prefix, ledger=ledger)
        await assert_equal(conn, live, prefix, now=time.time(), grace_s=10.0)
        assert plain.results()["inc-a"].accepted == 1200

        for round_ in range(3):
            # new events for old and new tasks, states rewritten, effects repeated
            for (variant, task_id), ids in rng.sample(sorted(events.items()), 12):
                ids += await insert_events(conn, variant, task_id, 5)
                row = await db.read_state(conn, variant, task_id, AGENT)
                new = [e for e in ids[-5:] if rng.random() < 0.8]
                await db.write_state(conn, variant, task_id, AGENT, apply_events(row["state"], new))
                await add_effects(conn, variant, task_id, new + new[:1])
            # two agents of one task, one task-level state (task.params.shared_state): a refresh
            # that sees only the second agent's new events must recount the whole task
            shared = ("inc-a", f"{prefix}shared")
            if round_ == 0:
                mine = await insert_events(conn, *shared, 4)
                await db.write_state(conn, *shared, SHARED_AGENT, apply_events(None, mine))
                await add_effects(conn, *shared, mine)
                await assert_equal(conn, plain, prefix)
            await insert_events(conn, *shared, 2, agent="agent-inc-2")
            key = ("inc-b", f"{prefix}new{round_}")
            events[key] = await insert_events(conn, *key, 7)
            # an event whose seq is taken now but which commits after the next refresh, while a
            # later one commits before it; and a state write in flight across that refresh
            late = ("inc-a", f"{prefix}y005")
            tx = other.transaction()
            await tx.start()
            await other.execute("UPDATE tasks SET status = status")  # an xid before the seq
            late_ids = await insert_events(other, *late, 1)
            tx2 = third.transaction()
            await tx2.start()
            row = await db.read_state(third, "inc-b", f"{prefix}y006", AGENT)
            await db.write_state(third, "inc-b", f"{prefix}y006", AGENT,
                                 apply_events(row["state"], events[("inc-b", f"{prefix}y006")][:3]))
            events[late] += await insert_events(conn, *late, 2)  # higher seqs, committed first
            for counter in (plain, live):
                await assert_equal(conn, counter, prefix, now=time.time(), grace_s=10.0)
            await tx.commit()
            await tx2.commit()
            events[late] += late_ids
            await assert_equal(conn, plain, prefix)
            await assert_equal(conn, with_ledger, prefix, ledger=ledger)
            await assert_equal(conn, live, prefix, now=time.time(), grace_s=10.0)
            await assert_equal(conn, live, prefix, now=time.time() + 60, grace_s=10.0)  # pending has aged
            await assert_equal(conn, plain, prefix, scope=f"{prefix}x")  # a run's tasks only
        got = plain.results()["inc-a"]
        assert got.lost > 0 and got.duplicate_applications > 0 and got.phantoms > 0
        assert with_ledger.results()["inc-a"].broken_acks == 1


def test_a_write_whose_marks_predate_the_refresh_is_still_seen(scratch_db):
    """A writer starved of CPU can take its clock_timestamp() and nextval() before a refresh and
    its transaction id after it (seen in a bench run: a state written 5 ms "before" the refresh
    that could not see it). Here the marks are made old on purpose: a state row dated 2000 and an
    event with a seq below every other; both commit after a refresh and must be counted at the
    next one."""
    asyncio.run(_old_marks(scratch_db))


async def _old_marks(dsn: str) -> None:
    prefix = f"old-{uuid.uuid4().hex[:6]}-"
    task = prefix + "t"
    async with db.connection(dsn) as conn, db.connection(dsn) as late:
        ids = await insert_events(conn, VARIANTS[0], task, 3)
        await db.write_state(conn, VARIANTS[0], task, AGENT, apply_events(None, ids[:1]))
        counter = IncrementalCounts(prefix, variants=VARIANTS)
        await assert_equal(conn, counter, prefix)
        assert counter.results()[VARIANTS[0]].applied == 1
        tx = late.transaction()
        await tx.start()  # begun before the refresh, no transaction id yet
        await assert_equal(conn, counter, prefix)
        await late.execute(
            """UPDATE task_states SET state = $4, updated_at = '2000-01-01'
               WHERE variant = $1 AND task_id = $2 AND agent_id = $3""",
            VARIANTS[0], task, AGENT, apply_events(None, ids))
        await late.execute(
            """INSERT INTO events (seq, variant, event_id, task_id, agent_id, sequence_id, content)
               VALUES (-1 - (random() * 1e9)::bigint, $1, $2, $3, $4, 4, '{"type": "text"}'::jsonb)""",
            VARIANTS[0], str(uuid.uuid4()), task, AGENT)
        await tx.commit()
        await assert_equal(conn, counter, prefix)
        got = counter.results()[VARIANTS[0]]
        assert (got.accepted, got.applied, got.lost) == (4, 3, 1)


def test_a_deleted_state_is_seen(scratch_db):
    """The Agentex API deletes state rows (DELETE /states/{id}): the tombstone makes the next
    refresh recount the task."""
    asyncio.run(_deleted(scratch_db))


async def _deleted(dsn: str) -> None:
    prefix = f"del-{uuid.uuid4().hex[:6]}-"
    task = prefix + "t"
    async with db.connection(dsn) as conn:
        ids = await insert_events(conn, VARIANTS[0], task, 2)
        await db.write_state(conn, VARIANTS[0], task, AGENT, apply_events(None, ids))
        counter = IncrementalCounts(prefix, variants=VARIANTS)
        await assert_equal(conn, counter, prefix)
        assert counter.results()[VARIANTS[0]].applied == 2
        await conn.execute("DELETE FROM task_states WHERE variant = $1 AND task_id = $2", VARIANTS[0], task)
        await assert_equal(conn, counter, prefix)
        assert counter.results()[VARIANTS[0]].applied == 0
