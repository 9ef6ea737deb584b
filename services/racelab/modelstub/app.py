"""The model stub's aiohttp app (see the package's docstring)."""
from __future__ import annotations

import asyncio
import json
import random
import time
import uuid

from aiohttp import web
from prometheus_client import Counter

from .. import db, metrics
from ..config import AGENT_VARIANT, Settings

POOL_KEY = web.AppKey("pool", object)
CONF_KEY = web.AppKey("conf", dict)
REPLY = "racelab model stub reply"

CALLS = Counter("racelab_modelstub_calls_total", "Chat completions served by the model stub", ["stream"])
UNATTRIBUTED = Counter("racelab_modelstub_unattributed_total",
                       "Chat completions whose user text matches no event of the agent variant")


def text_of(content) -> str | None:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def served_texts(messages) -> list[str]:
    """The texts of the trailing user messages (after the last assistant message): what this call
    answers. Pure."""
    out: list[str] = []
    for message in reversed(messages if isinstance(messages, list) else []):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "assistant":
            break
        if role == "user":
            text = text_of(message.get("content"))
            if text is not None:
                out.append(text)
    out.reverse()
    return out


# The variant written out, not a parameter: a prepared statement's generic plan cannot use the
# partial index (agentex.schema: md5 of the text, WHERE variant = 'agent') for a parameter.
ATTRIBUTE = f"""SELECT e.task_id, e.agent_id, e.event_id FROM events e
    WHERE e.variant = '{AGENT_VARIANT}' AND md5(e.content->>'content') = md5($1) AND e.content->>'content' = $1
    ORDER BY EXISTS (SELECT 1 FROM effects f WHERE f.variant = '{AGENT_VARIANT}' AND f.event_id = e.event_id
                     AND f.task_id = e.task_id), e.seq DESC
    LIMIT 1"""


async def attribute(pool, texts: list[str]) -> list[tuple[str, str, str]]:
    """(task_id, agent_id, event_id) of the agent variant's event behind each text: the newest
    event with that text not served by a model call yet, else the newest with that text."""
    out = []
    for text in texts:
        row = await pool.fetchrow(ATTRIBUTE, text)
        if row is not None:
            out.append((row["task_id"], row["agent_id"], row["event_id"]))
    return out


async def record(pool, texts: list[str]) -> int:
    found = await attribute(pool, texts)
    if not found:
        UNATTRIBUTED.inc()
        return 0
    call_id = str(uuid.uuid4())
    by_task: dict[tuple[str, str], list[str]] = {}
    for task_id, agent_id, event_id in found:
        by_task.setdefault((task_id, agent_id), []).append(event_id)
    for (task_id, agent_id), event_ids in by_task.items():
        await db.record_effects(pool, AGENT_VARIANT, task_id, agent_id, call_id, event_ids)
    metrics.MODEL_CALLS.labels(AGENT_VARIANT).inc()
    return len(found)


def completion(model: str, created: int, completion_id: str) -> dict:
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}}


def chunk(model: str, created: int, completion_id: str, delta: dict, finish: str | None) -> bytes:
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    return f"data: {json.dumps(body)}\n\n".encode()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return web.json_response({"error": {"message": "body is not JSON", "type": "invalid_request_error"}},
                                 status=400)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return web.json_response({"error": {"message": "messages (a list) is required",
                                            "type": "invalid_request_error"}}, status=400)
    conf = request.app[CONF_KEY]
    jitter = conf["rng"].uniform(-conf["jitter_ms"], conf["jitter_ms"])
    await asyncio.sleep(max(0.0, conf["latency_ms"] + jitter) / 1000.0)
    await record(request.app[POOL_KEY], served_texts(body["messages"]))
    model = str(body.get("model") or "racelab-stub")
    created, completion_id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
    stream = bool(body.get("stream"))
    CALLS.labels(str(stream).lower()).inc()
    if not stream:
        return web.json_response(completion(model, created, completion_id))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    await resp.write(chunk(model, created, completion_id, {"role": "assistant", "content": ""}, None))
    for word in REPLY.split(" "):
        await resp.write(chunk(model, created, completion_id, {"content": word + " "}, None))
    await resp.write(chunk(model, created, completion_id, {}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}}
        await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def models(_: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "racelab-stub", "object": "model", "created": 0,
                                                          "owned_by": "racelab"}]})


async def health(request: web.Request) -> web.Response:
    try:
        await request.app[POOL_KEY].fetchval("SELECT 1")
    except Exception as exc:
        return web.json_response({"status": "unhealthy", "error": repr(exc)}, status=503)
    return web.json_response({"status": "ok", "role": "modelstub"})


def build_app(settings: Settings, pool=None, rng: random.Random | None = None) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[CONF_KEY] = {"latency_ms": settings.model_latency_ms, "jitter_ms": settings.model_jitter_ms,
                     "rng": rng or random.Random()}

    async def lifecycle(app: web.Application):
        app[POOL_KEY] = pool if pool is not None else await db.create_pool(settings.pg_dsn)
        yield
        if pool is None:
            await app[POOL_KEY].close()

    app.cleanup_ctx.append(lifecycle)
    for prefix in ("/v1", ""):  # clients differ on whether the base URL carries /v1
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_get(f"{prefix}/models", models)
    app.router.add_get("/healthz", health)
    app.router.add_get("/metrics", metrics.handle_metrics)
    return app
