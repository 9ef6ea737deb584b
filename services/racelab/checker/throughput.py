"""Whether a variant keeps up with its load, from the event log and the final states only (pure).

Over a window [start, end] (a load run): acked/s is the events accepted in it over its length,
applied/s the events first applied in it over the same length; their ratio is 1.0 for a variant
whose processing keeps pace with its acks, less for one that builds a backlog (the events accepted
by `end` and not applied by then). Applied events that were accepted before `start` count too:
a backlog that drains is throughput.
"""
from __future__ import annotations

from typing import Iterable

from .counts import FinalState, LoggedEvent, percentile
from .faults import first_applications


def keep_up(events: Iterable[LoggedEvent], states: Iterable[FinalState], start: float, end: float,
            variants: Iterable[str] = ()) -> dict[str, dict]:
    length = max(1e-9, end - start)
    acc: dict[str, dict] = {v: {"acked": 0, "applied": 0, "backlog_at_end": 0, "latencies": []} for v in variants}
    for e, t in first_applications(events, states):
        a = acc.setdefault(e.variant, {"acked": 0, "applied": 0, "backlog_at_end": 0, "latencies": []})
        if start <= e.accepted_at <= end:
            a["acked"] += 1
        if t is not None and start <= t <= end:
            a["applied"] += 1
        if e.accepted_at <= end and (t is None or t > end):
            a["backlog_at_end"] += 1
        if t is not None and start <= e.accepted_at <= end:
            a["latencies"].append((t - e.accepted_at) * 1000.0)
    out = {}
    for v, a in acc.items():
        out[v] = {"acked_per_s": a["acked"] / length, "applied_per_s": a["applied"] / length,
                  "ratio": a["applied"] / a["acked"] if a["acked"] else None,
                  "backlog_at_end": a["backlog_at_end"],
                  "apply_p50_ms": percentile(a["latencies"], 50), "apply_p99_ms": percentile(a["latencies"], 99)}
    return out
