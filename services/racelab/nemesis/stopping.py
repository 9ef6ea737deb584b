"""SIGTERM for a client that injects faults (the nemesis, make chaos).

Python's default for SIGTERM is to exit on the spot: a pause in progress never got its SIGCONT
(or `docker unpause`) and the pod stayed stopped for good. Cancelling the running task instead
lets every fault in progress undo itself in its `finally`, and be recorded as cancelled.
"""
from __future__ import annotations

import asyncio
import signal
from typing import Callable


def cancel_on_sigterm() -> Callable[[], bool]:
    """From inside a running task: SIGTERM cancels it. Returns whether SIGTERM came, so that the
    task can tell it from another cancellation (Ctrl-C under asyncio.run cancels it too)."""
    me = asyncio.current_task()
    came = False

    def on_sigterm() -> None:
        nonlocal came
        came = True
        me.cancel()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    return lambda: came
