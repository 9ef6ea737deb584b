"""PostgreSQL: the event log, task states, agent task trackers and effects.

Every variant records events the same way (the record_events function) and keeps state in the
same table; they differ only in how they read-modify-write it. The checker reads these tables
and nothing a variant keeps privately.
"""
from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

import asyncpg

from .protocol import Event, TaskRef
from .state import initial_state, state_agent

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    variant       text NOT NULL,
    task_id       text NOT NULL,
    agent_id      text NOT NULL,
    status        text NOT NULL DEFAULT 'running',
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (variant, task_id, agent_id)
);
-- It was updated by every event, so a burst to one task queued on one hot row; the locked
-- sweeper now reads the events' accepted_at. (Checked first: DROP COLUMN IF EXISTS would take
-- the table's strongest lock on every schema apply.)
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'tasks' AND column_name = 'last_event_at') THEN
        ALTER TABLE tasks DROP COLUMN last_event_at;
    END IF;
END $$;
-- The event log. seq orders events per task: record_events commits them in seq order per task.
CREATE TABLE IF NOT EXISTS events (
    seq         bigserial PRIMARY KEY,
    variant     text NOT NULL,
    event_id    text NOT NULL,
    task_id     text NOT NULL,
    agent_id    text NOT NULL,
    sequence_id bigint,
    content     jsonb NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (variant, event_id)
);
CREATE INDEX IF NOT EXISTS events_by_task ON events (variant, task_id, agent_id, seq);
CREATE TABLE IF NOT EXISTS task_states (
    variant    text NOT NULL,
    task_id    text NOT NULL,
    agent_id   text NOT NULL,
    state      jsonb NOT NULL,
    version    bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (variant, task_id, agent_id)
);
-- Agent task trackers: the cursor of the locked variant, and the fencing token of the last
-- lock holder that wrote (a holder whose Redis lock expired cannot write after a newer one).
CREATE TABLE IF NOT EXISTS trackers (
    variant            text NOT NULL,
    task_id            text NOT NULL,
    agent_id           text NOT NULL,
    last_processed_seq bigint NOT NULL DEFAULT 0,
    fence              bigint NOT NULL DEFAULT 0,
    status_reason      text,
    updated_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (variant, task_id, agent_id)
);
CREATE OR REPLACE FUNCTION trackers_forward_only() RETURNS trigger AS $$
BEGIN
    IF NEW.last_processed_seq < OLD.last_processed_seq THEN
        RAISE EXCEPTION 'cursor of %/%/% may not move backwards (% -> %)',
            OLD.variant, OLD.task_id, OLD.agent_id, OLD.last_processed_seq, NEW.last_processed_seq
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER trackers_forward_only BEFORE UPDATE ON trackers
    FOR EACH ROW EXECUTE FUNCTION trackers_forward_only();
-- One row per (model call, event it served): what a duplicate would repeat.
CREATE TABLE IF NOT EXISTS effects (
    id         bigserial PRIMARY KEY,
    variant    text NOT NULL,
    task_id    text NOT NULL,
    agent_id   text NOT NULL,
    call_id    uuid NOT NULL,
    event_id   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS effects_by_task ON effects (variant, task_id, agent_id);
-- Transactional outbox of the temporal variant: written in the transaction that records the
-- event, relayed to Temporal (signal-with-start) after the commit, deleted once signalled. So a
-- signal is never sent for an event the log does not have, and an acked event always reaches
-- its workflow (a relay that dies leaves the row for another one; the workflow dedupes ids).
CREATE TABLE IF NOT EXISTS outbox (
    variant    text NOT NULL,
    event_id   text NOT NULL,
    task_id    text NOT NULL,
    agent_id   text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (variant, event_id)
);
CREATE INDEX IF NOT EXISTS outbox_by_age ON outbox (variant, created_at);
-- tx: the id of the (top-level) transaction that last wrote the row, pg_current_xact_id(),
-- assigned when it is first asked for; deleted_states keeps one for each deleted state row. The incremental checker finds what changed since
-- its last snapshot S by `tx >= pg_snapshot_xmin(S) AND NOT pg_visible_in_snapshot(tx, S)`:
-- exact, whatever a writer's timestamps or sequence numbers say (a writer starved of CPU can take
-- its clock_timestamp() or nextval() long before its transaction id, and commit later still).
ALTER TABLE events ADD COLUMN IF NOT EXISTS tx xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE effects ADD COLUMN IF NOT EXISTS tx xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE task_states ADD COLUMN IF NOT EXISTS tx xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS events_by_tx ON events (tx);
CREATE INDEX IF NOT EXISTS effects_by_tx ON effects (tx);
CREATE INDEX IF NOT EXISTS task_states_by_tx ON task_states (tx);
DROP INDEX IF EXISTS task_states_by_update;
CREATE OR REPLACE FUNCTION task_states_tx() RETURNS trigger AS $$
BEGIN
    NEW.tx := pg_current_xact_id();  -- every write path (variants, the Agentex API, a user's SQL)
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER task_states_tx BEFORE UPDATE ON task_states
    FOR EACH ROW EXECUTE FUNCTION task_states_tx();
-- A deleted state (the Agentex API's DELETE /states/{id}) leaves a tombstone the incremental
-- checker finds like any other write.
CREATE TABLE IF NOT EXISTS deleted_states (
    variant  text NOT NULL,
    task_id  text NOT NULL,
    agent_id text NOT NULL,
    tx       xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX IF NOT EXISTS deleted_states_by_tx ON deleted_states (tx);
CREATE OR REPLACE FUNCTION task_states_tombstone() RETURNS trigger AS $$
BEGIN
    INSERT INTO deleted_states (variant, task_id, agent_id) VALUES (OLD.variant, OLD.task_id, OLD.agent_id);
    RETURN OLD;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER task_states_tombstone AFTER DELETE ON task_states
    FOR EACH ROW EXECUTE FUNCTION task_states_tombstone();
-- The order lock of a task's events: an advisory lock to the commit (the two-key form, apart from
-- the lab's one-key advisory locks). record_events takes it before the events' seq, so the events
-- of one task get their seq and commit one call at a time, in seq order (a BIGSERIAL alone can
-- commit out of order across connections; with this, a cursor that has seen seq N has seen every
-- event of the task below N). cancel_task takes it too, so every event accepted before a cancel commits first.
-- A lock in memory: the task row it replaces was rewritten by every event (a new row version, its
-- WAL, a queue of waiters on one hot row).
CREATE OR REPLACE FUNCTION task_order_lock(p_variant text, p_task_id text, p_agent_id text) RETURNS void
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock(20261126, hashtext(p_variant || chr(31) || p_task_id || chr(31) || p_agent_id))
$$;
-- Whole-state writes of one state row take turns (db.write_state): concurrent writers of a row
-- queue on this lock and find the row free, instead of all waiting on the row's lock and each
-- retrying its ON CONFLICT when it is released. Last writer wins as before; the row's lock gave
-- the same order. 30 concurrent writes per row, 100 rows (2026-11-26): PostgreSQL CPU 0.16-0.20 ms
-- per write instead of 0.23-0.31, 3,400-3,500 writes/s instead of 2,600-2,800.
CREATE OR REPLACE FUNCTION state_write_turn(p_variant text, p_task_id text, p_agent_id text) RETURNS void
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock(20261127, hashtext(p_variant || chr(31) || p_task_id || chr(31) || p_agent_id))
$$;
-- Record events of one task (db.record_event, db.EventRecorder): one call, one round trip, one
-- transaction; the events in array order. A plpgsql function is VOLATILE, so under READ COMMITTED
-- each statement in it takes a fresh snapshot, after the order lock: it sees what the lock's
-- previous holder (another call, a cancel) committed.
-- A row per event, in order. status null: the event id was recorded for another task, nothing
-- written; status 'cancelled': nothing written; 'cancelled-resend': the re-send of an event the
-- task recorded before its cancel, nothing written; seq null otherwise: a re-send (or an id twice
-- in the arrays). The task row is created after the task's first recorded event, so an id that
-- another task takes at the same moment (both pass the first check, under different order locks)
-- leaves no task row either. p_outboxes: the outbox row of each event (the temporal variant's
-- relay; null for none), in the same transaction, for a new event and again for a re-send.
CREATE OR REPLACE FUNCTION record_events(p_variant text, p_task_id text, p_agent_id text, p_event_ids text[],
                                         p_sequence_ids bigint[], p_contents jsonb[], p_outboxes jsonb[])
RETURNS TABLE (status text, seq bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    task_status text;
BEGIN
    PERFORM task_order_lock(p_variant, p_task_id, p_agent_id);
    -- (a cancel takes the order lock too: the status cannot change while this holds it)
    SELECT t.status INTO task_status FROM tasks t
    WHERE t.variant = p_variant AND t.task_id = p_task_id AND t.agent_id = p_agent_id;
    FOR i IN 1 .. coalesce(array_length(p_event_ids, 1), 0) LOOP
        record_events.status := task_status;
        record_events.seq := NULL;
        IF EXISTS (SELECT 1 FROM events e WHERE e.variant = p_variant AND e.event_id = p_event_ids[i]
                   AND (e.task_id <> p_task_id OR e.agent_id <> p_agent_id)) THEN
            record_events.status := NULL;  -- another task's: refused, nothing written
        ELSIF task_status = 'cancelled' THEN
            -- refused, nothing written; but an event the task recorded before its cancel is acked
            -- again, as any re-send is (a client retrying an ack it lost was told 409 "cancelled"
            -- for an event that was accepted and applied)
            IF EXISTS (SELECT 1 FROM events e WHERE e.variant = p_variant AND e.event_id = p_event_ids[i]) THEN
                record_events.status := 'cancelled-resend';
            END IF;
        ELSE
            INSERT INTO events AS e (variant, event_id, task_id, agent_id, sequence_id, content)
            VALUES (p_variant, p_event_ids[i], p_task_id, p_agent_id, p_sequence_ids[i], p_contents[i])
            ON CONFLICT (variant, event_id) DO NOTHING
            RETURNING e.seq INTO record_events.seq;
            IF record_events.seq IS NULL AND NOT EXISTS (
                    SELECT 1 FROM events e WHERE e.variant = p_variant AND e.event_id = p_event_ids[i]
                    AND e.task_id = p_task_id AND e.agent_id = p_agent_id) THEN
                record_events.status := NULL;  -- the id just went to another task: refused
            ELSE
                IF task_status IS NULL THEN  -- a new task (a task/create in flight for it: wait, take its status)
                    INSERT INTO tasks AS t (variant, task_id, agent_id) VALUES (p_variant, p_task_id, p_agent_id)
                    ON CONFLICT (variant, task_id, agent_id) DO UPDATE SET status = t.status
                    RETURNING t.status INTO task_status;
                    record_events.status := task_status;
                END IF;
                -- a re-send writes its outbox row again, if a relay already removed it
                IF p_outboxes[i] IS NOT NULL THEN
                    INSERT INTO outbox (variant, event_id, task_id, agent_id, payload)
                    VALUES (p_variant, p_event_ids[i], p_task_id, p_agent_id, p_outboxes[i])
                    ON CONFLICT (variant, event_id) DO NOTHING;
                END IF;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;
-- its one-event predecessor (pods of an older version are gone once the lab restarts)
DROP FUNCTION IF EXISTS record_event(text, text, text, text, bigint, jsonb, jsonb);
-- Faults injected by the nemesis (racelab.nemesis): when, what, and when it was back.
CREATE TABLE IF NOT EXISTS faults (
    id       bigserial PRIMARY KEY,
    run_id   text NOT NULL DEFAULT '',
    kind     text NOT NULL,
    target   text NOT NULL,
    at       timestamptz NOT NULL,
    back_at  timestamptz
);
-- The queue workers' reconciler (variants/queue.py): the seq up to which every event is applied
-- and none can still commit; shared by the workers and kept across their restarts, so that only
-- the first turn ever reads the whole log.
CREATE TABLE IF NOT EXISTS reconciler_marks (
    variant     text PRIMARY KEY,
    settled_seq bigint NOT NULL
);
-- Client runs (burst, load, chaos, matrix): the exporter's run-scoped gauges count the newest.
CREATE TABLE IF NOT EXISTS runs (
    run_id     text PRIMARY KEY,   -- the task id prefix of the run
    kind       text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""


class TaskCancelled(Exception):
    pass


class ResentAfterCancel(Exception):
    """The re-send of an event its task recorded before it was cancelled: acked again, as any
    re-send is, but nothing is processed for a cancelled task."""


class EventIdConflict(Exception):
    """The event id was already recorded for another task."""


class CursorMovedBackwards(Exception):
    pass


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


# A PostgreSQL that hangs (paused, overloaded) must give a pod a timeout it can answer 503 for,
# not a request that waits for nginx's proxy timeout.
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 20.0


async def keep_session(conn: asyncpg.Connection) -> None:
    """On release to the pool: nothing beyond asyncpg's own rollback of an open transaction.
    asyncpg's default reset sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`,
    one more round trip per acquire (about a tenth of a pod's CPU at full ingest). The lab's
    connections carry no session state; the one session-level lock (variants/sequential.py)
    is released by its holder, which closes the connection if it cannot."""


async def create_pool(dsn: str, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init_connection,
                                     reset=keep_session, timeout=CONNECT_TIMEOUT_S,
                                     command_timeout=COMMAND_TIMEOUT_S)


async def ensure_database(admin_dsn: str, dsn: str) -> None:
    """Create the racelab database (if missing) and apply the schema (idempotent)."""
    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(admin_dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():  # one at a time: concurrent ALTER/CREATE ... IF NOT EXISTS can collide
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('racelab schema'))")
            await conn.execute(SCHEMA)
    finally:
        await conn.close()


Handoff = Callable[[asyncpg.Connection, bool], Awaitable[None]]


async def record_event(pool: asyncpg.Pool, variant: str, event: Event, handoff: Handoff | None = None,
                       outbox: dict | None = None) -> bool:
    """Record an event durably in the event log. Returns True if it is new, False for a re-send.

    The database function record_events (SCHEMA) takes the task's order lock first, so the events
    of one task are assigned seq and committed one call at a time, in seq order.

    handoff runs inside the transaction (temporal-naive signals its workflow there, queue adds to
    its stream), so an event is either recorded and handed off, or neither. outbox: a row for the
    outbox (the temporal variant's relay), written with a new event, and again on a re-send (a
    re-send brings back a row a relay already removed). The pods of variants without a handoff
    record through an EventRecorder.
    """
    args = (variant, event.task_id, event.agent_id, event.event_id, event.sequence_id, event.content, outbox)
    if handoff is None:  # one statement, one round trip: its own transaction
        return _recorded(event, await pool.fetchrow(RECORD_EVENT, *args)) is not None
    async with pool.acquire() as conn, conn.transaction():
        fresh = _recorded(event, await conn.fetchrow(RECORD_EVENT, *args)) is not None
        await handoff(conn, fresh)
        return fresh


RECORD_EVENT = ("SELECT status, seq FROM record_events($1, $2, $3, ARRAY[$4::text], ARRAY[$5::bigint], "
                "ARRAY[$6::jsonb], ARRAY[$7::jsonb])")
RECORD_EVENTS = "SELECT status, seq FROM record_events($1, $2, $3, $4, $5, $6, $7)"

# What PostgreSQL down or restarting raises (pod.app answers 503 + Retry-After, never 500; the
# queue workers' reconciler tries again next turn).
PG_DOWN = (asyncpg.PostgresConnectionError,      # class 08: connection failures
           asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, starting up, cancelled
           asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
           asyncpg.exceptions.PostgresSystemError,  # class 58: I/O errors
           asyncpg.exceptions.TransactionRollbackError,  # class 40: a deadlock; a retry succeeds
           asyncpg.InterfaceError,                   # the connection is closed or broken
           # "cannot switch to state N; another operation is in progress": a connection whose
           # server went away mid-query (seen only while PostgreSQL was being killed)
           asyncpg.InternalClientError)
# What PostgreSQL (or asyncpg, encoding an argument) refuses in a value that validation let
# through: the request's fault, answered 400 (pod.app); a batch with one falls back to one call each.
DATA_ERRORS = (asyncpg.exceptions.DataError,               # class 22: a value PostgreSQL refuses
               asyncpg.exceptions.ProgramLimitExceededError,  # class 54: a value too large for an index
               asyncpg.exceptions._base.DataError,         # asyncpg could not encode an argument
               UnicodeError)


def _recorded(event: Event, row: asyncpg.Record) -> int | None:
    """What record_events' row says: cancelled, refused (an id of another task) raise, and so does
    the re-send of an event recorded before its task's cancel (acked, with no processing); the new
    event's seq, or None for a re-send."""
    if row["status"] == "cancelled":
        raise TaskCancelled(event.task_id)
    if row["status"] == "cancelled-resend":
        raise ResentAfterCancel(event.task_id)
    if row["status"] is None:
        raise EventIdConflict(event.event_id)
    return row["seq"]


class GroupCommit:
    """A pod's group commit: the items of a key that arrive while a round trip for that key is in
    flight go together in the next one (one statement, one transaction, one commit). A lone item
    goes at once; every caller learns its own item's outcome once the commit that holds it is
    done. Subclasses say what a key is and write a batch (_write: an outcome per item, a value or
    an exception instance)."""
    BATCH_LIMIT = 100
    # errors of a whole batch that may be one item's doing: each item is then written on its own,
    # so only that one fails
    RETRY_ONE_BY_ONE: tuple[type[BaseException], ...] = DATA_ERRORS
    UNSURE = "the item may not be written"  # what a caller is told when the pod stops under it

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self._queued: dict = {}  # key -> (its items waiting, the flush that writes them)

    async def close(self) -> None:
        """Let the round trips in flight end (before the pool closes)."""
        await asyncio.gather(*(flush for _, flush in self._queued.values()), return_exceptions=True)

    async def _write(self, key, items: list) -> list:
        raise NotImplementedError

    async def _submit(self, key, item):
        done = asyncio.get_running_loop().create_future()
        entry = self._queued.get(key)
        if entry is None or entry[1].done():  # (done: a flush cancelled before its first step never ran its finally)
            queue: list = []
            self._queued[key] = entry = (queue, asyncio.create_task(self._flush(key, queue)))
        entry[0].append((item, done))
        return await done

    async def _flush(self, key, queue: list) -> None:
        batch: list = []
        try:
            while queue:
                batch = queue[:self.BATCH_LIMIT]
                del queue[:self.BATCH_LIMIT]
                items = [item for item, _ in batch]
                try:
                    outcomes = await self._write(key, items)
                except self.RETRY_ONE_BY_ONE as exc:
                    outcomes = [exc] if len(items) == 1 else [await self._write_one(key, item) for item in items]
                except Exception as exc:  # PostgreSQL down, a timeout: the batch fails (503), the next ones try
                    outcomes = [exc] * len(items)
                for (_, done), outcome in zip(batch, outcomes, strict=True):
                    if done.done():  # its caller was cancelled (the item may be written all the same)
                        continue
                    if isinstance(outcome, Exception):
                        done.set_exception(outcome)
                    else:
                        done.set_result(outcome)
        except BaseException:  # cancelled (the pod stops): nothing is left waiting
            for _, done in batch + queue:
                if not done.done():
                    done.set_exception(ConnectionError(f"the pod is stopping: {self.UNSURE}"))
            raise
        finally:
            self._queued.pop(key, None)

    async def _write_one(self, key, item):
        try:
            return (await self._write(key, [item]))[0]
        except Exception as exc:
            return exc


class EventRecorder(GroupCommit):
    """Events, per task: the events of a task that arrive while a recording round trip for it is
    in flight go together in the next one (one call of record_events, one commit, one wait for
    the task's order lock). They would queue behind the order lock anyway; in one call they cost
    one round trip and one WAL flush instead of one each (a burst of 30 events to one task: 30
    commits one after another without it). Every event is acked only after the commit that holds it.
    """
    # a refused value, or a batch that deadlocked with another task's (each holding an event id
    # the other sends too)
    RETRY_ONE_BY_ONE = (*DATA_ERRORS, asyncpg.exceptions.TransactionRollbackError)
    UNSURE = "the event may not be recorded"

    async def record(self, variant: str, event: Event, outbox: dict | None = None) -> int | None:
        """As record_event without a handoff: the event's seq if new, None for a re-send; raises
        TaskCancelled, EventIdConflict, ResentAfterCancel (each its own item's), or what PostgreSQL raised."""
        return await self._submit((variant, event.task_id, event.agent_id), (event, outbox))

    async def _write(self, key: tuple[str, str, str], items: list) -> list:
        variant, task_id, agent_id = key
        events = [event for event, _ in items]
        rows = await self.pool.fetch(
            RECORD_EVENTS, variant, task_id, agent_id, [e.event_id for e in events],
            [e.sequence_id for e in events], [e.content for e in events], [outbox for _, outbox in items])
        outcomes: list = []
        for event, row in zip(events, rows, strict=True):
            try:
                outcomes.append(_recorded(event, row))
            except (TaskCancelled, EventIdConflict, ResentAfterCancel) as exc:  # this item's own outcome
                outcomes.append(exc)
        return outcomes


class EffectWriter(GroupCommit):
    """Effect rows, one queue per pod: the rows of the model calls that return while an effects
    round trip is in flight go together in the next one, instead of a transaction per call. Each
    call's rows are durable before its caller goes on (to its state write), as with
    record_effects: a state write that fails after a model call (PostgreSQL killed, a fenced
    holder) leaves the call on record. 30 handlers of a task return from their model calls at
    about the same time: one round trip, not 30."""
    BATCH_LIMIT = 200  # calls
    UNSURE = "the effect rows may not be written"

    async def record(self, variant: str, task_id: str, agent_id: str, call_id: str, event_ids: list[str]) -> None:
        await self._submit(None, (variant, task_id, agent_id, call_id, event_ids))

    async def _write(self, key: None, calls: list[tuple]) -> list:
        await insert_effects(self.pool, calls)
        return [None] * len(calls)


class StateReads(GroupCommit):
    """Reads of a state row, per row: the reads of a row asked for while a read of it is in
    flight are all answered by the next one. Each caller gets a row read after it asked (the
    next read starts once every caller in it has asked), so no read is staler than a read of
    its own would be. Read-your-writes holds the same way: a handler's read after its own write
    returned is asked after that write committed. The callers share one row (its state dict):
    they must not change it in place (state.apply_events copies it)."""
    RETRY_ONE_BY_ONE = ()  # the items are the same read: an error is every caller's
    UNSURE = "the state was not read"

    async def read(self, variant: str, task_id: str, agent_id: str) -> asyncpg.Record | None:
        return await self._submit((variant, task_id, agent_id), None)

    async def _write(self, key: tuple[str, str, str], items: list) -> list:
        return [await read_state(self.pool, *key)] * len(items)


class StateWrites(GroupCommit):
    """Whole-state writes of a row, per row, last writer wins: the writes of a row handed in
    while a write of it is in flight go in the next round trip as their sequence (in the order
    they came), which is the last of them with the row's version moved once per write. Every
    caller in it was waiting at once, so the writes are concurrent: a read could not tell them
    from that sequence committed back to back. Only the state written (the last) is sent, so
    only it can be refused: then each is written on its own, in order, and that one alone fails.
    A burst's handlers return from their model calls at about the same time; without it each
    write was a round trip, a commit and a turn on the row's lock (state_write_turn)."""
    UNSURE = "the state may not be written"

    async def write(self, variant: str, task_id: str, agent_id: str, state: dict) -> None:
        await self._submit((variant, task_id, agent_id), state)

    async def _write(self, key: tuple[str, str, str], states: list) -> list:
        await write_state(self.pool, *key, states[-1], writes=len(states))
        return [None] * len(states)


async def create_task(pool: asyncpg.Pool, variant: str, ref: TaskRef) -> str:
    """task/create: the task row and an empty state, as an agent's on_task_create would."""
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.fetchval(
            """INSERT INTO tasks (variant, task_id, agent_id) VALUES ($1, $2, $3)
               ON CONFLICT (variant, task_id, agent_id) DO UPDATE SET status = tasks.status
               RETURNING status""", variant, ref.task_id, ref.agent_id)
        # where the variants keep this task's state: the agent's, or the task's one shared state
        await conn.execute(
            """INSERT INTO task_states (variant, task_id, agent_id, state) VALUES ($1, $2, $3, $4)
               ON CONFLICT DO NOTHING""", variant, ref.task_id, state_agent(ref.task_params, ref.agent_id),
            initial_state())
        return status


async def cancel_task(pool: asyncpg.Pool, variant: str, ref: TaskRef) -> bool:
    """task/cancel: later events for the task are refused. False if the task is unknown."""
    async with pool.acquire() as conn, conn.transaction():
        # after the events being recorded for the task (their order lock), before any later one
        await conn.execute("SELECT task_order_lock($1, $2, $3)", variant, ref.task_id, ref.agent_id)
        done = await conn.execute(
            "UPDATE tasks SET status = 'cancelled' WHERE variant = $1 AND task_id = $2 AND agent_id = $3",
            variant, ref.task_id, ref.agent_id)
    return done != "UPDATE 0"


async def read_state(conn, variant: str, task_id: str, agent_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT state, version, updated_at FROM task_states
           WHERE variant = $1 AND task_id = $2 AND agent_id = $3""", variant, task_id, agent_id)


async def write_state(conn, variant: str, task_id: str, agent_id: str, state: dict, writes: int = 1) -> None:
    """Write the whole state back: last writer wins, as Agentex's PUT /states/{id} does (writers
    of one row take turns: state_write_turn). writes: how many writes this one stands for (the
    last of a sequence, StateWrites): the version moves by that many."""
    await conn.execute(
        """WITH turn AS MATERIALIZED (SELECT state_write_turn($1, $2, $3))
           INSERT INTO task_states (variant, task_id, agent_id, state, version) SELECT $1, $2, $3, $4, $5 FROM turn
           ON CONFLICT (variant, task_id, agent_id) DO UPDATE
           SET state = EXCLUDED.state, version = task_states.version + $5, updated_at = clock_timestamp()""",
        variant, task_id, agent_id, state, writes)


async def write_state_if_version(conn, variant: str, task_id: str, agent_id: str, state: dict,
                                 version: int) -> int | None:
    """Write the whole state only if it is still at `version` (a row task/create made is at 0; no
    row counts as 0 too), in one statement; the new version, or None when another writer moved it."""
    return await conn.fetchval(
        """INSERT INTO task_states (variant, task_id, agent_id, state, version) VALUES ($1, $2, $3, $4, 1)
           ON CONFLICT (variant, task_id, agent_id) DO UPDATE
           SET state = EXCLUDED.state, version = task_states.version + 1, updated_at = clock_timestamp()
           WHERE task_states.version = $5 RETURNING version""",
        variant, task_id, agent_id, state, version)


async def record_effects(conn, variant: str, task_id: str, agent_id: str, call_id: str, event_ids: list[str]) -> None:
    await insert_effects(conn, [(variant, task_id, agent_id, call_id, event_ids)])


async def insert_effects(conn, calls: list[tuple]) -> None:
    """The effect rows of model calls, (variant, task_id, agent_id, call_id, event_ids) each, in one
    statement: a row per event id."""
    rows = [(variant, task_id, agent_id, call_id, event_id)
            for variant, task_id, agent_id, call_id, event_ids in calls for event_id in event_ids]
    if rows:
        await conn.execute(
            """INSERT INTO effects (variant, task_id, agent_id, call_id, event_id)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[])""",
            *(list(col) for col in zip(*rows)))


_TAKE_FENCE = """INSERT INTO trackers (variant, task_id, agent_id, fence) VALUES ($1, $2, $3, 1)
ON CONFLICT (variant, task_id, agent_id) DO UPDATE SET fence = trackers.fence + 1, updated_at = clock_timestamp()"""


async def take_fence(pool, variant: str, task_id: str, agent_id: str) -> int:
    """A new fencing token for a lock holder of the task: one more than any before, kept on the
    tracker row the holder's writes are checked against (PostgreSQL, not the lock's store, so a
    restart of Redis cannot make it go backwards)."""
    return await pool.fetchval(f"{_TAKE_FENCE} RETURNING fence", variant, task_id, agent_id)


async def advance_cursor(conn, variant: str, task_id: str, agent_id: str, seq: int, fence: int,
                         reason: str = "") -> None:
    """Move the tracker's cursor to seq. A move backwards is refused (by the table's trigger too)."""
    try:
        await conn.execute(
            """INSERT INTO trackers (variant, task_id, agent_id, last_processed_seq, fence, status_reason)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (variant, task_id, agent_id) DO UPDATE
               SET last_processed_seq = EXCLUDED.last_processed_seq, fence = EXCLUDED.fence,
                   status_reason = EXCLUDED.status_reason, updated_at = clock_timestamp()""",
            variant, task_id, agent_id, seq, fence, reason)
    except asyncpg.CheckViolationError as exc:
        raise CursorMovedBackwards(str(exc)) from None


# A lock holder's batch (variants/locked.py), in one snapshot: its tracker (cursor, fence), the
# state it writes ($4: the agent's, or "*" for a task's shared state) and up to $5 events after
# the cursor, in seq order. No row when the tracker does not exist.
_BATCH_EVENTS = """
CROSS JOIN LATERAL (
    SELECT array_agg(b.seq ORDER BY b.seq) AS seqs, array_agg(b.event_id ORDER BY b.seq) AS event_ids,
           array_agg(extract(epoch FROM b.accepted_at)::float8 ORDER BY b.seq) AS accepted_at
    FROM (SELECT seq, event_id, accepted_at FROM events
          WHERE variant = $1 AND task_id = $2 AND agent_id = $3
            AND seq > tr.last_processed_seq ORDER BY seq LIMIT $5) b) e"""
_BATCH_COLUMNS = """tr.last_processed_seq AS cursor, tr.fence, s.state,
       coalesce(e.seqs, '{}') AS seqs, coalesce(e.event_ids, '{}') AS event_ids,
       coalesce(e.accepted_at, '{}') AS accepted_at"""
READ_BATCH = f"""
SELECT {_BATCH_COLUMNS}
FROM trackers tr
LEFT JOIN task_states s ON s.variant = $1 AND s.task_id = $2 AND s.agent_id = $4 {_BATCH_EVENTS}
WHERE tr.variant = $1 AND tr.task_id = $2 AND tr.agent_id = $3"""

# take_fence and READ_BATCH in one statement, for a holder's first read: one round trip and one
# commit fewer per lock taken. The read is valid only if no batch was written between the
# statement's snapshot and its fence (a stale holder's commit_batch that the upsert waited for:
# the upsert returns the newest cursor, the state comes from the older snapshot); `consistent`
# says so (the snapshot's cursor is the cursor the fence was taken on), else the holder reads
# again with READ_BATCH.
FENCE_AND_READ_BATCH = f"""
WITH tr AS ({_TAKE_FENCE} RETURNING last_processed_seq, fence)
SELECT {_BATCH_COLUMNS},
       coalesce((SELECT seen.last_processed_seq FROM trackers seen
                 WHERE seen.variant = $1 AND seen.task_id = $2 AND seen.agent_id = $3), 0)
           = tr.last_processed_seq AS consistent
FROM tr
LEFT JOIN task_states s ON s.variant = $1 AND s.task_id = $2 AND s.agent_id = $4 {_BATCH_EVENTS}"""


async def commit_batch(conn, variant: str, task_id: str, agent_id: str, owner: str, fence: int, cursor: int,
                       seq: int, state: dict, reason: str) -> bool:
    """Write a lock holder's state and move its cursor from `cursor` to `seq`, in one statement, only
    if the tracker still carries its fence and that cursor; False (nothing written) otherwise.
    The tracker's UPDATE takes its row lock first and rechecks the condition on the newest row
    (READ COMMITTED), so a newer holder's take_fence, committed or not, makes this one write nothing."""
    written = await conn.fetchval(
        """WITH tracker AS (
               UPDATE trackers SET last_processed_seq = $7, status_reason = $9, updated_at = clock_timestamp()
               WHERE variant = $1 AND task_id = $2 AND agent_id = $3 AND fence = $5 AND last_processed_seq = $6
               RETURNING 1)
           INSERT INTO task_states (variant, task_id, agent_id, state, version)
           SELECT $1, $2, $4, $8, 1 FROM tracker
           ON CONFLICT (variant, task_id, agent_id) DO UPDATE
           SET state = EXCLUDED.state, version = task_states.version + 1, updated_at = clock_timestamp()
           RETURNING 1""", variant, task_id, agent_id, owner, fence, cursor, seq, state, reason)
    return written == 1


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection with the lab's jsonb codec (the caller closes it)."""
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    await _init_connection(conn)
    return conn


@asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


if __name__ == "__main__":
    # `python -m racelab.db`: create the database and apply the schema (compose's one-shot job;
    # the native lab does the same in `lab up`).
    from .config import Settings

    _settings = Settings.from_env()
    asyncio.run(ensure_database(_settings.pg_admin_dsn, _settings.pg_dsn))
    print("racelab: schema applied")
