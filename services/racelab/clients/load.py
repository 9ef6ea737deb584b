"""`python -m racelab.clients.load` (make load): Locust against the gateway, then the checker.

Locust runs as its own process (gevent's monkey-patching breaks asyncio and temporalio in the
same process). Everything of a run goes to one results folder: Locust's CSV and HTML, its
output, the client ledger (ledger-<host>-<pid>.jsonl: the event ids Locust saw acked), the
nemesis' fault log (with --faults), the run's settings and the checker's final counts, computed
against the merged ledger (results/latest points at it).

Locust's users are at-least-once senders (retries with the same event id) and redeliver a share
of acked events (--dup-rate), so `unguarded` shows duplicates and the guarded variants must not.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp

from .. import db
from ..checker.quiescence import verdict, verdict_line, wait_for_quiescence
from ..checker.throughput import keep_up
from ..checker.counts import table
from ..checker.ledger import read_ledger
from ..config import AGENT_VARIANT, ALL_VARIANTS, Settings
from ..lab.topology import venv_binary
from ..checker.faults import fault_window
from ..checker.read import snapshot
from .burst import register_run

ROOT = Path(__file__).resolve().parents[3]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


def user_class(variant: str) -> str:
    """The locustfile's user class of a variant: temporal-naive -> TemporalNaiveUser."""
    return "".join(word.capitalize() for word in variant.split("-")) + "User"


def results_root() -> Path:
    return Path(os.environ.get("RACELAB_RESULTS_DIR") or ROOT / "results")


def link_latest(run_dir: Path, name: str = "latest") -> None:
    """Point results/<name> at run_dir (a folder in results/): the newest run of its kind."""
    latest = results_root() / name
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_dir.name)


def parse_duration(text: str) -> float:
    """Locust's run-time syntax: 90, 90s, 2m, 1h30m (every part with its unit, as Locust takes
    it: "1h30" it refuses), above 0 (Locust runs `-t 0s` without end)."""
    text = text.strip()
    parts = re.fullmatch(r"(\d+)|(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not parts:
        raise ValueError(f"duration {text!r}: expected e.g. 60s, 2m, 1h30m")
    bare, h, m, s = (int(x or 0) for x in parts.groups())
    seconds = bare + h * 3600 + m * 60 + s
    if seconds <= 0:
        raise ValueError(f"duration {text!r}: must be above 0")
    return seconds


def gateway_says(body: bytes) -> str:
    """The gateway's JSON-RPC error message, if the body is one (it says how to start a variant
    the lab does not run)."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, TypeError, KeyError):
        return ""
    return f": {message}" if isinstance(message, str) else ""


def not_serving(client: str, problem: str) -> str:
    """The one-line error of a client that finds the lab not serving."""
    return (f"racelab {client}: the lab is not serving: {problem}"
            + ("" if "make up" in problem else ". Start it with `make up`."))


async def lab_is_up(host: str, variants: tuple[str, ...]) -> str | None:
    """None when every variant answers through the gateway, else what is wrong."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            for variant in variants:
                async with session.get(f"{host}/{variant}/healthz") as resp:
                    if resp.status != 200:
                        return f"{host}/{variant}/healthz answered {resp.status}{gateway_says(await resp.read())}"
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return f"{host} does not answer ({exc.__class__.__name__}: {exc})"
    return None


async def accepted_so_far(dsn: str, prefix: str) -> dict[str, int]:
    async with db.connection(dsn) as conn:
        rows = await conn.fetch("SELECT variant, count(*) AS n FROM events WHERE task_id LIKE $1 GROUP BY variant",
                                prefix + "%")
    return {r["variant"]: r["n"] for r in rows}


def run_locust(args, host: str, run_dir: Path, prefix: str, settings: Settings) -> tuple[int, int | None]:
    """Locust (and the nemesis, with --faults) for the run's duration: their exit codes."""
    cmd = [venv_binary("locust"), "-f", str(LOCUSTFILE), "--headless", "--only-summary",
           "-u", str(args.users), "-r", str(args.rate), "-t", args.duration, "--host", host,
           "--csv", str(run_dir / "locust"), "--html", str(run_dir / "locust.html"), "--stop-timeout", "10",
           "--run-id", prefix, "--ledger-dir", str(run_dir), "--dup-rate", str(args.dup_rate),
           *args.locust_args, *(user_class(v) for v in args.variants)]
    (run_dir / "locust.cmd").write_text(" ".join(cmd) + "\n")
    duration = parse_duration(args.duration)
    started = time.monotonic()
    nemesis = start_nemesis(args, run_dir, prefix, duration)
    with open(run_dir / "locust.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        while proc.poll() is None:
            try:
                proc.wait(timeout=5)
            except KeyboardInterrupt:  # Locust got the Ctrl-C too: it stops and writes its summary
                print("load: stopped (Ctrl-C); counting what was acked so far (Ctrl-C again to leave now)",
                      flush=True)
                args.interrupted = True
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.terminate()
                    proc.wait()
                break
            except subprocess.TimeoutExpired:
                if nemesis is not None and nemesis.poll():  # e.g. a spec it refused: no point loading on
                    print(f"load: the nemesis failed (exit {nemesis.returncode}): "
                          f"{(run_dir / 'nemesis.log').read_text(errors='replace').strip()[-500:]}; stopping Locust",
                          flush=True)
                    proc.terminate()
                    proc.wait()
                    break
                try:
                    counts = asyncio.run(accepted_so_far(settings.pg_dsn, prefix))
                except OSError:
                    counts = {}
                print(f"load: {time.monotonic() - started:4.0f}/{duration:.0f} s, accepted so far: "
                      + ", ".join(f"{v} {counts.get(v, 0)}" for v in args.variants), flush=True)
    return proc.returncode, (stop_nemesis(nemesis) if nemesis is not None else None)


def start_nemesis(args, run_dir: Path, prefix: str, duration: float) -> subprocess.Popen | None:
    """--faults: the nemesis beside Locust, for as long as the load runs, logging to faults.jsonl."""
    if not args.faults:
        return None
    cmd = [sys.executable, "-m", "racelab.nemesis", "--faults", args.faults, "--duration", f"{duration:g}",
           "--log", str(run_dir / "faults.jsonl"), "--run-id", prefix]
    (run_dir / "nemesis.cmd").write_text(" ".join(cmd) + "\n")
    print(f"load: faults {args.faults!r} (nemesis log {run_dir / 'faults.jsonl'})", flush=True)
    with open(run_dir / "nemesis.log", "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def stop_nemesis(proc: subprocess.Popen, grace_s: float = 30.0) -> int:
    """The nemesis ends by itself after --duration (restoring what it broke); give it time to."""
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def recovery_after_faults(faults_log: Path, results: dict, events, states) -> dict | None:
    """Per variant: seconds from the last fault's component being back until every event accepted
    by then was applied (0 if all were applied before; checker.faults); None for a variant that
    lost or broke an ack, or when that component never came back. None overall when the run had
    no faults."""
    if not faults_log.exists():
        return None
    faults = [json.loads(line) for line in faults_log.read_text().splitlines() if line.strip()]
    if not faults:
        return None
    last = max(faults, key=lambda f: f["at"])
    window = fault_window(events, states, last["at"], last.get("back_at"), results)
    return {v: None if (c.lost or c.broken_acks or window[v]["recovery_s"] is None)
            else round(window[v]["recovery_s"], 2) for v, c in results.items()}


def keep_up_table(rows: dict[str, dict]) -> str:
    """Did each variant keep up while Locust ran (checker.throughput.keep_up)?"""
    def ms(x):
        return "-" if x is None else f"{x:.0f}"
    lines = ["keep-up while Locust ran: acked/s, applied/s (first applications in the same window), their ratio,",
             "events acked and not yet applied when it stopped, apply p50 / p99 of the events it acked"]
    for v, r in rows.items():
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"  {v:<16} acked {r['acked_per_s']:7.1f}/s  applied {r['applied_per_s']:7.1f}/s  ratio {ratio:>4}"
                     f"  backlog {r['backlog_at_end']:>6}  apply {ms(r['apply_p50_ms'])} / {ms(r['apply_p99_ms'])} ms")
    return "\n".join(lines)


async def run_snapshot(dsn: str, prefix: str):
    async with db.connection(dsn) as conn:
        events, states, _ = await snapshot(conn, prefix)
    return events, states


def main() -> None:
    parser = argparse.ArgumentParser(description="Locust rapid-message load, then the checker's counts")
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--rate", type=float, default=10, help="users spawned per second")
    parser.add_argument("--duration", default="60s", help="e.g. 60s, 2m")
    parser.add_argument("--variant", action="append", choices=ALL_VARIANTS + (AGENT_VARIANT,), help="repeatable; default: the running ones")
    parser.add_argument("--host", default="", help="gateway URL (default: this lab's gateway)")
    parser.add_argument("--locust-args", default="", help="extra Locust options, e.g. '--burst-size 8'")
    parser.add_argument("--dup-rate", type=float, default=0.05,
                        help="share of acked events sent again with the same id (webhook redelivery); 0 for none")
    parser.add_argument("--faults", default="", metavar="SPEC",
                        help="run the nemesis beside Locust with this fault spec (python -m racelab.nemesis --help)")
    args = parser.parse_args()
    args.interrupted = False
    args.variants = tuple(args.variant or Settings.from_env().variants)
    args.locust_args = args.locust_args.split()
    try:
        parse_duration(args.duration)
    except ValueError as exc:
        parser.error(str(exc))
    if args.users < 1 or args.rate <= 0:
        parser.error("--users must be at least 1 and --rate above 0")
    if not 0 <= args.dup_rate <= 1:
        parser.error("--dup-rate must be between 0 and 1")
    if args.faults and importlib.util.find_spec("racelab.nemesis") is None:
        parser.error("--faults needs racelab.nemesis, which is not installed here")
    settings = Settings.from_env()
    host = (args.host or settings.gateway_url).rstrip("/")
    problem = asyncio.run(lab_is_up(host, args.variants))
    if problem:
        raise SystemExit(not_serving("load", problem))

    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = f"load-{stamp}-{uuid.uuid4().hex[:4]}-"
    run_dir = results_root() / prefix.rstrip("-")
    run_dir.mkdir(parents=True)
    try:  # the exporter's run-scoped gauges (and so the dashboards' "this run" row) follow the newest run
        asyncio.run(register_run(settings.pg_dsn, prefix, "load"))
    except OSError as exc:
        print(f"load: could not register the run in the lab ({exc}); its dashboards show the lab's totals only")
    link_latest(run_dir)
    run = {"task_prefix": prefix, "users": args.users, "rate": args.rate, "duration": args.duration,
           "variants": list(args.variants), "host": host, "started_at": time.time(),
           "model_latency_ms": settings.model_latency_ms, "model_jitter_ms": settings.model_jitter_ms,
           "prometheus_url": settings.prometheus_url, "locust_args": args.locust_args,
           "dup_rate": args.dup_rate, "faults": args.faults or None}
    print(f"load: {args.users} users ({args.rate}/s) for {args.duration} against {host}, "
          f"variants {', '.join(args.variants)}; results in {run_dir}", flush=True)
    run["locust_exit_code"], nemesis_code = run_locust(args, host, run_dir, prefix, settings)
    run["locust_ended_at"] = time.time()
    if args.faults:
        run["nemesis_exit_code"] = nemesis_code
        if nemesis_code:
            print(f"load: the nemesis exited with {nemesis_code}; see {run_dir / 'nemesis.log'}", flush=True)
    print((run_dir / "locust.log").read_text(errors="replace"), end="")
    if run["locust_exit_code"] not in (0, 1) and not args.interrupted:  # 1: some requests failed (retried)
        (run_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        raise SystemExit(f"racelab load: Locust failed (exit {run['locust_exit_code']}; its log above and in "
                         f"{run_dir / 'locust.log'}): nothing to count")
    entries = read_ledger([run_dir])  # every Locust process's ledger-*.jsonl, merged
    distinct = {(e.variant, e.event_id) for e in entries}
    run["ledger"] = {"files": sorted(p.name for p in run_dir.glob("ledger*.jsonl")), "entries": len(entries),
                     "acked_events": len(distinct),
                     "acked_events_per_variant": {v: sum(1 for d in distinct if d[0] == v) for v in args.variants}}
    print(f"load: ledger {run['ledger']['entries']} acks of {run['ledger']['acked_events']} distinct events "
          f"in {len(run['ledger']['files'])} file(s)", flush=True)
    results, quiescent = asyncio.run(wait_for_quiescence(
        settings.pg_dsn, prefix, ledger=entries, progress=lambda m: print(m, flush=True)))
    run["ended_at"] = time.time()
    (run_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    problems = verdict(results)
    shown = {v: c for v, c in results.items() if v in args.variants}
    (run_dir / "checker.json").write_text(json.dumps(
        {"quiescent": quiescent, "ok": not problems, "variants": {v: c.as_dict() for v, c in shown.items()}},
        indent=2) + "\n")
    print(table(shown))
    logged, states = asyncio.run(run_snapshot(settings.pg_dsn, prefix))
    run["keep_up"] = keep_up(logged, states, run["started_at"], run["locust_ended_at"], args.variants)
    (run_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(keep_up_table(run["keep_up"]))
    recovery = None
    if (run_dir / "faults.jsonl").exists():
        recovery = recovery_after_faults(run_dir / "faults.jsonl", shown, logged, states)
    if recovery is not None:
        run["recovery_s"] = recovery
        (run_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        print("recovery (last fault's component back -> every acked event applied): " + ", ".join(
            f"{v} {'never' if r is None else f'{r:.1f} s'}" for v, r in recovery.items()))
    if not distinct:
        problems.append("no event was acked: nothing was measured (see locust.log)")
    print(verdict_line(results, problems))
    print(f"results: {run_dir}  (make report writes report.html there)")
    sys.exit(1 if problems or not quiescent or (args.faults and run.get("nemesis_exit_code")) else 0)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # a second Ctrl-C, while counting
        raise SystemExit("racelab load: stopped (Ctrl-C)") from None
