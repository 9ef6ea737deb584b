"""The checker's counts, kept up to date incrementally: a refresh reads only what changed.

counts.compute is the reference: it recounts everything from the event log, the final states
and the effect rows. This module keeps, per task, the counts compute gives for that task alone
(computed by compute itself, on that task's rows) and sums them per variant; a refresh finds the
tasks whose rows changed since the previous refresh and recomputes only those. The inputs are
the same (event log, states, effects, the clients' ledgers) and nothing else is read.

What changed since the previous refresh, exactly: each refresh runs in one REPEATABLE READ
snapshot S_j; the rows to look at are the ones not visible in S_{j-1}. Every row carries `tx`,
the id of the transaction that last wrote it (db.SCHEMA), and any transaction not visible in a
snapshot has an id at or above that snapshot's xmin, so `tx >= pg_snapshot_xmin(S_{j-1})` bounds
the scan on an index and `NOT pg_visible_in_snapshot(tx, S_{j-1})` keeps exactly the new rows.
No timestamp or sequence number is trusted as a bound: a writer starved of CPU can take its
clock_timestamp() or nextval() long before its transaction id, and commit later still (seen:
a state written 5 ms "before" a refresh that could not yet see it).

The unit recomputed is a task (variant, task id) with all of its agents: a task-level state
(agent id "*", task.params.shared_state) is matched against every agent's events of its task.

A deleted state row (the Agentex API's DELETE /states/{id}) leaves a tombstone in deleted_states
with its transaction id, so its task is recounted too. Events and effects are never deleted by the
lab; a table that shrinks (a new lab on the same ports) resets the counter to a full load.
"""
from __future__ import annotations

import time
from array import array
from collections import defaultdict
from dataclasses import dataclass

from .counts import EffectCount, FinalState, LoggedEvent, VariantCounts, compute, percentile
from .read import agent_states

# summed per variant; lost is kept as "unapplied" and split into pending / lost at results()
SUMMED = ("tasks", "accepted", "applied", "unapplied", "duplicates", "duplicate_applications",
          "duplicate_side_effects", "phantoms", "unworked", "counter_drift", "reordered", "acked", "broken_acks")
# Events (with their tasks' states and effects) read at once by a full load: its memory high-water
# mark, which the process keeps (Python seldom returns freed arenas). The exporter does a full
# load every 5 minutes; with 50,000 its PSS rose in steps as the log grew (make soak, 2026-11-26:
# 29 -> 45 -> 59 MiB at the 5- and 10-minute loads). A load of 200,000 events, in one process:
# peak 53 MiB with 50,000, 6 MiB with 2,000, in the same time (8.3-8.7 s).
FULL_LOAD_CHUNK = 2_000
# The exporter's periodic full load (it lives for the lab's lifetime; make verify's is one-shot):
# smaller chunks, a smaller step in its PSS (a process of its own on the 36,000 events of a soak:
# 29.9 MiB after a full load with 2,000, 28.1 with 500; 255 and 287 ms).
EXPORTER_FULL_LOAD_CHUNK = 500
KEEP_YOUNG_S = 120.0  # unapplied events younger than this keep their accepted_at (for `pending`)

# each with tx, the id of its last writer (db.SCHEMA); deleted_states: a tombstone per deleted state
TABLES = ("events", "effects", "task_states", "deleted_states")


@dataclass(slots=True)  # one per task, for the exporter's lifetime: no __dict__ each
class TaskCounts:
    values: tuple                     # in SUMMED order
    young: list[float]                # accepted_at of recent unapplied events
    latencies: array | None = None
    last_applied_at: float | None = None
    label: str = ""                   # the variant it is summed under (counts.counted_as)


def _like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class IncrementalCounts:
    """Counts of LAB.md per variant for the tasks whose id starts with task_prefix.

    refresh(conn) reads what changed (conn: an asyncpg connection with the jsonb codec, e.g.
    db.connection); results(now, grace_s, prefix) gives compute()'s answer for the same data."""

    def __init__(self, task_prefix: str = "", variants=(), ledger=None, latencies: bool = True,
                 full_load_chunk: int = FULL_LOAD_CHUNK):
        self.task_prefix = task_prefix
        self.full_load_chunk = full_load_chunk
        self.like = _like(task_prefix)
        self.variants = tuple(variants)
        self.latencies = latencies
        self.ledger: dict[tuple, list] | None = None
        if ledger is not None:
            self.ledger = defaultdict(list)
            for entry in ledger:
                if entry.task_id.startswith(task_prefix):
                    self.ledger[(entry.variant, entry.task_id)].append(entry)
        self.reset()

    def reset(self) -> None:
        self.tasks: dict[tuple, TaskCounts] = {}
        self.totals: dict[str, list[int]] = defaultdict(lambda: [0] * len(SUMMED))
        self.young_tasks: set[tuple] = set()
        self._snapshot: str | None = None            # S_{j-1}, as text
        self._sizes: tuple[int, int] = (0, 0)        # the largest event seq and effect id at S_{j-1}
        self._generation = 0
        self._pct_cache: tuple | None = None
        self.last_refresh_ms: float | None = None
        self.last_dirty = 0

    # ------------------------------------------------------------------ refresh
    async def refresh(self, conn) -> int:
        """Bring the counts up to date; returns how many tasks were recomputed."""
        started = time.perf_counter()
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            row = await conn.fetchrow(
                """SELECT pg_current_snapshot()::text AS snap,
                          (SELECT coalesce(max(seq), 0) FROM events) AS events,
                          (SELECT coalesce(max(id), 0) FROM effects) AS effects""")
            sizes = (row["events"], row["effects"])
            if sizes[0] < self._sizes[0] or sizes[1] < self._sizes[1]:
                self.reset()  # the tables shrank: another lab's data; count from scratch
            if self._snapshot is None:
                dirty = await self._full_load(conn)
            else:
                keys = await self._changed_keys(conn)
                dirty = len(keys)
                if keys:
                    await self._recount(conn, keys)
            self._snapshot, self._sizes = row["snap"], sizes
        self._prune_young()
        self.last_refresh_ms = (time.perf_counter() - started) * 1000.0
        self.last_dirty = dirty
        return dirty

    async def _changed_keys(self, conn) -> set[tuple]:
        """The tasks with a row written by a transaction that S_{j-1} could not see."""
        keys: set[tuple] = set()
        for table in TABLES:
            rows = await conn.fetch(
                f"""SELECT DISTINCT variant, task_id FROM {table}
                    WHERE tx >= pg_snapshot_xmin($2::text::pg_snapshot) AND task_id LIKE $1
                      AND NOT pg_visible_in_snapshot(tx, $2::text::pg_snapshot)""", self.like, self._snapshot)
            keys.update((r["variant"], r["task_id"]) for r in rows)
        return keys

    async def _full_load(self, conn) -> int:
        """Every task, about full_load_chunk events' worth of tasks at a time (in the refresh's one
        snapshot): the rows of a million events never sit in memory at once, and the process's
        high-water mark stays that of one chunk."""
        sizes = {(r["variant"], r["task_id"]): r["n"] for r in await conn.fetch(
            """SELECT variant, task_id, count(*) AS n FROM events WHERE task_id LIKE $1
               GROUP BY variant, task_id""", self.like)}
        for r in await conn.fetch(
                """SELECT variant, task_id FROM task_states WHERE task_id LIKE $1
                   UNION SELECT variant, task_id FROM effects WHERE task_id LIKE $1""", self.like):
            sizes.setdefault((r["variant"], r["task_id"]), 1)
        for key in self.ledger or ():
            sizes.setdefault(key, 1)
        chunk: set[tuple] = set()
        events = 0
        for key in sorted(sizes):
            chunk.add(key)
            events += sizes[key]
            if events >= self.full_load_chunk:
                await self._recount(conn, chunk)
                chunk, events = set(), 0
        if chunk:
            await self._recount(conn, chunk)
        return len(self.tasks)

    async def _recount(self, conn, keys: set[tuple]) -> None:
        cols = [list(c) for c in zip(*keys)]
        join = """JOIN unnest($1::text[], $2::text[]) AS k(v, t) ON x.variant = k.v AND x.task_id = k.t"""
        events = await conn.fetch(
            f"""SELECT x.variant, x.task_id, x.agent_id, x.event_id, x.sequence_id,
                       extract(epoch FROM x.accepted_at)::float8 AS t FROM events x {join}""", *cols)
        states = await conn.fetch(
            f"SELECT x.variant, x.task_id, x.agent_id, x.state FROM task_states x {join}", *cols)
        effects = await conn.fetch(
            f"""SELECT x.variant, x.task_id, x.agent_id, x.event_id, count(*) AS n FROM effects x {join}
                GROUP BY x.variant, x.task_id, x.agent_id, x.event_id""", *cols)
        states = await agent_states(conn, events, states, effects)  # variant "agent": through its invariant
        self._apply(events, states, effects, keys)

    def _apply(self, events, states, effects, keys: set[tuple]) -> None:
        """Recompute the tasks of keys (and of every row given) with compute(), task by task."""
        by_task: dict[tuple, tuple[list, list, list]] = defaultdict(lambda: ([], [], []))
        for r in events:
            by_task[(r[0], r[1])][0].append(LoggedEvent(*r))
        for r in states:
            by_task[(r[0], r[1])][1].append(FinalState(*r))
        for r in effects:
            by_task[(r[0], r[1])][2].append(EffectCount(*r))
        for key in keys:
            by_task[key]
        horizon = time.time() - KEEP_YOUNG_S
        for key, (evs, sts, effs) in by_task.items():
            ledger = None if self.ledger is None else self.ledger.get(key, [])
            counts = compute(evs, sts, effs, ledger=ledger)
            old = self.tasks.pop(key, None)
            if old is not None:
                self._add(old.label, old.values, -1)
            self.young_tasks.discard(key)
            if not counts:  # nothing left of the task (cannot happen while rows are never deleted)
                continue
            (label, c), = counts.items()  # one task: one label, its variant's or "<variant>@shared"
            applied_ids = {eid for s in sts for eid in (s.state.get("history") or [])}
            young = sorted(e.accepted_at for e in evs if e.accepted_at > horizon and e.event_id not in applied_ids)
            values = (c.tasks, c.accepted, c.applied, c.lost, c.duplicates, c.duplicate_applications,
                      c.duplicate_side_effects, c.phantoms, c.unworked, c.counter_drift, c.reordered,
                      c.acked or 0, c.broken_acks or 0)
            entry = TaskCounts(values, young, array("d", c.latencies_ms) if self.latencies else None,
                               c.last_applied_at, label)
            self.tasks[key] = entry
            if young:
                self.young_tasks.add(key)
            self._add(label, values, 1)
        self._generation += 1

    def _prune_young(self) -> None:
        horizon = time.time() - KEEP_YOUNG_S
        for key in list(self.young_tasks):
            entry = self.tasks[key]
            if entry.young[0] <= horizon:
                entry.young = [t for t in entry.young if t > horizon]
                if not entry.young:
                    self.young_tasks.discard(key)

    def _add(self, variant: str, values: tuple, sign: int) -> None:
        totals = self.totals[variant]
        for i, v in enumerate(values):
            totals[i] += sign * v

    # ------------------------------------------------------------------ results
    def results(self, now: float | None = None, grace_s: float = 0.0, prefix: str = "") -> dict[str, VariantCounts]:
        """compute()'s result for the data of the last refresh: now/grace_s split unapplied events
        into pending and lost as compute does; prefix narrows to tasks whose id starts with it."""
        if prefix and not prefix.startswith(self.task_prefix) and not self.task_prefix.startswith(prefix):
            return {v: VariantCounts(v) for v in self.variants}
        scoped = bool(prefix) and prefix != self.task_prefix and prefix.startswith(self.task_prefix)
        if scoped:
            totals: dict[str, list[int]] = defaultdict(lambda: [0] * len(SUMMED))
            keys = [k for k in self.tasks if k[1].startswith(prefix)]
            for key in keys:
                t = totals[self.tasks[key].label]
                for i, v in enumerate(self.tasks[key].values):
                    t[i] += v
            young_keys = [k for k in self.young_tasks if k[1].startswith(prefix)]
        else:
            totals, keys, young_keys = self.totals, None, self.young_tasks
        pending: dict[str, int] = defaultdict(int)
        if now is not None:
            floor = now - grace_s
            for key in young_keys:
                pending[self.tasks[key].label] += sum(1 for t in self.tasks[key].young if t > floor)
        out = {v: VariantCounts(v) for v in self.variants}
        if self.ledger is not None:
            for c in out.values():
                c.acked = c.broken_acks = 0
        for variant in sorted(totals):
            t = dict(zip(SUMMED, totals[variant]))
            if t["tasks"] == 0 and variant not in out:
                continue
            c = out.setdefault(variant, VariantCounts(variant))
            for name in SUMMED:
                if name in ("unapplied", "acked", "broken_acks"):
                    continue
                setattr(c, name, t[name])
            c.pending = pending.get(variant, 0)
            c.lost = t["unapplied"] - c.pending
            if self.ledger is not None:
                c.acked, c.broken_acks = t["acked"], t["broken_acks"]
        if self.latencies:
            self._latency_stats(out, keys)
        return out

    def _latency_stats(self, out: dict[str, VariantCounts], keys) -> None:
        cache_key = (self._generation, None if keys is None else tuple(sorted(keys)))
        if self._pct_cache is None or self._pct_cache[0] != cache_key:
            merged: dict[str, array] = defaultdict(lambda: array("d"))
            last: dict[str, float] = {}
            for key in (self.tasks if keys is None else keys):
                entry = self.tasks[key]
                if entry.latencies:
                    merged[entry.label].extend(entry.latencies)
                if entry.last_applied_at is not None and entry.last_applied_at > last.get(entry.label, float("-inf")):
                    last[entry.label] = entry.last_applied_at
            stats = {v: (percentile(list(a), 50), percentile(list(a), 99), last.get(v)) for v, a in merged.items()}
            for v, t in last.items():
                stats.setdefault(v, (None, None, t))
            self._pct_cache = (cache_key, stats)
        for variant, (p50, p99, last_at) in self._pct_cache[1].items():
            if variant in out:
                c = out[variant]
                c.apply_latency_p50_ms, c.apply_latency_p99_ms, c.last_applied_at = p50, p99, last_at

