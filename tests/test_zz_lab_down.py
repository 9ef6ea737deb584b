"""Runs last (file order): `down` stops every process of the session's lab, by pid and marker."""
import socket
from pathlib import Path

import pytest

from racelab.lab.native import lab_processes
from racelab.lab.topology import services


def test_down_leaves_no_process_running(lab):
    if not lab.owned:
        pytest.skip("--lab=existing: the lab is not ours to stop")
    before = lab_processes(lab.settings)
    cmdlines = " | ".join(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                          for pid in before if Path(f"/proc/{pid}").exists())
    # every kind of process is found, including those that rewrite their titles
    for kind in ("supervisord", "redis-server", "postgres: ", "nginx: worker", "temporal server", "racelab.pod",
                 "racelab.worker", "racelab.checker", "prometheus"):
        assert kind in cmdlines, f"{kind} not among the lab's processes"
    done = lab.down()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "leftover" not in done.stdout, "supervisor should have stopped every process by pid: " + done.stdout
    assert lab_processes(lab.settings) == []
    for svc in services(lab.settings):
        for inst in svc.instances():
            with socket.socket() as s:
                assert s.connect_ex((lab.settings.host, inst.port)) != 0, f"{inst.name} still listening"
    again = lab.down()
    assert "not running" in again.stdout
