"""Rapid messages against the racelab gateway, sent at least once, as real senders send.

Each simulated user owns a few tasks and, again and again, picks one and fires a burst of
several event/send at it at once (a person typing fast, a webhook storm), then pauses. Event
ids are unique; sequence_id increases per task. One user class per variant, generated from
config.ALL_VARIANTS (temporal-naive -> TemporalNaiveUser); the classes of the variants the lab
runs (RACELAB_VARIANTS) are the default, name classes on the command line to load only some
(`locust -f locustfile.py LockedUser`).

At least once (racelab.clients.retry): a send that fails (connection error, timeout, HTTP 5xx or
429, no "processing" ack) is sent again with the SAME event id, up to 8 attempts, with
exponential backoff and jitter (0.1 s .. 2 s) or the server's Retry-After. Every attempt is a
request in Locust's statistics (a retried failure is a failure there, "...; retrying"); an event
given up on is one more failure named "<variant> event/send GAVE UP". Other 4xx are not retried.
--dup-rate: the share of acked events sent once more with the same id after a short random
pause (webhook redelivery), reported as "/<variant>/api event/send (redelivery)".

The ledger: every process that sends (the only one, or each worker; never the master) appends
every acked event to <--ledger-dir>/ledger-<host>-<pid>.jsonl (racelab.checker.ledger), which
the checker compares with the event log. Task ids carry a random tag per process, so two
workers (which each number their users from 1) never share a task.

Run it through `make load` (racelab.clients.load), which runs Locust as its own process (gevent's
monkey-patching breaks asyncio and temporalio in-process) and then the checker.
Options: --run-id (task id prefix), --tasks-per-user, --burst-size, --pause, --dup-rate,
--ledger-dir, --max-attempts.
"""
from __future__ import annotations

import itertools
import os
import random
import socket
import time
import uuid

import gevent
import gevent.pool
from locust import FastHttpUser, events, task
from locust.runners import MasterRunner

from racelab import config
from racelab.checker.ledger import LedgerWriter
from racelab.clients.retry import Outcome, RetryPolicy, classify, parse_retry_after, redeliver, redelivery_delay

AGENT = {"id": "racelab-agent", "name": "racelab-agent", "acp_type": "async"}
PROCESS_TAG = uuid.uuid4().hex[:6]  # unique per Locust process: task ids of two workers never collide
_user_numbers = itertools.count(1)
_ledger: LedgerWriter | None = None
_in_flight = gevent.pool.Group()  # every send of this process, waited for when the test stops


def user_class_name(variant: str) -> str:
    """temporal-naive -> TemporalNaiveUser (racelab.clients.load.user_class says the same)."""
    return "".join(word.capitalize() for word in variant.split("-")) + "User"


def served_variants() -> tuple[str, ...]:
    """The variants the lab runs (RACELAB_VARIANTS), whose classes run when none is named."""
    try:
        return config.Settings.from_env().variants
    except (AttributeError, SystemExit):
        return getattr(config, "DEFAULT_VARIANTS", config.ALL_VARIANTS[:3])


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--run-id", default="", help="prefix of this run's task ids (default: a fresh one)")
    parser.add_argument("--tasks-per-user", type=int, default=3, help="tasks each user owns")
    parser.add_argument("--burst-size", type=int, default=5, help="event/send fired at once per burst")
    parser.add_argument("--pause", type=float, default=1.0, help="mean seconds between a user's bursts")
    parser.add_argument("--dup-rate", type=float, default=0.0,
                        help="share of acked events sent again with the same id (webhook redelivery)")
    parser.add_argument("--ledger-dir", default="",
                        help="directory for this process's ledger of acked events (ledger-<host>-<pid>.jsonl)")
    parser.add_argument("--max-attempts", type=int, default=RetryPolicy.max_attempts,
                        help="sends of one event before giving up (1: no retries)")


def ledger(environment) -> LedgerWriter | None:
    """This process's ledger, opened at the first ack (a worker learns --ledger-dir from the
    master only when it is told to spawn users)."""
    global _ledger
    if _ledger is None:
        directory = getattr(environment.parsed_options, "ledger_dir", "")
        if directory and not isinstance(environment.runner, MasterRunner):
            _ledger = LedgerWriter(os.path.join(directory, f"ledger-{socket.gethostname()}-{os.getpid()}.jsonl"))
    return _ledger


@events.test_stop.add_listener
def _finish_sends(environment, **_kw):
    """A stopped user's sends (retries, redeliveries) may still be under way: let them end, so
    an event the server acks is in the ledger (bounded: what is still unacked then stays out)."""
    _in_flight.join(timeout=max(getattr(environment, "stop_timeout", 0) or 0, 15.0))


@events.quitting.add_listener
def _close_ledger(environment, **_kw):
    global _ledger
    if _ledger is not None:
        _ledger.close()
        _ledger = None  # an ack after this (a send still finishing) reopens the file and appends


class VariantUser(FastHttpUser):
    abstract = True
    variant = ""
    connection_timeout = 5.0
    network_timeout = 15.0  # a reply slower than this counts as lost: the event is sent again

    def wait_time(self):
        return random.expovariate(1.0 / max(self.environment.parsed_options.pause, 0.001))

    def on_start(self):
        opts = self.environment.parsed_options
        run_id = opts.run_id or f"load-{uuid.uuid4().hex[:8]}-"
        number = next(_user_numbers)
        self.policy = RetryPolicy(max_attempts=max(1, opts.max_attempts))
        self.tasks_owned = {f"{run_id}{self.variant}-{PROCESS_TAG}-{number:04d}-{k}": 0
                            for k in range(opts.tasks_per_user)}

    def body(self, task_id: str, event_id: str, sequence_id: int) -> dict:
        return {"jsonrpc": "2.0", "id": f"event/send-{task_id}", "method": "event/send",
                "params": {"agent": AGENT, "task": {"id": task_id},
                           "event": {"id": event_id, "task_id": task_id, "agent_id": AGENT["id"],
                                     "sequence_id": sequence_id,
                                     # the task id in the text: a model stub links a call to its event by it
                                     "content": {"type": "text", "author": "user",
                                                 "content": f"message {sequence_id} of {task_id}"},
                                     "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}}

    def attempt(self, body: dict, name: str, attempt: int) -> tuple[Outcome, float | None]:
        """One send, reported to Locust. Returns its outcome and the Retry-After it carried."""
        with self.client.post(f"/{self.variant}/api", json=body, name=name, catch_response=True) as resp:
            status = resp.status_code or 0
            try:
                reply = resp.json() if status else None
            except Exception:  # noqa: BLE001 - any unreadable body is "not acked"
                reply = None
            outcome = classify(status, reply)
            retry_after = parse_retry_after(resp.headers.get("Retry-After")) if status and resp.headers else None
            if outcome is Outcome.ACKED:
                resp.success()
            else:
                what = f"HTTP {status}" if status else f"no answer ({type(getattr(resp, 'error', None)).__name__})"
                if status == 200:
                    what += " without a processing ack"
                if outcome is Outcome.REJECTED:
                    resp.failure(f"{what}: rejected, not retried")
                elif self.policy.should_retry(outcome, attempt):
                    resp.failure(f"{what}; retrying with the same event id")
                else:
                    resp.failure(what)
        return outcome, retry_after

    def deliver(self, body: dict, name: str) -> bool:
        """Send until acked, rejected or out of attempts; every ack goes into the ledger."""
        event = body["params"]["event"]
        started = time.perf_counter()
        for attempt in itertools.count(1):
            outcome, retry_after = self.attempt(body, name, attempt)
            if outcome is Outcome.ACKED:
                writer = ledger(self.environment)
                if writer is not None:
                    writer.acked(self.variant, event["task_id"], event["agent_id"], event["id"])
                return True
            if not self.policy.should_retry(outcome, attempt):
                if outcome is Outcome.RETRY:
                    self.environment.events.request.fire(
                        request_type="EVENT", name=f"{self.variant} event/send GAVE UP",
                        response_time=(time.perf_counter() - started) * 1000, response_length=0,
                        exception=RuntimeError(f"not acked after {attempt} attempts"), context={})
                return False
            gevent.sleep(self.policy.delay(attempt, retry_after))
        return False  # unreachable

    def send(self, task_id: str, sequence_id: int) -> None:
        body = self.body(task_id, str(uuid.uuid4()), sequence_id)
        if self.deliver(body, f"/{self.variant}/api event/send") and redeliver(self.environment.parsed_options.dup_rate):
            gevent.sleep(redelivery_delay())
            self.deliver(body, f"/{self.variant}/api event/send (redelivery)")

    @task
    def burst(self):
        task_id = random.choice(list(self.tasks_owned))
        size = self.environment.parsed_options.burst_size
        first = self.tasks_owned[task_id] + 1
        self.tasks_owned[task_id] += size
        gevent.joinall([_in_flight.spawn(self.send, task_id, first + i) for i in range(size)])


# One class per variant, all from one list; only the running variants' classes are the default.
_served = served_variants()
for _variant in config.ALL_VARIANTS + (getattr(config, "AGENT_VARIANT", "agent"),):  # agent: make up AGENT=
    _name = user_class_name(_variant)
    globals()[_name] = type(_name, (VariantUser,), {"variant": _variant, "abstract": _variant not in _served,
                                                    "__module__": __name__})
del _variant, _name
