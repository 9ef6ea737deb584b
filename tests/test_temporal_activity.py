"""The temporal variant's apply activity against a real PostgreSQL (ActivityEnvironment runs it
outside a worker): it applies what the state lacks, and does not take a moved version for "my
batch was applied". A caller whose retry brings a larger batch (local activities did: a workflow
task that timed out after the write ran again with the signals that came meanwhile) lost events
with the old check."""
import asyncio
import uuid

from temporalio.testing import ActivityEnvironment

from racelab import db
from racelab.model import Model
from racelab.worker.activities import TaskActivities

VARIANT = "activity-test"
AGENT = "agent-act"


def test_a_larger_batch_after_a_lost_completion_applies_the_rest(scratch_db):
    asyncio.run(_larger_batch(scratch_db))


async def _larger_batch(dsn: str) -> None:
    async with await db.create_pool(dsn) as pool:
        acts = TaskActivities(pool, Model(0, 0))
        task = f"t-{uuid.uuid4().hex[:8]}"

        def params(ids, version):
            return {"variant": VARIANT, "task_id": task, "agent_id": AGENT, "version": version, "workflow_runs": 1,
                    "events": [{"event_id": i} for i in ids]}

        env = ActivityEnvironment()
        assert await env.run(acts.apply_events, params(["a", "b"], 0)) == 1  # its completion is then lost
        # a retry with one more event in the batch, still expecting version 0
        assert await env.run(acts.apply_events, params(["a", "b", "c"], 0)) == 2
        # and once more (a retry after that write): nothing left to apply
        assert await env.run(acts.apply_events, params(["a", "b", "c"], 0)) == 2
        state = (await db.read_state(pool, VARIANT, task, AGENT))["state"]
        assert (state["history"], state["processing_count"]) == (["a", "b", "c"], 3)
        effects = await pool.fetch("SELECT event_id FROM effects WHERE task_id = $1 ORDER BY id", task)
        assert [r["event_id"] for r in effects] == ["a", "b", "c"]  # one model call each, none repeated
