"""Every port a lab opens lies outside the kernel's ephemeral range (32768-60999 on Linux), where
an outgoing connection may hold it at any moment, and no two components share one: for the
default lab, the test lab and the benchmark's second lab, with every variant running."""
import re

import pytest

from racelab.bench.__main__ import SECOND_LAB_PORTS
from racelab.config import Settings
from racelab.lab.native import lab_ports
from racelab.lab.topology import services

import conftest

EPHEMERAL = range(32768, 61000)


def ports_of(settings: Settings) -> list[int]:
    return [port for _, port in lab_ports(services(settings, None))]


@pytest.mark.parametrize("env", [{}, conftest.TEST_ENV, SECOND_LAB_PORTS], ids=["default", "test lab", "bench lab"])
def test_ports_are_outside_the_ephemeral_range_and_distinct(monkeypatch, env):
    for name in [k for k in __import__("os").environ if k.startswith("RACELAB_") and k.endswith("_PORT")]:
        monkeypatch.delenv(name)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RACELAB_VARIANTS", "all")
    settings = Settings.from_env()
    ports = ports_of(settings)
    assert len(ports) >= 3 * 11
    assert [p for p in ports if p in EPHEMERAL] == []
    assert len(ports) == len(set(ports)), sorted(p for p in ports if ports.count(p) > 1)


@pytest.mark.parametrize("name, value, says", [
    ("RACELAB_REPLICAS", "11", "from 1 to 9"),  # a variant has 10 ports: pod 11 took the next variant's
    ("RACELAB_REPLICAS", "0", "from 1 to 9"),
    ("RACELAB_GATEWAY_PORT", "70000", "from 1 to 65535"),
    ("RACELAB_LOCK_TTL_S", "0", "above 0"),
    ("RACELAB_SWEEP_INTERVAL_S", "nan", "finite"),
    ("RACELAB_STATE_DIR", "/etc/hostname", "not a directory"),
    ("RACELAB_STATE_DIR", "/tmp/racelab state", "without spaces"),
])
def test_settings_out_of_range_are_refused_with_a_reason(monkeypatch, name, value, says):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as refused:
        Settings.from_env()
    assert name in str(refused.value) and says in str(refused.value)


@pytest.mark.parametrize("env, says", [
    ({"RACELAB_PG_PORT": "16379", "RACELAB_REDIS_PORT": "16379"}, "two components on one port: 16379 (postgres, redis)"),
    ({"RACELAB_GATEWAY_PORT": "40000"}, "ephemeral range"),
])
def test_up_refuses_shared_and_ephemeral_ports_before_it_starts_anything(monkeypatch, tmp_path, env, says):
    from racelab.lab.native import LabError, check_ports
    monkeypatch.setenv("RACELAB_STATE_DIR", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    with pytest.raises(LabError, match=re.escape(says)):
        check_ports(settings, services(settings, None))
