"""`python -m racelab.modelstub --port N`: the OpenAI-compatible model stub."""
from __future__ import annotations

import argparse

from aiohttp import web

from ..config import Settings
from .app import build_app


def main() -> None:
    parser = argparse.ArgumentParser(description="racelab's OpenAI-compatible model stub")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = Settings.from_env()
    web.run_app(build_app(settings), host=settings.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
