"""Waiting until the lab is quiescent, and the verdict on the guarded variants."""
from __future__ import annotations

import asyncio
import logging
import time

from .. import db
from ..config import Settings
from .counts import VariantCounts
from .incremental import IncrementalCounts

log = logging.getLogger("racelab.checker")

GUARDED = ("locked", "temporal")  # the design card's safe variants: make verify fails on them
# Every variant documented to lose nothing (the zoo's safe ones too): before their unapplied
# events are called lost, the wait is longer (a worker's workflow task may sit out Temporal's
# 10 s task timeout after a kill); what a lossy variant loses is final after settle_s.
SAFE_VARIANTS = GUARDED + ("sequential", "queue", "optimistic", "lock-only")
SAFE_SETTLE_S = 15.0


async def wait_for_quiescence(dsn: str, task_prefix: str = "", settle_s: float = 3.0, timeout_s: float = 300.0,
                              poll_s: float = 0.25, applied_settle_s: float = 1.0,
                              progress=None, ledger=None, safe_settle_s: float = SAFE_SETTLE_S,
                              variants: tuple[str, ...] | None = None) -> tuple[dict[str, VariantCounts], bool]:
    """Recompute the counts until every accepted event is applied, or nothing has changed for
    settle_s (safe_settle_s while a variant documented to lose nothing still has unapplied
    events). Returns (counts, quiescent).

    Even when every accepted event is applied, the counts must hold still for a moment
    (applied_settle_s): a retried event can still be in flight and add a duplicate.
    variants: the lab's (default: the environment's RACELAB_VARIANTS)."""
    if ledger is not None:  # only the ledger's events of the tasks looked at
        ledger = [e for e in ledger if e.task_id.startswith(task_prefix)]
    deadline = time.monotonic() + timeout_s
    last_key, stable_since, last_report = None, time.monotonic(), 0.0
    variants = Settings.from_env().variants if variants is None else variants
    counter = IncrementalCounts(task_prefix, variants=variants, ledger=ledger)
    async with db.connection(dsn) as conn:
        while True:  # each poll reads only what changed (incremental.py); compute() is its reference
            await counter.refresh(conn)
            results = counter.results()
            key = tuple(tuple(c.as_dict().values()) for c in results.values())
            now = time.monotonic()
            if key != last_key:
                last_key, stable_since = key, now
            stable_s = now - stable_since
            all_applied = all(c.lost == 0 for c in results.values())
            safe_waiting = any(c.lost for v, c in results.items() if v in SAFE_VARIANTS)
            needed = max(settle_s, safe_settle_s) if safe_waiting else settle_s
            if stable_s >= needed or (all_applied and stable_s >= min(applied_settle_s, settle_s)):
                # The verdict comes from a full read: a fresh counter loads everything at once. If it
                # sees what the incremental one did not, keep waiting with the fresh one.
                fresh = IncrementalCounts(task_prefix, variants=variants, ledger=ledger)
                await fresh.refresh(conn)
                full = fresh.results()
                if tuple(tuple(c.as_dict().values()) for c in full.values()) == key:
                    return results, True
                log.warning("the incremental counts differed from a full recount; counting on from the recount")
                counter, last_key, stable_since = fresh, None, time.monotonic()
                continue
            if now >= deadline:
                return results, False
            if progress and now - last_report >= 2.0:
                last_report = now
                progress("waiting for quiescence: " + ", ".join(
                    f"{c.variant} {c.applied}/{c.accepted}" for c in results.values() if c.accepted))
            await asyncio.sleep(poll_s)


def judged_variants(counts: dict[str, dict], guarded=GUARDED) -> list[str]:
    """The guarded variants a run drove (events accepted or acked), from the counts as dicts (the
    checker's JSON): a run that drove none of them (VARIANT=agent, unguarded) judged nothing."""
    return [v for v in guarded if any((counts.get(v) or {}).get(k) for k in ("accepted", "acked"))]


def verdict_line(results: dict[str, VariantCounts], problems: list[str], guarded=GUARDED) -> str:
    """The one-line verdict: FAIL with the problems, else OK naming the guarded variants judged."""
    if problems:
        return "FAIL: " + "; ".join(problems)
    judged = judged_variants({v: c.as_dict() for v, c in results.items()}, guarded)
    if not judged:
        return f"OK: no guarded variant ({', '.join(guarded)}) had events: the counts are reported, not judged"
    return (f"OK: {' and '.join(judged)} lost nothing, applied nothing twice, no broken ack, no counter drift")


def verdict(results: dict[str, VariantCounts], guarded=GUARDED) -> list[str]:
    """What is wrong with the guarded variants: any broken ack, lost update, duplicate
    application, phantom, unworked application or counter drift."""
    out = []
    for v in guarded:
        c = results.get(v)
        if c is None or c.safe:
            continue
        out.append(f"{v}: " + " ".join(f"{k}={getattr(c, k)}" for k in (
            "broken_acks", "lost", "duplicate_applications", "phantoms", "unworked", "counter_drift")
            if getattr(c, k)))
    return out
