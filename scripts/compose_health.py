#!/usr/bin/env python3
"""Fails when a service of the compose lab is not well: used by CI (.github/workflows/compose.yml).

Runs `docker compose config` and `docker compose ps --all` itself and reports every container
that is unhealthy, still starting, restarting or exited, except the one-shot jobs (no restart, no
health check), which must have exited 0. Services outside the default profile (Locust) are not
checked. With AGENT=<path> in the environment (as given to `make up`), compose/agent.yml's too. Standard library only: a CI runner has python3 but not the lab's virtualenv.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

AGENT_FILE = "docker-compose.yml:compose/agent.yml"  # what the Makefile's AGENT= adds (COMPOSE_FILE)


def one_shot_jobs(config: dict) -> set[str]:
    return {name for name, svc in config["services"].items()
            if svc.get("restart") == "no" and "healthcheck" not in svc}


def parse_ps(text: str) -> list[dict]:
    """`ps --format json` prints one JSON object per line since Compose 2.21, an array before."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def problems(config: dict, containers: list[dict]) -> list[str]:
    jobs = one_shot_jobs(config)
    out, seen = [], set()
    for c in containers:
        service = c.get("Service", "")
        if service not in config["services"]:
            continue  # another profile (Locust)
        seen.add(service)
        state, health, code = c.get("State", ""), c.get("Health", ""), c.get("ExitCode", 0)
        if service in jobs:
            if state != "exited" or code != 0:
                out.append(f"{c.get('Name', service)}: one-shot job {state}, exit code {code}")
        elif state != "running" or health != "healthy":
            out.append(f"{c.get('Name', service)}: {state or '?'} {health or 'no health'}")
    out += [f"{name}: no container" for name in sorted(set(config["services"]) - seen)]
    return out


def compose_env(environ: dict) -> dict:
    """With AGENT=<path> (as `make up AGENT=` got it), the lab's agent services too."""
    agent = environ.get("AGENT")
    if not agent:
        return dict(environ)
    return {**environ, "COMPOSE_FILE": AGENT_FILE, "RACELAB_AGENT": os.path.abspath(agent)}


def compose(*args: str) -> str:
    return subprocess.run(["docker", "compose", *args], check=True, capture_output=True, text=True,
                          env=compose_env(dict(os.environ))).stdout


def main() -> int:
    config = json.loads(compose("config", "--format", "json"))
    bad = problems(config, parse_ps(compose("ps", "--all", "--format", "json")))
    for line in bad:
        print(f"UNHEALTHY {line}")
    if not bad:
        print(f"compose: all {len(config['services'])} services healthy (one-shot jobs exited 0)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
