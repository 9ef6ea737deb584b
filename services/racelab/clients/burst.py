"""`python -m racelab.clients.burst`: a concurrent burst of event/send through the gateway.

Each task gets all its events at once (as when a person types fast or a webhook storm hits),
or spread over a few seconds (--spread), every variant the same tasks. The client is
at-least-once, as real senders are: a send that failed or timed out is retried with the same
event id (racelab.clients.retry), and --dup-rate sends a share of acked events once more
(webhook redelivery). It keeps its own ledger of acked event ids (in memory, and as a ledger
file when given one), reads the final states back through the gateway and compares its counts
with the checker's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp
import yarl

from ..checker.ledger import LedgerEntry, LedgerError, LedgerWriter
from ..checker.quiescence import verdict, verdict_line, wait_for_quiescence
from .retry import Outcome, RetryPolicy, classify, parse_retry_after, redeliver, redelivery_delay
from ..checker.counts import table
from ..config import AGENT_VARIANT, ALL_VARIANTS, Settings

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
    """What the client saw: acked event ids per (variant, task), and what it took."""
    acked: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    errors: list[str] = field(default_factory=list)      # sends given up on (never acked)
    ack_latencies_ms: list[float] = field(default_factory=list)
    retries: int = 0        # sends repeated after a failure
    redelivered: int = 0    # acked events sent once more on purpose
    writer: LedgerWriter | None = None
    agents: dict[str, str] = field(default_factory=dict)  # event id -> agent id, where not AGENT's

    def tasks(self, variant: str) -> list[str]:
        return sorted(t for v, t in self.acked if v == variant)

    def record(self, variant: str, task_id: str, event_id: str, agent_id: str | None = None) -> None:
        self.acked[(variant, task_id)].add(event_id)
        if agent_id and agent_id != AGENT["id"]:  # another agent on the task (the matrix's multi-agent case)
            self.agents[event_id] = agent_id
        if self.writer is not None:
            self.writer.acked(variant, task_id, agent_id or AGENT["id"], event_id)

    def entries(self) -> list[LedgerEntry]:
        return [LedgerEntry(v, t, self.agents.get(e, AGENT["id"]), e) for (v, t), ids in self.acked.items()
                for e in ids]


async def post_once(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, object, str | None]:
    """One POST: (HTTP status or 0 when nothing answered, decoded reply or None, Retry-After)."""
    try:
        async with session.post(url, json=body) as resp:
            try:
                reply = await resp.json(content_type=None)
            except ValueError:
                reply = None
            return resp.status, reply, resp.headers.get("Retry-After")
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return 0, repr(exc), None


async def send(session: aiohttp.ClientSession, base: str, variant: str, body: dict, ledger: Ledger,
               sem: asyncio.Semaphore, policy: RetryPolicy = RetryPolicy(), dup_rate: float = 0.0) -> None:
    """Send until acked (same event id every time, bounded by the policy); then, with probability
    dup_rate, once more after a short pause (redelivery)."""
    event_id, task_id = body["params"]["event"]["id"], body["params"]["task"]["id"]
    url = f"{base}/{variant}/api"
    attempt = 0
    while True:
        attempt += 1
        async with sem:
            started = time.perf_counter()
            status, reply, retry_after = await post_once(session, url, body)
        outcome = classify(status, reply)
        if outcome is Outcome.ACKED:
            ledger.ack_latencies_ms.append((time.perf_counter() - started) * 1000)
            ledger.record(variant, task_id, event_id)
            break
        if not policy.should_retry(outcome, attempt):
            ledger.errors.append(f"{variant} {event_id}: gave up after {attempt} attempt(s): HTTP {status} {reply}")
            return
        ledger.retries += 1
        await asyncio.sleep(policy.delay(attempt, parse_retry_after(retry_after)))
    if redeliver(dup_rate):
        ledger.redelivered += 1
        await asyncio.sleep(redelivery_delay())
        async with sem:
            await post_once(session, url, body)  # its answer changes nothing: the event was acked


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


async def run_burst(base_url: str, task_prefix: str, tasks: int, events: int,
                    variants: tuple[str, ...] | None = None, concurrency: int = 600,
                    spread_s: float = 0.0, dup_rate: float = 0.0, ledger_path=None,
                    policy: RetryPolicy = RetryPolicy()) -> Ledger:
    """Send tasks × events event/send to each variant. spread_s 0: all events of a task are in
    flight together; else each event starts at a random moment within spread_s seconds."""
    concurrency = min(concurrency, raise_fd_limit() // 2)
    variants = variants or Settings.from_env().variants
    ledger = Ledger(writer=LedgerWriter(ledger_path) if ledger_path else None)
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        jobs = []
        for n in range(tasks):
            task_id = f"{task_prefix}{n:04d}"
            for variant in variants:
                for seq in range(1, events + 1):
                    body = event_send(task_id, str(uuid.uuid4()), seq, f"message {seq} of {task_id}")
                    jobs.append(delayed(random.uniform(0, spread_s) if spread_s else 0.0,
                                        send(session, base_url, variant, body, ledger, sem, policy, dup_rate)))
        try:
            await asyncio.gather(*jobs)
        finally:
            if ledger.writer is not None:
                ledger.writer.close()
    return ledger


async def delayed(delay_s: float, coro):
    if delay_s:
        await asyncio.sleep(delay_s)
    return await coro


def state_url(base_url: str, variant: str, task_id: str, agent_id: str = AGENT["id"]) -> yarl.URL:
    """GET /<variant>/tasks/<task id>/state?agent_id=...: the task id as one path segment whatever
    it holds, every character but letters, digits and "-_~" percent-encoded ("/", and "." too),
    sent as written."""
    segment = quote(task_id, safe="").replace(".", "%2E")
    return yarl.URL(f"{base_url.rstrip('/')}/{variant}/tasks/{segment}/state?agent_id={quote(agent_id, safe='')}",
                    encoded=True)


async def fetch_states(base_url: str, ledger: Ledger) -> dict[tuple[str, str], dict | None]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def one(variant: str, task_id: str):
            async with session.get(state_url(base_url, variant, task_id)) as resp:
                return (variant, task_id), (await resp.json())["state"] if resp.status == 200 else None
        return dict(await asyncio.gather(*(one(v, t) for v, t in ledger.acked)))


def ledger_counts(ledger: Ledger, states: dict[tuple[str, str], dict | None]) -> dict[str, dict]:
    """The client's own counts, every one it can see from outside: its acked ids against the
    histories read back through the gateway (the model calls are not visible from here).
    They must equal the checker's: an acked event is an accepted one."""
    out: dict[str, dict] = {}
    for (variant, task_id), acked in ledger.acked.items():
        c = out.setdefault(variant, {"accepted": 0, "applied": 0, "lost": 0, "duplicate_applications": 0,
                                     "phantoms": 0, "counter_drift": 0})
        state = states.get((variant, task_id)) or {}
        entries = list(state.get("history") or [])
        history = set(entries)
        c["accepted"] += len(acked)
        c["applied"] += len(history)
        c["lost"] += len(acked - history)
        c["duplicate_applications"] += len(entries) - len(history)
        c["phantoms"] += len(history - acked)
        c["counter_drift"] += int(state.get("processing_count") or 0) - len(acked)
    return out


def disagreements(results: dict, own: dict[str, dict]) -> list[str]:
    """Where the checker's counts differ from the client's own (and any broken ack)."""
    out = [f"{v}.{k}: checker {getattr(results[v], k)} != ledger {own[v][k]}"
           for v in own for k in own[v] if getattr(results[v], k) != own[v][k]]
    out += [f"{v}.broken_acks: {c.broken_acks} acked events are not in the event log"
            for v, c in results.items() if c.broken_acks]
    return out


async def register_run(dsn: str, run_id: str, kind: str) -> None:
    """Note the run in the lab (the exporter's run-scoped gauges count the newest run)."""
    from .. import db
    async with db.connection(dsn) as conn:
        await conn.execute("INSERT INTO runs (run_id, kind) VALUES ($1, $2) ON CONFLICT DO NOTHING", run_id, kind)


async def burst_and_check(settings: Settings, tasks: int, events: int, variants: tuple[str, ...],
                          spread_s: float = 0.0, dup_rate: float = 0.0, ledger_path=None,
                          prefix: str | None = None) -> dict:
    prefix = prefix or f"burst-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}-"
    how = f"spread over {spread_s:g} s" if spread_s else "concurrent"
    print(f"burst: {tasks} tasks x {events} {how} events to each of {', '.join(variants)} "
          f"via {settings.gateway_url} (task ids {prefix}*, redelivery {dup_rate:.0%})", file=sys.stderr, flush=True)
    await register_run(settings.pg_dsn, prefix, "burst")
    started = time.perf_counter()
    ledger = await run_burst(settings.gateway_url, prefix, tasks, events, variants, spread_s=spread_s,
                             dup_rate=dup_rate, ledger_path=ledger_path)
    sent_s = time.perf_counter() - started
    print(f"burst: {sum(map(len, ledger.acked.values()))} acked ({ledger.retries} retries, {ledger.redelivered} "
          f"redelivered), {len(ledger.errors)} given up, in {sent_s:.1f} s", file=sys.stderr, flush=True)
    results, quiescent = await wait_for_quiescence(
        settings.pg_dsn, prefix, progress=lambda m: print(m, file=sys.stderr, flush=True), ledger=ledger.entries(),
        variants=settings.variants)
    own = ledger_counts(ledger, await fetch_states(settings.gateway_url, ledger))
    return {"task_prefix": prefix, "quiescent": quiescent, "send_seconds": sent_s, "errors": ledger.errors,
            "retries": ledger.retries, "redelivered": ledger.redelivered,
            "results": results, "ledger": own, "disagreements": disagreements(results, own)}


def main() -> None:
    parser = argparse.ArgumentParser(description="a concurrent event/send burst, then the checker's counts")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--events", type=int, default=30, help="concurrent events per task")
    parser.add_argument("--variant", action="append", choices=ALL_VARIANTS + (AGENT_VARIANT,), help="repeatable; default: the running ones")
    parser.add_argument("--spread", type=float, default=0.0,
                        help="seconds to spread each task's events over (default 0: all at once)")
    parser.add_argument("--dup-rate", type=float, default=0.0,
                        help="share of acked events sent once more with the same id (webhook redelivery)")
    parser.add_argument("--ledger", default="", help="ledger file to write (default results/burst-<id>/ledger.jsonl)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.tasks < 1 or args.events < 1:
        parser.error("--tasks and --events must be at least 1")
    if not 0 <= args.dup_rate <= 1 or args.spread < 0:
        parser.error("--dup-rate must be within 0..1 and --spread at least 0")
    if args.ledger and os.path.lexists(args.ledger):
        parser.error(f"--ledger {args.ledger} exists already: a ledger holds one run's acks; name a new file")
    settings = Settings.from_env()
    from .load import lab_is_up, not_serving, results_root
    variants = tuple(args.variant or settings.variants)
    problem = asyncio.run(lab_is_up(settings.gateway_url, variants))
    if problem:  # before anything is written: no empty results dir for a run that never started
        raise SystemExit(not_serving("burst", problem))
    prefix = f"burst-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}-"
    ledger_path = args.ledger or results_root() / prefix.rstrip("-") / "ledger.jsonl"
    try:
        out = asyncio.run(burst_and_check(settings, args.tasks, args.events, variants,
                                          spread_s=args.spread, dup_rate=args.dup_rate, ledger_path=ledger_path,
                                          prefix=prefix))
    except LedgerError as exc:
        raise SystemExit(f"racelab burst: {exc}")
    except (aiohttp.ClientConnectionError, OSError) as exc:
        raise SystemExit(f"cannot reach the lab at {settings.gateway_url}: {exc}. Is it up (make up)?")
    results = out["results"]
    problems = verdict(results)
    if args.json:
        print(json.dumps({**out, "results": {v: c.as_dict() for v, c in results.items()}}, indent=2))
    else:
        print(table({v: c for v, c in results.items() if c.tasks}))
        print(f"client ledger ({ledger_path}) agrees with the checker: "
              f"{'yes' if not out['disagreements'] else 'NO'}")
        for d in out["disagreements"]:
            print("  " + d)
        if out["errors"]:
            print(f"{len(out['errors'])} requests were not acked; first: {out['errors'][0]}")
        print(verdict_line(results, problems))
    sys.exit(1 if problems or out["disagreements"] or not out["quiescent"] else 0)


if __name__ == "__main__":
    main()
