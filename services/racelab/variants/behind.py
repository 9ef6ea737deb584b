"""The tasks whose events wait behind their tracker's cursor: what the `locked` sweeper wakes and
where `sequential` finds its next event, found without visiting every task at every sweep.

Visiting every task of the variant (the full query below) grows with the lab's age: 95 ms of
PostgreSQL with 33,000 tasks (1M events), every sweep interval (2 s). Instead each sweep, in one
REPEATABLE READ snapshot S_j, checks against the trackers only
- the tasks with an event that the previous sweep's snapshot S_{j-1} could not see (events carry
  `tx`, the id of the transaction that wrote them, on an index; the incremental checker finds
  changed rows the same way: a transaction S_{j-1} could not see has an id at or above its xmin),
- and the tasks that were behind at S_{j-1}.
Exact: a task behind at S_j has an event past its cursor. If S_{j-1} could not see that event,
its task is read as new; if it could, the task was behind at S_{j-1} too, since a cursor never
moves back (the trackers' trigger refuses it), and it is in the set kept from that sweep.
(A tracker row is never deleted either; a hand-made DELETE would be seen by the next full sweep.)
A sweeper visits every task at its first sweep, after a failed one, after a restart of
PostgreSQL (an aborted transaction's id whose abort was never flushed can be handed out again),
when its own previous sweep is older than FULL_AFTER_GAP_S (the turn to sweep moves between
pods: the scan from an old snapshot would cover every event since, and cost more than visiting
the tasks), and every FULL_EVERY_S as a safety net.
"""
from __future__ import annotations

import time

from ..state import SHARED_AGENT

FULL_EVERY_S = 300.0
FULL_AFTER_GAP_S = 30.0

# A task's first event past its cursor (the lowest seq, and the oldest: a task's events are
# recorded in seq order under its order lock, each stamped as it is recorded): its seq, id and
# accepted_at (epoch seconds), whether it waited longer than $2 s; the cursor; and the task's
# owner (the shared state's "*" when the task has a task-level state row: the shared_state knob
# is not in the event log). $1 variant, $2 age in seconds, $3 the shared state's agent id.
_BEHIND = """
SELECT c.task_id, c.agent_id, COALESCE(sh.agent_id, c.agent_id) AS owner,
       first.accepted_at < clock_timestamp() - make_interval(secs => $2) AS due,
       first.seq, first.event_id, extract(epoch FROM first.accepted_at)::float8 AS accepted,
       COALESCE(tr.last_processed_seq, 0) AS cursor
FROM {candidates} c
LEFT JOIN trackers tr ON tr.variant = $1 AND tr.task_id = c.task_id AND tr.agent_id = c.agent_id
CROSS JOIN LATERAL (SELECT e.seq, e.event_id, e.accepted_at FROM events e
                    WHERE e.variant = $1 AND e.task_id = c.task_id AND e.agent_id = c.agent_id
                      AND e.seq > COALESCE(tr.last_processed_seq, 0)
                    ORDER BY e.seq LIMIT 1) first
LEFT JOIN task_states sh ON sh.variant = $1 AND sh.task_id = c.task_id AND sh.agent_id = $3"""
FULL = _BEHIND.format(candidates="(SELECT task_id, agent_id FROM tasks WHERE variant = $1)")
# $4 the previous sweep's snapshot, $5 and $6 the tasks behind at it (task ids, agent ids)
CHANGED = _BEHIND.format(candidates="""(
    SELECT DISTINCT task_id, agent_id FROM events
    WHERE tx >= pg_snapshot_xmin($4::text::pg_snapshot) AND variant = $1
      AND NOT pg_visible_in_snapshot(tx, $4::text::pg_snapshot)
    UNION SELECT * FROM unnest($5::text[], $6::text[]) AS kept (task_id, agent_id))""")


class BehindTasks:
    """One sweeper's view of a variant's tasks behind their cursor (each pod keeps its own: the
    turn to sweep moves between pods, and a pod's previous snapshot is its own last sweep's)."""

    def __init__(self, variant: str, full_every_s: float = FULL_EVERY_S,
                 full_after_gap_s: float = FULL_AFTER_GAP_S, clock=time.monotonic):
        self.variant = variant
        self.full_every_s = full_every_s
        self.full_after_gap_s = full_after_gap_s
        self._clock = clock
        self._snapshot: str | None = None  # None: the next sweep is a full one
        self._server_started: object = None
        self._behind: set[tuple[str, str]] = set()
        self._last_at = 0.0
        self._next_full = 0.0
        self.last_was_full = False

    @property
    def behind(self) -> frozenset[tuple[str, str]]:
        """(task id, agent id) of the tasks behind at the last sweep, due or not yet."""
        return frozenset(self._behind)

    async def due(self, conn, age_s: float) -> list:
        """The tasks with an event past the cursor that waited longer than age_s: rows of
        (task_id, agent_id, owner, ...) as sweep() returns them."""
        return [r for r in await self.sweep(conn, age_s) if r["due"]]

    async def sweep(self, conn, age_s: float) -> list:
        """Every task behind its cursor: rows of (task_id, agent_id, owner, due, cursor, and its
        first event past the cursor: seq, event_id, accepted). After a failure the next sweep is a
        full one."""
        now = self._clock()
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                head = await conn.fetchrow(
                    "SELECT pg_current_snapshot()::text AS snapshot, pg_postmaster_start_time() AS started")
                full = (self._snapshot is None or head["started"] != self._server_started
                        or now >= self._next_full or now - self._last_at > self.full_after_gap_s)
                if full:
                    rows = await conn.fetch(FULL, self.variant, age_s, SHARED_AGENT)
                else:
                    kept = sorted(self._behind)
                    rows = await conn.fetch(CHANGED, self.variant, age_s, SHARED_AGENT, self._snapshot,
                                            [t for t, _ in kept], [a for _, a in kept])
        except BaseException:
            self._snapshot = None
            raise
        self._snapshot, self._server_started = head["snapshot"], head["started"]
        self._behind = {(r["task_id"], r["agent_id"]) for r in rows}
        self._last_at = now
        self.last_was_full = full
        if full:
            self._next_full = now + self.full_every_s
        return rows
