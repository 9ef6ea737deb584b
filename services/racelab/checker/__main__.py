"""`python -m racelab.checker`: wait for quiescence, print the counts per variant.

Exit status: 0 when the guarded variants show no broken ack, lost update, duplicate application,
phantom, unworked application or counter drift;
1 when one of them does; 3 when the lab did not become quiescent within --timeout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys

from ..config import Settings
from .counts import table
from .ledger import LedgerError, ledger_files, read_ledger
from .quiescence import verdict, verdict_line, wait_for_quiescence


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0 (nan, inf, 0 or -5 would wait forever
    or not at all)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description="racelab checker: counts per variant from the event log and states")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--task-prefix", default="", help="only tasks whose id starts with this")
    parser.add_argument("--settle", type=seconds, default=3.0, help="seconds without change that count as quiescent")
    parser.add_argument("--timeout", type=seconds, default=300.0, help="give up waiting after this many seconds")
    parser.add_argument("--ledger", action="append", default=[], metavar="PATH",
                        help="a client ledger (JSON Lines of acked events), or a directory of ledger*.jsonl; "
                             "repeatable. With a ledger, acked events missing from the log count as broken acks")
    args = parser.parse_args()
    try:
        ledger = read_ledger(args.ledger) if args.ledger else None
        if args.ledger and not ledger_files(args.ledger):  # a directory without ledger*.jsonl: no truth to check
            raise LedgerError(f"no ledger file (ledger*.jsonl) in {', '.join(args.ledger)}")
    except (LedgerError, OSError) as exc:
        raise SystemExit(f"racelab checker: {exc}")
    settings = Settings.from_env()

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        results, quiescent = asyncio.run(wait_for_quiescence(
            settings.pg_dsn, args.task_prefix, args.settle, args.timeout, progress=progress, ledger=ledger))
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
        print(verdict_line(results, problems))
    sys.exit(3 if not quiescent else 1 if problems else 0)


if __name__ == "__main__":
    main()
