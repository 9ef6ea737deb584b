"""An ACP pod: the aiohttp server Agentex would call, for one variant.

POST /api (JSON-RPC 2.0), GET /tasks/{task_id}/state?agent_id=..., GET /healthz, GET /metrics.
An event/send is acked with {"status": "processing"} once it is durably in the event log; the
variant processes it after the reply. Bad input gets a JSON-RPC error and records nothing.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time

from aiohttp import web

from .. import db, metrics, protocol
from ..config import Settings
from ..model import Model
from ..protocol import RpcError
from ..variants import PodContext, Variant, load_variant

log = logging.getLogger("racelab.pod")

VARIANT_KEY = web.AppKey("variant", Variant)


RETRY_AFTER_S = 2  # a PostgreSQL, Redis or Temporal restart takes a few seconds

_DEPENDENCY_MODULES = (("asyncpg", "PostgreSQL"), ("redis", "Redis"), ("temporalio", "Temporal"))


def _dependency_in_traceback(exc: BaseException) -> str:
    """Which library an OSError or timeout came out of: the innermost library frame of the
    exception (or of the one it was raised from) names the dependency."""
    for link in (exc, exc.__cause__, exc.__context__):
        tb, found = (link.__traceback__ if link is not None else None), None
        while tb is not None:
            module = tb.tb_frame.f_globals.get("__name__", "")
            for prefix, name in _DEPENDENCY_MODULES:
                if module == prefix or module.startswith(prefix + "."):
                    found = name
            tb = tb.tb_next
        if found:
            return found
    return "a dependency (PostgreSQL, Redis or Temporal)"


def classify_failure(exc: Exception) -> tuple[str, str] | None:
    """("unavailable", which dependency) for a dependency that is down or timed out;
    ("data", detail) for a value a store refused that validation let through; None otherwise."""
    if isinstance(exc, db.DATA_ERRORS):
        return "data", f"{type(exc).__name__}: {exc}"
    # Temporal's and Redis' errors by their modules if loaded: only the variants that use them
    # import them (an error of theirs cannot exist otherwise), which saves the other pods 0.23 of
    # the 0.59 s they spent importing (33 pods start at once in the race zoo)
    temporal = sys.modules.get("temporalio.service")
    if temporal is not None and isinstance(exc, temporal.RPCError):
        if exc.status == temporal.RPCStatusCode.INVALID_ARGUMENT:
            return "data", f"Temporal refused the request: {exc.message}"
        return "unavailable", "Temporal"
    if isinstance(exc, db.PG_DOWN):  # answered 503 + Retry-After, never 500
        return "unavailable", "PostgreSQL"
    redis_errors = sys.modules.get("redis.exceptions")
    if redis_errors is not None and isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError)):
        return "unavailable", "Redis"
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return "unavailable", _dependency_in_traceback(exc)
    return None


def failure_response(exc: Exception, what: str, rpc_id=None) -> tuple[str, web.Response]:
    """The answer to an exception a handler did not expect: (metrics outcome, response). Always a
    JSON-RPC error object: 503 + Retry-After when a dependency is down, 400 for refused data, and
    500 (logged, -32603) only for a bug."""
    kind = classify_failure(exc)
    if kind and kind[0] == "unavailable":
        log.warning("%s: %s unavailable: %r", what, kind[1], exc)
        body = RpcError(protocol.UNAVAILABLE, f"service unavailable: {kind[1]} is not answering "
                        f"({type(exc).__name__}); retry in {RETRY_AFTER_S} s", rpc_id=rpc_id).body()
        body["error"]["data"] = {"dependency": kind[1], "retry_after_s": RETRY_AFTER_S}
        return "unavailable", web.json_response(body, status=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    if kind and kind[0] == "data":
        log.warning("%s: refused data: %s", what, kind[1])
        return "rejected", rpc_error(RpcError(protocol.INVALID_PARAMS, f"invalid params: a value was refused "
                                              f"({kind[1][:300]})", rpc_id=rpc_id))
    log.exception("internal error on %s", what)
    return "error", web.json_response(RpcError(protocol.INTERNAL_ERROR, "internal error", rpc_id=rpc_id).body(),
                                      status=500)


def rpc_error(exc: RpcError) -> web.Response:
    return web.json_response(exc.body(), status=exc.http_status)


async def handle_api(request: web.Request) -> web.Response:
    variant = request.app[VARIANT_KEY]
    method = "unknown"
    rpc_id = None
    started = time.perf_counter()
    try:
        if request.content_type != "application/json":
            raise RpcError(protocol.INVALID_REQUEST,
                           f"invalid request: Content-Type must be application/json, not {request.content_type!r}",
                           http_status=415)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RpcError(protocol.INVALID_REQUEST,
                           f"invalid request: body larger than {protocol.MAX_BODY_BYTES} bytes", http_status=413) from None
        req = protocol.parse_envelope(body)
        method, rpc_id = req.method, req.rpc_id
        result = await dispatch(variant, req)
    except RpcError as exc:
        metrics.REQUESTS.labels(variant.name, method, "rejected").inc()
        return rpc_error(exc)
    except Exception as exc:
        outcome, response = failure_response(exc, method, rpc_id)
        metrics.REQUESTS.labels(variant.name, method, outcome).inc()
        return response
    metrics.REQUESTS.labels(variant.name, method, "ok").inc()
    if method == "event/send":
        metrics.ACK_SECONDS.labels(variant.name).observe(time.perf_counter() - started)
    return web.json_response(protocol.result_body(req.rpc_id, result))


async def dispatch(variant: Variant, req: protocol.Request) -> dict:
    pool = variant.ctx.pool
    if req.method == "event/send":
        event = protocol.parse_event_send(req)

        accepted_at = time.time()

        async def handoff(conn, fresh: bool) -> None:
            await variant.handoff(conn, event, fresh, accepted_at)
        outbox = variant.outbox_payload(event, accepted_at)
        seq = None
        try:
            if type(variant).handoff is not Variant.handoff:  # its own transaction per event, with the handoff
                fresh = await db.record_event(pool, variant.name, event, handoff, outbox)
            else:  # group commit: with the task's events that arrive meanwhile, in one statement
                seq = await variant.ctx.recorder.record(variant.name, event, outbox)
                fresh = seq is not None
        except db.ResentAfterCancel:
            return {"status": "processing"}
        except db.TaskCancelled:
            raise RpcError(protocol.INVALID_PARAMS, f"invalid params: task {event.task_id!r} is cancelled",
                           http_status=409, rpc_id=req.rpc_id) from None
        except db.EventIdConflict:
            raise RpcError(protocol.INVALID_PARAMS, f"invalid params: event id {event.event_id!r} was already "
                           "sent for another task", http_status=409, rpc_id=req.rpc_id) from None
        variant.after_ack(event, fresh, accepted_at, seq)
        return {"status": "processing"}
    ref = protocol.parse_task(req)
    if req.method == "task/create":
        status = await db.create_task(pool, variant.name, ref)
        await variant.on_task_created(ref)
        return {"status": status}
    # task/cancel
    if not await db.cancel_task(pool, variant.name, ref):
        raise RpcError(protocol.INVALID_PARAMS, f"invalid params: unknown task {ref.task_id!r}",
                       http_status=404, rpc_id=req.rpc_id)
    await variant.on_task_cancelled(ref)
    return {"status": "cancelled"}


async def handle_state(request: web.Request) -> web.Response:
    """The task's state. Errors are JSON-RPC error objects too (400 bad id, 404 none, 503 down)."""
    variant = request.app[VARIANT_KEY]
    try:
        task_id = protocol.check_identifier(request.match_info["task_id"], "task id (path)")
        agent_id = protocol.check_identifier(request.query.get("agent_id", ""), "agent_id (query)")
        row = await db.read_state(variant.ctx.pool, variant.name, task_id, agent_id)
    except RpcError as exc:
        return rpc_error(exc)
    except Exception as exc:
        return failure_response(exc, "state")[1]
    if row is None:
        return rpc_error(RpcError(protocol.INVALID_PARAMS, f"no state for task {task_id!r} and agent {agent_id!r}",
                                  http_status=404))
    return web.json_response({"task_id": task_id, "agent_id": agent_id, "state": row["state"],
                              "updated_at": row["updated_at"].isoformat()})


async def handle_health(request: web.Request) -> web.Response:
    variant = request.app[VARIANT_KEY]
    try:
        await variant.ctx.pool.fetchval("SELECT 1")
        await variant.health()
    except Exception as exc:
        return web.json_response({"status": "unhealthy", "variant": variant.name, "error": repr(exc)}, status=503)
    return web.json_response({"status": "ok", "variant": variant.name, "pod": variant.ctx.pod_name})


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Whatever escapes a handler (an unknown path, a wrong method, a bug) is answered with a
    JSON-RPC error object, never aiohttp's text or HTML page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = RpcError(protocol.INVALID_REQUEST if exc.status < 500 else protocol.INTERNAL_ERROR,
                        f"{exc.status} {exc.reason}: {request.method} {request.path[:200]}").body()
        return web.json_response(body, status=exc.status, headers={
            k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")})
    except Exception as exc:
        return failure_response(exc, f"{request.method} {request.path[:200]}")[1]


def make_app(variant_name: str, settings: Settings, pod_name: str) -> web.Application:
    app = web.Application(client_max_size=protocol.MAX_BODY_BYTES, middlewares=[json_errors])

    async def lifecycle(app: web.Application):
        pool = await db.create_pool(settings.pg_dsn)
        ctx = PodContext(settings=settings, pool=pool, pod_name=pod_name, recorder=db.EventRecorder(pool),
                         state_reads=db.StateReads(pool), state_writes=db.StateWrites(pool),
                         model=Model(settings.model_latency_ms, settings.model_jitter_ms,
                                     effects=db.EffectWriter(pool)))
        variant = load_variant(variant_name, ctx)
        await variant.start()
        app[VARIANT_KEY] = variant
        metrics.init(variant_name)
        yield
        await variant.stop()
        await ctx.recorder.close()
        await ctx.state_reads.close()
        await ctx.state_writes.close()
        await ctx.model.effects.close()
        await pool.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/api", handle_api)
    app.router.add_get("/tasks/{task_id}/state", handle_state)
    app.router.add_get("/healthz", handle_health)
    app.router.add_get("/metrics", metrics.handle_metrics)
    return app
