"""`python -m racelab.pod --variant locked --port 18011`: one pod process."""
from __future__ import annotations

import argparse
import logging

from aiohttp import web

from ..config import ALL_VARIANTS, Settings
from .app import make_app


def main() -> None:
    parser = argparse.ArgumentParser(description="racelab ACP pod")
    parser.add_argument("--variant", choices=ALL_VARIANTS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="", help="pod name shown by /healthz")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    app = make_app(args.variant, settings, args.name or f"{args.variant}-{args.port}")
    web.run_app(app, host=settings.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
