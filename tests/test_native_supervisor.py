"""The native lab's view of its supervisord: a killed one is dead even before it is reaped."""
import os

from racelab.config import Settings
from racelab.lab.native import supervisor_paths, supervisord_pid


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
