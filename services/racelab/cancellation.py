"""Ending a task for sure on Python 3.11, whose asyncio.wait_for can drop a cancel.

When cancel() reaches a task just as the awaitable inside an asyncio.wait_for completes, Python
3.11's wait_for returns that result and the CancelledError is gone (fixed in 3.12). redis-py
sends every command through wait_for (its socket timeout), and the lab waits with it too. In a
probe, a loop of Redis PINGs cancelled 200 times went on running 103 times. A queue worker then
never ended: asyncio.run cancels the tasks left once, then waits for them, so the worker stayed
alive with its health port closed (make test: "not healthy after 90 s: queue-worker-1").

The task still counts the request (Task.cancelling() stays above 0), so a loop can notice it:
loops that run until cancelled call raise_if_cancelled() on each turn, and whoever stops tasks
uses cancel_and_wait(), which cancels again until they have ended."""
from __future__ import annotations

import asyncio
import logging
from typing import Iterable

log = logging.getLogger("racelab.cancellation")


def raise_if_cancelled() -> None:
    """Raise CancelledError if the current task was asked to stop, even if the error was lost."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(tasks: Iterable[asyncio.Task], every_s: float = 0.5,
                          rounds: int = 20) -> set[asyncio.Task]:
    """Cancel the tasks, again every every_s while any runs, at most rounds times; returns the
    ones still running then (logged: a task that ignores cancellation is a defect to fix)."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(rounds):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_s)
    for task in pending:
        log.error("task %r still runs after %d cancels", task.get_name(), rounds)
    return pending
