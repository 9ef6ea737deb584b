"""The counts of LAB.md, computed from the event log and the final states only. No I/O.

Per task, summed per variant:
  accepted      distinct event ids in the event log
  applied       distinct event ids in the final state's history
  lost          accepted ids never in the final history
  duplicates    (history entries - distinct history entries)
                + (effect rows - distinct events with an effect)
  counter_drift processing_count - accepted (negative = lost increments)
  reordered     pairs applied in the opposite order of their sequence_ids
  apply latency applied_at (state) - accepted_at (event log), per distinct applied event

While events still arrive (the exporter's live view), an accepted event not yet applied is
`pending` rather than lost until it is older than a grace period; after quiescence (the
checker's verdict) the grace is 0 and nothing is pending.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Iterable, NamedTuple


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


class EffectCount(NamedTuple):
    variant: str
    task_id: str
    agent_id: str
    event_id: str
    rows: int


@dataclass
class VariantCounts:
    variant: str
    tasks: int = 0
    accepted: int = 0
    applied: int = 0
    lost: int = 0
    pending: int = 0
    duplicates: int = 0
    counter_drift: int = 0
    reordered: int = 0
    apply_latency_p50_ms: float | None = None
    apply_latency_p99_ms: float | None = None
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def safe(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and self.counter_drift == 0

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


def compute(events: Iterable[LoggedEvent], states: Iterable[FinalState],
            effects: Iterable[EffectCount], variants: Iterable[str] = (),
            now: float | None = None, grace_s: float = 0.0) -> dict[str, VariantCounts]:
    logged: dict[tuple, dict[str, LoggedEvent]] = defaultdict(dict)
    for e in events:
        logged[(e.variant, e.task_id, e.agent_id)][e.event_id] = e
    final = {(s.variant, s.task_id, s.agent_id): s.state for s in states}
    effect_rows: dict[tuple, list[int]] = defaultdict(list)
    for f in effects:
        effect_rows[(f.variant, f.task_id, f.agent_id)].append(f.rows)

    result = {v: VariantCounts(v) for v in variants}
    for key in sorted(set(logged) | set(final) | set(effect_rows)):
        variant = key[0]
        counts = result.setdefault(variant, VariantCounts(variant))
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
        counts.duplicates += (len(history) - len(applied)) + sum(n - 1 for n in effect_rows.get(key, []))
        counts.counter_drift += int(state.get("processing_count") or 0) - len(accepted)

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
        counts.reordered += inversions(order)

    for counts in result.values():
        counts.apply_latency_p50_ms = percentile(counts.latencies_ms, 50)
        counts.apply_latency_p99_ms = percentile(counts.latencies_ms, 99)
    return result


COLUMNS = ("variant", "tasks", "accepted", "applied", "lost", "duplicates", "counter_drift", "reordered",
           "apply_latency_p50_ms", "apply_latency_p99_ms")
HEADERS = ("variant", "tasks", "accepted", "applied", "lost", "duplicates", "drift", "reordered",
           "apply p50 ms", "apply p99 ms")


def table(results: dict[str, VariantCounts]) -> str:
    rows = [HEADERS]
    for counts in results.values():
        d = counts.as_dict()
        rows.append(tuple("-" if d[c] is None else f"{d[c]:.0f}" if isinstance(d[c], float) else str(d[c])
                          for c in COLUMNS))
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
