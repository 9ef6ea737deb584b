"""`python -m racelab.bench.soak` (make soak): a fixed rate against every running variant for a
set time, watching memory and latency; fails on memory growth or wrong counts.

Open loop: every variant gets `rate` events/s (a burst of `burst` events to one task every
burst/rate s, a task taking `per_task` events before the next one starts, as conversations do),
sent at-least-once with a client ledger, the same way `make burst` sends. Every `sample` s: the
PSS of every process of the lab, acked and applied events/s, ack latency p50/p99 of the window
(client side) and apply latency p50/p99 of the run so far (the checker's, incremental).

Fails (exit 1) when
- a process's PSS grows by more than `growth` (10 %) from its value after the first minute to the
  end (the median of the last three samples); the lab's own processes count (pods, workers,
  checker, gateway, Redis, Temporal); PostgreSQL backends and Prometheus are reported, not judged:
  their PSS grows with the shared buffers and the time series they touch, by design;
- after quiescence a guarded variant (locked, temporal) shows a broken ack, a lost update, a
  duplicate application or side effect, a phantom, an unworked application or counter drift.
Results: results/soak-<time>/ (soak.json with every sample, soak.md), results/soak-latest.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import aiohttp

from .. import db
from ..checker.counts import percentile, table
from ..checker.incremental import IncrementalCounts
from ..checker.quiescence import GUARDED, verdict, wait_for_quiescence
from ..clients.burst import Ledger, event_send, register_run, send
from ..clients.load import lab_is_up, link_latest, parse_duration, results_root
from ..clients.retry import RetryPolicy
from ..config import Settings
from ..lab.native import lab_processes
from .__main__ import GROUPS

JUDGED = {"pods", "temporal workers", "checker exporter", "nginx", "redis", "temporal dev server", "supervisor"}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pss_by_process(settings: Settings) -> dict[str, tuple[str, float]]:
    """pid:cmd -> (component, PSS MiB)."""
    out = {}
    for pid in lab_processes(settings):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        pss_kb = next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
        group = next((name for needle, name in GROUPS if needle in cmd), "other")
        if group == "postgresql" and "postgres:" in cmd:
            group = "postgresql backend"
        out[f"{pid} {cmd[:90]}"] = (group, pss_kb / 1024.0)
    return out


async def sender(settings: Settings, variant: str, prefix: str, rate: float, burst: int, per_task: int,
                 ledger: Ledger, stop_at: float, session: aiohttp.ClientSession, sem: asyncio.Semaphore) -> None:
    interval = burst / rate
    task_no, sent_in_task, seq = 0, 0, 0
    jobs: set[asyncio.Task] = set()
    next_at = time.monotonic()
    while time.monotonic() < stop_at:
        task_id = f"{prefix}{variant}-{task_no:05d}"
        for _ in range(burst):
            seq += 1
            sent_in_task += 1
            body = event_send(task_id, str(uuid.uuid4()), sent_in_task, f"soak {seq}")
            job = asyncio.create_task(send(session, settings.gateway_url, variant, body, ledger, sem,
                                           RetryPolicy()))
            jobs.add(job)
            job.add_done_callback(jobs.discard)
        if sent_in_task >= per_task:
            task_no, sent_in_task = task_no + 1, 0
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    if jobs:
        await asyncio.gather(*jobs)


async def run(settings: Settings, args) -> dict:
    prefix = f"soak-{time.strftime('%Y%m%d-%H%M%S')}-"
    await register_run(settings.pg_dsn, prefix, "soak")
    ledgers = {v: Ledger() for v in settings.variants}  # one per variant: ack latency per variant
    started = time.monotonic()
    stop_at = started + args.duration
    counter = IncrementalCounts(prefix, variants=settings.variants, latencies=True)
    samples: list[dict] = []
    sem = asyncio.Semaphore(256)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session, \
            db.connection(settings.pg_dsn) as conn:
        senders = [asyncio.create_task(sender(settings, v, prefix, args.rate, args.burst, args.per_task, ledgers[v],
                                              stop_at, session, sem)) for v in settings.variants]
        last_acks = {v: 0 for v in settings.variants}
        last_applied, last_t = {v: 0 for v in settings.variants}, time.monotonic()
        while time.monotonic() < stop_at:
            await asyncio.sleep(min(args.sample, max(0.0, stop_at - time.monotonic())))
            now = time.monotonic()
            await counter.refresh(conn)
            counts = counter.results()
            acks = {v: ledgers[v].ack_latencies_ms[last_acks[v]:] for v in settings.variants}
            window = now - last_t
            sample = {"t_s": round(now - started, 1),
                      "acked_per_s": {v: len(a) / window for v, a in acks.items()},
                      "ack_ms": {v: {"p50": percentile(a, 50), "p99": percentile(a, 99)} for v, a in acks.items()},
                      "applied_per_s": {v: (c.applied - last_applied.get(v, 0)) / window for v, c in counts.items()},
                      "apply_ms": {v: {"p50": c.apply_latency_p50_ms, "p99": c.apply_latency_p99_ms}
                                   for v, c in counts.items()},
                      "checker_refresh_ms": counter.last_refresh_ms,
                      "pss_mib": pss_by_process(settings)}
            samples.append(sample)
            last_acks, last_t = {v: len(ledgers[v].ack_latencies_ms) for v in settings.variants}, now
            last_applied = {v: c.applied for v, c in counts.items()}
            say(f"soak {sample['t_s']:.0f}/{args.duration:.0f} s: acked/s "
                + ", ".join(f"{v} {r:.0f}" for v, r in sample["acked_per_s"].items()) + "; applied/s "
                + ", ".join(f"{v} {r:.0f}" for v, r in sample["applied_per_s"].items())
                + f", lab PSS {sum(p for _, p in sample['pss_mib'].values()):.0f} MiB")
        await asyncio.gather(*senders)
    say("soak: load stopped; waiting for quiescence")
    results, quiescent = await wait_for_quiescence(settings.pg_dsn, prefix, ledger=[e for ld in ledgers.values() for e in ld.entries()],
                                                   timeout_s=300)
    return {"prefix": prefix, "rate_per_variant": args.rate, "duration_s": args.duration, "samples": samples,
            "quiescent": quiescent, "counts": {v: c.as_dict() for v, c in results.items()},
            "table": table(results), "problems": verdict(results)
            + [f"{v}: duplicate_side_effects={results[v].duplicate_side_effects}" for v in GUARDED
               if v in results and results[v].duplicate_side_effects],
            "errors": [e for ld in ledgers.values() for e in ld.errors][:20], "load_average": list(os.getloadavg())}


def memory_verdict(samples: list[dict], warmup_s: float, growth: float) -> tuple[list[dict], list[str]]:
    """Per process: PSS after the warm-up, at the end (median of the last 3 samples), growth."""
    base = next((s for s in samples if s["t_s"] >= warmup_s), None)
    if base is None or len(samples) < 4:
        return [], ["too few samples after the warm-up to judge memory"]
    rows, failures = [], []
    for proc, (group, start) in base["pss_mib"].items():
        later = [s["pss_mib"][proc][1] for s in samples[-3:] if proc in s["pss_mib"]]
        if len(later) < 3 or start <= 0:
            continue  # the process restarted or ended: nothing to compare
        end = statistics.median(later)
        g = end / start - 1.0
        judged = group in JUDGED
        rows.append({"process": proc, "component": group, "start_mib": start, "end_mib": end, "growth": g,
                     "judged": judged})
        if judged and g > growth:
            failures.append(f"{proc}: {start:.1f} -> {end:.1f} MiB (+{g * 100:.0f} %)")
    return rows, failures


def main() -> None:
    parser = argparse.ArgumentParser(description="racelab soak: fixed rate, memory and latency over time")
    parser.add_argument("--rate", type=float, default=20.0, help="events/s per variant")
    parser.add_argument("--duration", default="10m")
    parser.add_argument("--burst", type=int, default=5, help="events sent at once to one task")
    parser.add_argument("--per-task", type=int, default=50, help="events per task before the next task")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="memory is judged from this second on")
    parser.add_argument("--growth", type=float, default=0.10, help="largest PSS growth allowed after the warm-up")
    args = parser.parse_args()
    args.duration = parse_duration(args.duration)
    settings = Settings.from_env()
    problem = asyncio.run(lab_is_up(settings.gateway_url, settings.variants))
    if problem:
        raise SystemExit(f"racelab soak: the lab is not serving: {problem}. Start it with `make up`.")
    say(f"soak: {args.rate:g} events/s per variant ({', '.join(settings.variants)}) for {args.duration:.0f} s")
    result = asyncio.run(run(settings, args))
    rows, mem_failures = memory_verdict(result["samples"], args.warmup, args.growth)
    result["memory"] = rows
    failures = mem_failures + result["problems"] + ([] if result["quiescent"] else ["not quiescent after 300 s"])
    result["failures"] = failures
    out_dir = results_root() / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True)
    last = result["samples"][-1] if result["samples"] else {}
    lines = [f"racelab soak, {time.strftime('%Y-%m-%d %H:%M')}, {args.rate:g} events/s per variant for "
             f"{args.duration:.0f} s, load average at the end {result['load_average'][0]:.1f}", "",
             result["table"], "",
             "| latency at the end | ack p50 / p99 ms (last window) | apply p50 / p99 ms (whole run) |", "|---|---|---|"]
    for v, a in (last.get("apply_ms") or {}).items():
        ack = last["ack_ms"].get(v) or {}
        lines.append(f"| {v} | {ack.get('p50') or 0:.0f} / {ack.get('p99') or 0:.0f} | "
                     f"{a['p50'] or 0:.0f} / {a['p99'] or 0:.0f} |")
    lines += ["", f"| process (PSS from t={args.warmup:.0f} s to the end) | MiB | growth | judged |", "|---|---|---|---|"]
    others: dict[str, list[float]] = {}
    for r in rows:
        if not r["judged"]:
            o = others.setdefault(r["component"], [0.0, 0.0])
            o[0] += r["start_mib"]
            o[1] += r["end_mib"]
    for name, (a, b) in others.items():
        lines.append(f"| {name} (all its processes, summed) | {a:.0f} -> {b:.0f} | {(b / a - 1) * 100 if a else 0:+.1f} % | no |")
    for r in sorted((r for r in rows if r["judged"]), key=lambda r: -r["growth"]):
        lines.append(f"| {r['component']}: {r['process'][:60]} | {r['start_mib']:.0f} -> {r['end_mib']:.0f} | "
                     f"{r['growth'] * 100:+.1f} % | {'yes' if r['judged'] else 'no'} |")
    lines += ["", "FAIL: " + "; ".join(failures) if failures else
              "OK: no judged process grew by more than "
              f"{args.growth * 100:.0f} % after the warm-up; the guarded variants lost and duplicated nothing"]
    text = "\n".join(lines)
    (out_dir / "soak.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out_dir / "soak.md").write_text(text + "\n")
    link_latest(out_dir, "soak-latest")
    print(text)
    print(f"\nsaved in {out_dir} (results/soak-latest)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
