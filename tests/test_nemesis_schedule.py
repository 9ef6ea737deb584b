"""The nemesis' fault and schedule syntax, and the time a fault is recorded at (pure logic, no lab)."""
import asyncio
import json
import time

import pytest

from racelab.config import Settings
from racelab.nemesis.faults import Fault, FaultSpecError, Scheduled, parse_schedule
from racelab.nemesis.record import inject

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


class SlowLookupRuntime:
    """A runtime whose process lookup takes LOOKUP_S before it signals (supervisor's answer took
    up to 190 ms under a burst); it marks when it signalled, as the real runtimes do."""
    name = "docker"  # keep() stores through the runtime: no PostgreSQL needed here
    LOOKUP_S = 0.2

    def __init__(self):
        self.signalled_at = None

    async def kill(self, process, signalled=None):
        await asyncio.sleep(self.LOOKUP_S)
        self.signalled_at = signalled["at"] = time.time()
        return "old"

    async def pause(self, process, seconds, signalled=None):
        await asyncio.sleep(self.LOOKUP_S)
        self.signalled_at = signalled["at"] = time.time()
        await asyncio.sleep(seconds)

    async def wait_back(self, process, old):
        return time.time()

    async def store(self, record):
        return True


@pytest.mark.parametrize("spec", ["kill-redis@1s", "pause-pod:locked@1s"])
async def test_a_fault_is_recorded_at_its_signal_not_before_the_lookup(spec, tmp_path):
    """`at` bounds the events "in flight at the fault": an `at` taken before the lookup left out
    those accepted between it and the signal."""
    runtime = SlowLookupRuntime()
    before = time.time()
    record = await inject(Settings.from_env(), runtime, parse_schedule(spec, RUNNING)[0].fault,
                          log_path=tmp_path / "faults.jsonl", pause_s=0.01)
    assert record.at == runtime.signalled_at >= before + SlowLookupRuntime.LOOKUP_S
    assert json.loads((tmp_path / "faults.jsonl").read_text())["at"] == record.at
