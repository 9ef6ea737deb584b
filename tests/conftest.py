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
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from concurrent.futures import Future

import asyncpg
import pytest

from helpers import SHARED_BURSTS
from racelab import db
from racelab.clients.burst import burst_and_check, register_run
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


def pytest_configure(config):
    config.addinivalue_line("markers", "shared_burst(name): the module's tests share helpers.SHARED_BURSTS[name], "
                                       "started in the background once the session's lab is up")


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


def uses_load(item) -> bool:
    return "load_run" in getattr(item, "fixturenames", ())


def early_burst_of(item) -> str | None:
    marker = item.get_closest_marker("shared_burst")
    wants = marker and "shared_burst" in getattr(item, "fixturenames", ())
    return marker.args[0] if wants and SHARED_BURSTS[marker.args[0]]["early"] else None


def pytest_collection_modifyitems(config, items):
    # The tests that need no lab first: they run while the session's lab starts in the background
    # (start_lab), which took about 13 s of make test on 2 cores, and then the session's load
    # (load_run, another 20 s) and the early shared bursts. Next the modules whose tests read that
    # load, while it is the lab's newest run (the dashboard's "this run"). The sort is stable: the
    # other lab tests keep their order among themselves (test_zz_lab_down last).
    load_modules = {item.path for item in items if uses_load(item)}
    items[:] = sorted(items, key=lambda item: (uses_lab(item), item.path not in load_modules))


# What the session's tests share, started early: the lab's `up` when collection ends, then the
# early shared bursts and the session's load (the lab, shared_burst and load_run fixtures take
# them); every load started, stopped at the end if still running.
_starting: dict = {}
_bursts: dict[str, Future] = {}
_loads: list[subprocess.Popen] = []


def scratch(config, name: str) -> pathlib.Path:
    """A directory among pytest's own temporary ones (tmp_path_factory's: the last three sessions
    are kept), for the load's results and a burst's ledger; a new one in /tmp without them."""
    factory = getattr(config, "_tmp_path_factory", None)  # (absent with -p no:tmpdir)
    return factory.mktemp(name) if factory else pathlib.Path(tempfile.mkdtemp(prefix=f"racelab-test-{name}-"))


def start_lab(config, with_load: bool = False, bursts: tuple[str, ...] = ()) -> None:
    ledgers = {name: scratch(config, f"burst-{name}") / "ledger.jsonl" for name in bursts
               if SHARED_BURSTS[name]["ledger"]}
    results = scratch(config, "results") if with_load else None
    state_dir = tempfile.mkdtemp(prefix="racelab-test-", dir="/var/tmp")
    os.chmod(state_dir, 0o755)  # PostgreSQL runs as the postgres user and must reach its data dir
    os.environ.update(TEST_ENV, RACELAB_STATE_DIR=state_dir)
    # The background works from this copy: the tests that need no lab change os.environ meanwhile
    # (test_ports removes the port variables), and a load started in such an environment would go
    # to the default ports, a user's `make up`.
    env = dict(os.environ)
    try:
        settings = Settings.from_env()
    except BaseException:  # a RACELAB_* variable it refuses: nothing started, nothing left behind
        shutil.rmtree(state_dir, ignore_errors=True)
        raise
    runnable = [name for name in bursts if set(SHARED_BURSTS[name]["variants"]) <= set(settings.variants)]
    thread = threading.Thread(target=_bring_up, args=(env, settings, runnable, ledgers, results),
                              name="session lab", daemon=True)
    _starting.update(state_dir=state_dir, thread=thread)
    thread.start()


def _bring_up(env: dict, settings: Settings, bursts: list[str], ledgers: dict, results: pathlib.Path | None) -> None:
    up = subprocess.Popen([sys.executable, "-m", "racelab.lab", "up"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)
    stdout, stderr = up.communicate()
    _starting["up"] = (up.returncode, stdout, stderr)
    if up.returncode != 0 or _starting.get("stopping"):
        return
    # the bursts' runs are registered before the load starts: the load is the lab's newest run
    _bursts.update(start_bursts(settings, bursts, ledgers))
    if results is not None:
        _starting["load"] = (results, start_load(results, env))


def start_bursts(settings: Settings, names: list[str], ledgers: dict[str, pathlib.Path]) -> dict[str, Future]:
    """Start helpers.SHARED_BURSTS[name] for each name, together, in a thread of their own (which
    reads no environment: settings say where the lab is); return once their runs are registered.
    Each future gives burst_and_check's result, with the ledger's path (ledgers[name], if any)."""
    futures = {name: Future() for name in names}
    registered = threading.Event()

    async def bursts() -> None:
        prefixes = {name: f"shared-{name}-{uuid.uuid4().hex[:8]}-" for name in names}
        for name in names:  # here, before the load may start (burst_and_check's own is then a no-op)
            await register_run(settings.pg_dsn, prefixes[name], "burst")
        registered.set()
        outs = await asyncio.gather(*(one(name, prefixes[name]) for name in names), return_exceptions=True)
        for name, out in zip(names, outs):
            (futures[name].set_exception if isinstance(out, BaseException) else futures[name].set_result)(out)

    async def one(name: str, prefix: str) -> dict:
        spec = SHARED_BURSTS[name]
        out = await burst_and_check(settings, spec["tasks"], spec["events"], spec["variants"],
                                    ledger_path=ledgers.get(name), prefix=prefix)
        return {**out, "ledger_path": ledgers.get(name)}

    def work() -> None:
        try:
            asyncio.run(bursts())
        except BaseException as exc:  # the lab refused: every test of the burst gets the error
            for future in futures.values():
                if not future.done():
                    future.set_exception(exc)
        finally:
            registered.set()
    if names:
        threading.Thread(target=work, name="shared bursts", daemon=True).start()
        registered.wait(60)
    return futures


def start_load(results: pathlib.Path, env: dict) -> subprocess.Popen:
    """One short Locust load (make load) on the session's lab; at least once, with redelivery
    (--dup-rate), so its duplicates show. Its output goes to files in results (a pipe nobody
    reads until the load ends could fill up and stop it)."""
    with open(results / "load.out", "w") as out, open(results / "load.err", "w") as err:
        load = subprocess.Popen([sys.executable, "-m", "racelab.clients.load", "--users", "9", "--rate", "9",
                                 "--duration", "12s", "--dup-rate", "0.1",
                                 # the design card's three: the zoo's series exist at 0 all the same
                                 *(a for v in DEFAULT_VARIANTS for a in ("--variant", v))],
                                env=dict(env, RACELAB_RESULTS_DIR=str(results)), stdout=out, stderr=err,
                                start_new_session=True)  # its own group: stopped with its Locust
    _loads.append(load)
    return load


def pytest_collection_finish(session):
    config = session.config
    listing = (config.option.collectonly or config.option.setupplan or config.option.showfixtures
               or config.option.show_fixtures_per_test)  # runs no test
    if (config.getoption("--lab") == "native" and not listing and not session.testsfailed
            and any(map(uses_lab, session.items))):  # (testsfailed: collection errors)
        start_lab(config, with_load=any(map(uses_load, session.items)),
                  bursts=tuple(dict.fromkeys(filter(None, map(early_burst_of, session.items)))))


def pytest_sessionfinish(session):
    """A load no fixture waited for to its end (interrupted) is stopped; so is a lab started for
    the session whose fixture never ran (interrupted, or every lab test deselected)."""
    if _starting:
        _starting["stopping"] = True
        _starting["thread"].join()
    for load in _loads:
        if load.poll() is None:
            os.killpg(load.pid, signal.SIGKILL)  # the load and its Locust
            load.wait()
    if _starting and not _starting.get("taken"):
        Lab(Settings.from_env(), owned=True).down()
        shutil.rmtree(_starting["state_dir"], ignore_errors=True)


@pytest.fixture(scope="session")
def lab(request):
    if request.config.getoption("--lab") == "existing":
        yield Lab(Settings.from_env(), owned=False)
        return
    if not _starting:
        start_lab(request.config)
    _starting["thread"].join()  # interrupted here: pytest_sessionfinish stops it
    _starting["taken"] = True
    returncode, stdout, stderr = _starting["up"]
    lab = Lab(Settings.from_env(), owned=True)
    if returncode != 0:
        lab.run("-m", "racelab.lab", "down", check=False)
        shutil.rmtree(_starting["state_dir"], ignore_errors=True)
        pytest.exit(f"the test lab did not come up:\n{stdout}\n{stderr}", returncode=1)
    try:
        yield lab
    finally:
        if not lab.stopped:
            lab.down()
        shutil.rmtree(_starting["state_dir"], ignore_errors=True)


@pytest.fixture(scope="session")
def load_run(lab, tmp_path_factory):
    """The session's load, shared by the observability and ledger tests: started as soon as the
    lab is up (start_lab), or here."""
    if "load" in _starting:
        results, load = _starting["load"]
    else:
        results = tmp_path_factory.mktemp("results")
        load = start_load(results, dict(os.environ))
    load.wait(timeout=600)
    stdout, stderr = (results / "load.out").read_text(), (results / "load.err").read_text()
    assert load.returncode == 0, stdout[-3000:] + stderr[-3000:]
    # The early bursts end before the load's readers look at the whole lab: the dashboard's
    # "whole lab" column, the exporter's totals against Prometheus'.
    for future in list(_bursts.values()):
        future.exception(timeout=600)
    run_dir = (results / "latest").resolve()
    return {"dir": run_dir, "stdout": stdout, "checker": json.loads((run_dir / "checker.json").read_text()),
            "run": json.loads((run_dir / "run.json").read_text())}


@pytest.fixture(scope="session")
def shared_burst(lab, tmp_path_factory):
    """shared_burst(name): helpers.SHARED_BURSTS[name]'s result, from the background (start_lab)
    or started now (--lab=existing, the zoo's, or a lab without the burst's variants at the start)."""
    def take(name: str) -> dict:
        if name not in _bursts:
            for future in list(_bursts.values()):  # one burst at a time: the zoo's races need the lab
                future.exception(timeout=600)
            ledgers = ({name: tmp_path_factory.mktemp(f"burst-{name}") / "ledger.jsonl"}
                       if SHARED_BURSTS[name]["ledger"] else {})
            _bursts.update(start_bursts(lab.settings, [name], ledgers))
        return _bursts[name].result(timeout=600)
    return take


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
