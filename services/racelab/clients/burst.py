"""`python -m racelab.clients.burst`: a concurrent burst of event/send through the gateway.

Each task gets all its events at once (as when a person types fast or a webhook storm hits),
every variant the same tasks. The client keeps its own ledger of acked event ids, reads the
final states back through the gateway and compares its counts with the checker's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import aiohttp

from ..checker.quiescence import verdict, wait_for_quiescence
from ..checker.counts import table
from ..config import VARIANTS, Settings

AGENT = {"id": "racelab-agent", "name": "racelab-agent", "acp_type": "async"}


def event_send(task_id: str, event_id: str, sequence_id: int, text: str) -> dict:
    """An event/send request shaped as Agentex's server sends it."""
    return {"jsonrpc": "2.0", "id": f"event/send-{task_id}", "method": "event/send",
            "params": {"agent": dict(AGENT), "task": {"id": task_id, "agent_id": AGENT["id"]},
                       "event": {"id": event_id, "task_id": task_id, "agent_id": AGENT["id"],
                                 "sequence_id": sequence_id,
                                 "content": {"type": "text", "author": "user", "content": text},
                                 "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}}


@dataclass
class Ledger:
    """What the client saw: acked event ids per (variant, task)."""
    acked: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    errors: list[str] = field(default_factory=list)
    ack_latencies_ms: list[float] = field(default_factory=list)

    def tasks(self, variant: str) -> list[str]:
        return sorted(t for v, t in self.acked if v == variant)


async def send(session: aiohttp.ClientSession, base: str, variant: str, body: dict, ledger: Ledger,
               sem: asyncio.Semaphore) -> None:
    async with sem:
        started = time.perf_counter()
        try:
            async with session.post(f"{base}/{variant}/api", json=body) as resp:
                reply = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            ledger.errors.append(f"{variant} {body['params']['event']['id']}: {exc!r}")
            return
    if resp.status == 200 and reply.get("result", {}).get("status") == "processing":
        ledger.ack_latencies_ms.append((time.perf_counter() - started) * 1000)
        ledger.acked[(variant, body["params"]["task"]["id"])].add(body["params"]["event"]["id"])
    else:
        ledger.errors.append(f"{variant} {body['params']['event']['id']}: HTTP {resp.status} {reply}")


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


async def run_burst(base_url: str, task_prefix: str, tasks: int, events: int,
                    variants: tuple[str, ...] = VARIANTS, concurrency: int = 600) -> Ledger:
    """Send tasks × events event/send to each variant; all events of a task are in flight together."""
    concurrency = min(concurrency, raise_fd_limit() // 2)
    ledger = Ledger()
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        jobs = []
        for n in range(tasks):
            task_id = f"{task_prefix}{n:04d}"
            for variant in variants:
                for seq in range(1, events + 1):
                    body = event_send(task_id, str(uuid.uuid4()), seq, f"message {seq} of {task_id}")
                    jobs.append(send(session, base_url, variant, body, ledger, sem))
        await asyncio.gather(*jobs)
    return ledger


async def fetch_states(base_url: str, ledger: Ledger) -> dict[tuple[str, str], dict | None]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def one(variant: str, task_id: str):
            url = f"{base_url}/{variant}/tasks/{task_id}/state"
            async with session.get(url, params={"agent_id": AGENT["id"]}) as resp:
                return (variant, task_id), (await resp.json())["state"] if resp.status == 200 else None
        return dict(await asyncio.gather(*(one(v, t) for v, t in ledger.acked)))


def ledger_counts(ledger: Ledger, states: dict[tuple[str, str], dict | None]) -> dict[str, dict]:
    """The client's own counts: acked ids against the histories read back through the gateway."""
    out: dict[str, dict] = {}
    for (variant, task_id), acked in ledger.acked.items():
        c = out.setdefault(variant, {"accepted": 0, "applied": 0, "lost": 0, "counter_drift": 0})
        state = states.get((variant, task_id)) or {}
        history = set(state.get("history") or [])
        c["accepted"] += len(acked)
        c["applied"] += len(history)
        c["lost"] += len(acked - history)
        c["counter_drift"] += int(state.get("processing_count") or 0) - len(acked)
    return out


async def burst_and_check(settings: Settings, tasks: int, events: int, variants: tuple[str, ...]) -> dict:
    prefix = f"burst-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}-"
    print(f"burst: {tasks} tasks x {events} concurrent events to each of {', '.join(variants)} "
          f"via {settings.gateway_url} (task ids {prefix}*)", file=sys.stderr, flush=True)
    started = time.perf_counter()
    ledger = await run_burst(settings.gateway_url, prefix, tasks, events, variants)
    sent_s = time.perf_counter() - started
    print(f"burst: {sum(map(len, ledger.acked.values()))} acked, {len(ledger.errors)} errors in {sent_s:.1f} s",
          file=sys.stderr, flush=True)
    results, quiescent = await wait_for_quiescence(
        settings.pg_dsn, prefix, progress=lambda m: print(m, file=sys.stderr, flush=True))
    own = ledger_counts(ledger, await fetch_states(settings.gateway_url, ledger))
    disagreements = [f"{v}.{k}: checker {getattr(results[v], k)} != ledger {own[v][k]}"
                     for v in own for k in own[v] if getattr(results[v], k) != own[v][k]]
    return {"task_prefix": prefix, "quiescent": quiescent, "send_seconds": sent_s, "errors": ledger.errors,
            "results": results, "ledger": own, "disagreements": disagreements}


def main() -> None:
    parser = argparse.ArgumentParser(description="a concurrent event/send burst, then the checker's counts")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--events", type=int, default=30, help="concurrent events per task")
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="repeatable; default all")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.tasks < 1 or args.events < 1:
        parser.error("--tasks and --events must be at least 1")
    settings = Settings.from_env()
    try:
        out = asyncio.run(burst_and_check(settings, args.tasks, args.events, tuple(args.variant or VARIANTS)))
    except (aiohttp.ClientConnectionError, OSError) as exc:
        raise SystemExit(f"cannot reach the lab at {settings.gateway_url}: {exc}. Is it up (make up)?")
    results = out["results"]
    problems = verdict(results)
    if args.json:
        print(json.dumps({**out, "results": {v: c.as_dict() for v, c in results.items()}}, indent=2))
    else:
        print(table({v: c for v, c in results.items() if c.tasks}))
        print(f"client ledger agrees with the checker: {'yes' if not out['disagreements'] else 'NO'}")
        for d in out["disagreements"]:
            print("  " + d)
        if out["errors"]:
            print(f"{len(out['errors'])} requests were not acked; first: {out['errors'][0]}")
        print("FAIL: " + "; ".join(problems) if problems else "OK: locked and temporal lost nothing")
    sys.exit(1 if problems or out["disagreements"] or not out["quiescent"] else 0)


if __name__ == "__main__":
    main()
