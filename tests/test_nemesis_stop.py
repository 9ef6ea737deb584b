"""A nemesis stopped mid-fault undoes the fault: `make load` terminates a nemesis that overruns
its time (SIGTERM), and a pod it had paused must not stay stopped after it."""
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from racelab.nemesis.runtimes import NativeRuntime

ROOT = Path(__file__).resolve().parent.parent
POD = "pod-locked-1"


def process_state(pid: int) -> str:
    """R, S, T (stopped), ... from /proc/<pid>/stat."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def test_sigterm_mid_pause_resumes_the_pod(lab):
    runtime = NativeRuntime(lab.settings)
    pid = runtime.pid(POD)
    assert process_state(pid) != "T"
    # the pause lasts 2.5 lock leases (7.5 s by default): SIGTERM comes well before its end
    nemesis = subprocess.Popen([sys.executable, "-m", "racelab.nemesis", "--faults", "pause-pod:locked:1@0s",
                                "--duration", "60s"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=ROOT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 20
        while process_state(pid) != "T":
            assert nemesis.poll() is None and time.monotonic() < deadline, "the nemesis never paused the pod"
            await asyncio.sleep(0.05)
        paused_at = time.monotonic()
        nemesis.send_signal(signal.SIGTERM)
        out, _ = nemesis.communicate(timeout=20)
        state_after = process_state(pid)  # before the safety net below
    finally:
        if nemesis.poll() is None:
            nemesis.kill()
        os.kill(pid, signal.SIGCONT)  # never leave the session's pod stopped, whatever happened
    assert state_after != "T", "the nemesis left the pod stopped"
    assert time.monotonic() - paused_at < lab.settings.lock_ttl_s * 2.5, "the pause ran its full time"
    assert nemesis.returncode == 128 + signal.SIGTERM, out
    assert "stopped (SIGTERM)" in out, out
    assert runtime.pid(POD) == pid  # resumed, not restarted
    back = await runtime.wait_back(POD, None, timeout_s=15)
    assert back > 0


def test_make_up_resumes_a_pod_left_stopped(lab):
    """A nemesis killed outright (SIGKILL) mid-pause cannot undo it: `make status` shows the pod
    stopped, and `make up` on the running lab resumes it."""
    runtime = NativeRuntime(lab.settings)
    pid = runtime.pid(POD)
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
