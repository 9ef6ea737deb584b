"""The Agentex-compatible API: the subset of Agentex's REST API an async base agent written with
agentex-sdk uses, backed by the lab's PostgreSQL and event log, plus the lab's ACP front for
variant "agent" (what nginx serves at /agent/).

Read from Agentex's server (scaleapi/scale-agentex) and SDK (scaleapi/scale-agentex-python):
- GET /openapi.json: the SDK's start-up contract check reads info.version.
- POST /agents/register: idempotent by name (by agent_id when given); the reply is an Agent plus
  agent_api_key, which the SDK then sends as x-agent-api-key (accepted, not enforced).
- /states: POST creates, GET ?task_id=&agent_id= lists, GET/PUT/DELETE /states/{id}. PUT
  overwrites the whole state with no version check (last writer wins), as Agentex does.
- /tracker: GET ?task_id=&agent_id= lists, GET/PUT /tracker/{id}. PUT: a null
  last_processed_event_id leaves the cursor, status and status_reason are always overwritten
  (null included), a cursor that would move backwards (by sequence) is refused with 400, an
  unknown event id too. A tracker is created with its task, as Agentex does.
- /events: GET ?task_id=&agent_id=&last_processed_event_id=&limit= ordered by sequence_id (the
  log's seq); GET /events/{id}.
- /messages: POST, GET/PUT /messages/{id} (streaming updates), GET ?task_id= list, batch.
- /tasks: GET /tasks/{id}, /tasks/name/{name}, GET /tasks; /spans: accepted and stored.

The ACP front (/acp/...): POST /acp/api takes the lab's JSON-RPC (task/create, event/send,
task/cancel) as Agentex's server does, records the event in the lab's event log (variant
"agent") and forwards the call to the agent's replicas (round-robin through nginx) as Agentex's
server does: POST {acp_url}/api with the agent's x-agent-api-key, JSON-RPC id
"event/send-<task id>". It acks {"status": "processing"} once the event is recorded and the agent
accepted it. Every delivery is forwarded, a re-sent event id too (as a webhook redelivery
reaches an agent); the log records it once. An event for a task never seen first creates the task
(task/create forwarded to the agent) and waits, once per task, until the agent's on_task_create
wrote a state (or RACELAB_AGENT_CREATE_WAIT_S, 3 s), as a client that creates a task before
messaging it would.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from .. import db, metrics, protocol
from ..checker import invariant
from ..config import AGENT_VARIANT, Settings
from ..pod.app import classify_failure, failure_response, json_errors
from . import schema

log = logging.getLogger("racelab.agentex")

VARIANT = AGENT_VARIANT
API_VERSION = "0.1.0"  # what /openapi.json reports: the SDK refuses backends older than its floor (0.1.0)
POOL_KEY = web.AppKey("pool", object)
CTX_KEY = web.AppKey("ctx", object)
TASK_STATUSES = ("CANCELED", "COMPLETED", "FAILED", "RUNNING", "INTERRUPTED", "TERMINATED", "TIMED_OUT", "DELETED")


class Ctx:
    def __init__(self, settings: Settings, agent_url: str, agent_name: str, create_wait_s: float):
        self.settings = settings
        self.agent_url = agent_url.rstrip("/")
        self.agent_name = agent_name
        self.create_wait_s = create_wait_s
        self.session: aiohttp.ClientSession | None = None
        self.invariant = None
        self.invariant_error = ""


def iso(t: datetime | None) -> str | None:
    return t.astimezone(timezone.utc).isoformat() if t is not None else None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


@web.middleware
async def errors_as_json(request: web.Request, handler) -> web.StreamResponse:
    """Whatever escapes a handler is answered as JSON, never aiohttp's text page ("500 Internal
    Server Error / Server got itself in trouble", "405: Method Not Allowed"): the ACP routes
    (/acp/...) with a JSON-RPC error object, as the lab's pods; the REST routes with Agentex's
    {"detail": ...}: a dependency down 503 + Retry-After, a body or query a store refused (a NUL,
    a number out of range, a value of the wrong type) 422, a bug 500 (logged)."""
    if request.path.startswith("/acp/"):
        return await json_errors(request, handler)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return web.json_response({"detail": exc.reason}, status=exc.status, headers={
            k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")})
    except Exception as exc:
        kind = classify_failure(exc)
        if kind and kind[0] == "unavailable":
            log.warning("%s %s: %s unavailable: %r", request.method, request.path[:200], kind[1], exc)
            return web.json_response({"detail": f"service unavailable: {kind[1]} is not answering; retry"},
                                     status=503, headers={"Retry-After": "1"})
        if (kind and kind[0] == "data") or isinstance(exc, (TypeError, ValueError, KeyError, AttributeError,
                                                             asyncpg.IntegrityConstraintViolationError)):
            # FastAPI, in front of Agentex, refuses a body of the wrong shape with 422
            detail = kind[1] if kind else f"{type(exc).__name__}: {exc}"
            # logged with its traceback: a bug of the handler would show up the same way
            log.warning("%s %s: answered 422: %s", request.method, request.path[:200], detail[:300], exc_info=exc)
            return web.json_response({"detail": f"invalid request: {detail[:300]}"}, status=422)
        log.exception("internal error on %s %s", request.method, request.path[:200])
        return web.json_response({"detail": "internal error"}, status=500)


def problem(status: int, detail: str) -> web.Response:
    """Agentex's error shape (FastAPI's HTTPException): {"detail": ...}."""
    return web.json_response({"detail": detail}, status=status)


async def body_of(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text=json.dumps({"detail": "body is not JSON"}), content_type="application/json")
    if not isinstance(body, dict):
        raise web.HTTPUnprocessableEntity(text=json.dumps({"detail": "body must be an object"}),
                                          content_type="application/json")
    return body


def jsonb(value: Any) -> Any:
    """asyncpg's jsonb codec takes Python values (db._init_connection)."""
    return value


# ---------------------------------------------------------------- shapes (the SDK's types)

def agent_json(row, agent_id: str | None = None) -> dict:
    return {"id": agent_id or row["id"], "name": row["name"], "description": row["description"],
            "acp_type": row["acp_type"], "agent_input_type": row["agent_input_type"],
            "registration_metadata": row["registration_metadata"], "status": "Ready", "status_reason": None,
            "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]),
            "registered_at": iso(row["registered_at"])}


def placeholder_agent(agent_id: str, name: str) -> dict:
    t = now_iso()
    return {"id": agent_id, "name": name, "description": f"{name} (not registered)", "acp_type": "async",
            "status": "Unknown", "created_at": t, "updated_at": t}


def task_json(row) -> dict:
    return {"id": row["id"], "name": row["name"], "params": row["params"], "task_metadata": row["task_metadata"],
            "status": row["status"], "status_reason": row["status_reason"],
            "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"])}


def state_json(row) -> dict:
    return {"id": row["id"], "task_id": row["task_id"], "agent_id": row["agent_id"], "state": row["state"],
            "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"])}


def tracker_json(row) -> dict:
    return {"id": row["id"], "task_id": row["task_id"], "agent_id": row["agent_id"],
            "last_processed_event_id": row["last_processed_event_id"], "status": row["status"],
            "status_reason": row["status_reason"], "created_at": iso(row["created_at"]),
            "updated_at": iso(row["updated_at"])}


def event_json(row) -> dict:
    return {"id": row["event_id"], "task_id": row["task_id"], "agent_id": row["agent_id"],
            "sequence_id": row["seq"], "content": row["content"], "created_at": iso(row["accepted_at"])}


def message_json(row) -> dict:
    return {"id": row["id"], "task_id": row["task_id"], "content": row["content"],
            "streaming_status": row["streaming_status"], "created_at": iso(row["created_at"]),
            "updated_at": iso(row["updated_at"])}


STATE_SELECT = """SELECT s.id, s.task_id, s.agent_id, t.state, s.created_at, t.updated_at
                  FROM agentex_states s JOIN task_states t
                    ON t.variant = 'agent' AND t.task_id = s.task_id AND t.agent_id = s.agent_id"""
EVENT_SELECT = "SELECT event_id, task_id, agent_id, seq, content, accepted_at FROM events WHERE variant = 'agent'"


def paging(request: web.Request, default_limit: int = 50) -> tuple[int, int, str]:
    try:
        limit = int(request.query.get("limit", default_limit))
        page = int(request.query.get("page_number", 1))
    except ValueError:
        raise web.HTTPUnprocessableEntity(text=json.dumps({"detail": "limit and page_number must be integers"}),
                                          content_type="application/json") from None
    if limit < 1 or page < 1:
        raise web.HTTPUnprocessableEntity(text=json.dumps({"detail": "limit and page_number must be >= 1"}),
                                          content_type="application/json")
    direction = "ASC" if request.query.get("order_direction", "desc").lower() == "asc" else "DESC"
    return limit, (page - 1) * limit, direction


# ---------------------------------------------------------------- REST: start-up and agents

async def openapi(request: web.Request) -> web.Response:
    return web.json_response({"openapi": "3.1.0", "info": {
        "title": "racelab Agentex-compatible API", "version": API_VERSION,
        "description": "the subset of Agentex's REST API that agentex-sdk async base agents use"},
        "paths": {p: {} for p in ("/agents/register", "/states", "/tracker", "/events", "/messages", "/tasks",
                                  "/spans")}})


async def register_agent(request: web.Request) -> web.Response:
    body = await body_of(request)
    name = body.get("name")
    if not isinstance(name, str) or not name:
        return problem(422, "name is required")
    pool = request.app[POOL_KEY]
    fields = (body.get("description") or "", body.get("acp_url"), body.get("acp_type") or "async",
              body.get("agent_input_type"), body.get("registration_metadata"))
    async with pool.acquire() as conn, conn.transaction():
        row = None
        if body.get("agent_id"):
            row = await conn.fetchrow(
                """UPDATE agentex_agents SET name = $2, description = $3, acp_url = $4, acp_type = $5,
                       agent_input_type = $6, registration_metadata = $7, updated_at = clock_timestamp(),
                       registered_at = clock_timestamp() WHERE id = $1 RETURNING *""", body["agent_id"], name, *fields)
        if row is None:  # idempotent by name: every replica of the agent registers, one agent results
            row = await conn.fetchrow(
                """INSERT INTO agentex_agents (id, name, description, acp_url, acp_type, agent_input_type,
                                               registration_metadata, api_key)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                   ON CONFLICT (name) DO UPDATE SET description = EXCLUDED.description, acp_url = EXCLUDED.acp_url,
                       acp_type = EXCLUDED.acp_type, agent_input_type = EXCLUDED.agent_input_type,
                       registration_metadata = EXCLUDED.registration_metadata, updated_at = clock_timestamp(),
                       registered_at = clock_timestamp()
                   RETURNING *""", body.get("agent_id") or str(uuid.uuid4()), name, *fields,
                secrets.token_urlsafe(24))
    return web.json_response({**agent_json(row), "agent_api_key": row["api_key"]})


async def get_agent(request: web.Request) -> web.Response:
    pool = request.app[POOL_KEY]
    if "name" in request.match_info:
        row = await pool.fetchrow("SELECT * FROM agentex_agents WHERE name = $1", request.match_info["name"])
    else:
        row = await pool.fetchrow("SELECT * FROM agentex_agents WHERE id = $1", request.match_info["agent_id"])
    return web.json_response(agent_json(row)) if row else problem(404, "agent not found")


async def list_agents(request: web.Request) -> web.Response:
    limit, offset, _ = paging(request)
    rows = await request.app[POOL_KEY].fetch("SELECT * FROM agentex_agents ORDER BY created_at LIMIT $1 OFFSET $2",
                                             limit, offset)
    return web.json_response([agent_json(r) for r in rows])


# ---------------------------------------------------------------- REST: tasks

async def get_task(request: web.Request) -> web.Response:
    pool = request.app[POOL_KEY]
    if "name" in request.match_info:
        row = await pool.fetchrow("SELECT * FROM agentex_tasks WHERE name = $1", request.match_info["name"])
    else:
        row = await pool.fetchrow("SELECT * FROM agentex_tasks WHERE id = $1", request.match_info["task_id"])
    return web.json_response(task_json(row)) if row else problem(404, "task not found")


async def list_tasks(request: web.Request) -> web.Response:
    limit, offset, direction = paging(request)
    agent_id = request.query.get("agent_id")
    rows = await request.app[POOL_KEY].fetch(
        f"""SELECT * FROM agentex_tasks WHERE ($1::text IS NULL OR agent_id = $1)
            ORDER BY created_at {direction} LIMIT $2 OFFSET $3""", agent_id, limit, offset)
    return web.json_response([task_json(r) for r in rows])


async def set_task_status(request: web.Request) -> web.Response:
    status = {"cancel": "CANCELED", "complete": "COMPLETED", "fail": "FAILED", "terminate": "TERMINATED",
              "timeout": "TIMED_OUT", "interrupt": "INTERRUPTED"}[request.match_info["action"]]
    body = await body_of(request) if request.can_read_body else {}
    row = await request.app[POOL_KEY].fetchrow(
        """UPDATE agentex_tasks SET status = $2, status_reason = $3, updated_at = clock_timestamp()
           WHERE id = $1 RETURNING *""", request.match_info["task_id"], status, body.get("reason"))
    return web.json_response(task_json(row)) if row else problem(404, "task not found")


# ---------------------------------------------------------------- REST: states

async def record_applied(conn, ctx: Ctx, task_id: str, agent_id: str, state: dict) -> None:
    """When each entry of the invariant's list first appeared in a state the agent wrote (in the
    transaction that writes the state): the apply times the checker gives the agent's events."""
    keys = invariant.entry_keys(ctx.invariant, state)
    if keys:
        await conn.execute("""INSERT INTO agentex_applied (task_id, agent_id, entry_key, first_at)
                              SELECT $1, $2, k, w.t FROM unnest($3::text[]) AS k, (SELECT clock_timestamp() AS t) AS w
                              ON CONFLICT DO NOTHING""", task_id, agent_id, keys)  # one time per write


async def create_state(request: web.Request) -> web.Response:
    body = await body_of(request)
    task_id, agent_id, state = body.get("task_id"), body.get("agent_id"), body.get("state")
    if not isinstance(task_id, str) or not isinstance(agent_id, str) or not isinstance(state, dict):
        return problem(422, "task_id, agent_id (strings) and state (an object) are required")
    pool = request.app[POOL_KEY]
    async with pool.acquire() as conn, conn.transaction():
        state_id = await conn.fetchval(
            """INSERT INTO agentex_states (id, task_id, agent_id) VALUES ($1, $2, $3)
               ON CONFLICT (task_id, agent_id) DO NOTHING RETURNING id""", str(uuid.uuid4()), task_id, agent_id)
        if state_id is None:
            return problem(409, f"a state for task {task_id} and agent {agent_id} exists already")
        await db.write_state(conn, VARIANT, task_id, agent_id, state)
        await record_applied(conn, request.app[CTX_KEY], task_id, agent_id, state)
        row = await conn.fetchrow(STATE_SELECT + " WHERE s.id = $1", state_id)
    return web.json_response(state_json(row))


async def list_states(request: web.Request) -> web.Response:
    limit, offset, direction = paging(request)
    rows = await request.app[POOL_KEY].fetch(
        STATE_SELECT + f""" WHERE ($1::text IS NULL OR s.task_id = $1) AND ($2::text IS NULL OR s.agent_id = $2)
            ORDER BY s.created_at {direction} LIMIT $3 OFFSET $4""",
        request.query.get("task_id"), request.query.get("agent_id"), limit, offset)
    return web.json_response([state_json(r) for r in rows])


async def get_state(request: web.Request) -> web.Response:
    row = await request.app[POOL_KEY].fetchrow(STATE_SELECT + " WHERE s.id = $1", request.match_info["state_id"])
    return web.json_response(state_json(row)) if row else problem(404, "state not found")


async def update_state(request: web.Request) -> web.Response:
    """The whole state overwritten, no version check: last writer wins, as Agentex's PUT does."""
    body = await body_of(request)
    if not isinstance(body.get("state"), dict):
        return problem(422, "state (an object) is required")
    pool = request.app[POOL_KEY]
    async with pool.acquire() as conn, conn.transaction():
        ref = await conn.fetchrow("SELECT task_id, agent_id FROM agentex_states WHERE id = $1",
                                  request.match_info["state_id"])
        if ref is None:
            return problem(404, "state not found")
        await db.write_state(conn, VARIANT, ref["task_id"], ref["agent_id"], body["state"])
        await record_applied(conn, request.app[CTX_KEY], ref["task_id"], ref["agent_id"], body["state"])
        row = await conn.fetchrow(STATE_SELECT + " WHERE s.id = $1", request.match_info["state_id"])
    return web.json_response(state_json(row))


async def delete_state(request: web.Request) -> web.Response:
    pool = request.app[POOL_KEY]
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(STATE_SELECT + " WHERE s.id = $1", request.match_info["state_id"])
        if row is None:
            return problem(404, "state not found")
        await conn.execute("DELETE FROM agentex_states WHERE id = $1", row["id"])
        await conn.execute("DELETE FROM task_states WHERE variant = 'agent' AND task_id = $1 AND agent_id = $2",
                           row["task_id"], row["agent_id"])
        await conn.execute("DELETE FROM agentex_applied WHERE task_id = $1 AND agent_id = $2",
                           row["task_id"], row["agent_id"])  # a new state's entries are applied anew
    return web.json_response(state_json(row))


# ---------------------------------------------------------------- REST: trackers and events

async def list_trackers(request: web.Request) -> web.Response:
    limit, offset, direction = paging(request)
    rows = await request.app[POOL_KEY].fetch(
        f"""SELECT * FROM agentex_trackers WHERE ($1::text IS NULL OR task_id = $1) AND ($2::text IS NULL OR agent_id = $2)
            ORDER BY created_at {direction} LIMIT $3 OFFSET $4""",
        request.query.get("task_id"), request.query.get("agent_id"), limit, offset)
    return web.json_response([tracker_json(r) for r in rows])


async def get_tracker(request: web.Request) -> web.Response:
    row = await request.app[POOL_KEY].fetchrow("SELECT * FROM agentex_trackers WHERE id = $1",
                                               request.match_info["tracker_id"])
    return web.json_response(tracker_json(row)) if row else problem(404, "tracker not found")


async def update_tracker(request: web.Request) -> web.Response:
    """As Agentex's repository: the row locked (FOR UPDATE); a given cursor must name a known
    event whose sequence is not below the current one's (400 otherwise); a null cursor leaves it;
    status and status_reason are always overwritten."""
    body = await body_of(request)
    cursor = body.get("last_processed_event_id")
    pool = request.app[POOL_KEY]
    async with pool.acquire() as conn, conn.transaction():
        current = await conn.fetchrow("SELECT * FROM agentex_trackers WHERE id = $1 FOR UPDATE",
                                      request.match_info["tracker_id"])
        if current is None:
            return problem(404, "tracker not found")
        if cursor is not None:
            new_seq = await conn.fetchval("SELECT seq FROM events WHERE variant = 'agent' AND event_id = $1", str(cursor))
            if new_seq is None:
                return problem(400, f"Event with ID {cursor} not found")
            if current["last_processed_event_id"] is not None:
                cur_seq = await conn.fetchval("SELECT seq FROM events WHERE variant = 'agent' AND event_id = $1",
                                              current["last_processed_event_id"])
                if cur_seq is not None and new_seq < cur_seq:
                    return problem(400, f"Cannot move cursor backwards: new sequence ID {new_seq} < current "
                                        f"sequence ID {cur_seq}")
        row = await conn.fetchrow(
            """UPDATE agentex_trackers SET last_processed_event_id = coalesce($2, last_processed_event_id),
                   status = $3, status_reason = $4, updated_at = clock_timestamp() WHERE id = $1 RETURNING *""",
            current["id"], None if cursor is None else str(cursor), body.get("status"), body.get("status_reason"))
    return web.json_response(tracker_json(row))


async def list_events(request: web.Request) -> web.Response:
    task_id, agent_id = request.query.get("task_id"), request.query.get("agent_id")
    if not task_id or not agent_id:
        return problem(422, "task_id and agent_id are required")
    limit = request.query.get("limit")
    if limit is not None and (not limit.isdigit() or not 1 <= int(limit) <= 1000):
        return problem(422, "limit must be within 1..1000")
    pool = request.app[POOL_KEY]
    after = None
    if request.query.get("last_processed_event_id"):
        after = await pool.fetchval("SELECT seq FROM events WHERE variant = 'agent' AND event_id = $1",
                                    request.query["last_processed_event_id"])
    rows = await pool.fetch(
        EVENT_SELECT + """ AND task_id = $1 AND agent_id = $2 AND ($3::bigint IS NULL OR seq > $3)
                           ORDER BY seq LIMIT $4""", task_id, agent_id, after, int(limit) if limit else None)
    return web.json_response([event_json(r) for r in rows])


async def get_event(request: web.Request) -> web.Response:
    row = await request.app[POOL_KEY].fetchrow(EVENT_SELECT + " AND event_id = $1", request.match_info["event_id"])
    return web.json_response(event_json(row)) if row else problem(404, "event not found")


# ---------------------------------------------------------------- REST: messages and spans

async def create_message(request: web.Request) -> web.Response:
    body = await body_of(request)
    if not isinstance(body.get("task_id"), str) or not isinstance(body.get("content"), dict):
        return problem(422, "task_id (a string) and content (an object) are required")
    row = await request.app[POOL_KEY].fetchrow(
        """INSERT INTO agentex_messages (id, task_id, content, streaming_status, created_at)
           VALUES ($1, $2, $3, $4, coalesce($5::timestamptz, clock_timestamp())) RETURNING *""",
        str(uuid.uuid4()), body["task_id"], body["content"], body.get("streaming_status"),
        _timestamp(body.get("created_at")))
    return web.json_response(message_json(row))


def _timestamp(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


async def batch_create_messages(request: web.Request) -> web.Response:
    body = await body_of(request)
    contents = body.get("contents")
    if not isinstance(body.get("task_id"), str) or not isinstance(contents, list):
        return problem(422, "task_id and contents (a list) are required")
    out = []
    async with request.app[POOL_KEY].acquire() as conn, conn.transaction():
        for content in contents:
            out.append(message_json(await conn.fetchrow(
                """INSERT INTO agentex_messages (id, task_id, content) VALUES ($1, $2, $3) RETURNING *""",
                str(uuid.uuid4()), body["task_id"], content)))
    return web.json_response(out)


async def update_message(request: web.Request) -> web.Response:
    body = await body_of(request)
    if not isinstance(body.get("content"), dict):
        return problem(422, "content (an object) is required")
    row = await request.app[POOL_KEY].fetchrow(
        """UPDATE agentex_messages SET content = $2, streaming_status = coalesce($3, streaming_status),
               updated_at = clock_timestamp() WHERE id = $1 RETURNING *""",
        request.match_info["message_id"], body["content"], body.get("streaming_status"))
    return web.json_response(message_json(row)) if row else problem(404, "message not found")


async def batch_update_messages(request: web.Request) -> web.Response:
    body = await body_of(request)
    updates = body.get("updates")
    if not isinstance(updates, dict):
        return problem(422, "updates (an object of message id -> content) is required")
    out = []
    async with request.app[POOL_KEY].acquire() as conn, conn.transaction():
        for message_id, content in updates.items():
            row = await conn.fetchrow("""UPDATE agentex_messages SET content = $2, updated_at = clock_timestamp()
                                         WHERE id = $1 RETURNING *""", message_id, content)
            if row:
                out.append(message_json(row))
    return web.json_response(out)


async def get_message(request: web.Request) -> web.Response:
    row = await request.app[POOL_KEY].fetchrow("SELECT * FROM agentex_messages WHERE id = $1",
                                               request.match_info["message_id"])
    return web.json_response(message_json(row)) if row else problem(404, "message not found")


async def list_messages(request: web.Request) -> web.Response:
    if not request.query.get("task_id"):
        return problem(422, "task_id is required")
    limit, offset, direction = paging(request, default_limit=50)
    rows = await request.app[POOL_KEY].fetch(
        f"""SELECT * FROM agentex_messages WHERE task_id = $1 ORDER BY created_at {direction}, id
            LIMIT $2 OFFSET $3""", request.query["task_id"], limit, offset)
    return web.json_response([message_json(r) for r in rows])


async def create_span(request: web.Request) -> web.Response:
    body = await body_of(request)
    span = {"id": body.get("id") or str(uuid.uuid4()), "name": body.get("name") or "span",
            "trace_id": body.get("trace_id") or "", "start_time": body.get("start_time") or now_iso(), **{
                k: body.get(k) for k in ("end_time", "input", "output", "data", "parent_id", "task_id")}}
    await request.app[POOL_KEY].execute(
        """INSERT INTO agentex_spans (id, trace_id, doc) VALUES ($1, $2, $3)
           ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc""", span["id"], span["trace_id"], span)
    return web.json_response(span)


async def update_span(request: web.Request) -> web.Response:
    body = await body_of(request)
    pool = request.app[POOL_KEY]
    doc = await pool.fetchval("SELECT doc FROM agentex_spans WHERE id = $1", request.match_info["span_id"])
    if doc is None:
        return problem(404, "span not found")
    doc.update({k: v for k, v in body.items() if v is not None})
    await pool.execute("UPDATE agentex_spans SET doc = $2 WHERE id = $1", request.match_info["span_id"], doc)
    return web.json_response(doc)


async def get_span(request: web.Request) -> web.Response:
    doc = await request.app[POOL_KEY].fetchval("SELECT doc FROM agentex_spans WHERE id = $1",
                                               request.match_info["span_id"])
    return web.json_response(doc) if doc is not None else problem(404, "span not found")


async def list_spans(request: web.Request) -> web.Response:
    rows = await request.app[POOL_KEY].fetch("SELECT doc FROM agentex_spans WHERE ($1::text IS NULL OR trace_id = $1) "
                                             "LIMIT 1000", request.query.get("trace_id"))
    return web.json_response([r["doc"] for r in rows])


# ---------------------------------------------------------------- the ACP front (variant "agent")

# How long a task's creator waits for the agent's reply to task/create (its forward's timeout)
# before its own wait for the agent's state (create_wait_s) starts: the deliveries that find the
# task being created wait for both, counted from the task's creation, and no longer.
CREATOR_REPLY_S = 30.0


class AgentUnavailable(Exception):
    pass


async def registered_agent(ctx: Ctx, pool) -> Any:
    return await pool.fetchrow("SELECT * FROM agentex_agents WHERE name = $1", ctx.agent_name)


async def forward(ctx: Ctx, pool, method: str, task_id: str, params: dict, timeout_s: float | None = None) -> dict:
    """POST {agent}/api as Agentex's server does; the agent's JSON-RPC result, or AgentUnavailable.
    timeout_s: instead of the session's 60 s."""
    agent = await registered_agent(ctx, pool)
    headers = {"x-request-id": uuid.uuid4().hex}
    if agent is not None:
        headers["x-agent-api-key"] = agent["api_key"]
    body = {"jsonrpc": "2.0", "id": f"{method}-{task_id}", "method": method, "params": params}
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None
        async with ctx.session.post(f"{ctx.agent_url}/api", json=body, headers=headers, timeout=timeout) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise AgentUnavailable(f"the agent answered HTTP {resp.status}: {text[:300]}")
            reply = json.loads(text)
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
        raise AgentUnavailable(f"the agent did not answer: {exc!r}") from None
    if not isinstance(reply, dict) or reply.get("error"):
        raise AgentUnavailable(f"the agent refused {method}: {reply.get('error') if isinstance(reply, dict) else reply}")
    return reply.get("result") or {}


async def agent_shape(ctx: Ctx, pool, agent_id: str) -> dict:
    """params.agent as Agentex sends it: the registered agent, under the id the client named
    (the lab's event log and the states are keyed by it)."""
    row = await registered_agent(ctx, pool)
    return agent_json(row, agent_id) if row is not None else placeholder_agent(agent_id, ctx.agent_name)


async def ensure_task(ctx: Ctx, pool, ref: protocol.TaskRef, rpc_id: Any) -> dict:
    """The task (created, and announced to the agent with task/create, if new); returns its JSON."""
    async with pool.acquire() as conn, conn.transaction():
        created = await conn.fetchval(
            """INSERT INTO agentex_tasks (id, agent_id, params) VALUES ($1, $2, $3)
               ON CONFLICT (id) DO NOTHING RETURNING id""", ref.task_id, ref.agent_id, ref.task_params or None)
        if created:  # the lab's task row, and the tracker Agentex creates with every task
            await conn.execute("""INSERT INTO tasks (variant, task_id, agent_id) VALUES ($1, $2, $3)
                                  ON CONFLICT DO NOTHING""", VARIANT, ref.task_id, ref.agent_id)
            await conn.execute("""INSERT INTO agentex_trackers (id, task_id, agent_id) VALUES ($1, $2, $3)
                                  ON CONFLICT (task_id, agent_id) DO NOTHING""", str(uuid.uuid4()), ref.task_id,
                               ref.agent_id)
        row = await conn.fetchrow("SELECT * FROM agentex_tasks WHERE id = $1", ref.task_id)
    if row["agent_id"] != ref.agent_id:
        raise protocol.RpcError(protocol.INVALID_PARAMS, f"invalid params: task {ref.task_id!r} belongs to agent "
                                f"{row['agent_id']!r}", http_status=409, rpc_id=rpc_id)
    if created:
        try:
            await forward(ctx, pool, "task/create", ref.task_id,
                          {"agent": await agent_shape(ctx, pool, ref.agent_id), "task": task_json(row),
                           "params": ref.task_params or None}, timeout_s=CREATOR_REPLY_S)
        except BaseException:
            # the agent never heard of the task: forget it, so the client's retry announces it again
            await pool.execute("DELETE FROM agentex_tasks WHERE id = $1 AND NOT ready", ref.task_id)
            raise
        deadline = time.monotonic() + ctx.create_wait_s
        while time.monotonic() < deadline and not await pool.fetchval(
                "SELECT 1 FROM agentex_states WHERE task_id = $1 AND agent_id = $2", ref.task_id, ref.agent_id):
            await asyncio.sleep(0.05)
        await pool.execute("UPDATE agentex_tasks SET ready = true WHERE id = $1", ref.task_id)
    elif not row["ready"]:  # another delivery is creating it: wait as its client would
        # until the creator's deadline, counted from the task's creation (not from this request):
        # a creator killed before it set `ready` left every later event of the task waiting the
        # whole 33 s, each time. Past it, the task is taken as created, as the creator would have.
        left = await pool.fetchval(
            "SELECT extract(epoch FROM created_at + make_interval(secs => $2) - clock_timestamp()) "
            "FROM agentex_tasks WHERE id = $1", ref.task_id, ctx.create_wait_s + CREATOR_REPLY_S + 2.0)  # (+ slack)
        deadline = time.monotonic() + max(0.0, float(left or 0.0))
        while not (ready := await pool.fetchval("SELECT ready FROM agentex_tasks WHERE id = $1", ref.task_id)):
            if ready is None:  # the creator failed to announce it and forgot it: announce it here
                return await ensure_task(ctx, pool, ref, rpc_id)
            if time.monotonic() >= deadline:
                await pool.execute("UPDATE agentex_tasks SET ready = true WHERE id = $1", ref.task_id)
                break
            await asyncio.sleep(0.05)
    return task_json(row)


async def handle_api(request: web.Request) -> web.Response:
    ctx, pool = request.app[CTX_KEY], request.app[POOL_KEY]
    method, rpc_id, started = "unknown", None, time.perf_counter()
    try:
        if request.content_type != "application/json":
            raise protocol.RpcError(protocol.INVALID_REQUEST, "invalid request: Content-Type must be application/json",
                                    http_status=415)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise protocol.RpcError(protocol.INVALID_REQUEST, "invalid request: body too large",
                                    http_status=413) from None
        req = protocol.parse_envelope(body)
        method, rpc_id = req.method, req.rpc_id
        result = await dispatch(ctx, pool, req)
    except protocol.RpcError as exc:
        metrics.REQUESTS.labels(VARIANT, method, "rejected").inc()
        return web.json_response(exc.body(), status=exc.http_status)
    except AgentUnavailable as exc:
        metrics.REQUESTS.labels(VARIANT, method, "unavailable").inc()
        log.warning("%s: %s", method, exc)
        body = protocol.RpcError(protocol.UNAVAILABLE, f"service unavailable: {exc}", rpc_id=rpc_id).body()
        return web.json_response(body, status=503, headers={"Retry-After": "1"})
    except Exception as exc:  # a dependency down: 503 + Retry-After, as the lab's pods answer
        outcome, response = failure_response(exc, method, rpc_id)
        metrics.REQUESTS.labels(VARIANT, method, outcome).inc()
        return response
    metrics.REQUESTS.labels(VARIANT, method, "ok").inc()
    if method == "event/send":
        metrics.ACK_SECONDS.labels(VARIANT).observe(time.perf_counter() - started)
    return web.json_response(protocol.result_body(rpc_id, result))


# event.content as the agentex SDK's TaskMessageContent takes it: a union tried kind by kind (its
# "discriminator" is not pydantic's), each kind with its type's default, author "user" or
# "agent", its required fields and its optional ones, of their types. Agentex refuses anything
# else before it records; the lab recorded it, the agent's SDK refused it, and it was answered
# 503 and counted lost. (Checked against the SDK's own validation in make test-agent.)
_STYLES = ("static", "active")


def _lax_bool(v: Any) -> bool:  # pydantic's lax bool
    return (v is None or isinstance(v, bool) or (type(v) is int and v in (0, 1))
            or (isinstance(v, str) and v.lower() in ("0", "1", "true", "false", "t", "f", "yes", "no", "y", "n",
                                                      "on", "off")))


def _lax_int(v: Any) -> bool:
    return (type(v) is int or (isinstance(v, float) and v.is_integer())
            or (isinstance(v, str) and v.strip().lstrip("+-").isdigit()))


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _attachments(v: Any) -> bool:
    return v is None or (isinstance(v, list) and all(
        isinstance(a, dict) and all(isinstance(a.get(k), str) for k in ("file_id", "name", "type"))
        and _lax_int(a.get("size")) for a in v))


def _is(kind: type):
    return lambda v: isinstance(v, kind)


def _style(v: Any) -> bool:
    return v in _STYLES


# kind -> (its required fields and their checks, its optional fields and theirs)
CONTENT_KINDS: dict[str, tuple[dict, dict]] = {
    "text": ({"content": _is(str)},
             {"format": lambda v: v in ("markdown", "plain", "code"), "style": _style, "attachments": _attachments}),
    "data": ({"data": _is(dict)}, {"style": _style}),
    "tool_request": ({"tool_call_id": _is(str), "name": _is(str), "arguments": _is(dict)}, {"style": _style}),
    "tool_response": ({"tool_call_id": _is(str), "name": _is(str), "content": _is(object)},
                      {"style": _style, "is_error": _lax_bool}),
    "reasoning": ({"summary": _strings},
                  {"content": lambda v: v is None or _strings(v), "style": lambda v: v is None or _style(v)}),
}


def content_misfit(kind: str, content: dict) -> str | None:
    """Why content is not the SDK's `kind` of content (None: it is)."""
    given = content.get("type", kind)  # absent: the kind's default
    if not (given == kind or (kind == "reasoning" and given is None)):
        return f"type is not {kind!r}"
    if content.get("author") not in ("user", "agent"):
        return f'author must be "user" or "agent", not {json.dumps(content.get("author"))[:60]}'
    required, optional = CONTENT_KINDS[kind]
    for field, ok in required.items():
        if field not in content or not ok(content[field]):
            return f"{field} is {'missing' if field not in content else 'of the wrong type'} for type {kind}"
    for field, ok in optional.items():
        if field in content and not ok(content[field]):
            return f"{field} is not valid for type {kind}: {json.dumps(content[field])[:60]}"
    return None


def check_content(content: dict, rpc_id: Any) -> None:
    misfits = {kind: content_misfit(kind, content) for kind in CONTENT_KINDS}
    if all(misfits.values()):
        kind = content.get("type")
        why = (misfits[kind] if isinstance(kind, str) and kind in CONTENT_KINDS
               else f"type must be one of {', '.join(CONTENT_KINDS)}, not {json.dumps(kind)[:60]}")
        raise protocol.RpcError(protocol.INVALID_PARAMS, f'invalid params: "event.content": {why} (as the agentex '
                                "SDK's TaskMessageContent takes it)", rpc_id=rpc_id)


async def dispatch(ctx: Ctx, pool, req: protocol.Request) -> dict:
    if req.method == "event/send":
        event = protocol.parse_event_send(req)
        check_content(event.content, req.rpc_id)
        ref = protocol.TaskRef(event.agent_id, event.task_id, event.task_params)
        task = await ensure_task(ctx, pool, ref, req.rpc_id)
        try:
            await db.record_event(pool, VARIANT, event)
        except db.ResentAfterCancel:  # acked again, as any re-send; a cancelled task forwards nothing
            return {"status": "processing"}
        except db.TaskCancelled:
            raise protocol.RpcError(protocol.INVALID_PARAMS, f"invalid params: task {event.task_id!r} is cancelled",
                                    http_status=409, rpc_id=req.rpc_id) from None
        except db.EventIdConflict:
            raise protocol.RpcError(protocol.INVALID_PARAMS, f"invalid params: event id {event.event_id!r} was "
                                    "already sent for another task", http_status=409, rpc_id=req.rpc_id) from None
        row = await pool.fetchrow(EVENT_SELECT + " AND event_id = $1", event.event_id)
        await forward(ctx, pool, "event/send", event.task_id,
                      {"agent": await agent_shape(ctx, pool, event.agent_id), "task": task, "event": event_json(row)})
        return {"status": "processing"}
    ref = protocol.parse_task(req)
    if req.method == "task/create":  # as the lab's pods answer: the task's status in the lab
        task = await ensure_task(ctx, pool, ref, req.rpc_id)
        return {"status": "cancelled" if task["status"] == "CANCELED" else "running"}
    if not await db.cancel_task(pool, VARIANT, ref):
        raise protocol.RpcError(protocol.INVALID_PARAMS, f"invalid params: unknown task {ref.task_id!r}",
                                http_status=404, rpc_id=req.rpc_id)
    row = await pool.fetchrow("""UPDATE agentex_tasks SET status = 'CANCELED', updated_at = clock_timestamp()
                                 WHERE id = $1 RETURNING *""", ref.task_id)
    if row is not None:
        await forward(ctx, pool, "task/cancel", ref.task_id,
                      {"agent": await agent_shape(ctx, pool, ref.agent_id), "task": task_json(row)})
    return {"status": "cancelled"}


async def agent_view(ctx: Ctx, pool, task_id: str, agent_id: str) -> tuple[dict | None, dict | None, Any]:
    """(the lab's view of the agent's state through its invariant, the agent's own state, updated_at)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow("""SELECT state, updated_at FROM task_states
                                     WHERE variant = 'agent' AND task_id = $1 AND agent_id = $2""", task_id, agent_id)
        events = await conn.fetch("""SELECT task_id, agent_id, event_id, seq, content->>'content' AS text FROM events
                                     WHERE variant = 'agent' AND task_id = $1 AND agent_id = $2""", task_id, agent_id)
        served = await conn.fetch("""SELECT event_id, count(*) AS n FROM effects
                                     WHERE variant = 'agent' AND task_id = $1 AND agent_id = $2
                                     GROUP BY event_id""", task_id, agent_id)
        applied = await conn.fetch("""SELECT entry_key, extract(epoch FROM first_at) AS t FROM agentex_applied
                                      WHERE task_id = $1 AND agent_id = $2""", task_id, agent_id)
    if row is None and not events:
        return None, None, None
    view = invariant.translate(ctx.invariant, row["state"] if row else None,
                               [invariant.AgentEvent(*e) for e in events], {r["event_id"]: r["n"] for r in served},
                               {r["entry_key"]: float(r["t"]) for r in applied})  # as the checker sees it
    return view, (row["state"] if row else None), (row["updated_at"] if row else None)


async def handle_state(request: web.Request) -> web.Response:
    """GET /acp/tasks/<id>/state?agent_id=: the contract's state endpoint. "state" is the agent's
    state seen through its invariant (history, processing_count), "agent_state" its own."""
    ctx, pool = request.app[CTX_KEY], request.app[POOL_KEY]
    try:
        task_id = protocol.check_identifier(request.match_info["task_id"], "task id (path)")
        agent_id = protocol.check_identifier(request.query.get("agent_id", ""), "agent_id (query)")
    except protocol.RpcError as exc:
        return web.json_response(exc.body(), status=exc.http_status)
    view, own, updated_at = await agent_view(ctx, pool, task_id, agent_id)
    if view is None:
        return web.json_response(protocol.RpcError(protocol.INVALID_PARAMS, f"no state for task {task_id!r} and "
                                                    f"agent {agent_id!r}").body(), status=404)
    return web.json_response({"task_id": task_id, "agent_id": agent_id, "state": view, "agent_state": own,
                              "updated_at": iso(updated_at)})


async def handle_health(request: web.Request) -> web.Response:
    try:
        await request.app[POOL_KEY].fetchval("SELECT 1")
    except Exception as exc:
        return web.json_response({"status": "unhealthy", "variant": VARIANT, "error": repr(exc)}, status=503)
    ctx = request.app[CTX_KEY]
    return web.json_response({"status": "ok", "variant": VARIANT, "role": "agentex-api",
                              "invariant": ctx.invariant.describe() if ctx.invariant else ctx.invariant_error or
                              invariant.Invariant().describe()})


# ---------------------------------------------------------------- the app

def build_app(settings: Settings, agent_url: str, agent_name: str, pool=None,
              create_wait_s: float | None = None) -> web.Application:
    """pool: an asyncpg pool to use (tests); else one is made at start-up."""
    if create_wait_s is None:
        create_wait_s = float(os.environ.get("RACELAB_AGENT_CREATE_WAIT_S") or 3.0)
    ctx = Ctx(settings, agent_url, agent_name, create_wait_s)
    try:
        ctx.invariant = invariant.load(settings.agent_path)
    except invariant.InvariantError as exc:
        ctx.invariant_error = str(exc)
    app = web.Application(client_max_size=protocol.MAX_BODY_BYTES, middlewares=[errors_as_json])
    app[CTX_KEY] = ctx

    async def lifecycle(app: web.Application):
        own_pool = pool is None
        app[POOL_KEY] = pool if pool is not None else await db.create_pool(settings.pg_dsn)
        async with app[POOL_KEY].acquire() as conn:
            await schema.apply(conn)
        ctx.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                            connector=aiohttp.TCPConnector(limit=256))
        yield
        await ctx.session.close()
        if own_pool:
            await app[POOL_KEY].close()

    app.cleanup_ctx.append(lifecycle)
    metrics.init(VARIANT)
    r = app.router
    r.add_get("/openapi.json", openapi)
    r.add_post("/agents/register", register_agent)
    r.add_get("/agents", list_agents)
    r.add_get("/agents/name/{name}", get_agent)
    r.add_get("/agents/{agent_id}", get_agent)
    r.add_get("/tasks", list_tasks)
    r.add_get("/tasks/name/{name}", get_task)
    r.add_get("/tasks/{task_id}", get_task)
    r.add_post("/tasks/{task_id}/{action:cancel|complete|fail|terminate|timeout|interrupt}", set_task_status)
    r.add_post("/states", create_state)
    r.add_get("/states", list_states)
    r.add_get("/states/{state_id}", get_state)
    r.add_put("/states/{state_id}", update_state)
    r.add_delete("/states/{state_id}", delete_state)
    r.add_get("/tracker", list_trackers)
    r.add_get("/tracker/{tracker_id}", get_tracker)
    r.add_put("/tracker/{tracker_id}", update_tracker)
    r.add_get("/events", list_events)
    r.add_get("/events/{event_id}", get_event)
    r.add_post("/messages", create_message)
    r.add_get("/messages", list_messages)
    r.add_post("/messages/batch", batch_create_messages)
    r.add_put("/messages/batch", batch_update_messages)
    r.add_get("/messages/{message_id}", get_message)
    r.add_put("/messages/{message_id}", update_message)
    r.add_post("/spans", create_span)
    r.add_get("/spans", list_spans)
    r.add_get("/spans/{span_id}", get_span)
    r.add_patch("/spans/{span_id}", update_span)
    r.add_post("/acp/api", handle_api)
    r.add_get("/acp/tasks/{task_id}/state", handle_state)
    r.add_get("/acp/healthz", handle_health)
    r.add_get("/healthz", handle_health)
    r.add_get("/metrics", metrics.handle_metrics)
    r.add_get("/acp/metrics", metrics.handle_metrics)
    return app
