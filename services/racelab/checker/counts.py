"""The counts of LAB.md, computed from the clients' ledgers, the event log, the effect rows and
the final states only. No I/O.

Per task, summed per variant:
  acked                   distinct event ids in the clients' ledgers (only when a ledger is given)
  broken_acks             ledger ids not in the event log: an ack that was not durable
  accepted                distinct event ids in the event log
  applied                 distinct event ids in the final state's history
  lost                    accepted ids never in the final history
  duplicate_applications  history entries - distinct history entries
  duplicate_side_effects  effect rows - distinct events with an effect (repeated model calls)
  duplicates              the two above, summed (the dashboards' headline)
  phantoms                distinct history ids that were never accepted
  unworked                distinct applied (and accepted) ids with no effect row behind them
  counter_drift           processing_count - accepted (negative = lost increments)
  reordered               pairs applied in the opposite order of their sequence_ids
  apply latency           applied_at (state) - accepted_at (event log), per distinct applied event
  last_applied_at         the latest applied_at of a distinct applied event (for recovery times)

A task-level state (agent id "*", the lab knob task.params.shared_state: several agents of one
task appending to one history) is matched against the events of every agent of its task; the
event log keeps each event's real agent id.

While events still arrive (the exporter's live view), an accepted event not yet applied is
`pending` rather than lost until it is older than a grace period; after quiescence (the
checker's verdict) the grace is 0 and nothing is pending.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Iterable, NamedTuple

from ..state import SHARED_AGENT


class LoggedEvent(NamedTuple):
    variant: str
    task_id: str
    agent_id: str
    event_id: str
    sequence_id: int | None
    accepted_at: float  # epoch seconds


class FinalState(NamedTuple):
    variant: str
    task_id: str
    agent_id: str
    state: dict


class EffectCount(NamedTuple):  # effect rows of one (task, event)
    variant: str
    task_id: str
    agent_id: str
    event_id: str
    rows: int


@dataclass
class VariantCounts:
    variant: str
    tasks: int = 0
    acked: int | None = None       # None: no ledger was given
    broken_acks: int | None = None
    accepted: int = 0
    applied: int = 0
    lost: int = 0
    pending: int = 0
    duplicates: int = 0
    duplicate_applications: int = 0
    duplicate_side_effects: int = 0
    phantoms: int = 0
    unworked: int = 0
    counter_drift: int = 0
    reordered: int = 0
    apply_latency_p50_ms: float | None = None
    apply_latency_p99_ms: float | None = None
    last_applied_at: float | None = None
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def safe(self) -> bool:
        """What a guarded variant must show in every run, faults included (duplicate side
        effects are judged apart: a fault may repeat the model calls in flight)."""
        return (self.lost == 0 and self.duplicate_applications == 0 and self.counter_drift == 0
                and self.phantoms == 0 and self.unworked == 0 and not self.broken_acks)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("latencies_ms")
        return d


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def inversions(values: list[int]) -> int:
    """Number of pairs i < j with values[i] > values[j] (merge sort, O(n log n))."""
    def sort_count(seq: list[int]) -> tuple[list[int], int]:
        if len(seq) <= 1:
            return seq, 0
        mid = len(seq) // 2
        left, a = sort_count(seq[:mid])
        right, b = sort_count(seq[mid:])
        merged, count, i, j = [], a + b, 0, 0
        while i < len(left) and j < len(right):
            if left[i] <= right[j]:
                merged.append(left[i])
                i += 1
            else:
                merged.append(right[j])
                count += len(left) - i
                j += 1
        return merged + left[i:] + right[j:], count
    return sort_count(values)[1]


SHARED_SUFFIX = "@shared"  # no regex metacharacter: dashboards match variants with =~


def counted_as(variant: str, agent_id: str) -> str:
    """The label a task's counts are summed under: a task-level (shared) state is counted apart,
    as "<variant>@shared", so a design's per-(task, agent) guarantee and what it does to state
    that agents share are never mixed (the matrix's multi-agent case loses updates on purpose)."""
    return variant + SHARED_SUFFIX if agent_id == SHARED_AGENT else variant


def compute(events: Iterable[LoggedEvent], states: Iterable[FinalState],
            effects: Iterable[EffectCount], variants: Iterable[str] = (),
            now: float | None = None, grace_s: float = 0.0,
            ledger: Iterable | None = None) -> dict[str, VariantCounts]:
    """ledger: LedgerEntry rows (racelab.checker.ledger) of the clients that sent these events;
    None when no client ledger is at hand (the live exporter), and then acked/broken_acks are None."""
    events, states, effects = list(events), list(states), list(effects)
    ledger = None if ledger is None else list(ledger)
    # A task whose state is task-level (agent id SHARED_AGENT, task.params.shared_state): every
    # agent's events, effects and acks of that task are matched against that one state. Any row
    # under the shared id makes the task shared (a model call is recorded before the state's first
    # write; a client may even name its agent "*"), so a task is never counted under two labels.
    shared = {(r.variant, r.task_id) for r in (*events, *states, *effects, *(ledger or ()))
              if r.agent_id == SHARED_AGENT}

    def key_of(variant: str, task_id: str, agent_id: str) -> tuple:
        return (variant, task_id, SHARED_AGENT) if (variant, task_id) in shared else (variant, task_id, agent_id)

    logged: dict[tuple, dict[str, LoggedEvent]] = defaultdict(dict)
    for e in events:
        logged[key_of(e.variant, e.task_id, e.agent_id)][e.event_id] = e
    # A shared task's state is its shared row: a per-agent row beside it (one that task/create
    # wrote before the knob was seen, say) is not where its history must be, and a task is
    # counted under one label only.
    final = {(s.variant, s.task_id, s.agent_id): s.state for s in states
             if s.agent_id == SHARED_AGENT or (s.variant, s.task_id) not in shared}
    effect_rows: dict[tuple, dict[str, int]] = defaultdict(dict)
    for f in effects:
        rows = effect_rows[key_of(f.variant, f.task_id, f.agent_id)]
        rows[f.event_id] = rows.get(f.event_id, 0) + f.rows
    acked: dict[tuple, set[str]] | None = None
    if ledger is not None:
        acked = defaultdict(set)
        for entry in ledger:
            acked[key_of(entry.variant, entry.task_id, entry.agent_id)].add(entry.event_id)

    result = {v: VariantCounts(v) for v in variants}
    if acked is not None:
        for counts in result.values():
            counts.acked = counts.broken_acks = 0
    for key in sorted(set(logged) | set(final) | set(effect_rows) | set(acked or ())):
        variant = counted_as(key[0], key[2])
        counts = result.setdefault(variant, VariantCounts(variant))
        if acked is not None and counts.acked is None:
            counts.acked = counts.broken_acks = 0
        accepted = logged.get(key, {})
        state = final.get(key) or {}
        history: list[str] = list(state.get("history") or [])
        applied_at: list[float] = list(state.get("applied_at") or [])
        applied = set(history)

        counts.tasks += 1
        counts.accepted += len(accepted)
        counts.applied += len(applied)
        unapplied = [accepted[e].accepted_at for e in set(accepted) - applied]
        young = sum(1 for t in unapplied if now is not None and t > now - grace_s)
        counts.pending += young
        counts.lost += len(unapplied) - young
        effects_of = effect_rows.get(key, {})
        dup_applications = len(history) - len(applied)
        dup_side_effects = sum(n - 1 for n in effects_of.values())
        counts.duplicate_applications += dup_applications
        counts.duplicate_side_effects += dup_side_effects
        counts.duplicates += dup_applications + dup_side_effects
        counts.phantoms += len(applied - set(accepted))
        counts.unworked += sum(1 for e in applied if e in accepted and e not in effects_of)
        counts.counter_drift += int(state.get("processing_count") or 0) - len(accepted)
        if acked is not None:
            seen_acked = acked.get(key, set())
            counts.acked += len(seen_acked)
            counts.broken_acks += len(seen_acked - set(accepted))

        seen: set[str] = set()
        order: list[int] = []
        for i, event_id in enumerate(history):
            if event_id in seen:
                continue
            seen.add(event_id)
            logged_event = accepted.get(event_id)
            if logged_event is None:
                continue
            if logged_event.sequence_id is not None:
                order.append(logged_event.sequence_id)
            if i < len(applied_at):
                counts.latencies_ms.append((applied_at[i] - logged_event.accepted_at) * 1000.0)
                if counts.last_applied_at is None or applied_at[i] > counts.last_applied_at:
                    counts.last_applied_at = applied_at[i]
        counts.reordered += inversions(order)

    for counts in result.values():
        counts.apply_latency_p50_ms = percentile(counts.latencies_ms, 50)
        counts.apply_latency_p99_ms = percentile(counts.latencies_ms, 99)
    return result


_HEADED = {  # column -> header
    "variant": "variant", "tasks": "tasks", "acked": "acked", "broken_acks": "broken acks",
    "accepted": "accepted", "applied": "applied", "lost": "lost", "duplicate_applications": "dup apply",
    "duplicate_side_effects": "dup effects", "phantoms": "phantoms", "unworked": "unworked",
    "counter_drift": "drift", "reordered": "reordered", "apply_latency_p50_ms": "apply p50 ms",
    "apply_latency_p99_ms": "apply p99 ms"}
COLUMNS = tuple(_HEADED)
HEADERS = tuple(_HEADED.values())


def table(results: dict[str, VariantCounts]) -> str:
    columns = [c for c in COLUMNS if c not in ("acked", "broken_acks")
               or any(getattr(r, c) is not None for r in results.values())]
    headers = tuple(_HEADED[c] for c in columns)
    rows = [headers]
    for counts in results.values():
        d = counts.as_dict()
        rows.append(tuple("-" if d[c] is None else f"{d[c]:.0f}" if isinstance(d[c], float) else str(d[c])
                          for c in columns))
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
