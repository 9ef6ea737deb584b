"""lock-only: the seed's "Option 1" — a Redis lock with a timeout around read–model–write,
keyed per (task, agent) as the seed keys it; no cursor, no fencing token.

Safe while every handler finishes within the lock's timeout. When processing outlives it (a
paused pod, a slow model call; the lab's knobs: task.params.model_latency_ms and
task.params.lock_ttl_s), a second handler takes the expired lock, reads the state the first has
not written yet, and one of the two updates is lost: nothing stops the late writer. And state
shared by several agents of a task (task.params.shared_state) is not protected at all: the
agents hold different locks."""
from __future__ import annotations

import time

from redis.exceptions import LockError

from .. import db, metrics, redis_client
from ..model import model_latency_ms
from ..protocol import Event
from ..state import apply_events, state_agent
from . import Variant


SEED_TIMEOUT_S = 30.0  # the seed's `custom_lock(lock_key, timeout=30)`


def lock_ttl_s(event: Event, default: float = SEED_TIMEOUT_S) -> float:
    """The lock's timeout: the seed's 30 s, or the task's params.lock_ttl_s (a short lease for
    the matrix's "processing outlives the lock" scenario)."""
    value = event.task_params.get("lock_ttl_s")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else default


REDIS_CONNECTIONS = 50
POLL_S = 0.01  # how often a waiting handler retries the lock


class LockOnly(Variant):
    name = "lock-only"

    async def start(self) -> None:
        # every waiting handler polls the lock: they queue for one of REDIS_CONNECTIONS
        # connections rather than fail on a full pool (and leave a lock unreleased)
        self.redis = redis_client.blocking_client(self.ctx.settings.redis_url, REDIS_CONNECTIONS)
        await self.redis.ping()

    async def stop(self) -> None:
        await super().stop()
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()

    async def health(self) -> None:
        await self.redis.ping()

    def after_ack(self, event: Event, fresh: bool, acked_at: float, seq: int | None = None) -> None:
        # Like the seed's handler, every delivery is handled: there is no cursor to dedupe on.
        self.spawn(self.handle(event, acked_at), f"{self.name} {event.event_id}")

    async def handle(self, event: Event, acked_at: float) -> None:
        settings = self.ctx.settings
        lock = self.redis.lock(f"racelab:lock-only:{event.task_id}:{event.agent_id}",
                               timeout=lock_ttl_s(event),
                               blocking_timeout=settings.lock_wait_s, sleep=POLL_S)
        waited = time.perf_counter()
        if not await lock.acquire():
            metrics.LOCK_FAILURES.labels(self.name, "timeout").inc()
            raise TimeoutError(f"lock of {event.task_id} not acquired in {settings.lock_wait_s:.0f} s")
        metrics.LOCK_WAIT.labels(self.name).observe(time.perf_counter() - waited)
        started = time.perf_counter()
        pool = self.ctx.pool
        try:
            owner = state_agent(event.task_params, event.agent_id)  # shared_state: the task's one state
            row = await db.read_state(pool, self.name, event.task_id, owner)
            await self.ctx.model.call(pool, self.name, event.task_id, event.agent_id, [event.event_id],
                                      model_latency_ms(event.task_params))
            state = apply_events(row["state"] if row else None, [event.event_id])
            await db.write_state(pool, self.name, event.task_id, owner, state)  # no fence
        finally:
            try:
                await lock.release()
            except LockError:  # it expired while held: another handler may have run meanwhile
                metrics.LOCK_FAILURES.labels(self.name, "expired").inc()
        metrics.STATE_WRITES.labels(self.name).inc()
        metrics.APPLY_SECONDS.labels(self.name).observe(time.time() - acked_at)
        metrics.HANDLER_SECONDS.labels(self.name).observe(time.perf_counter() - started)


VARIANT = LockOnly
