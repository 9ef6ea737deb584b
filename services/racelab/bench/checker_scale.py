"""The checker at scale: one refresh of the incremental counter with N events in the log.

On a scratch database in the lab's PostgreSQL (dropped afterwards), synthetic rows are written
with SQL (tasks of 30 events; `locked`/`temporal`-like tasks fully applied with one effect per
event, `unguarded`-like ones keeping 1 event in 10), grown to each size in turn. At each size:
the full load of a fresh counter, then one refresh after a small change (new events, state
writes, effects, as a few seconds of load bring). At the largest size also a full recount by
counts.compute (the reference; the counts must be equal) and `make verify`'s wait for quiescence.
"""
from __future__ import annotations

import time
import uuid

import asyncpg

from .. import db
from ..checker.counts import compute
from ..checker.incremental import IncrementalCounts
from ..checker.quiescence import wait_for_quiescence
from ..checker.read import snapshot

EVENTS_PER_TASK = 30
VARIANTS = ("unguarded", "locked", "temporal")


async def grow(conn, start: int, stop: int) -> None:
    """Events start..stop-1 (event g belongs to task g // 30, of variant task % 3), their states
    and effects, as if applied an hour ago."""
    await conn.execute(
        """INSERT INTO events (variant, event_id, task_id, agent_id, sequence_id, content, accepted_at)
           SELECT (ARRAY['unguarded','locked','temporal'])[(g / 30) % 3 + 1], 'e' || g, 'scale-' || (g / 30),
                  'agent', g % 30, '{"type":"text","author":"user","content":"x"}'::jsonb,
                  now() - interval '1 hour' + g * interval '1 microsecond'
           FROM generate_series($1::bigint, $2::bigint - 1) g""", start, stop)
    first_task, last_task = start // EVENTS_PER_TASK, (stop - 1) // EVENTS_PER_TASK
    await conn.execute(
        """INSERT INTO task_states (variant, task_id, agent_id, state, version)
           SELECT variant, task_id, agent_id,
                  jsonb_build_object('processing_count', count(*), 'history', jsonb_agg(event_id ORDER BY seq),
                                     'applied_at', jsonb_agg(extract(epoch FROM accepted_at) + 0.2 ORDER BY seq)), 1
           FROM events WHERE task_id = ANY($1::text[]) AND (variant <> 'unguarded' OR sequence_id % 10 = 0)
           GROUP BY variant, task_id, agent_id
           ON CONFLICT (variant, task_id, agent_id) DO UPDATE SET state = EXCLUDED.state""",
        [f"scale-{t}" for t in range(first_task, last_task + 1)])
    await conn.execute(
        """INSERT INTO effects (variant, task_id, agent_id, call_id, event_id)
           SELECT variant, task_id, agent_id, gen_random_uuid(), event_id FROM events
           WHERE seq > (SELECT coalesce(max(seq), 0) FROM events) - ($2::bigint - $1::bigint)
             AND (variant <> 'unguarded' OR sequence_id % 10 = 0)""", start, stop)


async def small_change(conn, n: int) -> None:
    """What a few seconds of load bring: a new task of 30 events per variant, applied, with effects."""
    for variant in ("locked", "temporal", "unguarded")[:n]:
        task_id = f"scale-new-{uuid.uuid4().hex[:8]}"
        ids = [f"{task_id}-{i}" for i in range(EVENTS_PER_TASK)]
        await conn.execute(
            """INSERT INTO events (variant, event_id, task_id, agent_id, sequence_id, content)
               SELECT $1, e, $2, 'agent', s, '{"type":"text"}'::jsonb FROM unnest($3::text[]) WITH ORDINALITY u(e, s)""",
            variant, task_id, ids)
        await db.write_state(conn, variant, task_id, "agent",
                             {"processing_count": len(ids), "history": ids, "applied_at": [time.time()] * len(ids)})
        await db.record_effects(conn, variant, task_id, "agent", str(uuid.uuid4()), ids)


async def measure(admin_dsn: str, sizes: tuple[int, ...], say) -> dict:
    name = f"racelab_bench_checker_{uuid.uuid4().hex[:8]}"
    dsn = admin_dsn.rsplit("/", 1)[0] + "/" + name
    await db.ensure_database(admin_dsn, dsn)
    out: dict = {"refresh_ms": {}, "full_load_s": {}}
    try:
        async with db.connection(dsn) as conn:
            await conn.execute("SET synchronous_commit = off")  # scratch data: fast to write
            have = 0
            for size in sizes:
                say(f"  writing {size:,} events (synthetic) ...")
                step = 200_000
                while have < size:
                    await grow(conn, have, min(size, have + step))
                    have = min(size, have + step)
                await conn.execute("ANALYZE")
                counter = IncrementalCounts(variants=VARIANTS, latencies=False)
                t = time.perf_counter()
                await counter.refresh(conn)
                out["full_load_s"][str(size)] = time.perf_counter() - t
                await counter.refresh(conn)  # the first refresh after a full load also looks at older writers
                timings = []
                for _ in range(3):
                    await small_change(conn, 3)
                    await counter.refresh(conn)
                    counter.results(now=time.time(), grace_s=10.0)
                    timings.append(counter.last_refresh_ms)
                out["refresh_ms"][str(size)] = sorted(timings)[1]
                say(f"  {size:,} events: full load {out['full_load_s'][str(size)]:.1f} s, "
                    f"one refresh {out['refresh_ms'][str(size)]:.0f} ms (median of 3, 90 new events each)")
            t = time.perf_counter()
            expected = compute(*await snapshot(conn), variants=VARIANTS)
            out["full_recount_s"] = time.perf_counter() - t
            got = counter.results()
            skip = ("apply_latency_p50_ms", "apply_latency_p99_ms", "last_applied_at")
            out["equal_to_full_recount"] = all(
                {k: x for k, x in got[v].as_dict().items() if k not in skip}
                == {k: x for k, x in expected[v].as_dict().items() if k not in skip} for v in VARIANTS)
            out["events"] = sum(c.accepted for c in expected.values())
            say(f"  full recount (counts.compute) at {out['events']:,} events: {out['full_recount_s']:.1f} s; "
                f"equal counts: {out['equal_to_full_recount']}")
        t = time.perf_counter()
        await wait_for_quiescence(dsn)
        out["verify_s"] = time.perf_counter() - t
        say(f"  make verify's wait for quiescence: {out['verify_s']:.1f} s")
    finally:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
    return out
