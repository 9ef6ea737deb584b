"""Every port a lab opens lies outside the kernel's ephemeral range (32768-60999 on Linux), where
an outgoing connection may hold it at any moment, and no two components share one: for the
default lab, the test lab and the benchmark's second lab, with every variant running."""
import pytest

from racelab.bench.__main__ import SECOND_LAB_PORTS
from racelab.config import Settings
from racelab.lab.topology import services

import conftest

EPHEMERAL = range(32768, 61000)


def ports_of(settings: Settings) -> list[int]:
    return [port for svc in services(settings, None) for port in
            [i.port for i in svc.instances()] + list(svc.extra_ports)]


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
