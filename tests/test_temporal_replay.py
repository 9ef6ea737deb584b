"""The task workflow replays histories recorded by its previous versions, so runs started before
an upgrade of the workers keep running after it: a timer started and cancelled for every wait
(tests/fixtures/task_workflow_timer_per_wait.json, a 50-event soak task recorded on 2026-11-26,
before the idle watch), and a run past the history cap's upper end
(tests/fixtures/task_workflow_before_history_cap.json, 36 events sent one at a time, recorded on
2026-11-26 by the code before the cap). No lab needed: the Replayer runs the workflow code
against the stored history."""
import asyncio
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from racelab.worker.workflow import HISTORY_CAP, TaskWorkflow

FIXTURE = Path(__file__).parent / "fixtures" / "task_workflow_timer_per_wait.json"
BEFORE_CAP = Path(__file__).parent / "fixtures" / "task_workflow_before_history_cap.json"


def test_a_run_of_the_previous_version_replays():
    history = WorkflowHistory.from_json("soak-task", FIXTURE.read_text())
    kinds = [e.event_type for e in history.events]
    # what the previous version wrote: an activity per batch and a timer per wait (10 for 11 activities)
    assert kinds.count(10) == 11 and kinds.count(17) == 10  # ACTIVITY_TASK_SCHEDULED, TIMER_STARTED
    asyncio.run(Replayer(workflows=[TaskWorkflow]).replay_workflow(history))


def test_a_run_longer_than_the_cap_from_before_it_replays():
    history = WorkflowHistory.from_json("precap-task", BEFORE_CAP.read_text())
    kinds = [e.event_type for e in history.events]
    # one run that went on past the cap's upper end: with the cap, a new run would have continued
    # as new before its end; this one must replay without (workflow.patched("history-cap"))
    assert len(kinds) > HISTORY_CAP[1] + 20
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW not in kinds
    asyncio.run(Replayer(workflows=[TaskWorkflow]).replay_workflow(history))
