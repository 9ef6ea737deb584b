"""temporal's outbox relay (racelab.variants.temporal) on the lab's real PostgreSQL (a scratch
database of its own, so the lab's relays never see its rows), with a stand-in for Temporal's
signal-with-start: which rows a pass claims, which it deletes, and a task whose signal fails
waiting on its own while the other tasks' rows go on.
"""
from __future__ import annotations


import pytest

from racelab import db
from racelab.variants import PodContext
from racelab.variants import temporal
from racelab.variants.temporal import RELAY_BACKOFF_MAX_S, RELAY_IDLE_S, TemporalVariant


class StandInRelay(TemporalVariant):
    """The relay's own code; its signal-with-start recorded, and refused for some tasks."""

    def __init__(self, ctx, refuse: set[str]):
        super().__init__(ctx)
        self.refuse = refuse
        self.signalled: list[tuple[str, list[str]]] = []

    async def signal(self, payloads: list[dict]) -> None:
        task_id = payloads[0]["task_id"]
        self.signalled.append((task_id, [p["event_id"] for p in payloads]))
        if task_id in self.refuse:
            raise RuntimeError(f"workflow {task_id} refuses the signal")


async def add_rows(pool, rows: list[tuple[str, str]]) -> None:
    await pool.executemany(
        "INSERT INTO outbox (variant, event_id, task_id, agent_id, payload) VALUES ('temporal', $1, $2, 'a', $3)",
        [(e, t, {"event_id": e, "task_id": t, "agent_id": "a"}) for t, e in rows])


async def outbox(pool) -> list[str]:
    return [r["event_id"] for r in await pool.fetch("SELECT event_id FROM outbox ORDER BY created_at")]


@pytest.fixture
async def relay_pool(scratch_db):
    pool = await db.create_pool(scratch_db)
    yield pool
    await pool.close()


async def test_a_task_whose_signal_fails_waits_alone_and_the_others_go_on(lab, relay_pool, monkeypatch):
    clock = [1000.0]

    class Clock:  # the relay module's clock only (patching time.monotonic would stop asyncio's)
        monotonic = staticmethod(lambda: clock[0])
        time = staticmethod(lambda: 1.7e9 + clock[0])
    monkeypatch.setattr(temporal, "time", Clock)
    relay = StandInRelay(PodContext(settings=lab.settings, pool=relay_pool, model=None, pod_name="test"),
                         refuse={"poison"})
    await add_rows(relay_pool, [("poison", "p1"), ("t1", "a1"), ("t1", "a2"), ("t2", "b1")])

    assert await relay.relay_once() == 4  # one signal per task, the poison one refused
    assert sorted(relay.signalled) == [("poison", ["p1"]), ("t1", ["a1", "a2"]), ("t2", ["b1"])]
    assert await outbox(relay_pool) == ["p1"]  # only what was signalled is deleted

    # new rows while the poison task waits out its backoff: claimed and signalled at once, the
    # poison row not even claimed (the whole relay used to back off, holding these up)
    relay.signalled.clear()
    await add_rows(relay_pool, [("t3", "c1"), ("poison", "p2")])
    assert relay.held_tasks(clock[0]) == ["poison"] and relay.next_due_s(clock[0]) == pytest.approx(0.1)
    assert await relay.relay_once() == 1
    assert relay.signalled == [("t3", ["c1"])] and await outbox(relay_pool) == ["p1", "p2"]

    # due again: refused again, its backoff doubles up to RELAY_BACKOFF_MAX_S; the relay looks
    # again when it is due, at least every RELAY_IDLE_S
    backoffs, looks = [], []
    for _ in range(6):
        clock[0] = relay._held["poison"][0]
        relay.signalled.clear()
        assert await relay.relay_once() == 2 and relay.signalled == [("poison", ["p1", "p2"])]
        backoffs.append(round(relay._held["poison"][1], 3))
        looks.append(round(relay.next_due_s(clock[0]), 3))
    assert backoffs == [0.2, 0.4, 0.8, 1.6, RELAY_BACKOFF_MAX_S, RELAY_BACKOFF_MAX_S]
    assert looks == [0.2, 0.4, 0.8, RELAY_IDLE_S, RELAY_IDLE_S, RELAY_IDLE_S]
    clock[0] += RELAY_IDLE_S  # looked too early: nothing to claim
    assert await relay.relay_once() == 0

    # once its signal goes through, its rows are deleted and it is held no more
    relay.refuse.clear()
    clock[0] += RELAY_BACKOFF_MAX_S
    assert await relay.relay_once() == 2 and await outbox(relay_pool) == []
    assert relay.held_tasks(clock[0]) == [] and relay._held == {}


async def test_when_every_signal_of_a_pass_fails_the_whole_relay_backs_off(lab, relay_pool):
    """Temporal down: the pass raises (the relay's loop backs off as a whole) and deletes nothing."""
    relay = StandInRelay(PodContext(settings=lab.settings, pool=relay_pool, model=None, pod_name="test"),
                         refuse={"t1", "t2"})
    await add_rows(relay_pool, [("t1", "a1"), ("t2", "b1")])
    with pytest.raises(RuntimeError, match="refuses the signal"):
        await relay.relay_once()
    assert await outbox(relay_pool) == ["a1", "b1"]
    import time
    assert sorted(relay.held_tasks(time.monotonic())) == ["t1", "t2"]
