"""Read what the checker may read: the event log, the final states and the effect rows."""
from __future__ import annotations

from .counts import EffectCount, FinalState, LoggedEvent


async def snapshot(conn, task_prefix: str = "") -> tuple[list[LoggedEvent], list[FinalState], list[EffectCount]]:
    """One consistent snapshot (REPEATABLE READ) of the three inputs, optionally only for tasks
    whose id starts with task_prefix."""
    like = task_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        events = await conn.fetch(
            """SELECT variant, task_id, agent_id, event_id, sequence_id, extract(epoch FROM accepted_at)::float8 AS t
               FROM events WHERE task_id LIKE $1""", like)
        states = await conn.fetch(
            "SELECT variant, task_id, agent_id, state FROM task_states WHERE task_id LIKE $1", like)
        effects = await conn.fetch(
            """SELECT variant, task_id, agent_id, event_id, count(*) AS n FROM effects WHERE task_id LIKE $1
               GROUP BY variant, task_id, agent_id, event_id""", like)
    return ([LoggedEvent(*r) for r in events],
            [FinalState(*r) for r in states],
            [EffectCount(*r) for r in effects])
