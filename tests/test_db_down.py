"""PostgreSQL down (issue 9): /api and the state endpoint answer 503 with Retry-After and a JSON-RPC
error naming the dependency, never a bare 500; once it is back every pod serves again, and the lab
is left fully healthy.

Stops the lab's PostgreSQL through supervisor, so it runs only on a lab the session owns (or with
RACELAB_TEST_FAULTS=1 on an existing one)."""
from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from racelab.lab import native
from racelab.lab.topology import services
from helpers import get_state, new_id, post, send_event, wait_until
from racelab.clients.burst import event_send


def lab_variants(lab) -> tuple[str, ...]:
    from racelab import config
    return tuple(getattr(lab.settings, "variants", None) or config.VARIANTS)


async def raw_get(url: str):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(url) as resp:
            return resp.status, resp.headers, await resp.json(content_type=None)


async def raw_post(url: str, body: dict):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.post(url, json=body) as resp:
            return resp.status, resp.headers, await resp.json(content_type=None)


def assert_unavailable(status, headers, body, where):
    assert status == 503, (where, status, body)
    assert int(headers["Retry-After"]) > 0, where
    assert headers["Content-Type"].startswith("application/json"), where
    assert body["jsonrpc"] == "2.0" and -32099 <= body["error"]["code"] <= -32000, body
    assert "PostgreSQL" in body["error"]["message"] and body["error"]["data"]["dependency"] == "PostgreSQL", body


async def test_postgres_down_is_503_with_retry_after(lab):
    if not lab.owned and os.environ.get("RACELAB_TEST_FAULTS") != "1":
        pytest.skip("--lab=existing: stopping its PostgreSQL needs RACELAB_TEST_FAULTS=1")
    settings, variants = lab.settings, lab_variants(lab)
    insts = [i for s in services(settings) for i in s.instances()]
    task = new_id("pg-down")
    for variant in variants:  # a task with a state, to read while PostgreSQL is down
        assert (await send_event(settings, variant, task, new_id("ev")))[0] == 200

    stopped = await asyncio.to_thread(native.supervisorctl, settings, "stop", "postgres")
    try:
        assert "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        for variant in variants:
            for replica in range(1, settings.replicas + 1):  # every pod, directly: each has its own pool
                pod = f"http://{settings.host}:{settings.pod_port(variant, replica)}"
                status, headers, body = await raw_post(f"{pod}/api", event_send(new_id("pg-down"), new_id("ev"), 1, "x"))
                assert_unavailable(status, headers, body, f"{pod}/api")
                assert body["id"] is not None  # the request's id is echoed
                status, headers, body = await raw_get(f"{pod}/tasks/{task}/state?agent_id=racelab-agent")
                assert_unavailable(status, headers, body, f"{pod}/tasks/.../state")
            # through the gateway too (and not turned into a 502 by nginx)
            status, body = await post(settings, variant, event_send(new_id("pg-down"), new_id("ev"), 1, "x"))
            assert status == 503 and body["error"]["data"]["dependency"] == "PostgreSQL", body
            # bad input is still refused as bad input, without touching the database
            status, body = await post(settings, variant, None, raw=b'{"jsonrpc": "2.0", "method": ')
            assert status == 400 and body["error"]["code"] == -32700
    finally:
        started = await asyncio.to_thread(native.supervisorctl, settings, "start", "postgres", check=False)
        await native.wait_healthy(insts, settings, timeout_s=90)
    assert "started" in started.stdout or "already started" in started.stdout, started.stdout + started.stderr

    # every pod serves again: each replica directly, then events through the gateway are applied
    for variant in variants:
        for replica in range(1, settings.replicas + 1):
            pod = f"http://{settings.host}:{settings.pod_port(variant, replica)}"

            async def acked(pod=pod):
                status, _, body = await raw_post(f"{pod}/api", event_send(new_id("pg-back"), new_id("ev"), 1, "x"))
                return status == 200 and body["result"] == {"status": "processing"}
            assert await wait_until(acked, timeout_s=30, poll_s=0.5), f"{pod} does not serve after PostgreSQL is back"
    after = new_id("pg-back")
    for variant in variants:
        event_id = new_id("ev")
        status, reply = await send_event(settings, variant, after, event_id)
        assert status == 200, reply

        async def applied(variant=variant, event_id=event_id):
            status, body = await get_state(settings, variant, after)
            return status == 200 and event_id in body["state"]["history"]
        assert await wait_until(applied, timeout_s=30), f"{variant}: an event sent after the restart was not applied"
