"""Runs last (file order): `down` stops every process of the session's lab, by pid and marker."""
import os
import re
import signal
import socket
from pathlib import Path

import pytest

from racelab.lab.native import lab_processes
from racelab.lab.topology import paths, services
from racelab.nemesis.runtimes import NativeRuntime


def test_down_leaves_no_process_running(lab):
    if not lab.owned:
        pytest.skip("--lab=existing: the lab is not ours to stop")
    before = lab_processes(lab.settings)
    cmdlines = " | ".join(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                          for pid in before if Path(f"/proc/{pid}").exists())
    # every kind of process is found, including those that rewrite their titles
    for kind in ("supervisord", "redis-server", "postgres: ", "nginx -p", "temporal server", "racelab.pod",
                 "racelab.worker", "racelab.checker", "prometheus"):
        assert kind in cmdlines, f"{kind} not among the lab's processes"
    # nginx is one process (no master whose worker a kill could orphan: tests/test_chaos.py)
    argv0 = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
             for pid in before if Path(f"/proc/{pid}").exists()]
    assert sum(a.startswith("nginx:") or os.path.basename(a) == "nginx" for a in argv0) == 1, argv0
    # a pod a pause left stopped (SIGSTOP, as the nemesis does): down resumes it, so it stops on
    # its stop signal like the others, not killed after supervisor's 20-s stop wait
    pod = next(inst.name for svc in services(lab.settings) if svc.name.startswith("pod-") for inst in svc.instances())
    paused = NativeRuntime(lab.settings).pid(pod)
    assert paused > 1, f"{pod} is not running"  # (killpg(0) would stop this test's own group)
    os.killpg(paused, signal.SIGSTOP)
    log = paths(lab.settings)["logs"] / "supervisord.log"
    log_before = log.stat().st_size
    done = lab.down()
    assert done.returncode == 0, done.stdout + done.stderr
    # stopped in waves, the reverse of up's stages: every app process before the stores
    with log.open("rb") as f:
        f.seek(log_before)
        stopped = re.findall(r"stopped: (\S+) \((.*?)\)", f.read().decode(errors="replace"))
    order = [name for name, _ in stopped]
    assert dict(stopped).get(pod) == "exit status 0", stopped
    assert {"postgres", "redis", "temporal"} <= set(order), order
    stores = [order.index(name) for name in ("postgres", "redis", "temporal")]
    apps = [i for i, name in enumerate(order) if name.startswith(("pod-", "worker-", "queue-worker-", "checker"))]
    assert apps and max(apps) < min(stores), order
    assert "leftover" not in done.stdout, "supervisor should have stopped every process by pid: " + done.stdout
    assert lab_processes(lab.settings) == []
    for svc in services(lab.settings):
        for inst in svc.instances():
            with socket.socket() as s:
                assert s.connect_ex((lab.settings.host, inst.port)) != 0, f"{inst.name} still listening"
    again = lab.down()
    assert "not running" in again.stdout
