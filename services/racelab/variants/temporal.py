"""temporal: one workflow per task (workflow id = task id), events delivered as signals.

The hand-off is a transactional outbox, not a dual write: the pod writes the event and an outbox
row in one transaction and acks after the commit; a relay then signals the task's workflow
(signal-with-start, signal `receive_event` as Agentex uses) and deletes the row. A signal is
never sent for an event the log does not have, and an acked event whose relay failed (Temporal
down, the pod killed) stays in the outbox until a relay of any pod sends it. The workflow
dedupes on the event id, so sending one twice is harmless. The workers (racelab.worker) apply
the pending events in batches, one batch at a time, and write the state where the others keep it.
"""
from __future__ import annotations

import asyncio
import logging
import time

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from .. import metrics
from ..cancellation import raise_if_cancelled
from ..config import SIGNAL_CANCEL, SIGNAL_RECEIVE_EVENT, TASK_QUEUE, WORKFLOW_NAME
from ..protocol import Event, TaskRef
from ..state import state_agent
from . import Variant

log = logging.getLogger("racelab.temporal")

RELAY_BATCH = 100          # outbox rows one relay pass claims
RELAY_CONCURRENCY = 16     # signals in flight per relay: more only queues up in the dev server
RELAY_IDLE_S = 1.0         # a relay looks at the outbox at least this often (rows of dead pods)
# After a wake, gather more before claiming: every signal costs the dev server a history write and
# a workflow task, and one burst of events to a task, acked by several pods over a few hundred ms
# under load, should cost one signal, not one per event (make load USERS=100: with a fixed 20 ms
# the dev server's SQLite fell behind, "context deadline exceeded", apply p99 53 s). So: claim
# once no ack came for RELAY_QUIET_S, or RELAY_LINGER_MAX_S after the first one.
RELAY_QUIET_S = 0.05
RELAY_LINGER_MAX_S = 0.5
RELAY_BACKOFF_MAX_S = 2.0  # while Temporal or PostgreSQL is down, or one task's signal fails
RELAY_SIGNAL_TIMEOUT_S = 10.0  # a relay pass gives up on a Temporal that does not answer
# what Temporal answers while it is down or overloaded (a refusal has another status)
TEMPORAL_DOWN = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED,
                 RPCStatusCode.CANCELLED, RPCStatusCode.UNKNOWN)
TASK_CALL_TIMEOUT_S = 3.0  # task/create and task/cancel wait this long for Temporal, then go on
RELAY_HOLD_FORGET_S = 10.0  # a held task not retried this long after its hold ended starts afresh


def workflow_input(variant: str, ref: TaskRef) -> dict:
    # the workflow is the task's (id = task id): with task.params.shared_state it keeps the
    # task's one state (agent "*"), otherwise the state of the agent that started it
    return {"variant": variant, "task_id": ref.task_id, "agent_id": state_agent(ref.task_params, ref.agent_id),
            # lab knob: continue-as-new after this many events (0 = when Temporal suggests it)
            "continue_as_new_after": int(ref.task_params.get("continue_as_new_after") or 0),
            # lab knob: complete after this many idle seconds (0 = the workflow's default)
            "idle_complete_s": float(ref.task_params.get("idle_complete_s") or 0)}


class TemporalVariant(Variant):
    name = "temporal"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        # task id -> (monotonic time its rows are claimed again, its backoff), until a signal of
        # it goes through (held_tasks)
        self._held: dict[str, tuple[float, float]] = {}

    async def start(self) -> None:
        self.client = await Client.connect(self.ctx.settings.temporal_address)
        self._wake = asyncio.Event()
        self._signals = asyncio.Semaphore(RELAY_CONCURRENCY)
        self.spawn(self._relay_forever(), "temporal outbox relay")

    def held_tasks(self, now: float) -> list[str]:
        """Tasks whose rows wait out their own backoff: a task whose signal failed (its workflow
        refused it, or did not answer in time) waits on its own. Backing the whole relay off for
        it held every other task's rows of this pod back by up to RELAY_BACKOFF_MAX_S, pass after
        pass. The whole relay backs off only when every signal of a pass fails (Temporal down)."""
        for task_id in [t for t, (until, _) in self._held.items() if until < now - RELAY_HOLD_FORGET_S]:
            del self._held[task_id]  # its rows went another way (another pod's relay): start afresh
        return [task_id for task_id, (until, _) in self._held.items() if until > now]

    def next_due_s(self, now: float) -> float:
        """Seconds until the relay looks again unwoken: RELAY_IDLE_S, sooner if a held task is due."""
        return min([RELAY_IDLE_S] + [max(0.0, until - now) for until, _ in self._held.values() if until > now])

    async def health(self) -> None:
        if not await self.client.service_client.check_health():
            raise RuntimeError("temporal frontend is not serving")

    def outbox_payload(self, event: Event, accepted_at: float) -> dict:
        # Every delivery, re-sends too: if the first one's signal was somehow lost, this one
        # brings it; the workflow dedupes.
        # Only what the workflow needs: the event's content stays in the event log, so a signal
        # (or a bundle of them, or an activity's batch) never nears Temporal's payload limit.
        return {"event_id": event.event_id, "task_id": event.task_id, "agent_id": event.agent_id,
                "sequence_id": event.sequence_id, "accepted_at": accepted_at, "task_params": event.task_params}

    def after_ack(self, event: Event, fresh: bool, acked_at: float, seq: int | None = None) -> None:
        self._wake.set()

    async def _relay_forever(self) -> None:
        backoff = 0.0
        while True:
            raise_if_cancelled()  # (wait_for below may drop the cancel: cancellation.py)
            if backoff:
                await asyncio.sleep(backoff)
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.next_due_s(time.monotonic()))
                    await self._linger()
                except asyncio.TimeoutError:
                    pass
            self._wake.clear()
            try:
                while await self.relay_once() == RELAY_BATCH:
                    pass
                backoff = 0.0
            except Exception as exc:  # Temporal or PostgreSQL down: the rows wait in the outbox
                backoff = min(RELAY_BACKOFF_MAX_S, max(0.1, backoff * 2))
                log.warning("outbox relay failed (%r); retrying in %.1f s", exc, backoff)

    async def _linger(self) -> None:
        """Wait until acks stop coming for RELAY_QUIET_S, at most RELAY_LINGER_MAX_S."""
        deadline = time.monotonic() + RELAY_LINGER_MAX_S
        while (left := deadline - time.monotonic()) > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(RELAY_QUIET_S, left))
            except asyncio.TimeoutError:
                return  # quiet

    async def relay_once(self) -> int:
        """Signal the outbox's oldest rows that no other relay holds; delete the ones signalled.
        Returns how many rows were claimed."""
        held = self.held_tasks(time.monotonic())
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT event_id, task_id, agent_id, payload FROM outbox WHERE variant = $1
                   AND NOT task_id = ANY($3::text[])
                   ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED""", self.name, RELAY_BATCH, held)
            if not rows:
                return 0
            # one signal per task for all of its claimed rows (a burst to a task costs one
            # signal-with-start, not one per event), in outbox order
            by_task: dict[str, list] = {}
            for r in rows:
                by_task.setdefault(r["task_id"], []).append(r)
            groups = list(by_task.values())
            results = await asyncio.gather(
                *(self.signal([r["payload"] for r in group]) for group in groups),
                return_exceptions=True)
            done = [r["event_id"] for group, res in zip(groups, results) if not isinstance(res, BaseException)
                    for r in group]
            await conn.execute("DELETE FROM outbox WHERE variant = $1 AND event_id = ANY($2::text[])",
                               self.name, done)
        now = time.monotonic()
        failed = []
        for group, res in zip(groups, results):
            task_id = group[0]["task_id"]
            if not isinstance(res, BaseException):
                self._held.pop(task_id, None)
                continue
            backoff = min(RELAY_BACKOFF_MAX_S, max(0.1, self._held.get(task_id, (0.0, 0.0))[1] * 2))
            self._held[task_id] = (now + backoff, backoff)
            failed.append((task_id, res, backoff))
        if len(failed) > 1 and len(failed) == len(groups):
            raise failed[0][1]  # nothing went through (Temporal down): the whole relay backs off
        for task_id, exc, backoff in failed:
            log.warning("outbox relay: the signal of task %r failed (%r); its rows wait %.1f s", task_id, exc, backoff)
        return len(rows)

    async def signal(self, payloads: list[dict]) -> None:
        async with self._signals:
            await asyncio.wait_for(self._signal(payloads), RELAY_SIGNAL_TIMEOUT_S)

    async def _signal(self, payloads: list[dict]) -> None:
        """signal-with-start `receive_event` with the task's events: one event as Agentex sends
        it, several as a list (the workflow's handler takes both and dedupes each on its id)."""
        first = payloads[0]
        ref = TaskRef(first["agent_id"], first["task_id"], first.get("task_params") or {})
        now = time.time()
        events = [{**{k: p.get(k) for k in ("event_id", "task_id", "agent_id", "sequence_id", "accepted_at")},
                   "signalled_at": now} for p in payloads]
        await self.client.start_workflow(
            WORKFLOW_NAME, workflow_input(self.name, ref), id=ref.task_id, task_queue=TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal=SIGNAL_RECEIVE_EVENT, start_signal_args=[events[0] if len(events) == 1 else events])
        metrics.RELAYED.labels(self.name).inc(len(events))

    async def on_task_created(self, ref: TaskRef) -> None:
        # The task is in PostgreSQL already. Its workflow starts here, or else with its first event
        # (the relay's signal-with-start): like event/send, task/create does not wait on Temporal
        # (while Temporal was down it took 9.5 s to answer 503, and left the task row all the same).
        try:
            await asyncio.wait_for(self.client.start_workflow(
                WORKFLOW_NAME, workflow_input(self.name, ref), id=ref.task_id, task_queue=TASK_QUEUE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING), TASK_CALL_TIMEOUT_S)
        except RPCError as exc:
            if exc.status not in TEMPORAL_DOWN:
                raise  # a refusal (an argument Temporal will not take) is the client's answer
            log.warning("task/create %r: its workflow starts with its first event (Temporal: %r)", ref.task_id, exc)
        except asyncio.TimeoutError:
            log.warning("task/create %r: Temporal did not answer; its workflow starts with its first event", ref.task_id)

    async def on_task_cancelled(self, ref: TaskRef) -> None:
        await cancel_workflow(self.client, ref.task_id)


async def cancel_workflow(client: Client, workflow_id: str) -> None:
    """Signal a cancelled task's workflow to finish once it has applied what it received. The
    cancel is in PostgreSQL already (no event is accepted after it), so the signal only ends the
    workflow sooner than its idle timeout: with Temporal down it is given up after
    TASK_CALL_TIMEOUT_S (task/cancel waited 6-9.5 s for it)."""
    try:
        await asyncio.wait_for(client.get_workflow_handle(workflow_id).signal(SIGNAL_CANCEL), TASK_CALL_TIMEOUT_S)
    except RPCError:
        pass  # no running workflow: nothing to cancel
    except asyncio.TimeoutError:
        log.warning("task/cancel %r: Temporal did not take the cancel signal; the workflow ends when idle",
                    workflow_id)


VARIANT = TemporalVariant
