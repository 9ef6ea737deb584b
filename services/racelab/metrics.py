"""Prometheus metrics of pods and workers (base units, `_total` counters, label `variant`, no
per-task labels). Every label set is created at start so its series exist at 0."""
from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from . import protocol

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("racelab_requests_total", "JSON-RPC requests by method and outcome",
                   ["variant", "method", "outcome"])
ACK_SECONDS = Histogram("racelab_ack_seconds", "Time from request to ack (event/send)", ["variant"],
                        buckets=LATENCY_BUCKETS)
HANDLER_SECONDS = Histogram("racelab_handler_seconds", "Duration of one processing run (an event or a batch)",
                            ["variant"], buckets=LATENCY_BUCKETS)
MODEL_CALLS = Counter("racelab_model_calls_total", "Simulated model calls", ["variant"])
STATE_WRITES = Counter("racelab_event_applications_total",
                       "Events written into a task state by this process (a lost update is counted here too)",
                       ["variant"])
APPLY_SECONDS = Histogram("racelab_apply_latency_seconds", "Time from an event's acceptance to its state write",
                          ["variant"], buckets=LATENCY_BUCKETS)
LOCK_WAIT = Histogram("racelab_lock_wait_seconds",
                      "Time waiting for the Redis lock (locked: until taken, or until a holder served its ask)",
                      ["variant"], buckets=LATENCY_BUCKETS)
LOCK_FAILURES = Counter("racelab_lock_failures_total",
                        "Lock acquisitions that timed out, leases lost or expired while held, stale holders fenced",
                        ["variant", "reason"])
BATCH_SIZE = Histogram("racelab_cursor_batch_size_events", "Events processed per cursor batch", ["variant"],
                       buckets=(1, 2, 3, 5, 8, 13, 20, 30, 50))
SIGNAL_TO_APPLY = Histogram("racelab_temporal_signal_to_apply_seconds",
                            "Time from the pod's signal to the workflow's state write", ["variant"],
                            buckets=LATENCY_BUCKETS)

RELAYED = Counter("racelab_outbox_relayed_total", "Outbox rows signalled to their workflow (temporal)",
                  ["variant"])
RECONCILED = Counter("racelab_queue_reconciled_total",
                     "Accepted events added to the stream again: neither applied nor in it (queue, after a Redis restart)",
                     ["variant"])

METHODS = protocol.METHODS + ("unknown",)  # "unknown": rejected before the method was known
OUTCOMES = ("ok", "rejected", "unavailable", "error")  # unavailable: a dependency was down (503)
# timeout: not acquired in time; expired: gone at release; lease_lost: a renewal failed;
# fenced: a stale holder stopped by the fencing token
LOCK_FAILURE_REASONS = ("timeout", "expired", "lease_lost", "fenced")


def observe_batch(variant: str, accepted_at: list[float], started: float) -> None:
    """A batch of events written into a state by a cursor-style variant: its size, the writes,
    each event's apply latency (accepted_at: epoch seconds) and the run's duration (started:
    time.perf_counter() when the run began)."""
    now = time.time()
    BATCH_SIZE.labels(variant).observe(len(accepted_at))
    STATE_WRITES.labels(variant).inc(len(accepted_at))
    for t in accepted_at:
        APPLY_SECONDS.labels(variant).observe(now - t)
    HANDLER_SECONDS.labels(variant).observe(time.perf_counter() - started)


async def handle_metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve_health_and_metrics(role: str, host: str, port: int) -> web.AppRunner:
    """GET /healthz and /metrics on host:port, for processes that serve nothing else (workers,
    the checker exporter). Returns the runner, to clean up on exit."""
    app = web.Application()
    app.router.add_get("/healthz", lambda _: web.json_response({"status": "ok", "role": role}))
    app.router.add_get("/metrics", handle_metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def init(variant: str) -> None:
    """Create every series of the variant at 0."""
    for method in METHODS:
        for outcome in OUTCOMES:
            REQUESTS.labels(variant, method, outcome)
    for metric in (ACK_SECONDS, HANDLER_SECONDS, MODEL_CALLS, STATE_WRITES, APPLY_SECONDS, LOCK_WAIT,
                   BATCH_SIZE, SIGNAL_TO_APPLY, RELAYED):
        metric.labels(variant)
    for reason in LOCK_FAILURE_REASONS:
        LOCK_FAILURES.labels(variant, reason)

