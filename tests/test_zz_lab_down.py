"""Runs last (file order): `down` stops every process of the session's lab, by pid and marker."""
import socket

import pytest

from racelab.lab.native import lab_processes
from racelab.lab.topology import services


def test_down_leaves_no_process_running(lab):
    if not lab.owned:
        pytest.skip("--lab=existing: the lab is not ours to stop")
    assert lab_processes(lab.settings), "the lab should be running before down"
    done = lab.down()
    assert done.returncode == 0, done.stdout + done.stderr
    assert lab_processes(lab.settings) == []
    for svc in services(lab.settings):
        for inst in svc.instances():
            with socket.socket() as s:
                assert s.connect_ex((lab.settings.host, inst.port)) != 0, f"{inst.name} still listening"
    again = lab.down()
    assert "not running" in again.stdout
