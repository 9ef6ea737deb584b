"""Redis clients of the variants and queue workers: ones that survive a Redis restart.

redis-py's clients from a URL do not retry: after a restart (make chaos kill-redis) every pooled
connection, closed by the old server, failed its next command once. lock-only's handlers then
dropped their events (4 of 8 in a test that ran after kill-redis), queue's pods answered 503.
Here a command that meets a closed connection is sent again on a new one, after a short backoff
(100, 200, 200 ms); while Redis is down it fails after RETRIES, as before, about 0.5 s later.
"""
from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

RETRIES = 3


def retry() -> Retry:
    # on ConnectionError and TimeoutError (the default). A command sent again that had run, its
    # reply lost, costs a wait at worst, never a count: a lock taken twice is the same holder's
    # token (it waits out its own lease), fencing tokens only need to grow, queue workers dedupe.
    return Retry(ExponentialBackoff(cap=0.2, base=0.05), RETRIES)


def client(url: str, **kwargs) -> redis.Redis:
    return redis.Redis.from_url(url, retry=retry(), **kwargs)


def blocking_client(url: str, max_connections: int) -> redis.Redis:
    """A client whose callers queue for one of max_connections connections instead of failing."""
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=None, retry=retry())
    return redis.Redis(connection_pool=pool)
