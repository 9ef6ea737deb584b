"""make load's at-least-once Locust users and their client ledger.

Pure: the retry decision and backoff (racelab.clients.retry), and the user classes (one per
variant). On the lab: the session's short load (conftest: load_run, with redelivery) keeps a
ledger that agrees with the checker, and Locust's master + 2 workers write one ledger per worker
with task ids that never collide (issue 11, finding 7).
"""
import os
import random
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from email.utils import formatdate

import pytest

from conftest import TEST_PORT_BASE
from racelab.checker.ledger import read_ledger
from racelab.checker.quiescence import wait_for_quiescence
from racelab.clients.load import LOCUSTFILE, ROOT, user_class
from racelab.clients.retry import (Outcome, RetryPolicy, classify, parse_retry_after, redeliver,
                                   redelivery_delay)
from racelab.config import ALL_VARIANTS
from racelab.lab.topology import venv_binary

ACK = {"jsonrpc": "2.0", "id": "event/send-t", "result": {"status": "processing"}}


# --- pure: what is retried, and when ------------------------------------------------------------

@pytest.mark.parametrize("status, reply, outcome", [
    (200, ACK, Outcome.ACKED),
    (None, None, Outcome.RETRY),                      # connection refused/reset, timeout
    (0, None, Outcome.RETRY),
    (500, None, Outcome.RETRY),
    (502, {"error": "bad gateway"}, Outcome.RETRY),
    (503, {"jsonrpc": "2.0", "error": {"code": -32000}}, Outcome.RETRY),
    (429, None, Outcome.RETRY),
    (200, {"jsonrpc": "2.0", "result": {"status": "queued"}}, Outcome.RETRY),  # no processing ack
    (200, {"jsonrpc": "2.0", "error": {"code": -32603}}, Outcome.RETRY),
    (200, None, Outcome.RETRY),                        # unreadable body
    (200, ["processing"], Outcome.RETRY),
    (400, {"jsonrpc": "2.0", "error": {"code": -32602}}, Outcome.REJECTED),
    (404, None, Outcome.REJECTED),
    (413, None, Outcome.REJECTED),
])
def test_classify(status, reply, outcome):
    assert classify(status, reply) is outcome


def test_retry_is_bounded_and_only_for_retryable_failures():
    policy = RetryPolicy(max_attempts=8)
    assert [policy.should_retry(Outcome.RETRY, n) for n in range(1, 9)] == [True] * 7 + [False]
    assert not any(policy.should_retry(o, 1) for o in (Outcome.ACKED, Outcome.REJECTED))
    assert not RetryPolicy(max_attempts=1).should_retry(Outcome.RETRY, 1)


def test_backoff_grows_exponentially_with_jitter_from_100ms_to_2s():
    policy, rng = RetryPolicy(), random.Random(7)
    for attempt, (low, high) in enumerate([(0.1, 0.2), (0.2, 0.4), (0.4, 0.8), (0.8, 1.6)] + [(1.0, 2.0)] * 5,
                                          start=1):
        delays = [policy.delay(attempt, rng=rng) for _ in range(200)]
        assert low <= min(delays) and max(delays) <= high, attempt
        assert max(delays) - min(delays) > (high - low) / 2, "no jitter"
    # the total wait of one event given up on stays bounded (about 10 s at most)
    assert sum(policy.delay(n, rng=rng) for n in range(1, policy.max_attempts)) <= 0.2 + 0.4 + 0.8 + 1.6 + 3 * 2


def test_backoff_honours_retry_after_up_to_a_cap():
    policy = RetryPolicy(retry_after_cap_s=30)
    assert policy.delay(1, retry_after=3.0) == 3.0
    assert 1.0 <= policy.delay(6, retry_after=0.0) <= 2.0  # a shorter Retry-After never shortens the backoff
    assert policy.delay(1, retry_after=3600) == 30


def test_parse_retry_after():
    now = time.time()
    assert parse_retry_after("3") == 3.0 and parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("soon") is None and parse_retry_after("nan") is None
    assert parse_retry_after("-4") == 0.0
    assert 9 <= parse_retry_after(formatdate(now + 10, usegmt=True), now=now) <= 10
    assert parse_retry_after(formatdate(now - 60, usegmt=True), now=now) == 0.0


def test_redelivery_rate():
    rng = random.Random(3)
    assert not any(redeliver(0.0, rng) for _ in range(1000))
    assert all(redeliver(1.0, rng) for _ in range(1000))
    assert 400 <= sum(redeliver(0.05, rng) for _ in range(10000)) <= 600
    assert all(0.05 <= redelivery_delay(rng) <= 1.0 for _ in range(100))


def test_one_user_class_per_variant():
    """The locustfile's classes come from config.ALL_VARIANTS and carry load.user_class's names;
    without RACELAB_VARIANTS only the default three are runnable."""
    def listed(**env):
        done = subprocess.run([venv_binary("locust"), "-f", str(LOCUSTFILE), "--list"], capture_output=True,
                              text=True, timeout=60, env={**os.environ, **env}, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        return [line.strip() for line in done.stdout.splitlines()[1:] if line.strip()]
    assert listed(RACELAB_VARIANTS="all") == [user_class(v) for v in ALL_VARIANTS]
    assert listed(RACELAB_VARIANTS="") == [user_class(v) for v in ALL_VARIANTS[:3]]
    assert user_class("temporal-naive") == "TemporalNaiveUser" and user_class("cursor-only") == "CursorOnlyUser"


# --- on the lab ----------------------------------------------------------------------------------

def test_load_ledger_agrees_with_the_checker(load_run):
    d, run, checker = load_run["dir"], load_run["run"], load_run["checker"]
    files = sorted(d.glob("ledger-*.jsonl"))
    assert files and all(f.stat().st_size > 0 for f in files), files
    assert run["dup_rate"] == 0.1 and run["ledger"]["files"] == [f.name for f in files]
    entries = read_ledger(files)
    assert run["ledger"]["entries"] == len(entries) == sum(len(f.read_text().splitlines()) for f in files)
    acked = defaultdict(set)
    for e in entries:
        assert e.task_id.startswith(run["task_prefix"])
        acked[e.variant].add(e.event_id)
    assert run["ledger"]["acked_events_per_variant"] == {v: len(acked[v]) for v in run["variants"]}
    assert len(entries) > sum(map(len, acked.values())), "redelivery: some events were acked twice"
    for variant in run["variants"]:
        c = checker["variants"][variant]
        assert c["acked"] == len(acked[variant]) == c["accepted"] > 0, (variant, c)
        assert c["broken_acks"] == 0, (variant, c)
    # redelivered events: unguarded processes them again, the guarded variants apply each once
    assert checker["variants"]["unguarded"]["duplicates"] > 0
    for variant in ("locked", "temporal"):
        c = checker["variants"][variant]
        assert (c["duplicate_applications"], c["duplicate_side_effects"], c["phantoms"]) == (0, 0, 0), c
    assert "redelivery" in (d / "locust_stats.csv").read_text()


async def test_locust_workers_keep_one_ledger_each_and_never_share_a_task(lab, tmp_path):
    """Master + 2 workers, as compose runs them: the master sends nothing and keeps no ledger;
    each worker writes its own; both number their users from 1, yet no task id is shared."""
    prefix = f"lw-{uuid.uuid4().hex[:6]}-"
    port = str(TEST_PORT_BASE + 290)  # inside the test lab's block, so it meets no other lab
    common = [venv_binary("locust"), "-f", str(LOCUSTFILE)]
    master = subprocess.Popen(
        [*common, "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", port, "--expect-workers", "2",
         "--headless", "--only-summary", "-u", "6", "-r", "6", "-t", "3s", "--stop-timeout", "10",
         "--host", lab.settings.gateway_url, "--run-id", prefix, "--ledger-dir", str(tmp_path),
         "--dup-rate", "0.2", "--pause", "0.5", "LockedUser"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    workers = [subprocess.Popen([*common, "--worker", "--master-host", "127.0.0.1", "--master-port", port],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT) for _ in range(2)]
    try:
        out, _ = master.communicate(timeout=90)
        for w in workers:
            w.wait(timeout=30)
    finally:
        for p in (master, *workers):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert master.returncode == 0, out[-3000:]
    files = sorted(tmp_path.glob("ledger-*.jsonl"))
    pids = {f.stem.rsplit("-", 1)[1] for f in files}
    assert len(files) == 2 and pids == {str(w.pid) for w in workers}, (files, out[-2000:])
    tasks = [{e.task_id for e in read_ledger([f])} for f in files]
    assert all(tasks) and not tasks[0] & tasks[1], "two workers sent to the same task"
    assert all(t.startswith(prefix + "locked-") for t in tasks[0] | tasks[1])
    entries = read_ledger([tmp_path])
    results, quiescent = await wait_for_quiescence(lab.settings.pg_dsn, prefix, ledger=entries, timeout_s=60)
    c = results["locked"]
    assert quiescent and c.acked == len({e.event_id for e in entries}) == c.accepted > 0, c
    assert (c.broken_acks, c.lost, c.duplicate_applications, c.counter_drift) == (0, 0, 0, 0), c


def test_recovery_after_the_last_fault(tmp_path):
    from racelab.checker.counts import FinalState, LoggedEvent, VariantCounts
    from racelab.clients.load import recovery_after_faults
    log = tmp_path / "faults.jsonl"
    assert recovery_after_faults(log, {}, [], []) is None  # no faults in the run
    log.write_text('{"kind": "kill-redis", "target": "redis", "at": 100.0, "back_at": 101.0}\n'
                   '{"kind": "kill-pod", "target": "pod-locked-1", "at": 110.0, "back_at": 113.0}\n')
    events = [LoggedEvent("locked", "t", "a", "e1", 1, 109.0), LoggedEvent("locked", "t", "a", "e2", 2, 112.0),
              LoggedEvent("locked", "t", "a", "e3", 3, 120.0), LoggedEvent("unguarded", "u", "a", "x", 1, 111.0)]
    states = [FinalState("locked", "t", "a", {"history": ["e1", "e2", "e3"], "applied_at": [109.5, 118.5, 121.0],
                                              "processing_count": 3}),
              FinalState("unguarded", "u", "a", {"history": [], "applied_at": [], "processing_count": 0})]
    results = {"locked": VariantCounts("locked", accepted=3, applied=3),
               "unguarded": VariantCounts("unguarded", accepted=1, lost=1)}
    # the last fault's component was back at 113: e2 (accepted 112) applied at 118.5 -> 5.5 s;
    # e3 came after it and does not count; unguarded lost its event
    assert recovery_after_faults(log, results, events, states) == {"locked": 5.5, "unguarded": None}
    log.write_text('{"kind": "kill-postgres", "target": "postgres", "at": 100.0, "back_at": null}\n')
    assert recovery_after_faults(log, {"locked": results["locked"]}, events, states) == {"locked": None}


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("2m", 120), ("1h30m", 5400), ("1h0m5s", 3605)])
def test_durations_as_locust_takes_them(text, seconds):
    from racelab.clients.load import parse_duration
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1h30", "0s", "0", "abc", "", "5 m"])
def test_durations_locust_refuses_or_never_ends_are_refused(text):
    """"1h30" Locust refuses (make load then reported OK over 0 events); "0s" it runs forever."""
    from racelab.clients.load import parse_duration
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_load_whose_locust_fails_is_an_error_not_ok(lab, tmp_path):
    """Locust refusing an option sent nothing, and make load still said OK and exited 0."""
    done = subprocess.run([sys.executable, "-m", "racelab.clients.load", "--users", "1", "--duration", "2s",
                           "--variant", "locked", "--locust-args=--no-such-option"],
                          env=dict(os.environ, RACELAB_RESULTS_DIR=str(tmp_path)), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "Locust failed (exit 2" in done.stderr, done.stdout[-1500:] + done.stderr[-1500:]
    assert "OK:" not in done.stdout


def test_the_checker_refuses_a_ledger_that_is_not_one(tmp_path):
    junk = tmp_path / "ledger-junk.jsonl"
    junk.write_bytes(bytes(range(256)))
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, says in ((junk, "not UTF-8 text"), (empty, "no ledger file")):
        done = subprocess.run([sys.executable, "-m", "racelab.checker", "--ledger", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
