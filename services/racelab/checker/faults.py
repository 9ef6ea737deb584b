"""What a fault did, from the event log and the final states only (pure, no I/O).

  in flight   events accepted at or before the fault and not applied by then (applied later,
              or never): the most model calls a fault may legitimately repeat
  recovery    seconds from the faulted component being back until every event accepted by
              then was applied (0 if all were applied before it was back); None while one of
              them is not applied at all, or when the component never came back
"""
from __future__ import annotations

from typing import Iterable, Iterator

from .counts import FinalState, LoggedEvent


def applied_times(states: Iterable[FinalState]) -> dict[tuple[str, str], float]:
    """(variant, event id) -> when it was first applied (event ids are unique per variant)."""
    out: dict[tuple[str, str], float] = {}
    for s in states:
        history = s.state.get("history") or []
        times = s.state.get("applied_at") or []
        for event_id, t in zip(history, times):
            key = (s.variant, event_id)
            if key not in out or t < out[key]:
                out[key] = t
    return out


def first_applications(events: Iterable[LoggedEvent], states: Iterable[FinalState]) \
        -> Iterator[tuple[LoggedEvent, float | None]]:
    """Each event once (its first record in the log; a re-send is the same event), with when it
    was first applied (None: never)."""
    applied = applied_times(states)
    seen: set[tuple[str, str]] = set()
    for e in events:
        key = (e.variant, e.event_id)
        if key not in seen:
            seen.add(key)
            yield e, applied.get(key)


def fault_window(events: Iterable[LoggedEvent], states: Iterable[FinalState], fault_at: float,
                 back_at: float | None, variants: Iterable[str] = ()) -> dict[str, dict]:
    out = {v: {"in_flight": 0, "recovery_s": 0.0 if back_at is not None else None} for v in variants}
    for e, t in first_applications(events, states):
        w = out.setdefault(e.variant, {"in_flight": 0, "recovery_s": 0.0 if back_at is not None else None})
        if e.accepted_at <= fault_at and (t is None or t > fault_at):
            w["in_flight"] += 1
        if back_at is not None and e.accepted_at <= back_at and w["recovery_s"] is not None:
            w["recovery_s"] = None if t is None else max(w["recovery_s"], t - back_at)
    return out
