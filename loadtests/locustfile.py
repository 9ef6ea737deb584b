"""Rapid messages against the racelab gateway.

Each simulated user owns a few tasks and, again and again, picks one and fires a burst of
several event/send at it at once (a person typing fast, a webhook storm), then pauses. Event
ids are unique; sequence_id increases per task. One user class per variant, equal weights;
name classes on the command line to load only some (`locust -f locustfile.py LockedUser`).

Run it through `make load` (racelab.clients.load), which runs Locust as its own process (gevent's
monkey-patching breaks asyncio and temporalio in-process) and then the checker.
Options: --run-id (task id prefix), --tasks-per-user, --burst-size, --pause.
"""
from __future__ import annotations

import itertools
import random
import time
import uuid

import gevent
from locust import FastHttpUser, events, task

AGENT = {"id": "racelab-agent", "name": "racelab-agent", "acp_type": "async"}
_user_numbers = itertools.count(1)


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--run-id", default="", help="prefix of this run's task ids (default: a fresh one)")
    parser.add_argument("--tasks-per-user", type=int, default=3, help="tasks each user owns")
    parser.add_argument("--burst-size", type=int, default=5, help="event/send fired at once per burst")
    parser.add_argument("--pause", type=float, default=1.0, help="mean seconds between a user's bursts")


class VariantUser(FastHttpUser):
    abstract = True
    variant = ""

    def wait_time(self):
        return random.expovariate(1.0 / max(self.environment.parsed_options.pause, 0.001))

    def on_start(self):
        opts = self.environment.parsed_options
        run_id = opts.run_id or f"load-{uuid.uuid4().hex[:8]}-"
        number = next(_user_numbers)
        self.tasks_owned = {f"{run_id}{self.variant[0]}{number:04d}-{k}": 0 for k in range(opts.tasks_per_user)}

    def send(self, task_id: str, sequence_id: int) -> None:
        event_id = str(uuid.uuid4())
        body = {"jsonrpc": "2.0", "id": f"event/send-{task_id}", "method": "event/send",
                "params": {"agent": AGENT, "task": {"id": task_id},
                           "event": {"id": event_id, "task_id": task_id, "agent_id": AGENT["id"],
                                     "sequence_id": sequence_id,
                                     "content": {"type": "text", "author": "user", "content": f"message {sequence_id}"},
                                     "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}}
        with self.client.post(f"/{self.variant}/api", json=body, name=f"/{self.variant}/api event/send",
                              catch_response=True) as resp:
            if resp.status_code != 200 or (resp.json() or {}).get("result", {}).get("status") != "processing":
                resp.failure(f"not acked: HTTP {resp.status_code} {resp.text[:200]}")

    @task
    def burst(self):
        task_id = random.choice(list(self.tasks_owned))
        size = self.environment.parsed_options.burst_size
        first = self.tasks_owned[task_id] + 1
        self.tasks_owned[task_id] += size
        gevent.joinall([gevent.spawn(self.send, task_id, first + i) for i in range(size)])


class UnguardedUser(VariantUser):
    variant = "unguarded"


class LockedUser(VariantUser):
    variant = "locked"


class TemporalUser(VariantUser):
    variant = "temporal"
