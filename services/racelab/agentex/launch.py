"""`python -m racelab.agentex.launch --port N --name agent-K`: one replica of the user's agent.

Sets the agent's environment (racelab.agentex.lab.agent_env), waits until its Agentex API
answers (the SDK registers the agent at start-up and gives up after three tries), then execs the
agent's own interpreter, in the agent's folder, as its Dockerfile would start it:
`python -m uvicorn project.acp:acp --host 127.0.0.1 --port N`. exec keeps the pid, so supervisor
stops and restarts the agent itself.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from pathlib import Path

from ..config import Settings
from .env import AgentEnvError, find
from .lab import agent_env, api_url, app_spec, uvicorn_args


def wait_for(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"racelab: the Agentex API at {url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description="one replica of the user's agent")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="agent-1")
    args = parser.parse_args()
    settings = Settings.from_env()
    replica = int(args.name.rsplit("-", 1)[1]) if args.name.rsplit("-", 1)[-1].isdigit() else 1
    agent_dir = Path(settings.agent_path)
    try:
        venv = find(agent_dir)
    except AgentEnvError as exc:
        raise SystemExit(f"racelab: {exc}")
    env = dict(os.environ, **agent_env(settings, replica, args.port))
    wait_for(api_url(settings, replica) + "/acp/healthz")
    os.chdir(agent_dir)
    python = str(venv / "bin" / "python")
    argv = [python, *uvicorn_args(app_spec(agent_dir), settings.host, args.port, str(agent_dir))]
    print(f"racelab: starting {args.name}: {' '.join(argv)}", flush=True)
    sys.stdout.flush()
    os.execve(python, argv, env)


if __name__ == "__main__":
    main()
