"""`python -m racelab.checker.exporter --port N`: the checker as a Prometheus exporter.

Recounts LAB.md's counts from the event log and final states every few seconds, incrementally
(only the tasks whose rows changed since the last refresh, racelab.checker.incremental) (no waiting
for quiescence: the point is to watch lost updates climb during load) and exports them as
gauges per variant. GET /metrics, GET /healthz.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import time

from prometheus_client import Gauge

from .. import db
from ..metrics import serve_health_and_metrics
from ..config import Settings
from .incremental import EXPORTER_FULL_LOAD_CHUNK, IncrementalCounts

log = logging.getLogger("racelab.checker.exporter")

# count -> (metric name after racelab_checker_, help)
COUNTS = {
    "tasks": ("tasks", "Tasks seen in the event log or the states"),
    "accepted": ("accepted_events", "Distinct event ids in the event log"),
    "applied": ("applied_events", "Distinct event ids in the final histories"),
    "lost": ("lost_updates", "Accepted events missing from the history longer than the grace period"),
    "pending": ("pending_events", "Accepted events not applied yet, younger than the grace period"),
    "duplicates": ("duplicates", "Extra history entries plus extra effect rows"),
    "duplicate_applications": ("duplicate_applications",
                               "History entries minus distinct history entries (events applied twice)"),
    "duplicate_side_effects": ("duplicate_side_effects",
                               "Effect rows minus distinct events with an effect (repeated model calls)"),
    "phantoms": ("phantoms", "Distinct history entries that were never accepted"),
    "unworked": ("unworked", "Applied events with no model call (effect row) behind them"),
    "counter_drift": ("counter_drift", "processing_count minus accepted events"),
    "reordered": ("reordered_pairs", "Pairs applied against their sequence_id order"),
}
GAUGES = {key: Gauge(f"racelab_checker_{name}", text, ["variant"]) for key, (name, text) in COUNTS.items()}
# The same counts for the newest client run only (burst, load, chaos, matrix register theirs in
# the `runs` table), so a dashboard shows what this run did, not the lab's whole history.
RUN_SCOPED = ("accepted", "applied", "lost", "pending", "duplicates", "duplicate_applications",
              "duplicate_side_effects", "phantoms", "counter_drift")
RUN_GAUGES = {key: Gauge(f"racelab_checker_run_{COUNTS[key][0]}", COUNTS[key][1] + ", in the newest client run",
                         ["variant"]) for key in RUN_SCOPED}
RUN_STARTED = Gauge("racelab_checker_run_started_timestamp_seconds", "When the newest client run started")
FAULTS = Gauge("racelab_faults_total", "Faults the nemesis injected into this lab", ["kind", "target"])
FAULT_LAST = Gauge("racelab_fault_last_timestamp_seconds", "When the latest fault of a kind and target was injected",
                   ["kind", "target"])
FAULT_DOWN = Gauge("racelab_fault_last_down_seconds",
                   "How long the target of the latest fault took to be back and healthy", ["kind", "target"])
FULL_RECOUNT_EVERY = 100  # refreshes (5 min at the default 3 s)
MAX_SHARE = 0.05  # of one core: the pause after a refresh is at least 19 times its CPU time
MAX_PAUSE_S = 30.0
LAST_RUN = Gauge("racelab_checker_last_run_timestamp_seconds", "When the counts were last recomputed")
RUN_SECONDS = Gauge("racelab_checker_run_seconds", "How long the last recomputation took")

VARIANTS = Settings.from_env().variants  # the running ones: their series exist at 0 from the start
for _variant in VARIANTS:
    for _gauge in (*GAUGES.values(), *RUN_GAUGES.values()):
        _gauge.labels(_variant)


async def newest_run(conn) -> tuple[str, float] | None:
    row = await conn.fetchrow("SELECT run_id, extract(epoch FROM started_at)::float8 AS t FROM runs "
                              "ORDER BY started_at DESC LIMIT 1")
    return (row["run_id"], row["t"]) if row else None


async def export_faults(conn) -> None:
    rows = await conn.fetch(
        """SELECT kind, target, count(*) AS n, extract(epoch FROM max(at))::float8 AS last,
                  extract(epoch FROM (array_agg(back_at - at ORDER BY at DESC))[1])::float8 AS down
           FROM faults GROUP BY kind, target""")
    for r in rows:
        FAULTS.labels(r["kind"], r["target"]).set(r["n"])
        FAULT_LAST.labels(r["kind"], r["target"]).set(r["last"])
        FAULT_DOWN.labels(r["kind"], r["target"]).set(r["down"] if r["down"] is not None else float("nan"))


async def recompute_forever(dsn: str, interval_s: float, grace_s: float) -> None:
    # counted incrementally (racelab.checker.incremental): a refresh reads only what changed
    counter = IncrementalCounts(variants=VARIANTS, latencies=False, full_load_chunk=EXPORTER_FULL_LOAD_CHUNK)
    refreshes = 0
    conn = None  # one connection, kept between refreshes (a new one every 3 s was a connect, an
    # authentication and the jsonb codec's type lookups each time); a new one after any failure
    while True:
        started, cpu_started = time.perf_counter(), time.process_time()
        pause = interval_s
        try:
            refreshes += 1
            if refreshes % FULL_RECOUNT_EVERY == 0:
                counter.reset()  # a safety net under the incremental counts: a full read now and then
            if conn is None or conn.is_closed():
                conn = await db.connect(dsn)
            await counter.refresh(conn)
            run = await newest_run(conn)
            await export_faults(conn)
            now = time.time()
            results = counter.results(now=now, grace_s=grace_s)
            for variant, counts in results.items():
                for key, gauge in GAUGES.items():
                    gauge.labels(variant).set(getattr(counts, key))
            if run is not None:
                prefix, run_started = run
                in_run = counter.results(now=now, grace_s=grace_s, prefix=prefix)
                for variant, counts in in_run.items():
                    for key, gauge in RUN_GAUGES.items():
                        gauge.labels(variant).set(getattr(counts, key))
                RUN_STARTED.set(run_started)
            LAST_RUN.set(time.time())
            RUN_SECONDS.set(time.perf_counter() - started)
            # at most MAX_SHARE of a core (its own CPU time, not the wall clock): under a heavy load
            # every task changes between refreshes and a refresh recounts them all, on the cores
            # the lab it watches runs on; never a pause longer than MAX_PAUSE_S
            cpu = time.process_time() - cpu_started
            pause = min(MAX_PAUSE_S, max(interval_s - (time.perf_counter() - started),
                                         cpu * (1.0 / MAX_SHARE - 1.0)))
        except Exception:
            log.exception("recomputing the counts failed; retrying")
            if conn is not None:
                conn.terminate()
                conn = None
        await asyncio.sleep(max(0.0, pause))


async def serve(port: int, interval_s: float, grace_s: float) -> None:
    settings = Settings.from_env()
    await serve_health_and_metrics("checker", settings.host, port)
    await recompute_forever(settings.pg_dsn, interval_s, grace_s)


def main() -> None:
    parser = argparse.ArgumentParser(description="racelab checker exporter")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between recomputations")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds an accepted event may wait to be applied before it counts as lost")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.port, args.interval, args.grace))


if __name__ == "__main__":
    main()
