"""A client retry: the same event id sent twice is applied once by locked and temporal."""
import asyncio

import pytest

from helpers import counts_for, get_state, new_id, send_event


@pytest.mark.parametrize("variant", ["locked", "temporal"])
async def test_retry_after_ack_is_applied_once(lab, variant):
    task = new_id(f"retry-seq-{variant}")
    for attempt in range(2):
        status, reply = await send_event(lab.settings, variant, task, "ev-" + task)
        assert status == 200, reply
        # after the first: a wait until applied; after the retry, the watch for a second application
        await counts_for(lab.settings, task, applied_settle_s=1.0 if attempt else 0.5)
    c = (await counts_for(lab.settings, task))[variant]
    assert (c.accepted, c.applied, c.lost, c.duplicates, c.counter_drift) == (1, 1, 0, 0, 0)
    status, body = await get_state(lab.settings, variant, task)
    assert status == 200 and body["state"]["history"] == ["ev-" + task]


@pytest.mark.parametrize("variant", ["locked", "temporal"])
async def test_concurrent_retries_are_applied_once(lab, variant):
    task = new_id(f"retry-par-{variant}")
    ids = [f"{task}-e{i}" for i in range(5)]
    # every event three times, all at once
    replies = await asyncio.gather(*(send_event(lab.settings, variant, task, eid, i)
                                     for _ in range(3) for i, eid in enumerate(ids)))
    assert [r[0] for r in replies] == [200] * 15
    c = (await counts_for(lab.settings, task))[variant]
    assert (c.accepted, c.applied, c.lost, c.duplicates, c.counter_drift) == (5, 5, 0, 0, 0)


async def test_unguarded_processes_a_retry_twice(lab):
    """The seed's handler has no dedupe: the checker must see the retry as a duplicate."""
    task = new_id("retry-unguarded")
    for attempt in range(2):
        assert (await send_event(lab.settings, "unguarded", task, "ev-" + task))[0] == 200
        await counts_for(lab.settings, task, applied_settle_s=1.0 if attempt else 0.5)
    c = (await counts_for(lab.settings, task))["unguarded"]
    # history [e, e] (one extra entry) and two effect rows for one event (one extra)
    assert (c.accepted, c.applied, c.duplicates, c.counter_drift) == (1, 1, 2, 1)
