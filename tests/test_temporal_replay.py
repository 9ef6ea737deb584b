"""The task workflow replays a history recorded by its previous version (a timer started and
cancelled for every wait; tests/fixtures/task_workflow_timer_per_wait.json, a 50-event soak task
recorded on 2026-11-26): runs started before the idle watch keep running after an upgrade of the
workers. No lab needed: the Replayer runs the workflow code against the stored history."""
import asyncio
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from racelab.worker.workflow import TaskWorkflow

FIXTURE = Path(__file__).parent / "fixtures" / "task_workflow_timer_per_wait.json"


def test_a_run_of_the_previous_version_replays():
    history = WorkflowHistory.from_json("soak-task", FIXTURE.read_text())
    kinds = [e.event_type for e in history.events]
    # what the previous version wrote: an activity per batch and a timer per wait (10 for 11 activities)
    assert kinds.count(10) == 11 and kinds.count(17) == 10  # ACTIVITY_TASK_SCHEDULED, TIMER_STARTED
    asyncio.run(Replayer(workflows=[TaskWorkflow]).replay_workflow(history))
