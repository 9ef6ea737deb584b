"""`python -m racelab.bench` (make bench): one run, one machine, one table of ratios.

Against the running lab (make up), in one run:
1. ingest (acked events/s) and apply throughput (events/s from the first send until the log is
   drained) of every running variant, next to `bare`: the same path (nginx, as many pods as a
   variant has, the same client and concurrency) to pods that ack after one durable INSERT and
   process nothing (racelab.bench.bare_pod, started here, behind the gateway's /bare/); in
   rounds (5 by default; in each, every variant right after a bare ingest of its own, its ratio
   to that one), each figure the median of the rounds, after a warm-up burst per target that is
   not counted (fresh pods' connections and statements);
2. the Temporal dev server's own limits (racelab.bench.temporal_limit), the temporal variant as
   a ratio to them;
3. the time until a 30-event burst to one task is applied (locked, temporal), next to 30 × the
   model latency;
4. the incremental checker: one refresh with 10k, 100k and 1M events in the log, its counts
   against a full recount (racelab.bench.checker_scale);
5. the memory (PSS) of the whole lab, by component; 6. `make up` time of a second, fresh lab on
   ports from 21000 (below the ephemeral range, apart from the default and test labs).
Writes results/bench-<time>/bench.json and bench.md; results/bench-latest points at it.
Machines here are noisy: compare figures within one run, not across runs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from .. import db
from ..checker.quiescence import wait_for_quiescence
from ..config import ALL_VARIANTS, SIGNAL_CANCEL, Settings
from ..clients.burst import run_burst
from ..clients.load import lab_is_up, link_latest, results_root
from ..lab.native import lab_processes, proc_stat, supervisor_rpc
from ..lab.topology import nginx_conf, paths
from . import checker_scale, temporal_limit

# the second lab's ports: apart from the default and test labs, below the ephemeral range
SECOND_LAB_PORTS = {"RACELAB_GATEWAY_PORT": "21000", "RACELAB_PG_PORT": "21001", "RACELAB_REDIS_PORT": "21002",
                    "RACELAB_TEMPORAL_PORT": "21003", "RACELAB_TEMPORAL_UI_PORT": "21004",
                    "RACELAB_TEMPORAL_METRICS_PORT": "21005", "RACELAB_PROMETHEUS_PORT": "21006",
                    "RACELAB_TEMPORAL_HTTP_PORT": "21007",
                    "RACELAB_POD_BASE_PORT": "21100"}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


GROUPS = (("racelab.pod", "pods"), ("racelab.bench.bare_pod", "pods"), ("racelab.worker", "temporal workers"), ("racelab.checker", "checker exporter"),
          ("postgres", "postgresql"), ("temporal", "temporal dev server"), ("redis-server", "redis"),
          ("nginx", "nginx"), ("prometheus", "prometheus"), ("supervisord", "supervisor"))


def _group(pid: int) -> str:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return next((name for needle, name in GROUPS if needle in cmdline), "other")


def memory_by_component(settings: Settings) -> dict[str, float]:
    """PSS in MiB per component (PSS shares shared pages out, so the sum is honest)."""
    out: dict[str, float] = {}
    for pid in lab_processes(settings):
        try:
            group = _group(pid)
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        pss_kb = next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
        out[group] = out.get(group, 0.0) + pss_kb / 1024.0
    return out


def cpu_seconds(settings: Settings, extra_pids=()) -> dict[str, float]:
    """CPU time (user + system) used so far by each component of the lab, and by this process
    (the client that sends the events). A difference of two readings is what one phase cost.
    A process's reaped children count too (cutime, cstime): a PostgreSQL backend that exits
    between two readings moves its time to the postmaster instead of taking it out of the sum."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in {*lab_processes(settings), *extra_pids}:
        try:
            fields = proc_stat(pid)
            group = _group(pid)
        except (OSError, IndexError):
            continue  # a process that ended between the listing and the read
        out[group] = out.get(group, 0.0) + sum(int(f) for f in fields[11:15]) / tick
    me = os.times()
    out["client"] = me.user + me.system
    return out


def cpu_ms_per_event(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, float]:
    """Milliseconds of CPU per acked event, by component, between two cpu_seconds readings;
    components that used none are left out, "total" sums the rest."""
    out = {k: (after[k] - before.get(k, 0.0)) * 1000.0 / max(1, events) for k in after}
    out = {k: v for k, v in out.items() if v > 0}
    out["total"] = sum(out.values())
    return out


def start_bare_pods(settings: Settings) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-m", "racelab.bench.bare_pod", "--port", str(settings.bare_pod_port(r))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            for r in range(1, settings.replicas + 1)]


async def ensure_bare_route(settings: Settings) -> None:
    """The gateway's /bare/ (topology.nginx_conf); a lab started before it existed gets its nginx
    configuration rewritten and its gateway restarted (nginx runs without a master process, which
    cannot reload: topology.nginx_conf)."""
    try:
        await wait_healthy(f"{settings.gateway_url}/bare/healthz", timeout_s=3)
        return
    except RuntimeError:
        pass
    conf = paths(settings)["nginx"] / "nginx.conf"
    say("  the gateway has no /bare/ route yet: rewriting its configuration and restarting nginx")
    conf.write_text(nginx_conf(settings))
    try:
        rpc = supervisor_rpc(settings)
        if rpc.getProcessInfo("gateway")["statename"] == "RUNNING":
            rpc.stopProcess("gateway")
        rpc.startProcess("gateway")
    except Exception as exc:  # OSError: no supervisor; xmlrpc's Fault: it refused
        raise RuntimeError(f"cannot restart the lab's gateway through its supervisor ({exc}); "
                           "`make down` then `make up` gives it the /bare/ route") from None
    await wait_healthy(f"{settings.gateway_url}/bare/healthz", timeout_s=10)


async def drain(settings: Settings, prefix: str, t0: float) -> tuple[float, object]:
    """Wait until the events of prefix are applied (or nothing changes); events/s from t0 (epoch)
    until the last one was applied."""
    results, _ = await wait_for_quiescence(settings.pg_dsn, prefix, settle_s=3.0, timeout_s=600)
    counts = next(iter(results[v] for v in results if results[v].accepted), None)
    if counts is None or counts.last_applied_at is None:
        return 0.0, counts
    return counts.accepted / max(1e-3, counts.last_applied_at - t0), counts


async def settle_temporal(settings: Settings, prefix: str, variant: str, timeout_s: float = 60.0) -> None:
    """End the workflows of a temporal variant's ingest, once its log is drained, and wait until
    they have completed: their completions would otherwise land in the measurements of the
    targets after it. Left alone, a task's workflow completes after 30 idle seconds
    (worker.workflow.IDLE_COMPLETE_S), temporal-naive's only when cancelled; the bench waited
    out those 30 s in every round. A cancel signal ends each at once, as a task's cancel does:
    it completes when everything it received is applied."""
    from temporalio.client import Client

    from ..config import NAIVE_NAMESPACE
    # the workflow id is the task id; temporal-naive's workflows are in a namespace of their own
    client = await Client.connect(settings.temporal_address,
                                  **({"namespace": NAIVE_NAMESPACE} if variant == "temporal-naive" else {}))
    query = f"WorkflowId STARTS_WITH '{prefix}' AND ExecutionStatus = 'Running'"
    say("  ending its workflows (a cancel signal each) and waiting until they have completed")
    deadline = time.monotonic() + timeout_s
    signalled: set[str] = set()
    while True:
        running = [wf async for wf in client.list_workflows(query)]
        if not running:
            return
        if time.monotonic() > deadline:
            say(f"  {len(running)} workflows still running after {timeout_s:.0f} s: the next figures may include them")
            return
        fresh = [wf for wf in running if wf.run_id not in signalled]
        # a run that completes meanwhile refuses the signal: nothing to do for it
        sent = await asyncio.gather(*(client.get_workflow_handle(wf.id, run_id=wf.run_id).signal(SIGNAL_CANCEL)
                                      for wf in fresh), return_exceptions=True)
        signalled.update(wf.run_id for wf, result in zip(fresh, sent) if not isinstance(result, Exception))
        await asyncio.sleep(0.5)


async def ingest_and_drain(settings: Settings, args, variant: str, prefix: str, tasks: int) -> dict:
    """One variant's ingest, then the wait until its log is drained (apply throughput), then, for
    a temporal variant, until its workflows have completed."""
    t0 = time.time()
    before = cpu_seconds(settings)
    rate, n = await ingest(settings.gateway_url, variant, prefix, tasks, args.events, args.concurrency)
    say(f"  {variant}: ingest {rate:.0f} events/s ({n}); waiting for the log to be drained")
    apply_rate, c = await drain(settings, prefix, t0)
    say(f"  {variant}: apply {apply_rate:.0f} events/s")
    cpu = cpu_ms_per_event(before, cpu_seconds(settings), n)
    if variant in ("temporal", "temporal-naive"):
        await settle_temporal(settings, prefix, variant)
    # ingest and processing together (the checker's polling while it waits is counted too)
    return {"ingest_eps": rate, "apply_eps": apply_rate, "cpu": cpu,
            "latency": {"p50": c.apply_latency_p50_ms, "p99": c.apply_latency_p99_ms, "lost": c.lost} if c else {}}


async def measure(settings: Settings, args) -> dict:
    stamp = time.strftime("%H%M%S")
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores, "
                 f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
                 f"{platform.platform()}, Python {platform.python_version()}",
                 "load_average": os.getloadavg(),
                 "model_latency_ms": settings.model_latency_ms, "model_jitter_ms": settings.model_jitter_ms,
                 "workload": {"tasks": args.tasks, "events": args.events, "concurrency": args.concurrency,
                              "pods_per_target": settings.replicas},
                 "rounds": args.rounds, "warmup_tasks": args.warmup_tasks, "ingest_eps": {}, "apply_eps": {}, "ingest_rounds": {},
                 "ingest_vs_bare_rounds": {}, "apply_latency_ms": {}, "burst30_s": {},
                 "cpu_ms_per_event": {}}

    say(f"bench 1/6: ingest and apply, {args.tasks} tasks x {args.events} events per target, "
        f"concurrency {args.concurrency}, through the gateway to {settings.replicas} pods each")
    # Rounds, in each every variant right after a bare ingest of its own, and each figure the
    # median over the rounds: a slow moment of the machine (these VMs are noisy: one round's ratios
    # ranged 0.53 to 0.73 for locked within minutes) lands in one round, not on one target; and a
    # variant's ratio is to the bare measured seconds before it. The machine drifts within a round:
    # with one bare first, right after the previous round's idle wait for temporal's workflows,
    # bare had the fastest moment (two bare ingests later in the same minute: 0.60-0.96 of the
    # first, 2026-11-26 22:00 UTC) and every later target paid for it.
    rounds: dict[str, list[dict]] = {name: [] for name in ("bare", *args.variants)}
    paired_bare: dict[str, list[dict]] = {name: [] for name in args.variants}
    bare = start_bare_pods(settings)
    try:
        for r in range(1, settings.replicas + 1):
            await wait_healthy(f"http://{settings.host}:{settings.bare_pod_port(r)}/healthz")
        await ensure_bare_route(settings)
        if args.warmup_tasks:
            # not counted: a fresh pod's first burst pays for its pool's new connections (each with
            # the jsonb codec's type lookups), its statements' first prepare and its Redis
            # scripts' first load (round 1 was the lowest of three in every run: locked 0.59-0.66
            # against 0.73-0.84, 2026-11-26 05:45-05:58 UTC)
            say(f"  warm-up (not counted): {args.warmup_tasks} tasks x {args.events} events per target")
            await ingest(settings.gateway_url, "bare", f"bench-{stamp}-warmup-bare-", args.warmup_tasks,
                         args.events, args.concurrency)
            for variant in args.variants:
                await ingest_and_drain(settings, args, variant, f"bench-{stamp}-warmup-{variant}-", args.warmup_tasks)
        for round_no in range(1, args.rounds + 1):
            say(f"  round {round_no} of {args.rounds}")
            for variant in args.variants:
                before = cpu_seconds(settings, [p.pid for p in bare])
                rate, n = await ingest(settings.gateway_url, "bare", f"bench-{stamp}-r{round_no}-bare-{variant}-",
                                       args.tasks, args.events, args.concurrency)
                rounds["bare"].append({"ingest_eps": rate, "apply_eps": rate,  # nothing to apply
                                       "cpu": cpu_ms_per_event(before, cpu_seconds(settings, [p.pid for p in bare]), n)})
                paired_bare[variant].append(rounds["bare"][-1])
                say(f"  bare: {rate:.0f} events/s ({n})")
                prefix = f"bench-{stamp}-r{round_no}-ingest-{variant}-"
                rounds[variant].append(await ingest_and_drain(settings, args, variant, prefix, args.tasks))
    finally:
        for p in bare:
            p.terminate()
        for p in bare:
            p.wait()
    for name, runs in rounds.items():
        out["ingest_eps"][name] = statistics.median(x["ingest_eps"] for x in runs)
        out["apply_eps"][name] = statistics.median(x["apply_eps"] for x in runs)
        out["ingest_rounds"][name] = [x["ingest_eps"] for x in runs]
        out["ingest_vs_bare_rounds"][name] = [x["ingest_eps"] / b["ingest_eps"]
                                              for x, b in zip(runs, paired_bare.get(name, runs), strict=True)]
        out["cpu_ms_per_event"][name] = {k: statistics.median(x["cpu"].get(k, 0.0) for x in runs)
                                         for k in {k for x in runs for k in x["cpu"]}}
        if name != "bare":
            lat = [x["latency"] for x in runs if x["latency"]]
            out["apply_latency_ms"][name] = {
                "p50": statistics.median(x["p50"] for x in lat) if lat and all(x["p50"] is not None for x in lat) else None,
                "p99": statistics.median(x["p99"] for x in lat) if lat and all(x["p99"] is not None for x in lat) else None,
                "lost": sum(x["lost"] for x in lat)}

    if "temporal" in args.variants:
        say("bench 2/6: the Temporal dev server's own limits (plain client, no-op workflow and activities)")
        out["temporal_limits"] = await temporal_limit.measure(settings.temporal_address, concurrency=48)
        say("  " + ", ".join(f"{k} {v:.0f}" for k, v in out["temporal_limits"].items()))

    say(f"bench 3/6: {args.k}-event bursts to one task, {args.repeat} times each")
    for variant in [v for v in ("locked", "temporal") if v in args.variants]:
        times = [await burst_finish_time(settings, variant, args.k, f"bench-{stamp}-k{i}-") for i in range(args.repeat)]
        out["burst30_s"][variant] = statistics.median(times)
        say(f"  {variant}: median {out['burst30_s'][variant]:.2f} s")
    out["serial_bound_s"] = args.k * settings.model_latency_ms / 1000.0

    if args.checker_sizes:
        say("bench 4/6: the incremental checker at scale (scratch database in the lab's PostgreSQL)")
        scale = await checker_scale.measure(settings.pg_admin_dsn, tuple(args.checker_sizes), say)
        out["checker_refresh_ms"] = scale.pop("refresh_ms")
        out["checker"] = scale

    say("bench 5/6: memory of the running lab (PSS)")
    out["pss_mib"] = memory_by_component(settings)
    out["pss_mib"]["total"] = sum(out["pss_mib"].values())

    if args.up_repeat:
        say("bench 6/6: make up time (a second, fresh lab on ports from 21000)")
        out["up_s"] = statistics.median([make_up_time() for _ in range(args.up_repeat)])
    say("bench: done")
    return out


def table(r: dict) -> str:
    bare = r["ingest_eps"]["bare"]
    w = r["workload"]
    lines = [f"racelab bench, {r['date']}, {r['machine']}, load average {r['load_average'][0]:.1f}", "",
             f"{w['tasks']} tasks x {w['events']} events per target, {w['concurrency']} in flight, through nginx to "
             f"{w['pods_per_target']} pods each; apply = events / seconds from the first send until the last applied; "
             f"medians of {r.get('rounds', 1)} rounds (in each, every variant right after a bare ingest of its own), "
             f"after a warm-up burst of {r.get('warmup_tasks', 0)} tasks per target (not counted); ingest vs bare: "
             "the median of the rounds' ratios, each to the bare ingest right before it, each round's in brackets; "
             "apply vs bare: to the median of all bare ingests",
             "", "| target | ingest events/s | ingest vs bare | apply events/s | vs bare | apply p50 / p99 ms |",
             "|---|---|---|---|---|---|"]
    for name, rate in r["ingest_eps"].items():
        a = r["apply_eps"].get(name, 0.0)
        lat = r["apply_latency_ms"].get(name) or {}
        lat_s = f"{lat['p50']:.0f} / {lat['p99']:.0f}" if lat.get("p50") is not None else "-"
        per_round = r.get("ingest_vs_bare_rounds", {}).get(name) or [rate / bare]
        ratio = f"{statistics.median(per_round):.2f}"
        if len(per_round) > 1 and name != "bare":
            ratio += " (" + ", ".join(f"{x:.2f}" for x in per_round) + ")"
        lines.append(f"| {name} | {rate:.0f} | {ratio} | {a:.0f} | {a / bare:.2f} | {lat_s} |")
    cpu = r.get("cpu_ms_per_event") or {}
    if cpu:
        parts = sorted({k for v in cpu.values() for k in v if k != "total"},
                       key=lambda k: -max(v.get(k, 0.0) for v in cpu.values()))[:6]
        lines += ["", "CPU per acked event (ms; a variant's figure covers its ingest and its processing until "
                  "the log is drained):", "",
                  "| target | total | " + " | ".join(parts) + " |", "|---" * (len(parts) + 2) + "|"]
        lines += [f"| {name} | {c['total']:.2f} | " + " | ".join(f"{c.get(k, 0.0):.2f}" for k in parts) + " |"
                  for name, c in cpu.items()]
    if "locked" in r["ingest_eps"] and "temporal" in r["ingest_eps"]:
        lines.append(f"\ntemporal ingest vs locked (medians): {r['ingest_eps']['temporal'] / r['ingest_eps']['locked']:.2f}")
    if "temporal_limits" in r:
        t = r["temporal_limits"]
        lines += ["", "| Temporal dev server alone | per s | temporal variant vs it |", "|---|---|---|",
                  f"| signal-with-start, plain client ({t['signal_concurrency']} in flight) | "
                  f"{t['signal_with_start_per_s']:.0f} | ingest {r['ingest_eps'].get('temporal', 0) / t['signal_with_start_per_s']:.2f} |",
                  f"| no-op activities, {t['appliers']} workflows back to back | {t['activities_per_s']:.0f} | "
                  f"apply {r['apply_eps'].get('temporal', 0) / t['activities_per_s']:.2f} (events/s vs activities/s; "
                  f"one activity applies a batch) |",
                  f"| one activity round trip | {t['activity_round_trip_ms']:.0f} ms | |"]
    serial = r["serial_bound_s"]
    lines += ["", "| 30-event burst to one task, until applied (median) | seconds | vs 30 x model latency |",
              "|---|---|---|"]
    for name, seconds in r["burst30_s"].items():
        lines.append(f"| {name} | {seconds:.2f} | {seconds / serial:.2f} |")
    if "checker_refresh_ms" in r:
        c = r["checker"]
        lines += ["", "| events in the log | one checker refresh ms | full load of a fresh counter s |", "|---|---|---|"]
        lines += [f"| {int(n):,} | {ms:.0f} | {c['full_load_s'][n]:.1f} |" for n, ms in r["checker_refresh_ms"].items()]
        lines.append(f"\nfull recount (counts.compute) at {c['events']:,} events: {c['full_recount_s']:.1f} s, "
                     f"equal counts: {c['equal_to_full_recount']}; make verify's wait: {c['verify_s']:.1f} s")
    total = r["pss_mib"]["total"]
    lines += ["", "| memory (PSS) | MiB |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in sorted(r["pss_mib"].items(), key=lambda kv: -kv[1]) if k != "total"]
    lines += [f"| **whole lab** | **{total:.0f}** |"]
    if "up_s" in r:
        lines += ["", f"make up of a fresh second lab (initdb included): {r['up_s']:.1f} s"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="racelab benchmark (against the running lab)")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--events", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--k", type=int, default=30, help="events in the one-task burst")
    parser.add_argument("--repeat", type=int, default=3, help="bursts to one task per variant")
    parser.add_argument("--rounds", type=int, default=5, help="ingest rounds (each variant after a bare ingest of its own); medians")
    parser.add_argument("--warmup-tasks", type=int, default=20,
                        help="tasks of the warm-up burst per target before the rounds, not counted (0: none)")
    parser.add_argument("--up-repeat", type=int, default=1, help="0 to skip the second lab")
    parser.add_argument("--checker-sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000],
                        help="events in the log for the checker's refresh time (none to skip)")
    parser.add_argument("--variant", action="append", choices=ALL_VARIANTS)
    args = parser.parse_args()
    args.variants = tuple(args.variant or Settings.from_env().variants)
    settings = Settings.from_env()
    problem = asyncio.run(lab_is_up(settings.gateway_url, args.variants))
    if problem:
        raise SystemExit(f"racelab bench: the lab is not serving: {problem}. Start it with `make up`.")
    try:
        result = asyncio.run(measure(settings, args))
    except RuntimeError as exc:  # a step that could not be done: said in one line, no traceback
        raise SystemExit(f"racelab bench: {exc}") from None
    text = table(result)
    out_dir = results_root() / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "bench.md").write_text(text + "\n")
    link_latest(out_dir, "bench-latest")
    print(text)
    print(f"\nsaved in {out_dir} (results/bench-latest)")


if __name__ == "__main__":
    main()
