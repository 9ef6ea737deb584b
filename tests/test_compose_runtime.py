"""The nemesis's Docker Compose runtime against a stand-in `docker` CLI (no Docker engine on these
machines): what it runs, in what order, and that it never blocks the event loop or leaves a
container paused or dead when the nemesis is stopped mid-command. The stand-in logs every call
with its start and end time; `pause` and `kill` take FAKE_DOCKER_SLOW seconds. Last, what a fault
record the faults table did not take leaves, with either runtime."""
from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time

import pytest

from racelab.config import Settings
from racelab.lab.native import process_gone
from racelab.nemesis.record import FaultRecord
from racelab.nemesis.runtimes import ComposeRuntime, FaultError

FAKE_DOCKER = r'''#!PYTHON
import json, os, sys, time
args = sys.argv[1:]
log = os.environ["FAKE_DOCKER_LOG"]
started = time.time()
def done(code=0, out=""):
    with open(log, "a") as f:
        f.write(json.dumps({"args": args, "start": started, "end": time.time(), "code": code}) + "\n")
    sys.stdout.write(out)
    sys.exit(code)
if os.environ.get("FAKE_DOCKER_ORPHAN") == args[0]:  # a child keeps the pipes after the CLI exits
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    with open(log + ".orphan", "w") as f:
        f.write(str(child.pid))
    done(0)
if os.environ.get("FAKE_DOCKER_HANG") == args[0]:
    if os.environ.get("FAKE_DOCKER_PLUGIN_CHILD"):  # as the CLI runs the compose plugin: same pipes
        import subprocess
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    time.sleep(3600)
if args[:2] == ["compose", "ps"]:
    service = args[-1]
    done(0, "".join(json.dumps({"Name": f"racelab-{service}-{i}", "ID": f"cid-{service}-{i}"}) + "\n"
                    for i in (1, 2, 3)))
if args[:2] == ["compose", "exec"]:
    done(int(os.environ.get("FAKE_DOCKER_EXEC_CODE", "0")))
if args[0] in os.environ.get("FAKE_DOCKER_SLOW_COMMANDS", "pause,kill").split(","):
    with open(log + ".started", "a") as f:
        f.write(args[0] + "\n")
    time.sleep(float(os.environ.get("FAKE_DOCKER_SLOW", "0")))
if args[0] in os.environ.get("FAKE_DOCKER_FAIL", "").split(","):
    done(1)
if args[0] == "inspect":
    done(0, "running healthy\n")
done(0)
'''


@pytest.fixture
def docker(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "docker"
    exe.write_text(FAKE_DOCKER.replace("PYTHON", sys.executable, 1))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "docker.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))

    def calls() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    calls.started = lambda: (log.parent / (log.name + ".started")).exists()
    return calls


async def cancel_during_the_docker_command(docker, fault: asyncio.Task, times: int = 1) -> None:
    """Cancel the fault (times times, 0.1 s apart) while the stand-in's slow pause or kill runs."""
    while not docker.started():
        await asyncio.sleep(0.02)
    for _ in range(times):
        fault.cancel()
        await asyncio.sleep(0.1)
    with pytest.raises(asyncio.CancelledError):
        await fault


def changes(calls) -> list[list[str]]:
    """The calls that change a container, in order (not ps / inspect)."""
    return [c["args"] for c in calls if c["args"][0] in ("pause", "unpause", "kill", "start")]


def test_pause_pauses_the_replica_then_unpauses_it_without_blocking_the_loop(docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_SLOW", "0.5")
    runtime = ComposeRuntime(Settings.from_env())
    ticks: list[float] = []

    async def ticker():
        while True:
            ticks.append(time.time())
            await asyncio.sleep(0.05)

    async def main():
        t = asyncio.create_task(ticker())
        await runtime.pause("pod-locked-2", 0.1)
        t.cancel()
    asyncio.run(main())
    assert changes(docker()) == [["pause", "cid-pod-locked-2"], ["unpause", "cid-pod-locked-2"]]
    pause = next(c for c in docker() if c["args"][0] == "pause")
    # the loop ran while `docker pause` did (a blocking call would have stopped the ticker)
    assert any(pause["start"] < t < pause["end"] for t in ticks)


@pytest.mark.parametrize("cancels", [1, 3])  # 3: a second SIGTERM, a Ctrl-C after it
def test_pause_stopped_during_docker_pause_still_unpauses_after_it(docker, monkeypatch, cancels):
    monkeypatch.setenv("FAKE_DOCKER_SLOW", "0.6")
    runtime = ComposeRuntime(Settings.from_env())

    async def main():
        fault = asyncio.create_task(runtime.pause("pod-temporal-1", 30.0))
        await cancel_during_the_docker_command(docker, fault, cancels)
    asyncio.run(main())
    calls = docker()
    assert changes(calls) == [["pause", "cid-pod-temporal-1"], ["unpause", "cid-pod-temporal-1"]]
    pause, unpause = (next(c for c in calls if c["args"][0] == k) for k in ("pause", "unpause"))
    assert unpause["start"] >= pause["end"]  # not before the pause it undoes


def test_kill_stopped_during_docker_kill_still_starts_the_container(docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_SLOW", "0.6")
    runtime = ComposeRuntime(Settings.from_env())

    async def main():
        fault = asyncio.create_task(runtime.kill("worker-2"))
        await cancel_during_the_docker_command(docker, fault)
    asyncio.run(main())
    assert changes(docker()) == [["kill", "--signal", "KILL", "cid-worker-2"], ["start", "cid-worker-2"]]


def test_a_failed_undo_while_stopping_is_reported_and_the_stop_goes_on(docker, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_DOCKER_SLOW", "0.6")
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "start")
    runtime = ComposeRuntime(Settings.from_env())

    async def main():
        fault = asyncio.create_task(runtime.kill("worker-1"))
        await cancel_during_the_docker_command(docker, fault)  # CancelledError, not the start's FaultError
    asyncio.run(main())
    assert "docker start cid-worker-1" in capsys.readouterr().err


def test_an_unpause_that_fails_after_the_pause_took_is_an_error(docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "unpause")
    runtime = ComposeRuntime(Settings.from_env())
    with pytest.raises(FaultError, match="docker unpause cid-redis-1"):  # the container may be left paused
        asyncio.run(runtime.pause("redis", 0.0))


def test_a_pause_that_failed_is_reported_not_its_unpause(docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "pause,unpause")  # as docker does for a container that is not paused
    runtime = ComposeRuntime(Settings.from_env())
    with pytest.raises(FaultError, match="docker pause cid-redis-1"):
        asyncio.run(runtime.pause("redis", 0.0))
    assert changes(docker()) == [["pause", "cid-redis-1"], ["unpause", "cid-redis-1"]]


def test_an_unpause_that_fails_while_stopping_is_reported(docker, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_DOCKER_SLOW", "0.6")
    monkeypatch.setenv("FAKE_DOCKER_SLOW_COMMANDS", "unpause")
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "unpause")
    runtime = ComposeRuntime(Settings.from_env())

    async def main():
        fault = asyncio.create_task(runtime.pause("pod-locked-3", 0.0))
        await cancel_during_the_docker_command(docker, fault)  # during the pause's own unpause
    asyncio.run(main())
    assert "docker unpause cid-pod-locked-3 (while stopping): exit 1" in capsys.readouterr().err


def test_a_child_that_keeps_the_pipes_after_docker_exits_is_killed(docker, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_DOCKER_ORPHAN", "compose")
    runtime = ComposeRuntime(Settings.from_env(), timeout_s=1.0)
    record = FaultRecord("kill-pod", "pod-locked-1", 1000.0, None)
    assert asyncio.run(asyncio.wait_for(runtime.store(record), 20.0)) is False  # no end to its output
    pid = int((tmp_path / "docker.jsonl.orphan").read_text())
    deadline = time.monotonic() + 5
    while not process_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(pid)


@pytest.mark.parametrize("plugin_child", ["", "1"])
def test_a_docker_that_does_not_answer_is_an_error_not_a_hang(docker, monkeypatch, plugin_child):
    monkeypatch.setenv("FAKE_DOCKER_HANG", "compose")
    monkeypatch.setenv("FAKE_DOCKER_PLUGIN_CHILD", plugin_child)
    runtime = ComposeRuntime(Settings.from_env(), timeout_s=1.0)
    with pytest.raises(FaultError, match="no answer in 1 s"):
        # (the 20-s cap turns a hang on the pipes the plugin child holds into a failure)
        asyncio.run(asyncio.wait_for(runtime.kill("pod-locked-1"), 20.0))
    assert changes(docker()) == []  # nothing done to a container it could not name
    record = FaultRecord("kill-pod", "pod-locked-1", 1000.0, None)
    assert asyncio.run(asyncio.wait_for(runtime.store(record), 20.0)) is False  # not stored, not raised


@pytest.mark.parametrize("code, stored", [(0, True), (1, False)])
def test_store_runs_the_record_module_in_the_checker_container(docker, monkeypatch, code, stored):
    monkeypatch.setenv("FAKE_DOCKER_EXEC_CODE", str(code))
    runtime = ComposeRuntime(Settings.from_env())
    record = FaultRecord("kill-pod", "pod-locked-1", 1000.0, 1002.5, "run-1")
    assert asyncio.run(runtime.store(record)) is stored
    args = next(c["args"] for c in docker() if c["args"][:2] == ["compose", "exec"])
    assert args[:8] == ["compose", "exec", "-T", "checker", "python", "-m", "racelab.nemesis.record",
                        args[7]]
    assert json.loads(args[7]) == {"kind": "kill-pod", "target": "pod-locked-1", "at": 1000.0, "back_at": 1002.5,
                                   "run_id": "run-1", "error": ""}


@pytest.mark.parametrize("runtime_name", ["docker", "native"])
def test_a_fault_record_the_faults_table_did_not_take_is_reported(docker, monkeypatch, tmp_path, capsys,
                                                                   runtime_name):
    from racelab.nemesis.record import keep
    from racelab.nemesis.runtimes import NativeRuntime
    monkeypatch.setenv("FAKE_DOCKER_EXEC_CODE", "1")  # docker: the record module in the checker failed
    monkeypatch.setenv("RACELAB_PG_DSN", "postgresql://racelab@127.0.0.1:1/racelab")  # native: nothing listens
    settings = Settings.from_env()
    runtime = ComposeRuntime(settings) if runtime_name == "docker" else NativeRuntime(settings)
    record = FaultRecord("kill-redis", "redis", 1000.0, 1001.0, "run-1")
    log = tmp_path / "faults.jsonl"
    asyncio.run(keep(settings, runtime, record, log, store_timeout_s=0.5))
    assert json.loads(log.read_text())["target"] == "redis"  # the run's log has it all the same
    assert f"the kill-redis of redis is not in the lab's faults table (PostgreSQL did not take it; it is in {log})" \
        in capsys.readouterr().err
