"""The temporal-naive variant's workflow: the seed's tutorial workflow (at010-agent-chat), kept
as written — an async signal handler that changes workflow state, awaits an activity, then
assigns the activity's result back.

The seed says this handler "processes events one at a time in the order they were received".
It does not: Temporal runs a signal handler until it awaits, and then the next signal's
handler. Thirty signals delivered together start thirty handlers that each appended to the
state and each await their own activity; each assigns back the snapshot its activity was given,
dropping whatever other handlers appended meanwhile, and the state in PostgreSQL is the snapshot
of whichever activity wrote last. Sent one at a time (each applied before the next is sent),
the handlers never overlap and nothing is lost.
"""
from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from ..config import NAIVE_WORKFLOW_NAME, SIGNAL_CANCEL, SIGNAL_RECEIVE_EVENT

with workflow.unsafe.imports_passed_through():
    from ..state import apply_events

VARIANT = "temporal-naive"
ACTIVITY_TIMEOUT = timedelta(seconds=60)
RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5))


@workflow.defn(name=NAIVE_WORKFLOW_NAME)
class NaiveTaskWorkflow:
    def __init__(self) -> None:
        self._state: dict | None = None  # the tutorial's self._state
        self._cancelled = False

    @workflow.signal(name=SIGNAL_RECEIVE_EVENT)
    async def receive_event(self, event: dict) -> None:
        # "no race condition because only one signal processes at a time" (the seed) — but
        # the await below hands control to the next signal's handler.
        self._state = apply_events(self._state, [event["event_id"]], now=workflow.now().timestamp())
        result = await workflow.execute_activity(
            "naive_respond", {"variant": VARIANT, "task_id": event["task_id"], "agent_id": event["agent_id"],
                              "event": event, "state": self._state},
            start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=RETRY)
        self._state = result  # the tutorial's `self._state.input_list = run_result.final_input_list`

    @workflow.signal(name=SIGNAL_CANCEL)
    def cancel(self) -> None:
        self._cancelled = True

    @workflow.run
    async def run(self, params: dict) -> dict:
        await workflow.wait_condition(lambda: self._cancelled)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return {"applied": len((self._state or {}).get("history", []))}
