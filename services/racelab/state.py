"""The task state every variant keeps, and the one way an event is applied to it.

All variants share this so their final states differ only by what their concurrency control
let through: processing_count, history (event ids in the order applied) and applied_at (epoch
seconds, parallel to history, for apply latency).
"""
from __future__ import annotations

import copy
import time
from typing import Iterable


SHARED_AGENT = "*"  # the agent id of a task-level state, shared by every agent of the task


def state_agent(task_params: dict, agent_id: str) -> str:
    """Whose state an event updates: its agent's own (the default, keyed per (task, agent) as
    Agentex keys states), or with the lab knob `task.params.shared_state: true` the task's one
    shared state (agent id SHARED_AGENT): the second seed's agents appending to one history.
    A variant's locks and cursors stay keyed as the variant keys them; only the state moves."""
    return SHARED_AGENT if task_params.get("shared_state") is True else agent_id


def initial_state() -> dict:
    return {"processing_count": 0, "history": [], "applied_at": []}


def apply_events(state: dict | None, event_ids: Iterable[str], now: float | None = None) -> dict:
    """Return a new state with the events applied, as the seed's handler does: append each
    event to the history and add 1 to processing_count."""
    new = copy.deepcopy(state) if state else initial_state()
    applied_at = time.time() if now is None else now
    for event_id in event_ids:
        new["history"].append(event_id)
        new["applied_at"].append(applied_at)
        new["processing_count"] = new.get("processing_count", 0) + 1
    return new
