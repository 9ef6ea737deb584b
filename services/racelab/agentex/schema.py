"""Tables of the Agentex-compatible API (racelab.agentex), beside the lab's own (racelab.db).

Events are not here: they are the lab's event log (`events`, variant "agent"), so the checker
sees them like any variant's; Event.sequence_id is the log's seq. A state's content is the lab's
`task_states` row of variant "agent" (what the checker reads); agentex_states only gives it the id
Agentex's API addresses it by. Applied by every API process at start, under an advisory lock.
"""
from __future__ import annotations

SCHEMA_LOCK = 7_361_923_001  # pg_advisory_xact_lock key: API replicas apply the schema one at a time

SCHEMA = """
CREATE TABLE IF NOT EXISTS agentex_agents (
    id                    text PRIMARY KEY,
    name                  text NOT NULL UNIQUE,
    description           text NOT NULL DEFAULT '',
    acp_url               text,
    acp_type              text NOT NULL DEFAULT 'async',
    agent_input_type      text,
    registration_metadata jsonb,
    api_key               text NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    registered_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS agentex_tasks (
    id            text PRIMARY KEY,
    agent_id      text NOT NULL,
    name          text,
    params        jsonb,
    task_metadata jsonb,
    status        text NOT NULL DEFAULT 'RUNNING',
    status_reason text,
    ready         boolean NOT NULL DEFAULT false,  -- the agent's task/create was handled
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS agentex_tasks_by_name ON agentex_tasks (name);
-- When each entry of the invariant's list (checker.invariant.entry_keys) first appeared in a state
-- the agent wrote, written with the state: the apply time of the event behind it (the agent's
-- own state says nothing of time; without it the agent had no apply latency, and `make load`
-- reported it applying 0 events/s).
CREATE TABLE IF NOT EXISTS agentex_applied (
    task_id   text NOT NULL,
    agent_id  text NOT NULL,
    entry_key text NOT NULL,
    first_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (task_id, agent_id, entry_key)
);
CREATE TABLE IF NOT EXISTS agentex_states (
    id         text PRIMARY KEY,
    task_id    text NOT NULL,
    agent_id   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (task_id, agent_id)
);
CREATE TABLE IF NOT EXISTS agentex_trackers (
    id                      text PRIMARY KEY,
    task_id                 text NOT NULL,
    agent_id                text NOT NULL,
    last_processed_event_id text,
    status                  text,
    status_reason           text,
    created_at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at              timestamptz,
    UNIQUE (task_id, agent_id)
);
CREATE TABLE IF NOT EXISTS agentex_messages (
    id               text PRIMARY KEY,
    task_id          text NOT NULL,
    content          jsonb NOT NULL,
    streaming_status text,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at       timestamptz
);
CREATE INDEX IF NOT EXISTS agentex_messages_by_task ON agentex_messages (task_id, created_at);
CREATE TABLE IF NOT EXISTS agentex_spans (
    id       text PRIMARY KEY,
    trace_id text,
    doc      jsonb NOT NULL
);
-- the model stub attributes a call to the event whose text it carries (racelab.modelstub); by the
-- text's md5: a btree entry of the text itself holds at most ~2.7 kB, so an event with a longer
-- text that did not compress was refused (400, ProgramLimitExceeded) though 512 KiB is allowed
DROP INDEX IF EXISTS events_agent_text;
CREATE INDEX IF NOT EXISTS events_agent_text_md5 ON events (md5(content->>'content')) WHERE variant = 'agent';
"""


async def apply(conn) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        await conn.execute(SCHEMA)
