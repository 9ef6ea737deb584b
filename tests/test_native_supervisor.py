"""The native lab without its supervisord: a killed one is dead even before it is reaped, and
`up` stops the programs it left running (and nothing else)."""
import os
import subprocess
import sys

import pytest

from racelab.config import Settings
from racelab.lab.native import MARKER, LabError, status, stop_orphans, supervisor_paths, supervisord_pid
from racelab.lab.topology import paths


def test_a_zombie_supervisord_is_not_a_running_lab(tmp_path, monkeypatch):
    """A supervisord killed with SIGKILL stays a zombie until its parent reaps it; `up` took that
    for a running lab ("already running, nothing started") while its programs ran unsupervised."""
    monkeypatch.setenv("RACELAB_STATE_DIR", str(tmp_path))
    settings = Settings.from_env()
    pidfile = supervisor_paths(settings)["pid"]
    pidfile.parent.mkdir(parents=True)
    alive = os.fork()
    if alive == 0:
        os.pause()
        os._exit(0)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    try:
        pidfile.write_text(f"{alive}\n")
        assert supervisord_pid(settings) == alive
        os.waitid(os.P_PID, dead, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        pidfile.write_text(f"{dead}\n")
        assert supervisord_pid(settings) is None
    finally:
        os.kill(alive, 9)
        os.waitpid(alive, 0)
        os.waitpid(dead, 0)


def start(argv, env=None):
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_up_stops_what_a_killed_supervisord_left_running_and_nothing_else(tmp_path, monkeypatch, capsys):
    """Programs a killed supervisord left behind carry the lab's marker: `up` stops them before it
    starts the lab (they hold its ports). A process that only names the lab's files (a `less` of
    its nginx.conf) is not the lab's, and a supervisord of the lab that lost its pid file is
    refused, not killed. Meanwhile `make status` says what runs, and exits 1 (not 3, not running)."""
    monkeypatch.setenv("RACELAB_STATE_DIR", str(tmp_path))
    settings = Settings.from_env()
    nginx_conf = paths(settings)["nginx"] / "nginx.conf"
    nginx_conf.parent.mkdir(parents=True)
    nginx_conf.write_text("")
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
    orphan = start(sleeper, env={**os.environ, MARKER: str(tmp_path)})
    reader = start([*sleeper, str(nginx_conf)])
    fake_supervisord = tmp_path / "supervisord"
    fake_supervisord.write_text("import time; time.sleep(300)\n")
    try:
        supervisord = start([sys.executable, str(fake_supervisord), "-c", str(supervisor_paths(settings)["conf"])])
        try:
            with pytest.raises(LabError, match=f"pid {supervisord.pid}"):
                stop_orphans(settings)
            assert orphan.poll() is None
            assert status(settings) == 1
            assert f"its supervisord runs (pid {supervisord.pid}) but its pid file is gone" in capsys.readouterr().out
        finally:
            supervisord.kill()
            supervisord.wait()
        # make status: not "racelab is not running" while its programs serve on
        assert status(settings) == 1
        assert "no supervisord, but 1 of its processes still run" in capsys.readouterr().out
        assert stop_orphans(settings) == [orphan.pid]
        assert orphan.wait(timeout=15) is not None
        assert reader.poll() is None, "a process that only reads the lab's files was stopped"
        assert stop_orphans(settings) == []
        assert status(settings) == 3
    finally:
        for p in (orphan, reader):
            p.kill()
            p.wait()
