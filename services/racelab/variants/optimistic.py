"""optimistic: no lock. Read the state and its version, apply the event, write it back only if
the version is still the one read (UPDATE ... WHERE version = $read); on a conflict, read again
and retry. The event id in the history is the dedupe: a retry that finds it applied stops.

The model is called once per event, before the retries: only the state merge is redone, which
is valid because the lab's model reply does not depend on the state read. An agent whose reply
depends on the history would have to call again on a conflict, and every retry would be a
duplicate side effect. Conflicts are counted (racelab_optimistic_conflicts_total).

A sweeper re-handles accepted events that are still not in the history ORPHAN_AGE_S after
their ack (a pod killed between its ack and its write); it calls the model only for an event
with no model call on record, so a fault costs at most a model call in flight, never a lost
event, and a slow handler that the sweeper overtakes costs nothing twice."""
from __future__ import annotations

import asyncio
import logging
import random
import time

from prometheus_client import Counter

from .. import db, metrics
from ..cancellation import raise_if_cancelled
from ..model import model_latency_ms
from ..protocol import Event
from ..state import SHARED_AGENT, apply_events, state_agent
from . import Variant

log = logging.getLogger("racelab.optimistic")
CONFLICTS = Counter("racelab_optimistic_conflicts_total",
                    "Conditional state writes refused because another writer changed the version first",
                    ["variant"])
ORPHAN_AGE_S = 10.0  # an accepted event this old and not applied has lost its handler


class Optimistic(Variant):
    name = "optimistic"

    async def start(self) -> None:
        CONFLICTS.labels(self.name)
        self.spawn(self._sweep_forever(), f"{self.name} sweeper")

    def after_ack(self, event: Event, fresh: bool, acked_at: float, seq: int | None = None) -> None:
        if fresh:  # a re-sent event is its first delivery's (or the sweeper's) to apply
            self.spawn(self.handle(event.task_id, event.agent_id, event.event_id, acked_at,
                                   model_latency_ms(event.task_params), state_agent(event.task_params, event.agent_id)),
                       f"{self.name} {event.event_id}")

    async def handle(self, task_id: str, agent_id: str, event_id: str, accepted_at: float,
                     latency_ms: float | None = None, owner: str | None = None) -> None:
        """owner: whose state (agent_id, or "*": task.params.shared_state, the task's one state;
        the version check covers every agent's writes to it)."""
        owner = owner or agent_id
        pool = self.ctx.pool
        started = time.perf_counter()
        if not await pool.fetchval("SELECT 1 FROM effects WHERE variant = $1 AND task_id = $2 AND event_id = $3",
                                   self.name, task_id, event_id):
            # a sweep of an event whose handler got as far as the model: its reply is on record
            # (the effect row) and is reused, not asked for again
            await self.ctx.model.call(pool, self.name, task_id, agent_id, [event_id], latency_ms)
        attempt = 0
        while True:
            row = await db.read_state(pool, self.name, task_id, owner)
            if row is not None and event_id in row["state"]["history"]:
                return  # applied already (by a sweeper's or an earlier handler's write)
            state = apply_events(row["state"] if row else None, [event_id])
            if await self.write_if_unchanged(task_id, owner, state, row["version"] if row else None):
                break
            CONFLICTS.labels(self.name).inc()
            attempt += 1
            await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * 2 ** attempt)))  # jittered backoff
        metrics.STATE_WRITES.labels(self.name).inc()
        metrics.APPLY_SECONDS.labels(self.name).observe(time.time() - accepted_at)
        metrics.HANDLER_SECONDS.labels(self.name).observe(time.perf_counter() - started)

    async def write_if_unchanged(self, task_id: str, agent_id: str, state: dict, version: int | None) -> bool:
        """The conditional write: False when the state's version is no longer `version` (None:
        there was no state, and someone else created it first)."""
        if version is None:
            done = await self.ctx.pool.execute(
                """INSERT INTO task_states (variant, task_id, agent_id, state, version) VALUES ($1, $2, $3, $4, 1)
                   ON CONFLICT DO NOTHING""", self.name, task_id, agent_id, state)
            return done == "INSERT 0 1"
        done = await self.ctx.pool.execute(
            """UPDATE task_states SET state = $4, version = version + 1, updated_at = clock_timestamp()
               WHERE variant = $1 AND task_id = $2 AND agent_id = $3 AND version = $5""",
            self.name, task_id, agent_id, state, version)
        return done == "UPDATE 1"

    async def _sweep_forever(self) -> None:
        interval = self.ctx.settings.sweep_interval_s
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))  # pods out of step
            raise_if_cancelled()  # (cancellation.py)
            try:
                rows = await self.ctx.pool.fetch(
                    """SELECT e.task_id, e.agent_id, e.event_id, extract(epoch FROM e.accepted_at)::float8 AS t,
                              COALESCE(sh.agent_id, e.agent_id) AS owner
                       FROM events e LEFT JOIN task_states s USING (variant, task_id, agent_id)
                       LEFT JOIN task_states sh ON sh.variant = e.variant AND sh.task_id = e.task_id
                                                AND sh.agent_id = $3
                       WHERE e.variant = $1 AND e.accepted_at < clock_timestamp() - make_interval(secs => $2)
                       AND e.accepted_at > clock_timestamp() - interval '1 hour'
                       AND NOT COALESCE(COALESCE(sh.state, s.state)->'history' ? e.event_id, false)""",
                    self.name, ORPHAN_AGE_S, SHARED_AGENT)
            except Exception:
                log.exception("sweep failed")
                continue
            for r in rows:
                log.warning("event %s of %s not applied %.0f s after its ack: applying it", r["event_id"],
                            r["task_id"], ORPHAN_AGE_S)
                self.spawn(self.handle(r["task_id"], r["agent_id"], r["event_id"], r["t"], owner=r["owner"]), "sweep")


VARIANT = Optimistic
