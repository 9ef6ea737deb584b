"""`make up AGENT=<folder>` on a folder that cannot be an agent, and an agent that cannot start:
refused at once with what is wrong, instead of a 180-s wait for agents that never answer.
Pure: no lab (the crash-loop check with supervisor's start times and the health probe faked)."""
import asyncio

import pytest

from racelab.agentex.env import AgentEnvError, ensure
from racelab.config import Settings
from racelab.lab import native
from racelab.lab.topology import Instance


def test_a_folder_that_is_not_there(tmp_path):
    with pytest.raises(AgentEnvError, match="no such folder"):
        ensure(tmp_path / "nope")


def test_a_project_folder_without_the_apps_module(tmp_path):
    """project/ without acp.py passed, and the lab then waited 180 s"""
    (tmp_path / "project").mkdir()
    with pytest.raises(AgentEnvError, match=r"no project/acp\.py"):
        ensure(tmp_path)
    # the module its Dockerfile's uvicorn names, not Agentex's default
    (tmp_path / "Dockerfile").write_text('CMD ["uvicorn", "project.main:app", "--port", "8000"]\n')
    (tmp_path / "project" / "acp.py").write_text("")
    with pytest.raises(AgentEnvError, match=r"no project/main\.py"):
        ensure(tmp_path)


def test_a_program_that_keeps_exiting_at_start_is_an_error_at_its_third_start(tmp_path, monkeypatch):
    starts = iter([{"agent-1": 100, "pod-locked-1": 0}, {"agent-1": 100}, {"agent-1": 107},
                   {"agent-1": 107}, {"agent-1": 118}, {"agent-1": 130}])
    monkeypatch.setattr(native, "process_starts", lambda settings: next(starts))

    async def never_healthy(inst, settings, session):
        return False
    monkeypatch.setattr(native, "healthy", never_healthy)
    insts = [Instance(name="agent-1", service=None, argv=(), port=28300)]
    with pytest.raises(native.LabError) as refused:
        asyncio.run(native.wait_healthy(insts, Settings(state_dir=tmp_path), timeout_s=60, crash_loop=True))
    assert "agent-1 keeps exiting at start (3 starts" in refused.value.args[0]
    assert refused.value.args[1] == ["agent-1"]  # `up` shows its log
