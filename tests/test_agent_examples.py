"""Variant "agent" end to end: each example agent of examples/agents/ runs unmodified under
AGENT= on a native lab of its own (3 replicas behind nginx, the Agentex-compatible API, the model
stub), beside its built-in twin, and a burst gives the verdict the twin gives.

Slow (the agent's virtualenv: agentex-sdk on Python >= 3.12, built once into a cache; a lab per
example), so it runs in `make test-agent` (RACELAB_AGENT_TESTS=1), not in `make test`. Ports:
RACELAB_TEST_PORT_BASE (default 28000) .. +300, as the session lab's; run it alone.
RACELAB_AGENTEX_TUTORIAL=<dir>: also run that agent (e.g. Agentex's tutorial 030_tracing, copied
unmodified) with only a racelab.toml added.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from racelab.agentex.env import AgentEnvError, ensure
from racelab.clients.burst import burst_and_check
from racelab.config import Settings

pytestmark = pytest.mark.skipif(not os.environ.get("RACELAB_AGENT_TESTS"),
                                reason="slow: builds the agent's Python 3.12 virtualenv; run with make test-agent")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "agents"
BASE = int(os.environ.get("RACELAB_TEST_PORT_BASE") or 28000)
LAB_ENV = {"RACELAB_GATEWAY_PORT": BASE, "RACELAB_PG_PORT": BASE + 1, "RACELAB_REDIS_PORT": BASE + 2,
           "RACELAB_TEMPORAL_PORT": BASE + 3, "RACELAB_TEMPORAL_UI_PORT": BASE + 4,
           "RACELAB_TEMPORAL_METRICS_PORT": BASE + 5, "RACELAB_PROMETHEUS_PORT": BASE + 6,
           "RACELAB_TEMPORAL_HTTP_PORT": BASE + 7, "RACELAB_POD_BASE_PORT": BASE + 100}


@pytest.fixture(scope="module")
def agent_venv() -> Path:
    try:
        return ensure(EXAMPLES / "race-prone", say=lambda m: print(m, flush=True))
    except AgentEnvError as exc:
        pytest.fail(f"no environment for the agent: {exc}")


@contextlib.contextmanager
def agent_lab(agent_dir: Path, twin: str):
    """A native lab running the agent (variant agent) and its twin; os.environ points at it while
    it runs (the checker and the clients find the lab by the environment)."""
    state_dir = tempfile.mkdtemp(prefix="racelab-agent-test-", dir="/var/tmp")
    os.chmod(state_dir, 0o755)
    saved = dict(os.environ)
    os.environ.update({k: str(v) for k, v in LAB_ENV.items()}, RACELAB_STATE_DIR=state_dir,
                      RACELAB_AGENT=str(agent_dir), RACELAB_VARIANTS=twin,
                      RACELAB_RESULTS_DIR=os.path.join(state_dir, "results"))
    try:
        up = subprocess.run([sys.executable, "-m", "racelab.lab", "up"], capture_output=True, text=True)
        if up.returncode != 0:
            logs = Path(state_dir, "logs")
            tails = "".join(f"\n--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                            for p in sorted(logs.glob("agent-*.log")) + sorted(logs.glob("pod-agent-*.log")))
            pytest.fail(f"the lab did not come up:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}{tails}")
        yield Settings.from_env()
    finally:
        subprocess.run([sys.executable, "-m", "racelab.lab", "down"], capture_output=True, text=True)
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(state_dir, ignore_errors=True)


def warm_up(settings: Settings, timeout_s: float = 90.0) -> None:
    """One event to a task of its own, until the agent applied it: the first call of each replica
    imports what the agent imports lazily (litellm: seconds), which would otherwise look like a
    quiescent lab to the checker's settle time."""
    import json
    import time
    import urllib.request
    import uuid
    for _ in range(settings.replicas * 2):  # round-robin: reach every replica
        task = f"warmup-{uuid.uuid4().hex[:8]}"
        body = {"jsonrpc": "2.0", "id": f"event/send-{task}", "method": "event/send",
                "params": {"agent": {"id": "warmup"}, "task": {"id": task}, "event": {
                    "id": str(uuid.uuid4()), "content": {"type": "text", "author": "user", "content": f"hi {task}"}}}}
        req = urllib.request.Request(f"{settings.gateway_url}/agent/api", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=60).read()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{settings.gateway_url}/agent/tasks/{task}/state?agent_id=warmup",
                                            timeout=5) as resp:
                    if json.loads(resp.read())["state"]["processing_count"] >= 1:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"the agent did not apply a warm-up event within {timeout_s:.0f} s")


def burst(settings: Settings, twin: str, tasks: int = 20, events: int = 30) -> dict:
    warm_up(settings)
    out = asyncio.run(burst_and_check(settings, tasks, events, (twin, "agent")))
    assert out["quiescent"], out
    assert not out["errors"], out["errors"][:3]
    assert not out["disagreements"], out["disagreements"]  # the client's own view agrees with the checker
    results = out["results"]
    for v in (twin, "agent"):
        assert results[v].accepted == tasks * events and results[v].broken_acks == 0
        c = results[v]
        print(f"{v}: accepted {c.accepted} applied {c.applied} lost {c.lost} dup-apply "
              f"{c.duplicate_applications} dup-effects {c.duplicate_side_effects} drift {c.counter_drift} "
              f"unworked {c.unworked}", flush=True)
    return results


def test_race_prone_loses_like_unguarded_and_sdk_roundtrip(agent_venv):
    with agent_lab(EXAMPLES / "race-prone", "unguarded") as settings:
        done = subprocess.run([str(agent_venv / "bin" / "python"), str(ROOT / "tests" / "agentex_roundtrip.py"),
                               f"{settings.gateway_url}/agentex", settings.gateway_url],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "roundtrip ok" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
        results = burst(settings, "unguarded")
    agent, twin = results["agent"], results["unguarded"]
    assert twin.lost > 0 and agent.lost > 0
    assert agent.counter_drift == -agent.lost and agent.duplicate_applications == 0 and agent.phantoms == 0
    assert agent.unworked == 0 and agent.duplicate_side_effects == 0  # every event had its own model call


def test_lock_example_loses_nothing_like_lock_only(agent_venv):
    with agent_lab(EXAMPLES / "lock", "lock-only") as settings:
        results = burst(settings, "lock-only")
    for v in ("agent", "lock-only"):
        c = results[v]
        assert (c.lost, c.duplicate_applications, c.counter_drift, c.phantoms) == (0, 0, 0, 0), c


def test_cursor_batch_example_loses_or_duplicates_like_cursor_only(agent_venv):
    with agent_lab(EXAMPLES / "cursor-batch", "cursor-only") as settings:
        results = burst(settings, "cursor-only", tasks=10, events=20)  # 10 model calls per handler: heavy
    for v in ("agent", "cursor-only"):
        c = results[v]
        assert c.lost + c.duplicate_applications + c.duplicate_side_effects > 0 and c.counter_drift != 0, c


def test_turn_counter_loses_turns(agent_venv):
    with agent_lab(EXAMPLES / "turn-counter", "unguarded") as settings:
        results = burst(settings, "unguarded", tasks=10, events=20)
    agent = results["agent"]
    assert agent.lost > 0 and agent.counter_drift < 0 and agent.phantoms == 0, agent


@pytest.mark.skipif(not os.environ.get("RACELAB_AGENTEX_TUTORIAL"), reason="RACELAB_AGENTEX_TUTORIAL not set")
def test_unmodified_tutorial_agent_with_only_an_invariant(tmp_path):
    """An agent copied unmodified from Agentex's tutorials (a turn counter in adk.state), with only
    racelab.toml added: its lost turns are counted."""
    agent = tmp_path / "tutorial"
    shutil.copytree(os.environ["RACELAB_AGENTEX_TUTORIAL"], agent)
    (agent / "racelab.toml").write_text((EXAMPLES / "turn-counter" / "racelab.toml").read_text())
    ensure(agent, say=lambda m: print(m, flush=True))
    with agent_lab(agent, "unguarded") as settings:
        results = burst(settings, "unguarded", tasks=5, events=10)
    assert results["agent"].lost > 0 and results["agent"].counter_drift < 0


def content_cases() -> list[dict]:
    """Each kind of content, each field set to a value of another type or removed, and the
    shapes without a type."""
    base = [{"type": "text", "author": "user", "content": "hi"},
            {"type": "data", "author": "agent", "data": {"k": 1}},
            {"type": "tool_request", "author": "agent", "tool_call_id": "c", "name": "f", "arguments": {}},
            {"type": "tool_response", "author": "agent", "tool_call_id": "c", "name": "f", "content": None},
            {"type": "reasoning", "author": "agent", "summary": ["s"]}]
    values = [("type", None), ("type", "bogus"), ("type", ["x"]), ("author", "robot"), ("author", None),
              ("content", 5), ("content", None), ("content", ["a"]), ("content", [1]), ("data", [1]),
              ("format", 5), ("format", "markdown"), ("format", None), ("style", "bogus"), ("style", "active"),
              ("style", None), ("attachments", "no"), ("attachments", None),
              ("attachments", [{"file_id": "f", "name": "n", "size": 3, "type": "t"}]),
              ("attachments", [{"file_id": "f", "name": "n", "size": "x", "type": "t"}]), ("is_error", "x"),
              ("is_error", "true"), ("summary", [1]), ("summary", "s"), ("arguments", []), ("name", 5),
              ("tool_call_id", None), ("extra", 1)]
    cases = [{}, {"foo": 1}, {"author": "user", "content": "hi"}, {"author": "user", "summary": ["a"]}]
    for b in base:
        cases += [b] + [{**b, k: v} for k, v in values] + [{k: v for k, v in b.items() if k != drop} for drop in b]
    return cases


def test_the_content_the_api_refuses_is_what_the_sdk_refuses(agent_venv, tmp_path):
    """The Agentex API model refuses an event.content before recording it when the agent's SDK
    would refuse it (racelab.agentex.api.check_content): the same verdict as the SDK's own
    TaskMessageContent on every case."""
    import json
    from racelab.agentex.api import check_content
    from racelab.protocol import RpcError
    cases = content_cases()
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run([str(agent_venv / "bin" / "python"), "-c", (
        "import json, sys\n"
        "from pydantic import TypeAdapter\n"
        "from agentex.types.task_message_content import TaskMessageContent\n"
        "ta = TypeAdapter(TaskMessageContent)\n"
        "def ok(c):\n"
        "    try:\n"
        "        ta.validate_python(c)\n"
        "        return True\n"
        "    except Exception:\n"
        "        return False\n"
        "print(json.dumps([ok(c) for c in json.load(open(sys.argv[1]))]))\n"), str(tmp_path / "cases.json")],
        capture_output=True, text=True, check=True)
    sdk = json.loads(done.stdout)

    def lab(content):
        try:
            check_content(content, None)
            return True
        except RpcError:
            return False
    assert [c for c, ok in zip(cases, sdk) if lab(c) != ok] == []
    assert 0 < sum(sdk) < len(cases)
