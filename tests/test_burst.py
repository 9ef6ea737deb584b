"""A burst of 20 tasks x 30 concurrent events per variant through nginx, with a client ledger."""
import json
import uuid

import pytest

from racelab.clients.burst import fetch_states, run_burst
from racelab.checker.quiescence import wait_for_quiescence

from helpers import SHARED_BURSTS

pytestmark = pytest.mark.shared_burst("design")  # started in the background when the lab is up
TASKS, EVENTS = SHARED_BURSTS["design"]["tasks"], SHARED_BURSTS["design"]["events"]


@pytest.fixture(scope="module")
def burst(shared_burst):
    return shared_burst("design")


def test_every_event_was_acked(burst):
    assert burst["errors"] == []
    assert burst["quiescent"]
    for variant, counts in burst["ledger"].items():
        assert counts["accepted"] == TASKS * EVENTS, variant


def test_checker_agrees_with_the_client_ledger(burst):
    assert burst["disagreements"] == []
    for variant in ("unguarded", "locked", "temporal"):
        c, own = burst["results"][variant], burst["ledger"][variant]
        assert (c.tasks, c.acked, c.broken_acks, c.accepted, c.applied, c.lost, c.duplicate_applications,
                c.phantoms, c.counter_drift) == (
            TASKS, own["accepted"], 0, own["accepted"], own["applied"], own["lost"], own["duplicate_applications"],
            own["phantoms"], own["counter_drift"])


def test_unguarded_loses_updates(burst):
    c = burst["results"]["unguarded"]
    assert c.lost > 0
    assert c.counter_drift < 0
    assert c.accepted == c.applied + c.lost


@pytest.mark.parametrize("variant", ["locked", "temporal"])
def test_guarded_variants_lose_nothing(burst, variant):
    c = burst["results"][variant]
    assert (c.accepted, c.applied, c.lost, c.duplicates, c.counter_drift, c.phantoms, c.unworked) == (
        TASKS * EVENTS, TASKS * EVENTS, 0, 0, 0, 0, 0)


async def test_guarded_applied_set_equals_ledger_exactly(lab):
    """Event by event, not only counts: each task's history is exactly its acked ids, once each."""
    prefix = f"exact-{uuid.uuid4().hex[:8]}-"  # a second run against the same lab must not meet the first
    ledger = await run_burst(lab.settings.gateway_url, prefix, 5, EVENTS, ("locked", "temporal"))
    await wait_for_quiescence(lab.settings.pg_dsn, prefix, timeout_s=120)
    states = await fetch_states(lab.settings.gateway_url, ledger)
    for key, acked in ledger.acked.items():
        history = states[key]["history"]
        assert len(acked) == EVENTS
        assert sorted(history) == sorted(acked), key
        assert states[key]["processing_count"] == EVENTS


def test_ledger_file_holds_every_ack(burst):
    from racelab.checker.ledger import read_ledger
    entries = read_ledger([burst["ledger_path"]])
    assert len({(e.variant, e.event_id) for e in entries}) == 3 * TASKS * EVENTS
    assert {e.variant for e in entries} == {"unguarded", "locked", "temporal"}


def test_a_doctored_ledger_fails_the_checker(lab, burst, tmp_path):
    """An ack the log never saw (a line added to the ledger) is a broken ack: exit 1."""
    doctored = tmp_path / "ledger.jsonl"
    first = burst["ledger_path"].read_text().splitlines()[0]
    forged = json.loads(first)
    forged["variant"], forged["event_id"] = "locked", "never-sent-" + uuid.uuid4().hex
    doctored.write_text(burst["ledger_path"].read_text() + json.dumps(forged) + "\n")
    done = lab.run("-m", "racelab.checker", "--json", "--task-prefix", burst["task_prefix"],
                   "--ledger", str(doctored), "--settle", "0.5", check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["variants"]["locked"]["broken_acks"] == 1 and not out["ok"]


def test_verify_cli_matches(lab, burst):
    done = lab.run("-m", "racelab.checker", "--json", "--task-prefix", burst["task_prefix"],
                   "--ledger", str(burst["ledger_path"]), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["ok"] and out["quiescent"]
    for variant, c in burst["results"].items():
        assert out["variants"][variant] == json.loads(json.dumps(c.as_dict())), variant
