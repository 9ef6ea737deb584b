"""How a fault is done: natively (signals to the processes supervisor runs; supervisor restarts
what was killed, as an orchestrator would) or with Docker Compose (`docker kill`/`start`,
`docker pause`/`unpause` on one container of the service)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import aiohttp

from ..config import Settings


class FaultError(RuntimeError):
    pass


class NativeRuntime:
    """The native lab: process names are supervisor's program names (pod-locked-1, worker-2,
    redis, postgres, temporal). Each runs in its own process group (supervisor calls setpgrp),
    so a kill takes the component's children with it, as a container's death would."""
    name = "native"

    def __init__(self, settings: Settings):
        self.settings = settings

    def pid(self, process: str) -> int:
        from ..lab.native import supervisor_rpc
        try:
            info = supervisor_rpc(self.settings).getProcessInfo(process)
        except OSError as exc:
            raise FaultError(f"supervisor of the lab in {self.settings.state_dir} does not answer ({exc}); "
                             "is the lab up (make up)?") from None
        except Exception as exc:  # xmlrpc Fault: BAD_NAME
            raise FaultError(f"no process {process!r} in this lab ({exc})") from None
        return int(info["pid"])

    def _signal(self, process: str, sig: signal.Signals) -> int:
        pid = self.pid(process)
        if not pid:
            raise FaultError(f"{process} is not running")
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            raise FaultError(f"{process} (pid {pid}) is gone") from None
        return pid

    async def kill(self, process: str) -> int:
        return self._signal(process, signal.SIGKILL)

    async def pause(self, process: str, seconds: float) -> None:
        pid = self._signal(process, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            # the group stopped, not a fresh lookup through supervisor: undoing the pause must not
            # depend on supervisor answering
            try:
                os.killpg(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass  # gone meanwhile: nothing left stopped

    async def wait_back(self, process: str, old_pid: int | None, timeout_s: float = 90.0) -> float:
        """Wait until the process runs again (a new pid after a kill) and its health check
        passes; returns the time it was back (epoch seconds)."""
        from ..lab.native import healthy, postgres_user
        from ..lab.topology import services
        inst = next((i for s in services(self.settings, postgres_user()) for i in s.instances() if i.name == process),
                    None)
        if inst is None:
            raise FaultError(f"no process {process!r} in this lab's topology")
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                try:
                    pid = self.pid(process)
                except FaultError:
                    pid = 0
                if pid and pid != old_pid and await healthy(inst, self.settings, session):
                    return time.time()
                await asyncio.sleep(0.1)
        raise FaultError(f"{process} not back and healthy {timeout_s:.0f} s after the fault")


class ComposeRuntime:
    """Docker Compose: a process name maps to one container of a service (pod-locked-2 is the
    second replica of service pod-locked; worker-1 the first of worker)."""
    name = "docker"

    def __init__(self, settings: Settings, compose: tuple[str, ...] = ("docker", "compose")):
        self.settings = settings
        self.compose = compose

    def container(self, process: str) -> str:
        service, _, replica = process.rpartition("-")
        if not replica.isdigit():
            service, replica = process, "1"
        done = subprocess.run([*self.compose, "ps", "--all", "--format", "json", service],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise FaultError(f"docker compose ps {service}: {done.stderr.strip()}")
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip().startswith("{")]
        if done.stdout.strip().startswith("["):
            rows = json.loads(done.stdout)
        for row in rows:
            if row.get("Name", "").endswith(f"-{replica}"):
                return row["ID"]
        raise FaultError(f"no container {process!r} (service {service}, replica {replica})")

    def _docker(self, *args: str) -> None:
        done = subprocess.run(["docker", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise FaultError(f"docker {' '.join(args)}: {done.stderr.strip()}")

    async def kill(self, process: str) -> str:
        cid = self.container(process)
        self._docker("kill", "--signal", "KILL", cid)
        self._docker("start", cid)  # the orchestrator's restart
        return cid

    async def pause(self, process: str, seconds: float) -> None:
        cid = self.container(process)
        self._docker("pause", cid)
        try:
            await asyncio.sleep(seconds)
        finally:
            self._docker("unpause", cid)

    def store(self, record) -> None:
        """Record the fault in the lab's faults table, from inside the checker container."""
        from dataclasses import asdict
        subprocess.run([*self.compose, "exec", "-T", "checker", "python", "-m", "racelab.nemesis.record",
                        json.dumps(asdict(record))], capture_output=True, text=True)

    async def wait_back(self, process: str, old_pid, timeout_s: float = 90.0) -> float:
        cid = self.container(process)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = subprocess.run(["docker", "inspect", "--format",
                                   "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", cid],
                                  capture_output=True, text=True)
            status = done.stdout.split()
            if status[:1] == ["running"] and status[1:] in ([], ["healthy"]):
                return time.time()
            await asyncio.sleep(0.2)
        raise FaultError(f"{process} not back and healthy {timeout_s:.0f} s after the fault")


def runtime_for(settings: Settings, name: str | None = None):
    name = name or os.environ.get("RUNTIME") or "native"
    if name == "docker":
        return ComposeRuntime(settings)
    if name == "native":
        return NativeRuntime(settings)
    raise FaultError(f"RUNTIME={name!r}: expected native or docker")
