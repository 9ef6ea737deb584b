"""Read what the checker may read: the event log, the final states and the effect rows."""
from __future__ import annotations

from ..config import AGENT_VARIANT, Settings
from . import invariant
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
        agent_events = await _agent_events(conn, like, events)
    final = [FinalState(*r) for r in states]
    effect_counts = [EffectCount(*r) for r in effects]
    if agent_events is not None:  # a user's own agent: its state seen through its declared invariant
        final = invariant.translate_states(invariant.load(Settings.from_env().agent_path), AGENT_VARIANT,
                                           final, agent_events, effect_counts)
    return [LoggedEvent(*r) for r in events], final, effect_counts


async def _agent_events(conn, like: str, events) -> list | None:
    """The agent variant's events with their text (the invariant may match list entries by it)."""
    if not any(r["variant"] == AGENT_VARIANT for r in events):
        return None
    rows = await conn.fetch(
        """SELECT task_id, agent_id, event_id, seq, content->>'content' AS text FROM events
           WHERE variant = $2 AND task_id LIKE $1""", like, AGENT_VARIANT)
    return [invariant.AgentEvent(*r) for r in rows]
