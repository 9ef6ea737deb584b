"""How a pod names a failed dependency (pod.app.classify_failure), and that a pod imports Redis'
and Temporal's clients only for the variants that use them (pure logic and imports: no lab)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncpg
import redis.exceptions
from temporalio.service import RPCError, RPCStatusCode

from racelab.pod.app import classify_failure, failure_response

SERVICES = Path(__file__).resolve().parent.parent / "services"


def test_each_dependency_is_named_by_its_error():
    assert classify_failure(RPCError("no frontend", RPCStatusCode.UNAVAILABLE, b"")) == ("unavailable", "Temporal")
    kind, detail = classify_failure(RPCError("bad id", RPCStatusCode.INVALID_ARGUMENT, b""))
    assert kind == "data" and "bad id" in detail
    assert classify_failure(redis.exceptions.ConnectionError("refused")) == ("unavailable", "Redis")
    assert classify_failure(redis.exceptions.TimeoutError("slow")) == ("unavailable", "Redis")
    assert classify_failure(asyncpg.exceptions.CannotConnectNowError("starting")) == ("unavailable", "PostgreSQL")
    assert classify_failure(ValueError("a bug")) is None


def test_a_dependency_down_is_a_503_with_retry_after():
    outcome, response = failure_response(redis.exceptions.ConnectionError("refused"), "event/send", "r1")
    assert (outcome, response.status, response.headers["Retry-After"]) == ("unavailable", 503, "2")


def in_a_pod_of(variant: str, then: str = "") -> list[str]:
    """Run in a fresh process, once the pod's code and the variant's module are loaded: which
    of the modules classify_failure looks up are loaded, then the lines `then` prints."""
    code = ("import sys, importlib, racelab.pod.app\n"
            f"importlib.import_module('racelab.variants.' + {variant!r}.replace('-', '_'))\n"
            "print(' '.join(m for m in ('redis.exceptions', 'temporalio.service') if m in sys.modules))\n"
            + then)
    done = subprocess.run([sys.executable, "-c", code], cwd=SERVICES, capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_a_pod_imports_only_the_clients_its_variant_uses():
    """The race zoo starts 33 pods at once on 2 cores: importing Temporal's and Redis' clients
    was 0.23 s of the 0.59 s a pod spent importing, for the pods that never use them."""
    assert in_a_pod_of("unguarded")[0] == ""
    assert in_a_pod_of("optimistic")[0] == ""
    assert in_a_pod_of("locked")[0] == "redis.exceptions"
    assert in_a_pod_of("temporal")[0] == "temporalio.service"


def test_a_pod_without_those_clients_still_classifies():
    loaded, *kinds = in_a_pod_of("unguarded", "from racelab.pod.app import classify_failure as c\n"
                                 "print(c(ConnectionRefusedError()))\nprint(c(ValueError()))")
    assert (loaded, kinds[0].startswith("('unavailable'"), kinds[1]) == ("", True, "None")
