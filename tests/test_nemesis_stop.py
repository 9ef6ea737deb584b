"""A nemesis stopped mid-fault undoes the fault: `make load` terminates a nemesis that overruns
its time (SIGTERM), a user presses Ctrl-C, and a pod it paused must not stay stopped after it
(`make chaos` stopped by SIGTERM: tests/test_chaos.py). One killed outright (SIGKILL) cannot
undo anything: `make up` resumes the pod."""
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from helpers import stop_mid_pause
from racelab.lab.native import process_state
from racelab.nemesis.runtimes import NativeRuntime

ROOT = Path(__file__).resolve().parent.parent
POD = "pod-locked-1"


@pytest.mark.parametrize("sig, exit_code, said", [(signal.SIGTERM, 128 + signal.SIGTERM, "stopped (SIGTERM)"),
                                                  (signal.SIGINT, 130, "interrupted")], ids=["sigterm", "ctrl-c"])
async def test_a_stopped_nemesis_resumes_the_pod_and_records_the_fault(lab, tmp_path, sig, exit_code, said):
    log = tmp_path / "faults.jsonl"
    pid = NativeRuntime(lab.settings).pid(POD)
    # the pause lasts 2.5 lock leases (7.5 s by default): the signal comes well before its end
    state, code, out, took = await stop_mid_pause(
        lab.settings, [sys.executable, "-m", "racelab.nemesis", "--faults", "pause-pod:locked:1@0s",
                       "--duration", "60s", "--runtime", "native", "--log", str(log)],
        sig, dict(os.environ), POD, cwd=ROOT)
    assert state != "T", "the nemesis left the pod stopped"
    assert took < lab.settings.lock_ttl_s * 2.5, "the pause ran its full time"
    assert code == exit_code and said in out, out[-2000:]
    runtime = NativeRuntime(lab.settings)
    assert runtime.pid(POD) == pid  # resumed, not restarted
    assert await runtime.wait_back(POD, None, timeout_s=15) > 0
    # the fault happened: it is in the run's log, as not seen back
    (fault,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert (fault["kind"], fault["target"], fault["back_at"]) == ("pause-pod", POD, None), fault
    assert fault["error"].startswith("cancelled"), fault


def test_make_up_resumes_a_pod_left_stopped(lab):
    """A nemesis killed outright (SIGKILL) mid-pause cannot undo it: `make status` shows the pod
    stopped, and `make up` on the running lab resumes it."""
    pid = NativeRuntime(lab.settings).pid(POD)
    os.killpg(pid, signal.SIGSTOP)
    try:
        status = lab.run("-m", "racelab.lab", "status", check=False)
        up = lab.run("-m", "racelab.lab", "up", check=False)
        state_after = process_state(pid)
    finally:
        os.killpg(pid, signal.SIGCONT)
    line = next(l for l in status.stdout.splitlines() if l.split()[:1] == [POD])
    assert "STOPPED by SIGSTOP" in line and "UNHEALTHY" in line, status.stdout
    assert status.returncode == 1
    assert up.returncode == 0 and f"{POD} (pid {pid})" in up.stdout, up.stdout + up.stderr
    assert state_after != "T"
