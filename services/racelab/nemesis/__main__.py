"""`python -m racelab.nemesis --faults SPEC [--duration 60s]`: run a fault schedule against the
running lab (beside `make load`, or on its own). Each fault is printed, appended to --log (JSON
Lines) and recorded in the lab's `faults` table. Exit status 1 if a fault could not be done or
its component did not come back."""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

from ..config import Settings
from .faults import KINDS, FaultSpecError, parse_schedule
from .record import inject
from .runtimes import FaultError, runtime_for
from .stopping import cancel_on_sigterm


def parse_seconds(text: str) -> float:
    from ..clients.load import parse_duration
    return parse_duration(text)


async def run_schedule(settings: Settings, spec: str, duration_s: float, log_path, run_id: str,
                       runtime_name: str | None = None) -> list:
    schedule = parse_schedule(spec, settings.variants)
    runtime = runtime_for(settings, runtime_name)
    plan = sorted((t, s.fault) for s in schedule for t in s.times(duration_s))
    if not plan:  # it exited 0 having done nothing
        raise FaultSpecError(f"{spec!r}: no fault falls within the run's {duration_s:g} s")
    start = time.monotonic()

    async def fire(t: float, fault):
        # each firing on its own: a long pause does not hold back the faults after it
        await asyncio.sleep(max(0.0, t - (time.monotonic() - start)))
        print(f"nemesis: {time.monotonic() - start:5.1f} s  {fault} ...", flush=True)
        record = await inject(settings, runtime, fault, run_id=run_id, log_path=log_path)
        print(f"nemesis: {fault}: " + (f"back after {record.down_s:.1f} s" if record.back_at
                                      else f"FAILED: {record.error}"), flush=True)
        return record
    return list(await asyncio.gather(*(fire(t, fault) for t, fault in plan)))


async def run_until_terminated(settings: Settings, spec: str, duration_s: float, log_path, run_id: str,
                               runtime_name: str | None = None) -> list | None:
    """run_schedule, or None when SIGTERM stopped it first. SIGTERM (what `make load` sends a
    nemesis that overruns its time, and what a supervisor sends) cancels the faults in progress,
    so that a pause ends with its SIGCONT/unpause: Python's default for SIGTERM is to exit on the
    spot, which left the paused pod stopped for good. (Ctrl-C cancels them too, through
    asyncio.run, and ends as KeyboardInterrupt.)"""
    terminated = cancel_on_sigterm()
    try:
        return await run_schedule(settings, spec, duration_s, log_path, run_id, runtime_name)
    except asyncio.CancelledError:
        if terminated():
            return None
        raise


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m racelab.nemesis", description="inject faults into the running lab on a schedule",
        epilog=f"kinds: {', '.join(KINDS)}. Example: --faults 'kill-pod:locked@10s,kill-redis@every30s'")
    parser.add_argument("--faults", required=True, help="schedule: FAULT@WHEN[,FAULT@WHEN...]")
    parser.add_argument("--duration", default="60s", help="how long the schedule runs (e.g. 60s, 2m)")
    parser.add_argument("--log", default="", help="append each fault as a JSON line to this file")
    parser.add_argument("--run-id", default="", help="the run (task id prefix) the faults belong to")
    parser.add_argument("--runtime", choices=("native", "docker"), default=None,
                        help="default: $RUNTIME, else native")
    args = parser.parse_args()
    settings = Settings.from_env()
    try:
        duration_s = parse_seconds(args.duration)
        records = asyncio.run(run_until_terminated(settings, args.faults, duration_s, args.log or None,
                                                   args.run_id, args.runtime))
    except (FaultSpecError, FaultError, ValueError) as exc:
        raise SystemExit(f"racelab nemesis: {exc}")
    except KeyboardInterrupt:
        print("nemesis: interrupted; the faults in progress were undone", flush=True)
        sys.exit(130)
    if records is None:
        print("nemesis: stopped (SIGTERM); the faults in progress were undone", flush=True)
        sys.exit(128 + signal.SIGTERM)
    sys.exit(1 if any(r.back_at is None for r in records) else 0)


if __name__ == "__main__":
    main()
