"""`python -m racelab.clients.matrix` (make matrix): scenarios × the running variants, one table.

Each scenario sends the same traffic to every variant it applies to (tasks of its own, ids
`mx-<run>-<scenario>-*`), waits for quiescence and takes the checker's counts with the client's
ledger. Each cell shows lost / duplicate applications / duplicate side effects / drift and ✓ or
✗ against what the variant is documented to do (EXPECTED). The table is printed and written,
with colours and a Prometheus link per cell, to results/matrix-<time>/matrix.html.

Scenarios:
  burst        all events of a task at once, through the gateway (3 replicas round-robin)
  one-replica  the same, every event of a task sent to replica 1 directly: one process
  redelivery   the burst with 30% of acked events sent again (webhook redelivery, at least once)
  lease        a model call (600 ms, task.params.model_latency_ms) longer than the lock lease
               (200 ms, task.params.lock_ttl_s; lock-only honours it, locked renews its own)
  pod-kill     events spread over 3 s; replica 1 of every variant SIGKILLed after 1 s
  worker-kill  the same, killing a worker: Temporal worker 1 (temporal, temporal-naive) or
               queue worker 1 (queue); variants without workers have no cell
  multi-agent  the second seed's case: 3 agent ids per task, each sending its events at once, all
               appending to the task's one shared history (task.params.shared_state: the state
               is kept under agent "*"; locks and cursors stay keyed as each variant keys them).
               A lock keyed per (task, agent), as the seed's Option 1 keys it, does not protect
               it (locked, lock-only); one workflow, queue row lock or version per task does.
               Only the variants that honour the knob (SHARED_STATE) have a cell
"""
from __future__ import annotations

import argparse
import asyncio
import html
import json
import sys
import time
import urllib.parse
import uuid

import aiohttp

from ..checker.counts import SHARED_SUFFIX, VariantCounts
from ..checker.quiescence import wait_for_quiescence
from ..config import Settings
from ..nemesis.faults import parse_fault
from ..nemesis.record import inject
from ..nemesis.runtimes import NativeRuntime, runtime_for
from .burst import AGENT, Ledger, event_send, post_once, raise_fd_limit, run_burst
from .load import lab_is_up, not_serving, results_root
from .retry import Outcome, classify

TASKS, EVENTS = 5, 15
SCENARIOS = ("burst", "one-replica", "redelivery", "lease", "pod-kill", "worker-kill", "multi-agent")
LEASE_PARAMS = {"model_latency_ms": 600, "lock_ttl_s": 0.2}
WORKERS = {"temporal": "worker-1", "temporal-naive": "worker-1", "queue": "queue-worker-1"}
MULTI_AGENT = {"agents": 3, "events": 5, "params": {"shared_state": True}}  # per task: 3 agents x 5 events
SHARED_STATE = ("unguarded", "locked", "lock-only", "temporal", "queue", "optimistic")  # honour the knob

# What each variant is documented to do (README, "The race zoo"): safe = nothing lost, nothing
# applied twice, no drift (duplicate side effects only at a fault, at most the calls in flight);
# loses = lost > 0; duplicates = duplicate applications or side effects > 0; unsafe = either;
# any = no claim (the outcome depends on timing the scenario does not force).
SAFE = {"locked", "temporal", "sequential", "queue", "optimistic"}
EXPECTED: dict[str, dict[str, str]] = {v: {s: "safe" for s in SCENARIOS} for v in SAFE}
EXPECTED.update({
    "unguarded": {s: "loses" for s in SCENARIOS},
    # a uniform slow model finishes the activities in the order they started: the last snapshot
    # assigned is then the fullest one
    "temporal-naive": {**{s: "loses" for s in SCENARIOS}, "lease": "any", "pod-kill": "unsafe",
                       "worker-kill": "unsafe"},
    "cursor-only": {s: "duplicates" for s in SCENARIOS},
    # events spread out (pod-kill) or few (lease) rarely overlap the commit window
    "cursor-skip": {**{s: "loses" for s in SCENARIOS}, "lease": "any", "pod-kill": "any"},
    "lock-only": {"burst": "safe", "one-replica": "safe", "redelivery": "duplicates", "lease": "unsafe",
                  "pod-kill": "any", "worker-kill": "any"},
    "asyncio-lock": {"burst": "loses", "one-replica": "safe", "redelivery": "loses", "lease": "loses",
                     "pod-kill": "loses", "worker-kill": "loses"},
})
# shared state: a lock or cursor per (task, agent) lets the agents of a task write it concurrently
for _v in ("unguarded", "locked", "lock-only"):
    EXPECTED[_v]["multi-agent"] = "loses"


def meets(expectation: str, c: VariantCounts, fault: bool) -> bool:
    dups = c.duplicate_applications + c.duplicate_side_effects
    if expectation == "safe":
        return (c.lost == 0 and c.duplicate_applications == 0 and c.counter_drift == 0 and c.phantoms == 0
                and not c.broken_acks and (fault or c.duplicate_side_effects == 0))
    if expectation == "any":
        return True
    if expectation == "loses":
        return c.lost > 0
    if expectation == "duplicates":
        return dups > 0
    return c.lost > 0 or dups > 0 or c.counter_drift != 0  # unsafe


async def send_direct(settings: Settings, prefix: str, variants: tuple[str, ...], task_params: dict | None = None,
                      replica: int | None = None, tasks: int = TASKS, events: int = EVENTS, agents: int = 1) -> Ledger:
    """All events of each task at once, to one replica's port (replica given) or the gateway, with
    task params; retried until acked like the burst client's sends. agents > 1: that many agent
    ids per task (<AGENT>-1, -2, ...), each sending `events` events."""
    ledger = Ledger()
    connector = aiohttp.TCPConnector(limit=min(600, raise_fd_limit() // 2))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def one(variant: str, task_id: str, seq: int, agent: str | None = None) -> None:
            body = event_send(task_id, str(uuid.uuid4()), seq, f"message {seq}")
            if task_params:
                body["params"]["task"]["params"] = task_params
            if agent:
                p = body["params"]
                p["agent"] = {**p["agent"], "id": agent, "name": agent}
                p["task"]["agent_id"] = p["event"]["agent_id"] = agent
            url = (f"http://{settings.host}:{settings.pod_port(variant, replica)}/api" if replica
                   else f"{settings.gateway_url}/{variant}/api")
            for attempt in range(8):
                status, reply, _ = await post_once(session, url, body)
                if classify(status, reply) is Outcome.ACKED:
                    ledger.record(variant, task_id, body["params"]["event"]["id"], agent)
                    return
                ledger.retries += 1
                await asyncio.sleep(0.2 * 2 ** attempt)
            ledger.errors.append(f"{variant} {task_id}/{seq}: not acked")
        await asyncio.gather(*(one(v, f"{prefix}{n:04d}", s, f"{AGENT['id']}-{a}" if agents > 1 else None)
                               for v in variants for n in range(tasks) for a in range(1, agents + 1)
                               for s in range(1, events + 1)))
    return ledger


async def with_faults(settings: Settings, burst, faults: list) -> Ledger:
    """Run the burst; after 1 s, the faults (each: an awaitable factory) all at once."""
    sending = asyncio.create_task(burst)
    await asyncio.sleep(1.0)
    await asyncio.gather(*(f() for f in faults))
    return await sending


def kill_pod(settings: Settings, runtime, variant: str):
    fault = parse_fault(f"kill-pod:{variant}:1", settings.variants)
    return lambda: inject(settings, runtime, fault, run_id="matrix")


def kill_worker(settings: Settings, runtime, process: str):
    if process.startswith("worker-"):
        fault = parse_fault(f"kill-worker:{process.split('-')[1]}", settings.variants)
        return lambda: inject(settings, runtime, fault, run_id="matrix")

    async def kill_queue_worker() -> None:  # not a fault kind of the nemesis: signalled directly
        native = NativeRuntime(settings)
        old = await native.kill(process)
        await native.wait_back(process, old)
    return kill_queue_worker


async def run_scenario(settings: Settings, scenario: str, run: str, variants: tuple[str, ...]) -> dict:
    prefix = f"mx-{run}-{scenario}-"
    started = time.time()
    runtime = runtime_for(settings)
    if scenario == "burst":
        ledger = await run_burst(settings.gateway_url, prefix, TASKS, EVENTS, variants)
    elif scenario == "one-replica":
        ledger = await send_direct(settings, prefix, variants, replica=1)
    elif scenario == "redelivery":
        ledger = await run_burst(settings.gateway_url, prefix, TASKS, EVENTS, variants, dup_rate=0.3)
    elif scenario == "lease":
        ledger = await send_direct(settings, prefix, variants, LEASE_PARAMS, tasks=3, events=6)
    elif scenario == "pod-kill":
        ledger = await with_faults(settings, run_burst(settings.gateway_url, prefix, TASKS, EVENTS, variants,
                                                       spread_s=3.0),
                                   [kill_pod(settings, runtime, v) for v in variants])
    elif scenario == "multi-agent":
        ledger = await send_direct(settings, prefix, variants, MULTI_AGENT["params"], events=MULTI_AGENT["events"],
                                   agents=MULTI_AGENT["agents"])
    else:  # worker-kill
        ledger = await with_faults(settings, run_burst(settings.gateway_url, prefix, TASKS, EVENTS, variants,
                                                       spread_s=3.0),
                                   [kill_worker(settings, runtime, p) for p in sorted({WORKERS[v] for v in variants})])
    results, quiescent = await wait_for_quiescence(settings.pg_dsn, prefix, timeout_s=120, ledger=ledger.entries())
    fault = scenario in ("pod-kill", "worker-kill")
    cells = {}
    for v in variants:
        # the multi-agent tasks keep a task-level state: the checker counts them as "<variant>@shared"
        c = results.get(v + SHARED_SUFFIX, VariantCounts(v)) if scenario == "multi-agent" else results[v]
        expectation = EXPECTED[v][scenario]
        cells[v] = {"counts": c.as_dict(), "expected": expectation, "ok": quiescent and meets(expectation, c, fault)}
    return {"scenario": scenario, "prefix": prefix, "started_at": started, "ended_at": time.time(),
            "quiescent": quiescent, "errors": ledger.errors[:5], "cells": cells}


def cell_text(cell: dict | None) -> str:
    if cell is None:
        return "—"
    c = cell["counts"]
    return (f"{'✓' if cell['ok'] else '✗'} L{c['lost']} A{c['duplicate_applications']} "
            f"E{c['duplicate_side_effects']} D{c['counter_drift']}")


def table(out: dict) -> str:
    variants, rows = out["variants"], out["scenarios"]
    cols = ["variant"] + [r["scenario"] for r in rows]
    lines = [[v] + [cell_text(r["cells"].get(v)) for r in rows] for v in variants]
    widths = [max(len(x) for x in col) for col in zip(cols, *lines)]
    fmt = lambda row: "  ".join(x.ljust(w) for x, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(cols), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])


def prometheus_link(settings: Settings, variant: str, r: dict) -> str:
    span = max(60, int(r["ended_at"] - r["started_at"]) + 30)
    query = {"g0.expr": f'racelab_checker_lost_updates{{variant="{variant}"}} or '
                        f'racelab_checker_duplicates{{variant="{variant}"}}',
             "g0.tab": "0", "g0.range_input": f"{span}s",
             "g0.end_input": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["ended_at"] + 15))}
    return f"{settings.prometheus_url}/graph?{urllib.parse.urlencode(query)}"


def html_page(settings: Settings, out: dict) -> str:
    rows = out["scenarios"]
    head = "".join(f"<th>{html.escape(r['scenario'])}</th>" for r in rows)
    body = []
    for v in out["variants"]:
        tds = []
        for r in rows:
            cell = r["cells"].get(v)
            if cell is None:
                tds.append('<td class="na">—</td>')
                continue
            c = cell["counts"]
            tds.append(f'<td class="{"ok" if cell["ok"] else "bad"}" title="expected: {cell["expected"]}">'
                       f'<a href="{html.escape(prometheus_link(settings, v, r))}">{"✓" if cell["ok"] else "✗"}</a> '
                       f'lost {c["lost"]} / {c["accepted"]}<br>dup apply {c["duplicate_applications"]}, '
                       f'dup effects {c["duplicate_side_effects"]}<br>drift {c["counter_drift"]}'
                       f'<br><small>expected: {cell["expected"]}</small></td>')
        body.append(f"<tr><th>{html.escape(v)}</th>{''.join(tds)}</tr>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>racelab race matrix</title>
<style>body{{font-family:sans-serif}} td,th{{border:1px solid #ccc;padding:6px;vertical-align:top}}
table{{border-collapse:collapse}} .ok{{background:#dff5df}} .bad{{background:#f8d7d7}} .na{{color:#999}}</style></head>
<body><h1>racelab race matrix</h1>
<p>{html.escape(out['date'])}, {TASKS} tasks × {EVENTS} events per variant and scenario, model
{settings.model_latency_ms:.0f} ± {settings.model_jitter_ms:.0f} ms, {settings.replicas} replicas. ✓: the counts match
the variant's documented expectation (hover or read the cell). Each ✓/✗ links to the checker's series in Prometheus.</p>
<table><tr><th>variant</th>{head}</tr>{''.join(body)}</table></body></html>
"""


async def run_matrix(settings: Settings, scenarios: tuple[str, ...]) -> dict:
    run = time.strftime("%H%M%S")
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "variants": list(settings.variants),
           "scenarios": []}
    for scenario in scenarios:
        variants = tuple(v for v in settings.variants if (scenario != "worker-kill" or v in WORKERS)
                         and (scenario != "multi-agent" or v in SHARED_STATE))
        if not variants:
            continue
        t = time.monotonic()
        result = await run_scenario(settings, scenario, run, variants)
        print(f"matrix: {scenario} done in {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
        out["scenarios"].append(result)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="the race matrix: scenarios × running variants")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable; default all")
    args = parser.parse_args()
    settings = Settings.from_env()
    problem = asyncio.run(lab_is_up(settings.gateway_url, settings.variants))
    if problem:
        raise SystemExit(not_serving("matrix", problem))
    started = time.monotonic()
    out = asyncio.run(run_matrix(settings, tuple(args.scenario or SCENARIOS)))
    folder = results_root() / f"matrix-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "matrix.json").write_text(json.dumps(out, indent=2) + "\n")
    (folder / "matrix.html").write_text(html_page(settings, out))
    print(table(out))
    print("L lost, A duplicate applications, E duplicate side effects, D counter drift; "
          "✓/✗ against the documented expectation")
    print(f"matrix: {time.monotonic() - started:.0f} s; {folder / 'matrix.html'}")
    sys.exit(0 if all(c["ok"] for r in out["scenarios"] for c in r["cells"].values()) else 1)


if __name__ == "__main__":
    main()
