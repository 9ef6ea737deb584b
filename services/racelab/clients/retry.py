"""At-least-once sending, as real senders do it: the retry decision and the backoff. Pure, no I/O.

A send that failed (connection error, timeout, HTTP 5xx or 429, or a reply without the
{"status": "processing"} ack) is sent again with the SAME event id, a bounded number of times,
after an exponential backoff with jitter that honours the server's Retry-After. Any other 4xx
is the server refusing the request: sending it again would not change the answer.
Redelivery (webhooks send an acked event again now and then) is a separate, deliberate knob.

The Locust users (loadtests/locustfile.py) use this; it imports neither Locust nor gevent, so
it is unit-tested without them.
"""
from __future__ import annotations

import email.utils
import enum
import random
import time
from dataclasses import dataclass


class Outcome(enum.Enum):
    ACKED = "acked"      # 200 with {"result": {"status": "processing"}}: the event is recorded
    RETRY = "retry"      # worth sending again with the same event id
    REJECTED = "rejected"  # a 4xx other than 429: the same request would be refused again


def classify(status: int | None, reply: object = None) -> Outcome:
    """What a reply means for an at-least-once sender. status None or 0: no HTTP answer at all
    (connection refused or reset, timeout); reply: the decoded JSON body, if any."""
    if not status:
        return Outcome.RETRY
    if status == 200:
        result = reply.get("result") if isinstance(reply, dict) else None
        if isinstance(result, dict) and result.get("status") == "processing":
            return Outcome.ACKED
        return Outcome.RETRY  # answered, but not acked: nothing says the event was recorded
    if status == 429 or status >= 500:
        return Outcome.RETRY
    if 400 <= status < 500:
        return Outcome.REJECTED
    return Outcome.RETRY  # 1xx/3xx/other 2xx from something in between: not an ack


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds ("3", "1.5") or an HTTP date. None when
    absent or unreadable; never negative."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Up to max_attempts sends of one event; before attempt n+1 wait a delay drawn from
    [ceiling/2, ceiling], ceiling = min(cap_s, base_s * 2**n) (0.1-0.2 s, 0.2-0.4 s, ... 1-2 s),
    or the server's Retry-After when that is longer (up to retry_after_cap_s)."""
    max_attempts: int = 8
    base_s: float = 0.1
    cap_s: float = 2.0
    retry_after_cap_s: float = 30.0

    def should_retry(self, outcome: Outcome, attempt: int) -> bool:
        """attempt: how many sends were made so far (1 after the first)."""
        return outcome is Outcome.RETRY and attempt < self.max_attempts

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.cap_s, self.base_s * 2 ** max(attempt, 1))
        wait = (rng or random).uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_after_cap_s))
        return wait


def redeliver(dup_rate: float, rng: random.Random | None = None) -> bool:
    """Whether to send an acked event once more (webhook redelivery): with probability dup_rate."""
    return dup_rate > 0 and (rng or random).random() < dup_rate


def redelivery_delay(rng: random.Random | None = None, low_s: float = 0.05, high_s: float = 1.0) -> float:
    """The short random pause before a redelivery: the first send is usually applied by then."""
    return (rng or random).uniform(low_s, high_s)
