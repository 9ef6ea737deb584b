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
        states = await agent_states(conn, events, states, effects)
    return ([LoggedEvent(*r) for r in events],
            [FinalState(*r) for r in states],
            [EffectCount(*r) for r in effects])


async def agent_states(conn, events, states, effects) -> list:
    """The states (rows or FinalStates) with variant "agent"'s, a user's own agent, seen through
    its declared invariant (checker/invariant.py); unchanged when no row is the agent's. Reads the
    agent's events with their text, which the invariant may match list entries by."""
    tasks = sorted({r[1] for r in (*events, *states) if r[0] == AGENT_VARIANT})
    if not tasks:
        return states
    rows = await conn.fetch(
        """SELECT task_id, agent_id, event_id, seq, content->>'content' AS text FROM events
           WHERE variant = $1 AND task_id = ANY($2::text[])""", AGENT_VARIANT, tasks)
    applied: dict[tuple, dict[str, float]] = {}
    if await conn.fetchval("SELECT to_regclass('agentex_applied') IS NOT NULL"):
        for r in await conn.fetch("""SELECT task_id, agent_id, entry_key, extract(epoch FROM first_at) AS t
                                     FROM agentex_applied WHERE task_id = ANY($1::text[])""", tasks):
            applied.setdefault((r["task_id"], r["agent_id"]), {})[r["entry_key"]] = float(r["t"])
    return invariant.translate_states(invariant.load(Settings.from_env().agent_path), AGENT_VARIANT,
                                      [FinalState(*r) for r in states], [invariant.AgentEvent(*r) for r in rows],
                                      [EffectCount(*r) for r in effects], applied)
