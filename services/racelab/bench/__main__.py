"""`python -m racelab.bench` (make bench): one run, one machine, one table of ratios.

Against the running lab (make up):
1. ingest throughput per variant through the gateway, next to a bare aiohttp pod doing one
   INSERT per request (same client, same concurrency): the ratio is the figure that matters;
2. apply latency p50/p99 of that run next to the model latency;
3. the time for `locked` (and `temporal`) to apply a K-event burst to one task, next to
   K × model latency (batching should beat serial);
4. `make up` time, measured on a second lab started on other ports and stopped again;
5. the memory (PSS) of the whole lab, by component.
Machines here are noisy: compare figures within one run, not across runs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from .. import db
from ..checker.quiescence import wait_for_quiescence
from ..config import ALL_VARIANTS, Settings
from ..clients.burst import run_burst
from ..clients.load import lab_is_up, results_root
from ..lab.native import lab_processes

# the second lab's ports: apart from the default and test labs, below the ephemeral range
SECOND_LAB_PORTS = {"RACELAB_GATEWAY_PORT": "21000", "RACELAB_PG_PORT": "21001", "RACELAB_REDIS_PORT": "21002",
                    "RACELAB_TEMPORAL_PORT": "21003", "RACELAB_TEMPORAL_UI_PORT": "21004",
                    "RACELAB_TEMPORAL_METRICS_PORT": "21005", "RACELAB_PROMETHEUS_PORT": "21006",
                    "RACELAB_POD_BASE_PORT": "21100"}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def ingest(base: str, name: str, prefix: str, tasks: int, events: int, concurrency: int) -> tuple[float, int]:
    """Acked events per second for tasks × events sent with the given concurrency."""
    started = time.perf_counter()
    ledger = await run_burst(base, prefix, tasks, events, (name,), concurrency=concurrency)
    elapsed = time.perf_counter() - started
    acked = sum(len(v) for v in ledger.acked.values())
    if ledger.errors:
        say(f"  {name}: {len(ledger.errors)} requests not acked, first: {ledger.errors[0]}")
    return acked / elapsed, acked


async def wait_healthy(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while True:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not healthy after {timeout_s} s")
            await asyncio.sleep(0.1)


async def burst_finish_time(settings: Settings, variant: str, k: int, prefix: str) -> float:
    """Seconds from sending K concurrent events to one task until all K are in its state."""
    task_prefix = f"{prefix}{variant}-"
    started = time.perf_counter()
    await run_burst(settings.gateway_url, task_prefix, 1, k, (variant,), concurrency=k)
    async with db.connection(settings.pg_dsn) as conn:
        while True:
            n = await conn.fetchval(
                """SELECT jsonb_array_length(state->'history') FROM task_states
                   WHERE variant = $1 AND task_id = $2""", variant, f"{task_prefix}0000")
            if n is not None and n >= k:
                return time.perf_counter() - started
            if time.perf_counter() - started > 120:
                raise RuntimeError(f"{variant}: {k}-event burst not applied after 120 s")
            await asyncio.sleep(0.01)


def make_up_time() -> float:
    """Start a second, fresh lab on other ports; time `up`; stop it."""
    state_dir = tempfile.mkdtemp(prefix="racelab-bench-", dir="/var/tmp")
    os.chmod(state_dir, 0o755)
    env = dict(os.environ, **SECOND_LAB_PORTS, RACELAB_STATE_DIR=state_dir)
    cmd = [sys.executable, "-m", "racelab.lab"]
    try:
        started = time.perf_counter()
        up = subprocess.run(cmd + ["up"], env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if up.returncode != 0:
            raise RuntimeError(f"second lab did not come up:\n{up.stdout}{up.stderr}")
        return elapsed
    finally:
        subprocess.run(cmd + ["down"], env=env, capture_output=True)
        shutil.rmtree(state_dir, ignore_errors=True)


GROUPS = (("racelab.pod", "pods"), ("racelab.worker", "temporal workers"), ("racelab.checker", "checker exporter"),
          ("postgres", "postgresql"), ("temporal", "temporal dev server"), ("redis-server", "redis"),
          ("nginx", "nginx"), ("prometheus", "prometheus"), ("supervisord", "supervisor"))


def memory_by_component(settings: Settings) -> dict[str, float]:
    """PSS in MiB per component (PSS shares shared pages out, so the sum is honest)."""
    out: dict[str, float] = {}
    for pid in lab_processes(settings):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        pss_kb = next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
        group = next((name for needle, name in GROUPS if needle in cmdline), "other")
        out[group] = out.get(group, 0.0) + pss_kb / 1024.0
    return out


async def measure(settings: Settings, args) -> dict:
    stamp = time.strftime("%H%M%S")
    out: dict = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, "
                 f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
                 f"{platform.platform()}, Python {platform.python_version()}",
                 "model_latency_ms": settings.model_latency_ms, "model_jitter_ms": settings.model_jitter_ms,
                 "ingest": {}, "apply_latency_ms": {}, "burst": {}}

    say(f"bench 1/5: ingest, {args.tasks} tasks x {args.events} events, concurrency {args.concurrency}")
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "racelab.bench.bare_pod", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        await wait_healthy(f"http://127.0.0.1:{port}/healthz")
        rate, n = await ingest(f"http://127.0.0.1:{port}", "bare", f"bench-{stamp}-bare-", args.tasks, args.events,
                               args.concurrency)
        out["ingest"]["bare pod (1 process, direct)"] = rate
        say(f"  bare pod: {rate:.0f} events/s ({n})")
    finally:
        bare.terminate()
        bare.wait()
    for variant in args.variants:
        prefix = f"bench-{stamp}-ingest-{variant}-"
        rate, n = await ingest(settings.gateway_url, variant, prefix, args.tasks, args.events, args.concurrency)
        out["ingest"][f"{variant} (3 pods via nginx)"] = rate
        say(f"  {variant}: {rate:.0f} events/s ({n}); waiting for it to be applied")
        results, _ = await wait_for_quiescence(settings.pg_dsn, prefix)
        c = results[variant]
        out["apply_latency_ms"][variant] = {"p50": c.apply_latency_p50_ms, "p99": c.apply_latency_p99_ms,
                                            "lost": c.lost}

    say(f"bench 2/5: {args.k}-event bursts to one task, {args.repeat} times each")
    for variant in ("locked", "temporal"):
        times = [await burst_finish_time(settings, variant, args.k, f"bench-{stamp}-k{i}-") for i in range(args.repeat)]
        out["burst"][variant] = statistics.median(times)
        say(f"  {variant}: median {out['burst'][variant]:.2f} s")
    out["burst"]["serial bound (K x model latency)"] = args.k * settings.model_latency_ms / 1000.0

    say("bench 3/5: memory of the running lab (PSS)")
    out["memory_mib"] = memory_by_component(settings)

    say("bench 4/5: make up time (a second, fresh lab on other ports)")
    out["make_up_s"] = [make_up_time() for _ in range(args.up_repeat)]
    say("bench 5/5: done")
    return out


def table(r: dict) -> str:
    bare = r["ingest"]["bare pod (1 process, direct)"]
    lines = [f"racelab bench, {r['date']}, {r['machine']}", "",
             "| ingest (acked events/s) | events/s | vs bare pod |", "|---|---|---|"]
    for name, rate in r["ingest"].items():
        lines.append(f"| {name} | {rate:.0f} | {rate / bare:.2f} |")
    lines += ["", f"| apply latency (model {r['model_latency_ms']:.0f} ± {r['model_jitter_ms']:.0f} ms) "
              "| p50 ms | p99 ms | p50 / model latency |", "|---|---|---|---|"]
    for variant, a in r["apply_latency_ms"].items():
        p50 = a["p50"] or 0.0
        lines.append(f"| {variant} | {p50:.0f} | {(a['p99'] or 0):.0f} | {p50 / r['model_latency_ms']:.1f} |")
    serial = r["burst"]["serial bound (K x model latency)"]
    lines += ["", "| K-event burst to one task, until all applied | seconds | vs K x model latency |", "|---|---|---|"]
    for name, seconds in r["burst"].items():
        lines.append(f"| {name} | {seconds:.2f} | {seconds / serial:.2f} |")
    total = sum(r["memory_mib"].values())
    lines += ["", "| memory (PSS) | MiB |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in sorted(r["memory_mib"].items(), key=lambda kv: -kv[1])]
    lines += [f"| **whole lab** | **{total:.0f}** |", "",
              "make up (fresh state dir, initdb included): " + ", ".join(f"{s:.1f} s" for s in r["make_up_s"])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="racelab benchmark (against the running lab)")
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--events", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--k", type=int, default=30, help="events in the one-task burst")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--up-repeat", type=int, default=2)
    parser.add_argument("--variant", action="append", choices=ALL_VARIANTS)
    args = parser.parse_args()
    args.variants = tuple(args.variant or Settings.from_env().variants)
    settings = Settings.from_env()
    problem = asyncio.run(lab_is_up(settings.gateway_url, args.variants))
    if problem:
        raise SystemExit(f"racelab bench: the lab is not serving: {problem}. Start it with `make up`.")
    result = asyncio.run(measure(settings, args))
    text = table(result)
    out_dir = results_root() / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "bench.md").write_text(text + "\n")
    print(text)
    print(f"\nsaved in {out_dir}")


if __name__ == "__main__":
    main()
