"""`python -m racelab.clients.chaos` (make chaos): a burst per fault kind, the fault injected
mid-burst, then the checker's counts with the client's ledger, judged for the guarded variants.

For each kind: an at-least-once burst (retries with the same event id, a share redelivered)
spread over a few seconds to every variant under test; at a set point of the burst the nemesis
injects the fault (a pod fault hits one pod of every variant at once); the faulted component
comes back (supervisor or `docker compose start` restarts it); the checker waits for
quiescence. A guarded variant passes when it shows 0 broken acks, 0 lost, 0 duplicate
applications, 0 phantoms, 0 unworked applications, no counter drift, no more duplicate side
effects than events in flight at the fault, and every acked event applied within
RECOVERY_LIMIT_S of the component being back. Everything of a run goes to one results folder.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import db
from ..checker.counts import VariantCounts
from ..checker.faults import fault_window
from ..checker.quiescence import GUARDED, wait_for_quiescence
from ..checker.read import snapshot
from ..config import DEFAULT_VARIANTS, Settings
from ..nemesis.faults import KINDS, TARGETED, Fault
from ..nemesis.record import FaultRecord, inject
from ..nemesis.runtimes import runtime_for
from ..nemesis.stopping import cancel_on_sigterm
from .burst import register_run, run_burst

RECOVERY_LIMIT_S = 15.0


@dataclass
class ChaosOutcome:
    kind: str
    task_prefix: str
    faults: list[FaultRecord]
    in_flight: dict[str, int]                  # per variant: accepted by the fault, applied after it or never
    results: dict[str, VariantCounts]
    quiescent: bool
    send_errors: list[str] = field(default_factory=list)
    retries: int = 0
    recovery: dict[str, float | None] = field(default_factory=dict)  # per variant, checker.faults

    @property
    def back_at(self) -> float | None:
        backs = [f.back_at for f in self.faults]
        return None if not backs or None in backs else max(backs)

    def recovery_s(self, variant: str) -> float | None:
        """Seconds from the component being back until every event of the variant accepted by
        then was applied (0 when all were applied before it was back); None if some never were."""
        c = self.results.get(variant)
        if c is None or c.lost or c.broken_acks:
            return None
        return self.recovery.get(variant)

    def problems(self, variant: str) -> list[str]:
        """Why a guarded variant fails this fault (empty: it passes)."""
        c = self.results[variant]
        out = [f"{k}={getattr(c, k)}" for k in ("broken_acks", "lost", "duplicate_applications", "phantoms",
                                               "unworked", "counter_drift") if getattr(c, k)]
        if c.duplicate_side_effects > self.in_flight.get(variant, 0):
            out.append(f"duplicate_side_effects={c.duplicate_side_effects} > {self.in_flight.get(variant, 0)} "
                       "in flight at the fault")
        recovery = self.recovery_s(variant)
        if recovery is None or recovery > RECOVERY_LIMIT_S:
            out.append(f"recovery={'never' if recovery is None else f'{recovery:.1f} s'} > {RECOVERY_LIMIT_S:.0f} s")
        if not self.quiescent:
            out.append("not quiescent")
        if self.send_errors:
            out.append(f"{len(self.send_errors)} sends given up")
        if self.back_at is None:
            out.append("fault: " + "; ".join(f.error for f in self.faults if f.error))
        return out

    def row(self, variant: str) -> dict:
        c = self.results[variant]
        recovery = self.recovery_s(variant)
        return {"fault": self.kind, "variant": variant, "acked": c.acked, "broken_acks": c.broken_acks,
                "lost": c.lost, "duplicate_applications": c.duplicate_applications,
                "duplicate_side_effects": c.duplicate_side_effects, "in_flight": self.in_flight.get(variant, 0),
                "phantoms": c.phantoms, "counter_drift": c.counter_drift,
                "recovery_s": None if recovery is None else round(recovery, 2),
                "down_s": None if self.back_at is None else round(self.back_at - min(f.at for f in self.faults), 2),
                "verdict": ("pass" if not self.problems(variant) else "FAIL") if variant in GUARDED else "reported"}


def faults_for(kind: str, variants: tuple[str, ...]) -> list[Fault]:
    """A pod fault hits replica 1 of every variant under test at once; the others hit one component."""
    return [Fault(kind, v) for v in variants] if kind in TARGETED else [Fault(kind)]


async def chaos_one(settings: Settings, kind: str, variants: tuple[str, ...], tasks: int = 20, events: int = 40,
                    spread_s: float = 4.0, fault_at: float = 0.4, dup_rate: float = 0.05,
                    run_dir: Path | None = None, runtime=None, progress=None) -> ChaosOutcome:
    say = progress or (lambda _m: None)
    prefix = f"chaos-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:4]}-{kind}-"
    runtime = runtime or runtime_for(settings)
    await register_run(settings.pg_dsn, prefix, f"chaos {kind}")
    ledger_path = run_dir / f"ledger-{kind}.jsonl" if run_dir else None
    sending = asyncio.create_task(run_burst(settings.gateway_url, prefix, tasks, events, variants,
                                            spread_s=spread_s, dup_rate=dup_rate, ledger_path=ledger_path))
    await asyncio.sleep(spread_s * fault_at)
    faults = faults_for(kind, variants)
    say(f"chaos: {kind}: injecting {', '.join(str(f) for f in faults)}")
    records = list(await asyncio.gather(*(
        inject(settings, runtime, f, run_id=prefix, log_path=run_dir / "faults.jsonl" if run_dir else None)
        for f in faults)))
    ledger = await sending
    for r in records:
        say(f"chaos: {kind}: {r.target} " + (f"back after {r.down_s:.1f} s" if r.back_at else f"FAILED: {r.error}"))
    results, quiescent = await wait_for_quiescence(settings.pg_dsn, prefix, settle_s=3.0, timeout_s=120,
                                                   ledger=ledger.entries(), progress=say)
    # events in flight at the fault and the recovery after it, event by event from the log and
    # the states (not from counts taken while it happened)
    backs = [r.back_at for r in records]
    async with db.connection(settings.pg_dsn) as conn:
        logged, states, _ = await snapshot(conn, prefix)
    window = fault_window(logged, states, min(r.at for r in records), None if None in backs else max(backs), variants)
    return ChaosOutcome(kind, prefix, records, {v: window[v]["in_flight"] for v in variants},
                        {v: results[v] for v in variants}, quiescent, ledger.errors, ledger.retries,
                        {v: window[v]["recovery_s"] for v in variants})


COLUMNS = ("fault", "variant", "acked", "broken_acks", "lost", "duplicate_applications", "duplicate_side_effects",
           "in_flight", "phantoms", "counter_drift", "down_s", "recovery_s", "verdict")
HEADERS = ("fault", "variant", "acked", "broken acks", "lost", "dup apply", "dup effects", "in flight",
           "phantoms", "drift", "down s", "recovery s", "verdict")


def table(rows: list[dict]) -> str:
    cells = [HEADERS] + [tuple("-" if r[c] is None else str(r[c]) for c in COLUMNS) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    from .load import lab_is_up, not_serving, results_root
    parser = argparse.ArgumentParser(description="a burst per fault kind, the fault mid-burst, then the counts")
    parser.add_argument("--fault", action="append", choices=KINDS, help="repeatable; default every kind")
    parser.add_argument("--variant", action="append",
                        help="repeatable; default the design card's three (unguarded, locked, temporal) that run")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--events", type=int, default=40, help="events per task")
    parser.add_argument("--spread", type=float, default=4.0, help="seconds each burst is spread over")
    parser.add_argument("--at", type=float, default=0.4, help="the fault's point in the burst (0..1)")
    parser.add_argument("--dup-rate", type=float, default=0.05, help="share of acked events redelivered")
    args = parser.parse_args()
    settings = Settings.from_env()
    variants = tuple(args.variant or [v for v in DEFAULT_VARIANTS if v in settings.variants])
    unknown = sorted(set(variants) - set(settings.variants))
    if unknown:
        parser.error(f"variant(s) {', '.join(unknown)} not running; running: {', '.join(settings.variants)}")
    if args.tasks < 1 or args.events < 1 or args.spread <= 0 or not 0 <= args.at <= 1 or not 0 <= args.dup_rate <= 1:
        parser.error("--tasks/--events at least 1, --spread above 0, --at and --dup-rate within 0..1")
    problem = asyncio.run(lab_is_up(settings.gateway_url, variants))
    if problem:  # before the results dir: no empty one for a run that never started
        raise SystemExit(not_serving("chaos", problem))
    run_dir = results_root() / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    print(f"chaos: {', '.join(args.fault or KINDS)} against {', '.join(variants)}; "
          f"{args.tasks} tasks x {args.events} events over {args.spread:g} s each; results in {run_dir}", flush=True)
    rows, failed, faults = [], [], []

    async def run_all() -> None:
        cancel_on_sigterm()  # a fault in progress undoes itself (a paused pod is resumed)
        for kind in dict.fromkeys(args.fault or KINDS):  # each kind once (its ledger is ledger-<kind>.jsonl)
            outcome = await chaos_one(settings, kind, variants, args.tasks, args.events, args.spread, args.at,
                                      args.dup_rate, run_dir, progress=lambda m: print(m, flush=True))
            faults.extend(asdict(f) for f in outcome.faults)
            for v in variants:
                rows.append(outcome.row(v))
                if v in GUARDED and outcome.problems(v):
                    failed.append(f"{kind} / {v}: " + ", ".join(outcome.problems(v)))
            (run_dir / "chaos.json").write_text(json.dumps(
                {"settings": {k: getattr(args, k) for k in ("tasks", "events", "spread", "at", "dup_rate")},
                 "rows": rows, "faults": faults}, indent=2) + "\n")
    try:
        asyncio.run(run_all())
    except OSError as exc:
        raise SystemExit(f"cannot reach the lab: {exc}. Is it up (make up)?")
    except asyncio.CancelledError:  # SIGTERM
        print(f"chaos: stopped (SIGTERM); the fault in progress was undone; what ran is in {run_dir}", flush=True)
        sys.exit(128 + signal.SIGTERM)
    text = table(rows) + "\n" + ("FAIL:\n  " + "\n  ".join(failed) if failed else
                                 "OK: every guarded variant passed every fault")
    (run_dir / "chaos.txt").write_text(text + "\n")
    print(text)
    print(f"results: {run_dir}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
