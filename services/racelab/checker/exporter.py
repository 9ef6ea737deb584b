"""`python -m racelab.checker.exporter --port N`: the checker as a Prometheus exporter.

Recomputes LAB.md's counts from the event log and final states every few seconds (no waiting
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
from ..config import VARIANTS, Settings
from .counts import compute
from .read import snapshot

log = logging.getLogger("racelab.checker.exporter")

GAUGES = {
    "tasks": Gauge("racelab_checker_tasks", "Tasks seen in the event log or the states", ["variant"]),
    "accepted": Gauge("racelab_checker_accepted_events", "Distinct event ids in the event log", ["variant"]),
    "applied": Gauge("racelab_checker_applied_events", "Distinct event ids in the final histories", ["variant"]),
    "lost": Gauge("racelab_checker_lost_updates",
                  "Accepted events missing from the history longer than the grace period", ["variant"]),
    "pending": Gauge("racelab_checker_pending_events",
                     "Accepted events not applied yet, younger than the grace period", ["variant"]),
    "duplicates": Gauge("racelab_checker_duplicates", "Extra history entries plus extra effect rows", ["variant"]),
    "counter_drift": Gauge("racelab_checker_counter_drift", "processing_count minus accepted events", ["variant"]),
    "reordered": Gauge("racelab_checker_reordered_pairs", "Pairs applied against their sequence_id order",
                       ["variant"]),
}
LAST_RUN = Gauge("racelab_checker_last_run_timestamp_seconds", "When the counts were last recomputed")
RUN_SECONDS = Gauge("racelab_checker_run_seconds", "How long the last recomputation took")

for _variant in VARIANTS:
    for _gauge in GAUGES.values():
        _gauge.labels(_variant)


async def recompute_forever(dsn: str, interval_s: float, grace_s: float) -> None:
    while True:
        started = time.perf_counter()
        try:
            async with db.connection(dsn) as conn:
                results = compute(*await snapshot(conn), variants=VARIANTS, now=time.time(), grace_s=grace_s)
            for variant, counts in results.items():
                for key, gauge in GAUGES.items():
                    gauge.labels(variant).set(getattr(counts, key))
            LAST_RUN.set(time.time())
            RUN_SECONDS.set(time.perf_counter() - started)
        except Exception:
            log.exception("recomputing the counts failed; retrying")
        await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - started)))


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
