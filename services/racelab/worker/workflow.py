"""The task workflow: one per task, events arrive as `receive_event` signals. It completes when
the task is cancelled, or after IDLE_COMPLETE_S with nothing to do (the next event starts a new
run of the same workflow id).

The seed's pattern, an async signal handler that awaits an activity and then assigns state,
interleaves at the await and loses updates. Here the signal handler only enqueues (deduping on
the event id) and the run loop applies one event at a time, so there is no interleaving to lose
anything to. The run loop takes every pending event (up to BATCH_LIMIT) and applies them
with one activity and one model call, as locked does with a cursor batch: a burst to one task
costs a few activity round trips, not one per event. Before the history grows too long the
workflow continues as new, carrying the count of applied events and the events still pending;
the applied ids come back from the state in PostgreSQL.
"""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

from ..state import SHARED_AGENT
from ..config import SIGNAL_CANCEL, SIGNAL_RECEIVE_EVENT, WORKFLOW_NAME

BATCH_LIMIT = 50
# A run continues as new once its history reaches a length drawn in this range (per run, so that
# runs started together do not all continue at once). A worker that takes over a workflow it does
# not have cached (its worker was killed) replays the run's whole history first; under make load
# USERS=100 a busy task's run had 277-451 events two minutes in, and the replays of a killed
# worker's workflows, all at once on a saturated machine, made workflow tasks of over 5 s
# (FAULTS=kill-worker:1@120s, 2026-11-26: recovery 18.4 s uncapped; 8.2 and 11.2 s with these
# caps). Temporal itself suggests continuing only at thousands of events.
HISTORY_CAP = (200, 320)
# A workflow with nothing to do for this long completes, and so leaves the workers' cache: a
# task's next event starts a new run (the relay's signal-with-start), which loads the state and
# its applied ids back. Without it, every task ever sent to stays cached (up to the cache's size)
# and the workers' memory grows with the number of tasks (seen in make soak: +41 % in 10 minutes).
IDLE_COMPLETE_S = 30.0
# Sized to the work: an activity heartbeats while it waits for the model, so a killed worker's
# activity is retried elsewhere after HEARTBEAT_TIMEOUT, whatever the model's latency; the long
# start-to-close only bounds a hung one. (Local activities were tried, 2026-11-26: the dev server's
# CPU per event fell by about a fifth, but a killed worker's batch then waits for the workflow
# task timeout, and under make load USERS=100 timed-out workflow tasks ran batches again.)
ACTIVITY_OPTIONS = dict(start_to_close_timeout=timedelta(seconds=120), heartbeat_timeout=timedelta(seconds=2),
                        retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=200),
                                                 maximum_interval=timedelta(seconds=2)))


# Not sandboxed: the sandbox re-imports and proxies modules on every activation, and under
# `make load USERS=100` the workers' activations competed for the same 2 cores as everything else.
# The code is deterministic without it: no I/O, no clock, no randomness but workflow.random();
# only workflow.* APIs and plain data (replay tests run it against real histories:
# tests/test_temporal_idle.py, and two of previous versions: tests/test_temporal_replay.py).
@workflow.defn(name=WORKFLOW_NAME, sandboxed=False)
class TaskWorkflow:
    def __init__(self) -> None:
        self._pending: list[dict] = []
        self._known: set[str] = set()  # applied or pending event ids: the dedupe set
        self._cancelled = False

    @workflow.signal(name=SIGNAL_RECEIVE_EVENT)
    def receive_event(self, event: Any) -> None:
        # Only enqueue: no await here, so handlers cannot interleave with the run loop. One event
        # (Agentex's shape) or a list of one task's events (the outbox relay bundles them).
        for e in event if isinstance(event, list) else (event,):
            if e["event_id"] not in self._known:
                self._known.add(e["event_id"])
                self._pending.append(e)

    @workflow.signal(name=SIGNAL_CANCEL)
    def cancel(self) -> None:
        self._cancelled = True

    @workflow.run
    async def run(self, params: dict) -> dict:
        # Runs started before the idle watch replay as they ran (a timer per wait in their history).
        self._watching = workflow.patched("idle-watch")
        task = {k: params[k] for k in ("variant", "task_id", "agent_id")}
        # a cancel received by an earlier run of this workflow (continued as new since)
        self._cancelled = self._cancelled or bool(params.get("cancelled"))
        idle_s = params.get("idle_complete_s") or IDLE_COMPLETE_S
        if self._watching:
            self._busy_at = workflow.time()
            self._idle = False
            self._watch = asyncio.create_task(self._watch_idle(idle_s))  # dropped when the run ends
        loaded = await workflow.execute_activity("load_state", task, **ACTIVITY_OPTIONS)
        # The state of each agent of the task, by its agent id ("*": the task's one shared
        # state, task.params.shared_state): the workflow is the task's, its events may come from
        # several agents, and each agent's events go to that agent's state.
        versions: dict[str, int] = {task["agent_id"]: loaded["version"]}
        applied = set(loaded["history"])
        runs = params.get("runs", 0) + 1
        # Signals can arrive before run() starts. Re-queue them after the events carried over
        # from the previous run, through the same dedupe, now that the applied ids are known.
        received_early, self._pending, self._known = self._pending, [], set(applied)
        for event in params.get("pending", []) + received_early:
            self.receive_event(event)
        can_after = int(params.get("continue_as_new_after") or 0)
        # runs started before the cap replay without it
        history_cap = workflow.random().randint(*HISTORY_CAP) if workflow.patched("history-cap") else 0
        applied_this_run = 0
        while True:
            if self._watching:
                await workflow.wait_condition(lambda: bool(self._pending) or self._cancelled or self._idle)
            elif workflow.patched("idle-complete"):  # runs started before this change replay without it
                try:
                    await workflow.wait_condition(lambda: bool(self._pending) or self._cancelled, timeout=idle_s)
                except asyncio.TimeoutError:
                    pass  # idle: complete below, unless a signal came with the timer
            else:
                await workflow.wait_condition(lambda: bool(self._pending) or self._cancelled)
            if not self._pending:  # cancelled or idle, and everything received is applied
                # A signal that arrives while this completion is on its way makes the server refuse
                # it (a new workflow task brings the signal: _pending is no longer empty here).
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self._pending:
                    return {"applied": len(applied), "runs": runs, "idle": not self._cancelled}
                continue
            # the lab knob continue_as_new_after counts events exactly: a batch never crosses it
            limit = min(BATCH_LIMIT, can_after - applied_this_run) if can_after else BATCH_LIMIT
            batch, self._pending = self._pending[:limit], self._pending[limit:]
            self._busy_at, self._idle = workflow.time(), False
            by_owner: dict[str, list[dict]] = {}
            for e in batch:
                owner = task["agent_id"] if task["agent_id"] == SHARED_AGENT else e.get("agent_id") or task["agent_id"]
                by_owner.setdefault(owner, []).append(e)
            for owner, events in by_owner.items():
                if owner not in versions:  # another agent of the task: its state and history first
                    got = await workflow.execute_activity("load_state", {**task, "agent_id": owner},
                                                          **ACTIVITY_OPTIONS)
                    versions[owner] = got["version"]
                    applied.update(got["history"])
                    self._known.update(got["history"])
                events = [e for e in events if e["event_id"] not in applied]
                if not events:
                    continue
                versions[owner] = await workflow.execute_activity(
                    "apply_events", {**task, "agent_id": owner, "events": events, "version": versions[owner],
                                     "workflow_runs": runs},
                    **ACTIVITY_OPTIONS)
                applied.update(e["event_id"] for e in events)
            applied_this_run += len(batch)
            # (a batch that ran for idle_s or more may have been taken for idle: it was not)
            self._busy_at, self._idle = workflow.time(), False
            info = workflow.info()
            if (info.is_continue_as_new_suggested() or (can_after and applied_this_run >= can_after)
                    or (history_cap and info.get_current_history_length() >= history_cap)):
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new({**params, "pending": self._pending, "runs": runs,
                                          "cancelled": self._cancelled})

    async def _watch_idle(self, idle_s: float) -> None:
        """Flag the run idle once no batch started or ended for idle_s. One timer per idle_s: a
        wait with a timeout, as before, started and cancelled a timer for every batch (two
        history events and a timer task for the dev server each time)."""
        while True:
            remaining = self._busy_at + idle_s - workflow.time()
            if remaining <= 0:
                if not self._pending:
                    self._idle = True
                remaining = idle_s
            await asyncio.sleep(max(remaining, 0.1))  # a workflow timer
