"""The nemesis' fault and schedule syntax (pure logic, no lab)."""
import pytest

from racelab.nemesis.faults import Fault, FaultSpecError, Scheduled, parse_schedule

RUNNING = ("unguarded", "locked", "temporal")


def test_a_schedule_of_every_form():
    got = parse_schedule("kill-pod:locked@10s, kill-redis@every30s, kill-postgres@5s/every20s,"
                         "pause-pod:temporal:2@1.5s, kill-worker:2@1m, kill-temporal@2m", RUNNING)
    assert got == [Scheduled(Fault("kill-pod", "locked", 1), 10.0), Scheduled(Fault("kill-redis"), 30.0, 30.0),
                   Scheduled(Fault("kill-postgres"), 5.0, 20.0), Scheduled(Fault("pause-pod", "temporal", 2), 1.5),
                   Scheduled(Fault("kill-worker", replica=2), 60.0), Scheduled(Fault("kill-temporal"), 120.0)]
    assert [s.fault.target for s in got] == ["pod-locked-1", "redis", "postgres", "pod-temporal-2", "worker-2",
                                            "temporal"]


def test_fire_times_within_the_duration():
    once, every, both = parse_schedule("kill-redis@10s,kill-redis@every30s,kill-redis@5s/every20s", RUNNING)
    assert once.times(60) == [10.0] and once.times(9) == []
    assert every.times(100) == [30.0, 60.0, 90.0]
    assert both.times(50) == [5.0, 25.0, 45.0]


@pytest.mark.parametrize("spec", ["kill-pod@1s", "nuke@1s", "kill-redis", "kill-redis:x@1s", "kill-pod:nope@1s",
                                  "kill-redis@soon", "kill-redis@every0.5s", "kill-redis@every0s", "kill-worker:0@1s",
                                  "", " , "])
def test_bad_schedules_are_refused_with_a_reason(spec):
    with pytest.raises(FaultSpecError) as err:
        parse_schedule(spec, RUNNING)
    assert str(err.value)


def test_a_schedule_with_nothing_within_the_duration_is_an_error():
    """`make chaos FAULTS=kill-redis@10s DURATION=3s` injected nothing and exited 0."""
    import os
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "racelab.nemesis", "--faults", "kill-redis@10s", "--duration", "3s"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RACELAB_STATE_DIR": "/nonexistent-racelab-state"})
    assert done.returncode == 1 and "no fault falls within the run's 3 s" in done.stderr, done.stderr
