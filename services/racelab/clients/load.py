"""`python -m racelab.clients.load` (make load): Locust against the gateway, then the checker.

Locust runs as its own process (gevent's monkey-patching breaks asyncio and temporalio in the
same process). Everything of a run goes to one results folder: Locust's CSV and HTML, its
output, the run's settings and the checker's final counts (results/latest points at it).
"""
from __future__ import annotations

import argparse
import asyncio
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
from ..checker.quiescence import verdict, wait_for_quiescence
from ..checker.counts import table
from ..config import VARIANTS, Settings
from ..lab.topology import venv_binary

ROOT = Path(__file__).resolve().parents[3]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
USER_CLASS = {"unguarded": "UnguardedUser", "locked": "LockedUser", "temporal": "TemporalUser"}


def results_root() -> Path:
    return Path(os.environ.get("RACELAB_RESULTS_DIR") or ROOT / "results")


def parse_duration(text: str) -> float:
    """Locust's run-time syntax: 90, 90s, 2m, 1h30m."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not text.strip() or not parts:
        raise ValueError(f"duration {text!r}: expected e.g. 60s, 2m, 1h30m")
    h, m, s = (int(x or 0) for x in parts.groups())
    return h * 3600 + m * 60 + s


async def lab_is_up(host: str, variants: tuple[str, ...]) -> str | None:
    """None when every variant answers through the gateway, else what is wrong."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            for variant in variants:
                async with session.get(f"{host}/{variant}/healthz") as resp:
                    if resp.status != 200:
                        return f"{host}/{variant}/healthz answered {resp.status}"
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return f"{host} does not answer ({exc.__class__.__name__}: {exc})"
    return None


async def accepted_so_far(dsn: str, prefix: str) -> dict[str, int]:
    async with db.connection(dsn) as conn:
        rows = await conn.fetch("SELECT variant, count(*) AS n FROM events WHERE task_id LIKE $1 GROUP BY variant",
                                prefix + "%")
    return {r["variant"]: r["n"] for r in rows}


def run_locust(args, host: str, run_dir: Path, prefix: str, settings: Settings) -> int:
    cmd = [venv_binary("locust"), "-f", str(LOCUSTFILE), "--headless", "--only-summary",
           "-u", str(args.users), "-r", str(args.rate), "-t", args.duration, "--host", host,
           "--csv", str(run_dir / "locust"), "--html", str(run_dir / "locust.html"), "--stop-timeout", "10",
           "--run-id", prefix, *args.locust_args, *(USER_CLASS[v] for v in args.variants)]
    (run_dir / "locust.cmd").write_text(" ".join(cmd) + "\n")
    duration = parse_duration(args.duration)
    started = time.monotonic()
    with open(run_dir / "locust.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        while proc.poll() is None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    counts = asyncio.run(accepted_so_far(settings.pg_dsn, prefix))
                except OSError:
                    counts = {}
                print(f"load: {time.monotonic() - started:4.0f}/{duration:.0f} s, accepted so far: "
                      + ", ".join(f"{v} {counts.get(v, 0)}" for v in args.variants), flush=True)
    return proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description="Locust rapid-message load, then the checker's counts")
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--rate", type=float, default=10, help="users spawned per second")
    parser.add_argument("--duration", default="60s", help="e.g. 60s, 2m")
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="repeatable; default all three")
    parser.add_argument("--host", default="", help="gateway URL (default: this lab's gateway)")
    parser.add_argument("--locust-args", default="", help="extra Locust options, e.g. '--burst-size 8'")
    args = parser.parse_args()
    args.variants = tuple(args.variant or VARIANTS)
    args.locust_args = args.locust_args.split()
    try:
        parse_duration(args.duration)
    except ValueError as exc:
        parser.error(str(exc))
    if args.users < 1 or args.rate <= 0:
        parser.error("--users must be at least 1 and --rate above 0")
    settings = Settings.from_env()
    host = (args.host or settings.gateway_url).rstrip("/")
    problem = asyncio.run(lab_is_up(host, args.variants))
    if problem:
        raise SystemExit(f"racelab load: the lab is not serving: {problem}. Start it with `make up`.")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = f"load-{stamp}-{uuid.uuid4().hex[:4]}-"
    run_dir = results_root() / prefix.rstrip("-")
    run_dir.mkdir(parents=True)
    latest = results_root() / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_dir.name)
    run = {"task_prefix": prefix, "users": args.users, "rate": args.rate, "duration": args.duration,
           "variants": list(args.variants), "host": host, "started_at": time.time(),
           "model_latency_ms": settings.model_latency_ms, "model_jitter_ms": settings.model_jitter_ms,
           "prometheus_url": settings.prometheus_url, "locust_args": args.locust_args}
    print(f"load: {args.users} users ({args.rate}/s) for {args.duration} against {host}, "
          f"variants {', '.join(args.variants)}; results in {run_dir}", flush=True)
    code = run_locust(args, host, run_dir, prefix, settings)
    run["locust_exit_code"] = code
    print((run_dir / "locust.log").read_text(errors="replace"), end="")
    results, quiescent = asyncio.run(wait_for_quiescence(
        settings.pg_dsn, prefix, progress=lambda m: print(m, flush=True)))
    run["ended_at"] = time.time()
    (run_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    problems = verdict(results)
    shown = {v: c for v, c in results.items() if v in args.variants}
    (run_dir / "checker.json").write_text(json.dumps(
        {"quiescent": quiescent, "ok": not problems, "variants": {v: c.as_dict() for v, c in shown.items()}},
        indent=2) + "\n")
    print(table(shown))
    print("FAIL: " + "; ".join(problems) if problems else "OK: locked and temporal lost nothing")
    print(f"results: {run_dir}  (make report writes report.html there)")
    sys.exit(1 if problems or not quiescent else 0)


if __name__ == "__main__":
    main()
