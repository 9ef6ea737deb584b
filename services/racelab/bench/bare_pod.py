"""The baseline of the ingest benchmark: a bare aiohttp pod doing one INSERT per request (make
bench runs as many as a variant has pods, behind the gateway's /bare/).

No validation beyond json.loads, no variant, no task row: the least a pod that records an event
can do. `python -m racelab.bench.bare_pod --port N`
"""
from __future__ import annotations

import argparse
import json

import asyncpg
from aiohttp import web

from .. import db
from ..config import Settings


def make_app(dsn: str) -> web.Application:
    app = web.Application()

    async def lifecycle(app):
        # the same pool as the variants' pods (no reset round trip on release), no jsonb codec
        app["pool"] = await asyncpg.create_pool(dsn, min_size=2, max_size=10, reset=db.keep_session)
        async with app["pool"].acquire() as conn, conn.transaction():
            # the pods start together: concurrent CREATE TABLE IF NOT EXISTS can still collide in
            # PostgreSQL's catalog (unique violation on pg_type), so one pod at a time
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('racelab.bench_bare'))")
            await conn.execute("CREATE TABLE IF NOT EXISTS bench_bare (id bigserial PRIMARY KEY, body text)")
        yield
        await app["pool"].close()

    async def api(request: web.Request) -> web.Response:
        body = await request.read()
        doc = json.loads(body)
        await request.app["pool"].execute("INSERT INTO bench_bare (body) VALUES ($1)", body.decode())
        return web.json_response({"jsonrpc": "2.0", "id": doc.get("id"), "result": {"status": "processing"}})

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/api", api)  # behind the gateway: /bare/api with the prefix stripped
    app.router.add_post("/bare/api", api)  # hit directly
    app.router.add_get("/healthz", lambda _: web.json_response({"status": "ok"}))
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = Settings.from_env()
    web.run_app(make_app(settings.pg_dsn), host=settings.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
