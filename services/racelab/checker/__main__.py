"""`python -m racelab.checker`: wait for quiescence, print the counts per variant.

Exit status: 0 when locked and temporal show no lost update, duplicate or counter drift;
1 when one of them does; 3 when the lab did not become quiescent within --timeout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from .. import db
from ..config import VARIANTS, Settings
from .counts import VariantCounts, compute, table
from .read import snapshot

GUARDED = ("locked", "temporal")


async def wait_for_quiescence(dsn: str, task_prefix: str = "", settle_s: float = 3.0, timeout_s: float = 300.0,
                              poll_s: float = 0.25, applied_settle_s: float = 1.0,
                              progress=None) -> tuple[dict[str, VariantCounts], bool]:
    """Recompute the counts until every accepted event is applied, or nothing has changed for
    settle_s. Returns (counts, quiescent).

    Even when every accepted event is applied, the counts must hold still for a moment
    (applied_settle_s): a retried event can still be in flight and add a duplicate."""
    deadline = time.monotonic() + timeout_s
    last_key, stable_since, last_report = None, time.monotonic(), 0.0
    async with db.connection(dsn) as conn:
        while True:
            results = compute(*await snapshot(conn, task_prefix), variants=VARIANTS)
            key = tuple(tuple(c.as_dict().values()) for c in results.values())
            now = time.monotonic()
            if key != last_key:
                last_key, stable_since = key, now
            stable_s = now - stable_since
            all_applied = all(c.lost == 0 for c in results.values())
            if stable_s >= settle_s or (all_applied and stable_s >= min(applied_settle_s, settle_s)):
                return results, True
            if now >= deadline:
                return results, False
            if progress and now - last_report >= 2.0:
                last_report = now
                progress("waiting for quiescence: " + ", ".join(
                    f"{c.variant} {c.applied}/{c.accepted}" for c in results.values()))
            await asyncio.sleep(poll_s)


def verdict(results: dict[str, VariantCounts]) -> list[str]:
    return [f"{v}: lost={results[v].lost} duplicates={results[v].duplicates} drift={results[v].counter_drift}"
            for v in GUARDED if v in results and not results[v].safe]


def main() -> None:
    parser = argparse.ArgumentParser(description="racelab checker: counts per variant from the event log and states")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--task-prefix", default="", help="only tasks whose id starts with this")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds without change that count as quiescent")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up waiting after this many seconds")
    args = parser.parse_args()
    settings = Settings.from_env()

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        results, quiescent = asyncio.run(wait_for_quiescence(
            settings.pg_dsn, args.task_prefix, args.settle, args.timeout, progress=progress))
    except OSError as exc:
        raise SystemExit(f"cannot reach the lab's PostgreSQL at {settings.pg_dsn}: {exc}. Is the lab up (make up)?")
    problems = verdict(results)
    if args.json:
        print(json.dumps({"quiescent": quiescent, "ok": not problems,
                          "variants": {v: c.as_dict() for v, c in results.items()}}, indent=2))
    else:
        print(table(results))
        if not quiescent:
            print(f"NOT QUIESCENT after {args.timeout:.0f} s: counts may still change")
        print("FAIL: " + "; ".join(problems) if problems else "OK: locked and temporal lost nothing, "
              "duplicated nothing, no counter drift")
    sys.exit(3 if not quiescent else 1 if problems else 0)


if __name__ == "__main__":
    main()
