"""The user's agent gets a virtualenv of its own, never racelab's: a Python >= 3.12 (agentex-sdk
needs it), the agent's declared dependencies (pyproject.toml [project].dependencies, or
requirements.txt) and uvicorn. Built only for `make up AGENT=...` (and the agent tests), kept in
a cache keyed by the interpreter and the dependency list, so four agents with the same
dependencies share one, and a second `make up` installs nothing.

`python -m racelab.agentex.env <agent dir>`: build (or find) it and print its path.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

MIN_PYTHON = (3, 12)
STAMP = ".racelab-agent-env"


class AgentEnvError(Exception):
    pass


def _version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys, venv, ensurepip; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = map(int, out.stdout.split())
    return major, minor


def candidates() -> list[str]:
    """Interpreters to try, in order: RACELAB_AGENT_PYTHON, python3.1x on PATH, pyenv's, the usual
    system places, `uv python find` when uv is installed."""
    out = []
    if os.environ.get("RACELAB_AGENT_PYTHON"):
        out.append(os.environ["RACELAB_AGENT_PYTHON"])
    for minor in range(MIN_PYTHON[1], 21):  # the oldest that qualifies first
        found = shutil.which(f"python3.{minor}")
        if found:
            out.append(found)
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    for pattern in (f"{pyenv_root}/versions/3.1[2-9]*/bin/python3", "/usr/bin/python3.1[2-9]",
                    "/usr/local/bin/python3.1[2-9]", os.path.expanduser("~/.local/share/uv/python/cpython-3.1[2-9]*/bin/python3")):
        # the oldest that qualifies first: what agentex-sdk's own images use (python:3.12-slim)
        out += sorted(glob.glob(pattern), key=lambda p: [int(n) for n in re.findall(r"3\.(\d+)", p)[:1] or [99]])
    uv = shutil.which("uv")
    if uv:
        found = subprocess.run([uv, "python", "find", f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}"], capture_output=True,
                               text=True)
        if found.returncode == 0 and found.stdout.strip():
            out.append(found.stdout.strip())
    return list(dict.fromkeys(out))


def find_python() -> tuple[str, tuple[int, int]]:
    for python in candidates():
        version = _version(python)
        if version and version >= MIN_PYTHON:
            return python, version
    raise AgentEnvError(
        "no Python >= 3.12 found for the agent (agentex-sdk needs 3.12; racelab itself runs on 3.11). "
        "Debian 12 ships none: install one (Ubuntu 24.04: apt-get install python3.12-venv; anywhere with "
        "the internet: `pip install uv && uv python install 3.12`; or pyenv), or point RACELAB_AGENT_PYTHON "
        "at one.")


def dependencies(agent_dir: Path) -> list[str]:
    """The agent's own dependencies, as its Dockerfile would install them."""
    deps: list[str] = []
    pyproject = agent_dir / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        deps += list(project.get("dependencies", []))
    requirements = agent_dir / "requirements.txt"
    if requirements.is_file():
        deps += [line.strip() for line in requirements.read_text().splitlines()
                 if line.strip() and not line.strip().startswith(("#", "-"))]
    if not deps:
        raise AgentEnvError(f"{agent_dir}: no dependencies found (pyproject.toml [project].dependencies or "
                            "requirements.txt); an agentex-sdk agent needs at least agentex-sdk")
    return sorted(set(deps)) + ["uvicorn"]


def cache_root() -> Path:
    return Path(os.environ.get("RACELAB_AGENT_ENVS") or os.path.expanduser("~/.cache/racelab/agent-envs"))


def env_dir(agent_dir: Path, version: tuple[int, int], python: str) -> Path:
    key = hashlib.sha256(repr((version, os.path.realpath(python), dependencies(agent_dir))).encode()).hexdigest()[:16]
    return cache_root() / f"py{version[0]}{version[1]}-{key}"


def ensure(agent_dir: str | Path, say=print) -> Path:
    """The agent's virtualenv, built if missing. Returns its directory."""
    agent_dir = Path(agent_dir).resolve()
    if not agent_dir.is_dir():
        raise AgentEnvError(f"{agent_dir}: no such folder (AGENT= names your agent's project folder)")
    if not os.environ.get("RACELAB_AGENT_APP"):
        from .lab import app_spec
        module = app_spec(agent_dir).split(":")[0].replace(".", "/")
        # the app's module must be there: a project/ folder without acp.py passed, and the lab
        # then waited 180 s for agents that could not start
        if not ((agent_dir / f"{module}.py").is_file() or (agent_dir / module / "__init__.py").is_file()):
            raise AgentEnvError(f"{agent_dir}: not an Agentex agent project (no {module}.py: the ASGI app "
                                f"{app_spec(agent_dir)!r}, as its Dockerfile's uvicorn command or Agentex's default)")
    python, version = find_python()
    venv = env_dir(agent_dir, version, python)
    if (venv / STAMP).is_file():
        return venv
    deps = dependencies(agent_dir)
    say(f"agent: building its own virtualenv {venv} (Python {version[0]}.{version[1]}: {python}) "
        f"with {', '.join(deps)}; this takes a minute or two, once")
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *deps],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise AgentEnvError(f"installing the agent's dependencies failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    (venv / STAMP).write_text("\n".join(deps) + "\n")
    return venv


def find(agent_dir: str | Path) -> Path:
    """The built virtualenv (the launcher's view: no building there)."""
    agent_dir = Path(agent_dir).resolve()
    python, version = find_python()
    venv = env_dir(agent_dir, version, python)
    if not (venv / STAMP).is_file():
        raise AgentEnvError(f"the agent's virtualenv {venv} is not built; `make up AGENT={agent_dir}` builds it")
    return venv


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m racelab.agentex.env <agent dir>")
    try:
        print(ensure(sys.argv[1], say=lambda m: print(m, file=sys.stderr, flush=True)))
    except AgentEnvError as exc:
        raise SystemExit(f"racelab: {exc}")


if __name__ == "__main__":
    main()
