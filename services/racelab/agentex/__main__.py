"""`python -m racelab.agentex --port N`: one replica of the Agentex-compatible API (variant
"agent"'s pod): the REST API the agent calls, and the ACP front nginx serves at /agent/."""
from __future__ import annotations

import argparse
import logging

from aiohttp import web

from ..config import Settings
from .api import build_app
from .lab import agent_name, forward_url


def main() -> None:
    parser = argparse.ArgumentParser(description="racelab's Agentex-compatible API")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="agentex")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    settings = Settings.from_env()
    app = build_app(settings, forward_url(settings), agent_name(settings))
    web.run_app(app, host=settings.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
