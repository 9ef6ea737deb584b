"""Tasks that end when stopped, although Python 3.11's asyncio.wait_for can drop a cancel
(racelab/cancellation.py). Pure asyncio, no lab: the lost cancel is made on purpose."""
import asyncio
import sys

import pytest

from racelab.cancellation import cancel_and_wait, raise_if_cancelled


class Loop:
    """A background loop whose library call drops the first cancel that arrives during it, as
    redis-py's commands can through wait_for on 3.11 (now and then, not always); guarded: it
    checks raise_if_cancelled() on each turn."""

    def __init__(self, guarded: bool):
        self.guarded, self.turns, self.in_call, self.dropped = guarded, 0, asyncio.Event(), 0
        self.stopped = False  # a failed test ends it this way (else the session's loop waits for it)

    async def library_call(self) -> None:
        self.in_call.set()
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if self.dropped:
                raise
            self.dropped += 1  # dropped (no uncancel: the task still counts the request)
        finally:
            self.in_call.clear()

    async def run(self) -> None:
        while not self.stopped:
            if self.guarded:
                raise_if_cancelled()
            self.turns += 1
            await self.library_call()
            await asyncio.sleep(0.01)


async def cancel_during_the_call(loop: Loop) -> asyncio.Task:
    task = asyncio.create_task(loop.run())
    await loop.in_call.wait()
    task.cancel()  # lands in library_call: dropped
    return task


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12's wait_for keeps the cancel")
async def test_python_311_wait_for_drops_a_cancel_that_meets_its_result():
    """The defect itself, so that a Python that fixes it shows here (then the guards may go)."""
    fut = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(asyncio.wait_for(fut, 10))
    await asyncio.sleep(0)  # it waits on fut
    fut.set_result("result")
    waiting.cancel()
    assert await waiting == "result" and waiting.cancelling() == 1


async def test_a_loop_that_checks_ends_at_its_next_turn_after_a_lost_cancel():
    loop = Loop(guarded=True)
    task = await cancel_during_the_call(loop)
    try:
        await asyncio.wait([task], timeout=2)
        assert task.cancelled() and loop.turns == 1
    finally:
        loop.stopped = True


async def test_one_cancel_does_not_end_a_loop_that_does_not_check_cancel_and_wait_does():
    """Why cancel_and_wait cancels again: one cancel left this loop running (a queue worker stayed
    alive at its shutdown this way)."""
    loop = Loop(guarded=False)
    task = await cancel_during_the_call(loop)
    try:
        for _ in range(500):  # its next turn (polled: a loaded machine may stall a moment)
            if loop.turns > 1 or task.done():
                break
            await asyncio.sleep(0.01)
        assert not task.done() and loop.turns > 1
        assert await cancel_and_wait([task], every_s=0.5, rounds=2) == set()
        assert task.cancelled()
    finally:
        loop.stopped = True


async def test_cancel_and_wait_returns_the_tasks_that_never_end():
    ended = asyncio.Event()

    async def stubborn():
        while not ended.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass
    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], every_s=0.01, rounds=3) == {task}
    ended.set()
    await asyncio.wait([task], timeout=1)
    assert task.done()
