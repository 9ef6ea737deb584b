"""The nemesis against the native lab: for every fault kind, an at-least-once burst with the
fault mid-burst. locked and temporal must show 0 broken acks, 0 lost, 0 duplicate applications,
0 phantoms, no drift, no more duplicate side effects than events in flight at the fault, and
every acked event applied within 15 s of the component being back. unguarded is run beside
them under two of the faults, reported, not judged. The lab is whole and healthy again after each fault."""
import asyncio
import os
import signal
import sys

import aiohttp
import pytest

from helpers import new_id, send_event, stop_mid_pause
from racelab.clients.chaos import RECOVERY_LIMIT_S, chaos_one
from racelab.lab.native import healthy, postgres_user
from racelab.lab.topology import services
from racelab.nemesis.faults import KINDS
from racelab.nemesis.runtimes import NativeRuntime

VARIANTS = ("unguarded", "locked", "temporal")
# unguarded rides along where its counts under a fault say something (a killed pod drops its
# in-flight handlers; a killed PostgreSQL fails their state writes). Elsewhere the guarded two
# alone: a lossy variant holds the checker's quiescence to its full settle time (3 s; guarded
# variants that applied everything, 1 s), 2 s more per fault for counts no test judges.
WITH_UNGUARDED = ("kill-pod", "kill-postgres")


async def whole_lab_healthy(settings, timeout_s: float = 60.0) -> list[str]:
    """Names of the components still unhealthy after timeout_s (empty: all healthy)."""
    insts = [i for s in services(settings, postgres_user()) for i in s.instances()]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        for _ in range(int(timeout_s / 0.5)):
            ok = await asyncio.gather(*(healthy(i, settings, session) for i in insts))
            if all(ok):
                return []
            await asyncio.sleep(0.5)
    return [i.name for i, good in zip(insts, ok) if not good]


@pytest.mark.parametrize("kind", KINDS)
async def test_guarded_variants_survive_the_fault(lab, kind):
    variants = VARIANTS if kind in WITH_UNGUARDED else ("locked", "temporal")
    out = await chaos_one(lab.settings, kind, variants, tasks=8, events=15, spread_s=2.5, fault_at=0.4,
                          dup_rate=0.05)
    assert all(f.back_at is not None for f in out.faults), [f.error for f in out.faults]
    assert out.send_errors == []
    for variant in ("locked", "temporal"):
        c = out.results[variant]
        assert (c.acked, c.broken_acks, c.accepted, c.lost, c.duplicate_applications, c.phantoms, c.unworked,
                c.counter_drift) == (8 * 15, 0, 8 * 15, 0, 0, 0, 0, 0), (variant, out.row(variant))
        assert c.duplicate_side_effects <= out.in_flight[variant], (variant, out.row(variant))
        assert out.recovery_s(variant) is not None and out.recovery_s(variant) <= RECOVERY_LIMIT_S, out.row(variant)
        assert out.problems(variant) == []
    if "unguarded" in variants:  # reported, not judged; but its counts are the checker's, from the same ledger
        u = out.results["unguarded"]
        assert (u.acked, u.broken_acks, u.accepted) == (8 * 15, 0, 8 * 15)
        assert u.lost == u.accepted - (u.applied - u.phantoms)
    assert await whole_lab_healthy(lab.settings) == []


async def test_make_chaos_stopped_by_sigterm_resumes_the_pod(lab, tmp_path):
    """make chaos pauses replica 1 of the variant mid-burst; SIGTERM then undoes the pause (Python's
    default exit left the pod stopped). (After the session's load has been read: the aborted run
    is the lab's newest, and the dashboards' tests read the newest.)"""
    state, code, out, took = await stop_mid_pause(
        lab.settings, [sys.executable, "-m", "racelab.clients.chaos", "--fault", "pause-pod", "--variant", "locked",
                       "--tasks", "2", "--events", "10", "--spread", "1"],
        signal.SIGTERM, dict(os.environ, RUNTIME="native", RACELAB_RESULTS_DIR=str(tmp_path)), "pod-locked-1")
    assert state != "T", "make chaos left the pod stopped"
    assert took < lab.settings.lock_ttl_s * 2.5, "the pause ran its full time"
    assert code == 128 + signal.SIGTERM and "chaos: stopped (SIGTERM)" in out, out[-2000:]


def listeners(port: int) -> set[int]:
    """Pids of the processes holding a listening TCP socket on port (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # 0A: LISTEN
                    inodes.add(f"socket:[{cols[9]}]")
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                pids.add(int(pid))
        except OSError:
            continue
    return pids


async def test_a_gateway_killed_alone_comes_back_whole(lab):
    """SIGKILL to the gateway's pid only (the nemesis kills its process group): nginx ran with a
    master, whose worker then served on as an orphan holding the port, and every nginx supervisor
    restarted failed to bind. Now the restarted gateway is the only holder of the port, serves,
    and does not run as root."""
    runtime = NativeRuntime(lab.settings)
    old = runtime.pid("gateway")
    assert old in listeners(lab.settings.gateway_port)
    os.kill(old, signal.SIGKILL)
    await runtime.wait_back("gateway", old, timeout_s=30)
    new = runtime.pid("gateway")
    assert listeners(lab.settings.gateway_port) == {new}, "a process other than the gateway holds its port"
    assert os.stat(f"/proc/{new}").st_uid != 0 or os.geteuid() != 0, "the gateway runs as root"
    status, reply = await send_event(lab.settings, "locked", new_id("gateway-kill"), new_id("ev"))
    assert (status, (reply or {}).get("result")) == (200, {"status": "processing"}), reply
