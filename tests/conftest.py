"""One lab per test session.

--lab=native (default) starts a native lab of its own, on its own ports and state directory so
it never meets a lab a user started with `make up`, and stops it at the end. --lab=existing
uses the lab the current environment points at (RACELAB_* variables), e.g. one from `make up`.
Unit tests of pure logic do not ask for the lab and run without one.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import asyncpg
import pytest

from racelab import db
from racelab.config import DEFAULT_VARIANTS, Settings

# Ports of the test lab: apart from the defaults, so `make test` works beside `make up`, and below
# the kernel's ephemeral range (32768-60999). RACELAB_TEST_PORT_BASE moves the whole block (the lab
# uses base .. base+300), so two test sessions can run side by side.
TEST_PORT_BASE = int(os.environ.get("RACELAB_TEST_PORT_BASE") or 28000)
TEST_ENV = {
    "RACELAB_GATEWAY_PORT": str(TEST_PORT_BASE),
    "RACELAB_PG_PORT": str(TEST_PORT_BASE + 1),
    "RACELAB_REDIS_PORT": str(TEST_PORT_BASE + 2),
    "RACELAB_TEMPORAL_PORT": str(TEST_PORT_BASE + 3),
    "RACELAB_TEMPORAL_UI_PORT": str(TEST_PORT_BASE + 4),
    "RACELAB_TEMPORAL_METRICS_PORT": str(TEST_PORT_BASE + 5),
    "RACELAB_PROMETHEUS_PORT": str(TEST_PORT_BASE + 6),
    "RACELAB_TEMPORAL_HTTP_PORT": str(TEST_PORT_BASE + 7),
    "RACELAB_POD_BASE_PORT": str(TEST_PORT_BASE + 100),
    # every variant, for the race zoo's tests (tests/test_zoo.py); `make test VARIANTS=...` narrows it
    "RACELAB_VARIANTS": os.environ.get("RACELAB_VARIANTS") or "all",
}


def pytest_addoption(parser):
    parser.addoption("--lab", choices=("native", "existing"), default="native",
                     help="native: start a lab for this session; existing: use the running lab of the environment")


class Lab:
    def __init__(self, settings: Settings, owned: bool):
        self.settings = settings
        self.owned = owned
        self.stopped = False

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=check)

    def down(self) -> subprocess.CompletedProcess:
        self.stopped = True
        return self.run("-m", "racelab.lab", "down")


def uses_lab(item) -> bool:
    return "lab" in getattr(item, "fixturenames", ())  # directly or through another fixture


def pytest_collection_modifyitems(config, items):
    # The tests that need no lab first: they run while the session's lab starts in the background
    # (start_lab), which took about 13 s of make test on 2 cores. The sort is stable: the lab's
    # tests keep their order among themselves (test_zz_lab_down last).
    items[:] = sorted(items, key=uses_lab)


_starting: dict = {}  # the session lab's `up`, started when collection ends; the lab fixture takes it


def start_lab() -> None:
    state_dir = tempfile.mkdtemp(prefix="racelab-test-", dir="/var/tmp")
    os.chmod(state_dir, 0o755)  # PostgreSQL runs as the postgres user and must reach its data dir
    os.environ.update(TEST_ENV, RACELAB_STATE_DIR=state_dir)
    up = subprocess.Popen([sys.executable, "-m", "racelab.lab", "up"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    _starting.update(state_dir=state_dir, up=up)


def pytest_collection_finish(session):
    config = session.config
    if (config.getoption("--lab") == "native" and not config.option.collectonly and not session.testsfailed
            and not config.option.setupplan and any(map(uses_lab, session.items))):  # (testsfailed: collection errors)
        start_lab()


def pytest_sessionfinish(session):
    """A lab started for the session whose fixture never ran (interrupted, or every lab test
    deselected): stopped all the same."""
    if _starting and not _starting.get("taken"):
        _starting["up"].communicate()
        Lab(Settings.from_env(), owned=True).down()
        shutil.rmtree(_starting["state_dir"], ignore_errors=True)


@pytest.fixture(scope="session")
def lab(request):
    if request.config.getoption("--lab") == "existing":
        yield Lab(Settings.from_env(), owned=False)
        return
    if not _starting:
        start_lab()
    stdout, stderr = _starting["up"].communicate()  # interrupted here: pytest_sessionfinish stops it
    _starting["taken"] = True
    lab = Lab(Settings.from_env(), owned=True)
    if _starting["up"].returncode != 0:
        lab.down()
        pytest.exit(f"the test lab did not come up:\n{stdout}\n{stderr}", returncode=1)
    try:
        yield lab
    finally:
        if not lab.stopped:
            lab.down()
        shutil.rmtree(_starting["state_dir"], ignore_errors=True)


@pytest.fixture(scope="session")
def load_run(lab, tmp_path_factory):
    """One short Locust load (make load) on the session's lab, shared by the observability and
    ledger tests; at least once, with redelivery (--dup-rate), so its duplicates show."""
    results = tmp_path_factory.mktemp("results")
    env = dict(os.environ, RACELAB_RESULTS_DIR=str(results))
    done = subprocess.run([sys.executable, "-m", "racelab.clients.load", "--users", "9", "--rate", "9",
                           "--duration", "12s", "--dup-rate", "0.1",
                           # the design card's three: the zoo's series exist at 0 all the same
                           *(a for v in DEFAULT_VARIANTS for a in ("--variant", v))], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = (results / "latest").resolve()
    return {"dir": run_dir, "stdout": done.stdout, "checker": json.loads((run_dir / "checker.json").read_text()),
            "run": json.loads((run_dir / "run.json").read_text())}


@pytest.fixture
def scratch_db(lab):
    """A database of its own in the lab's PostgreSQL, with the lab's schema (the lab's exporter
    never sees its rows); dropped afterwards."""
    name = f"racelab_scratch_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = lab.settings.pg_admin_dsn
    dsn = admin.rsplit("/", 1)[0] + "/" + name
    asyncio.run(db.ensure_database(admin, dsn))
    yield dsn

    async def drop():
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
    asyncio.run(drop())
