"""The Temporal server down: `temporal` acks task/create, event/send and task/cancel as its outbox
design says (they wait on PostgreSQL only; task/create took 9.5 s to answer 503 and left its task
row), and applies the event once Temporal is back; `temporal-naive`, which signals in the
transaction that records, answers task/create with a 503 naming Temporal after TASK_CALL_TIMEOUT_S.

Stops the lab's Temporal server through supervisor, so it runs only on a lab the session owns."""
from __future__ import annotations

import asyncio

import pytest

from helpers import counts_for, new_id, post, send_event, table_counts, task_call
from racelab.lab import native
from racelab.lab.topology import services


async def test_temporal_down(lab):
    if not lab.owned:
        pytest.skip("--lab=existing: this test stops the lab's Temporal server")
    settings = lab.settings
    created, cancelled, sent = new_id("tdown-create"), new_id("tdown-cancel"), new_id("tdown-send")
    assert (await send_event(settings, "temporal", cancelled, f"{cancelled}-e1"))[0] == 200  # its task row
    stopped = await asyncio.to_thread(native.supervisorctl, settings, "stop", "temporal")
    try:
        assert "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        calls = [post(settings, "temporal", task_call("task/create", created)),
                 post(settings, "temporal", task_call("task/cancel", cancelled)),
                 send_event(settings, "temporal", sent, f"{sent}-e1")]
        naive = "temporal-naive" in settings.variants
        if naive:
            calls.append(post(settings, "temporal-naive", task_call("task/create", f"{created}-naive")))
        replies = await asyncio.gather(*calls)
        assert replies[0] == (200, {"jsonrpc": "2.0", "id": f"task/create-{created}", "result": {"status": "running"}})
        assert replies[1][0] == 200 and replies[1][1]["result"] == {"status": "cancelled"}, replies[1]
        assert replies[2][0] == 200 and replies[2][1]["result"] == {"status": "processing"}, replies[2]
        if naive:  # after TASK_CALL_TIMEOUT_S
            status, body = replies[3]
            assert status == 503 and body["error"]["data"]["dependency"] == "Temporal", body
    finally:
        await asyncio.to_thread(native.supervisorctl, settings, "start", "temporal", check=False)
        await native.wait_healthy([i for s in services(settings) for i in s.instances()], settings, timeout_s=90)
    c = (await counts_for(settings, sent))["temporal"]  # the outbox hands it to Temporal once back
    assert (c.accepted, c.applied, c.lost, c.duplicates) == (1, 1, 0, 0)
    assert (await table_counts(settings, created))["tasks"] == 1
