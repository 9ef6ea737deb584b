"""How a fault is done: natively (signals to the processes supervisor runs; supervisor restarts
what was killed, as an orchestrator would) or with Docker Compose (`docker kill`/`start`,
`docker pause`/`unpause` on one container of the service)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
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

    def _signal(self, process: str, sig: signal.Signals, signalled: dict | None = None) -> int:
        pid = self.pid(process)
        if not pid:
            raise FaultError(f"{process} is not running")
        if signalled is not None:  # after the lookup, which took up to 190 ms under a burst
            signalled["at"] = time.time()
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            raise FaultError(f"{process} (pid {pid}) is gone") from None
        return pid

    async def kill(self, process: str, signalled: dict | None = None) -> int:
        """SIGKILL to the process group; signalled["at"]: when (epoch seconds)."""
        return self._signal(process, signal.SIGKILL, signalled)

    async def pause(self, process: str, seconds: float, signalled: dict | None = None) -> None:
        pid = self._signal(process, signal.SIGSTOP, signalled)
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
    second replica of service pod-locked; worker-1 the first of worker).

    Every docker command runs as an asyncio subprocess with a time limit: the nemesis runs its
    faults concurrently, and a blocking call held up every other fault (and a stop) for as long
    as docker took. A command that changes a container (pause, unpause, kill, start) is let
    finish when the fault is cancelled, so that what undoes it comes after it."""
    name = "docker"

    def __init__(self, settings: Settings, compose: tuple[str, ...] = ("docker", "compose"),
                 timeout_s: float = 60.0):
        self.settings = settings
        self.compose = compose
        self.timeout_s = timeout_s

    async def _run(self, *argv: str, finish_on_cancel: bool = False,
                   result: dict | None = None) -> tuple[int, str, str]:
        """Run one command; result gets its exit code ("code": negative if it was killed, None
        if unknown) and stderr ("err") also when it ends in a cancel. Its own session, so that a
        kill reaches the compose plugin the docker CLI runs as a child (it holds the same pipes,
        maybe after the CLI exited) and the terminal's Ctrl-C does not."""
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:  # no docker binary
            raise FaultError(f"{' '.join(argv[:2])}: {exc}") from None
        done = asyncio.ensure_future(proc.communicate())
        deadline = time.monotonic() + self.timeout_s
        task = asyncio.current_task()
        cancels_before = task.cancelling() if task else 0
        cancelled = False
        out = err = b""
        try:
            while True:
                try:
                    out, err = await asyncio.wait_for(asyncio.shield(done), max(0.0, deadline - time.monotonic()))
                    break
                except asyncio.CancelledError:
                    # it may take effect still: let it end before what undoes it, whatever further
                    # cancels come (a second SIGTERM, a Ctrl-C after it), up to the deadline
                    if not finish_on_cancel:
                        raise
                    cancelled = True
        except asyncio.TimeoutError:
            if not cancelled:
                raise FaultError(f"{' '.join(argv)}: no answer in {self.timeout_s:.0f} s") from None
            # (cancelled: raised below, once the command is killed and its exit code noted)
        finally:
            if not done.done():  # the command, or a child of its session that holds the pipes
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    await asyncio.wait_for(asyncio.shield(done), 5.0)  # the pipes close with the group
                except asyncio.TimeoutError:
                    done.cancel()
                except asyncio.CancelledError:
                    done.cancel()
                    cancelled = True
            if result is not None:
                result["code"], result["err"] = proc.returncode, err.decode(errors="replace")
            # (Python 3.11's wait_for returns the result of a future that completed in the same
            # step as a cancel, and drops the cancel: the task's count of cancel requests shows it)
            if cancelled or (task is not None and task.cancelling() > cancels_before):
                raise asyncio.CancelledError
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def container(self, process: str) -> str:
        service, _, replica = process.rpartition("-")
        if not replica.isdigit():
            service, replica = process, "1"
        code, out, err = await self._run(*self.compose, "ps", "--all", "--format", "json", service)
        if code != 0:
            raise FaultError(f"docker compose ps {service}: {err.strip()}")
        rows = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
        if out.strip().startswith("["):
            rows = json.loads(out)
        for row in rows:
            if row.get("Name", "").endswith(f"-{replica}"):
                return row["ID"]
        raise FaultError(f"no container {process!r} (service {service}, replica {replica})")

    async def _docker(self, *args: str, result: dict | None = None) -> None:
        result = {} if result is None else result
        try:
            code, _, err = await self._run("docker", *args, finish_on_cancel=True, result=result)
        except asyncio.CancelledError:
            if result.get("code"):  # it failed, or was killed, while the nemesis was stopping
                print(f"nemesis: docker {' '.join(args)} (while stopping): exit {result['code']} "
                      f"{result.get('err', '').strip()}", file=sys.stderr, flush=True)
            raise
        if code != 0:
            raise FaultError(f"docker {' '.join(args)}: {err.strip()}")

    async def _undo(self, command: str, cid: str, needed: bool) -> None:
        """Undo a fault on the way out of a failure or a cancel: never replaces what is being
        raised; a failure is reported when the fault took (needed)."""
        try:
            await self._docker(command, cid)
        except FaultError as exc:
            if needed:
                print(f"nemesis: {exc}; the container may be left as the fault left it: docker {command} {cid}",
                      file=sys.stderr, flush=True)

    async def kill(self, process: str, signalled: dict | None = None) -> str:
        cid = await self.container(process)
        if signalled is not None:
            signalled["at"] = time.time()
        try:
            await self._docker("kill", "--signal", "KILL", cid)
        except BaseException:  # stopped mid-kill, or it failed: start it all the same
            await self._undo("start", cid, needed=True)
            raise
        # the orchestrator's restart (docker's restart policy leaves a killed container down)
        await self._docker("start", cid)
        return cid

    async def pause(self, process: str, seconds: float, signalled: dict | None = None) -> None:
        cid = await self.container(process)
        paused: dict = {}
        if signalled is not None:
            signalled["at"] = time.time()
        try:
            await self._docker("pause", cid, result=paused)
            await asyncio.sleep(seconds)
        except BaseException:
            # also when stopped during `docker pause` itself, which is let finish: an unpause of
            # a container that is not paused fails, and only matters if the pause took
            # (a negative code: killed at the deadline, whether it paused is not known)
            await self._undo("unpause", cid, needed=paused.get("code") is not None and paused["code"] <= 0)
            raise
        await self._docker("unpause", cid)

    async def store(self, record) -> bool:
        """Record the fault in the lab's faults table, from inside the checker container."""
        from dataclasses import asdict
        try:
            code, _, _ = await self._run(*self.compose, "exec", "-T", "checker", "python", "-m",
                                         "racelab.nemesis.record", json.dumps(asdict(record)))
        except FaultError:  # no docker, or no answer
            return False
        return code == 0

    async def wait_back(self, process: str, old_pid, timeout_s: float = 90.0) -> float:
        cid = await self.container(process)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _, out, _ = await self._run("docker", "inspect", "--format",
                                        "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", cid)
            status = out.split()
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
