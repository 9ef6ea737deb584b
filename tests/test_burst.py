"""A burst of 20 tasks x 30 concurrent events per variant through nginx, with a client ledger."""
import json

import pytest
import pytest_asyncio

from racelab.clients.burst import burst_and_check, fetch_states, run_burst
from racelab.checker.quiescence import wait_for_quiescence

TASKS, EVENTS = 20, 30


@pytest_asyncio.fixture(scope="module")
async def burst(lab):
    return await burst_and_check(lab.settings, TASKS, EVENTS, ("unguarded", "locked", "temporal"))


def test_every_event_was_acked(burst):
    assert burst["errors"] == []
    assert burst["quiescent"]
    for variant, counts in burst["ledger"].items():
        assert counts["accepted"] == TASKS * EVENTS, variant


def test_checker_agrees_with_the_client_ledger(burst):
    assert burst["disagreements"] == []
    for variant in ("unguarded", "locked", "temporal"):
        c, own = burst["results"][variant], burst["ledger"][variant]
        assert (c.tasks, c.accepted, c.applied, c.lost, c.counter_drift) == (
            TASKS, own["accepted"], own["applied"], own["lost"], own["counter_drift"])


def test_unguarded_loses_updates(burst):
    c = burst["results"]["unguarded"]
    assert c.lost > 0
    assert c.counter_drift < 0
    assert c.accepted == c.applied + c.lost


@pytest.mark.parametrize("variant", ["locked", "temporal"])
def test_guarded_variants_lose_nothing(burst, variant):
    c = burst["results"][variant]
    assert (c.accepted, c.applied, c.lost, c.duplicates, c.counter_drift) == (TASKS * EVENTS, TASKS * EVENTS, 0, 0, 0)


async def test_guarded_applied_set_equals_ledger_exactly(lab):
    """Event by event, not only counts: each task's history is exactly its acked ids, once each."""
    ledger = await run_burst(lab.settings.gateway_url, "exact-", 5, EVENTS, ("locked", "temporal"))
    await wait_for_quiescence(lab.settings.pg_dsn, "exact-", timeout_s=120)
    states = await fetch_states(lab.settings.gateway_url, ledger)
    for key, acked in ledger.acked.items():
        history = states[key]["history"]
        assert len(acked) == EVENTS
        assert sorted(history) == sorted(acked), key
        assert states[key]["processing_count"] == EVENTS


def test_verify_cli_matches(lab, burst):
    done = lab.run("-m", "racelab.checker", "--json", "--task-prefix", burst["task_prefix"], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["ok"] and out["quiescent"]
    for variant, c in burst["results"].items():
        assert out["variants"][variant] == json.loads(json.dumps(c.as_dict())), variant
