"""An ACP pod: the aiohttp server Agentex would call, for one variant.

POST /api (JSON-RPC 2.0), GET /tasks/{task_id}/state?agent_id=..., GET /healthz, GET /metrics.
An event/send is acked with {"status": "processing"} once it is durably in the event log; the
variant processes it after the reply. Bad input gets a JSON-RPC error and records nothing.
"""
from __future__ import annotations

import logging
import time

from aiohttp import web

from .. import db, metrics, protocol
from ..config import Settings
from ..model import Model
from ..protocol import RpcError
from ..variants import PodContext, Variant, load_variant

log = logging.getLogger("racelab.pod")

VARIANT_KEY = web.AppKey("variant", Variant)


def rpc_error(exc: RpcError) -> web.Response:
    return web.json_response(exc.body(), status=exc.http_status)


async def handle_api(request: web.Request) -> web.Response:
    variant = request.app[VARIANT_KEY]
    method = "unknown"
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
        method = req.method
        result = await dispatch(variant, req)
    except RpcError as exc:
        metrics.REQUESTS.labels(variant.name, method, "rejected").inc()
        return rpc_error(exc)
    except Exception:
        log.exception("internal error on %s", method)
        metrics.REQUESTS.labels(variant.name, method, "error").inc()
        return web.json_response(RpcError(protocol.INTERNAL_ERROR, "internal error").body(), status=500)
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
        try:
            fresh = await db.record_event(pool, variant.name, event, handoff)
        except db.TaskCancelled:
            raise RpcError(protocol.INVALID_PARAMS, f"invalid params: task {event.task_id!r} is cancelled",
                           http_status=409, rpc_id=req.rpc_id) from None
        except db.EventIdConflict:
            raise RpcError(protocol.INVALID_PARAMS, f"invalid params: event id {event.event_id!r} was already "
                           "sent for another task", http_status=409, rpc_id=req.rpc_id) from None
        variant.after_ack(event, fresh, accepted_at)
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
    variant = request.app[VARIANT_KEY]
    task_id = request.match_info["task_id"]
    agent_id = request.query.get("agent_id")
    if not agent_id:
        return web.json_response({"error": "query parameter agent_id is required"}, status=400)
    row = await db.read_state(variant.ctx.pool, variant.name, task_id, agent_id)
    if row is None:
        return web.json_response({"error": f"no state for task {task_id!r} and agent {agent_id!r}"}, status=404)
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


def make_app(variant_name: str, settings: Settings, pod_name: str) -> web.Application:
    app = web.Application(client_max_size=protocol.MAX_BODY_BYTES)

    async def lifecycle(app: web.Application):
        pool = await db.create_pool(settings.pg_dsn)
        ctx = PodContext(settings=settings, pool=pool, pod_name=pod_name,
                         model=Model(settings.model_latency_ms, settings.model_jitter_ms))
        variant = load_variant(variant_name, ctx)
        await variant.start()
        app[VARIANT_KEY] = variant
        metrics.init(variant_name)
        yield
        await variant.stop()
        await pool.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/api", handle_api)
    app.router.add_get("/tasks/{task_id}/state", handle_state)
    app.router.add_get("/healthz", handle_health)
    app.router.add_get("/metrics", metrics.handle_metrics)
    return app
