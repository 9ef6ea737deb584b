"""The clients' command lines on input they must refuse: a lab that is not serving (burst, chaos,
matrix, load say so and leave no empty results dir behind), a variant the lab does not run (the
gateway's own words on how to start it), a ledger file that exists already (a ledger holds one
run's acks: appending mixed two runs), and checker waits that are not a number of seconds.
"""
import os
import socket
import subprocess
import sys

import pytest

from racelab.checker.ledger import LedgerError, LedgerWriter, read_ledger


def closed_port() -> int:
    """A port outside the kernel's ephemeral range (the lab's settings refuse those) that nothing
    listens on."""
    for port in range(29900, 29999):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no closed port in 29900-29998")


def run(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("client", ["burst", "chaos", "matrix", "load"])
def test_a_client_on_a_lab_that_is_not_serving_says_so_and_writes_nothing(client, tmp_path):
    results = tmp_path / "results"
    env = dict(os.environ, RACELAB_GATEWAY_PORT=str(closed_port()), RACELAB_RESULTS_DIR=str(results))
    done = run(f"racelab.clients.{client}", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"racelab {client}: the lab is not serving" in done.stderr and "make up" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not results.exists(), list(results.rglob("*"))  # burst and chaos left empty run dirs


def test_a_load_on_a_variant_the_lab_does_not_run_says_how_to_start_it(lab, tmp_path):
    """The session lab runs no agent: the gateway's 503 says `make up AGENT=`, and load passes it on
    (it used to say only "answered 503. Start it with `make up`", for a lab that was up)."""
    done = run("racelab.clients.load", "--variant", "agent", "--duration", "2s",
               env=dict(os.environ, RACELAB_RESULTS_DIR=str(tmp_path / "results")))
    assert done.returncode == 1 and "/agent/healthz answered 503" in done.stderr, done.stderr
    assert "make up AGENT=" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "results").exists()


def test_a_ledger_is_never_appended_to(tmp_path):
    old = tmp_path / "ledger.jsonl"
    LedgerWriter(old).close()
    writer = LedgerWriter(tmp_path / "new" / "ledger.jsonl")  # a new file, its directory made
    writer.acked("locked", "t", "a", "e1")
    writer.close()
    assert [e.event_id for e in read_ledger([tmp_path / "new"])] == ["e1"]
    with pytest.raises(LedgerError, match="exists already"):
        LedgerWriter(tmp_path / "new" / "ledger.jsonl")
    assert [e.event_id for e in read_ledger([tmp_path / "new"])] == ["e1"]


def test_burst_refuses_a_ledger_path_that_exists_and_leaves_it_as_it_was(tmp_path):
    """`burst --ledger /etc/passwd`, run as root, appended three lines to it."""
    victim = tmp_path / "notes.txt"
    victim.write_text("someone's file\n")
    done = run("racelab.clients.burst", "--ledger", str(victim))
    assert done.returncode == 2 and "exists already" in done.stderr, done.stderr
    assert victim.read_text() == "someone's file\n"


@pytest.mark.parametrize("option, value", [("--settle", "nan"), ("--settle", "0"), ("--timeout", "-5"),
                                           ("--timeout", "inf"), ("--timeout", "5m")])
def test_the_checker_takes_only_seconds_above_0(option, value):
    """--timeout -5 gave up at once and --settle nan never settled."""
    done = run("racelab.checker", f"{option}={value}")
    assert done.returncode == 2 and f"argument {option}" in done.stderr and value in done.stderr, done.stderr
