"""What a fault is, and the schedule syntax of `make chaos FAULTS=...` / `make load FAULTS=...`.

A fault is KIND[:TARGET]:
  kill-pod:VARIANT[:REPLICA]   SIGKILL one pod of a variant (replica 1 unless given)
  pause-pod:VARIANT[:REPLICA]  SIGSTOP one pod for longer than the lock lease, then SIGCONT
  kill-worker[:REPLICA]        SIGKILL a Temporal worker
  kill-redis                   SIGKILL Redis (it restarts empty: locks and anything kept there are gone)
  kill-postgres                SIGKILL PostgreSQL with its backends (crash recovery on restart)
  kill-temporal                SIGKILL the Temporal dev server
  kill-gateway                 SIGKILL the gateway (nginx): every variant's sends fail until it is back
Everything killed is restarted as an orchestrator would (supervisor natively, `docker compose
start` with Docker). A schedule is a comma list of FAULT@WHEN, WHEN one of
  10s        once, 10 s after the start
  every20s   every 20 s, first at 20 s
  5s/every20s  first at 5 s, then every 20 s
"""
from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("kill-pod", "pause-pod", "kill-worker", "kill-redis", "kill-postgres", "kill-temporal", "kill-gateway")
TARGETED = ("kill-pod", "pause-pod")  # need a variant


class FaultSpecError(ValueError):
    pass


@dataclass(frozen=True)
class Fault:
    kind: str
    variant: str = ""     # kill-pod, pause-pod
    replica: int = 1      # which pod / worker

    @property
    def target(self) -> str:
        """The component, named as the lab names its processes."""
        if self.kind in TARGETED:
            return f"pod-{self.variant}-{self.replica}"
        if self.kind == "kill-worker":
            return f"worker-{self.replica}"
        return self.kind.split("-", 1)[1]

    def __str__(self) -> str:
        if self.kind in TARGETED:
            return f"{self.kind}:{self.variant}:{self.replica}"
        return f"{self.kind}:{self.replica}" if self.kind == "kill-worker" else self.kind


@dataclass(frozen=True)
class Scheduled:
    fault: Fault
    first_s: float
    every_s: float = 0.0  # 0: once

    def times(self, duration_s: float) -> list[float]:
        """Seconds after the start at which the fault fires within duration_s."""
        if not self.every_s:
            return [self.first_s] if self.first_s <= duration_s else []
        out, t = [], self.first_s
        while t <= duration_s:
            out.append(t)
            t += self.every_s
        return out


def parse_fault(text: str, variants: tuple[str, ...]) -> Fault:
    parts = text.strip().split(":")
    kind = parts[0]
    if kind not in KINDS:
        raise FaultSpecError(f"fault {text!r}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind in TARGETED:
        if len(parts) not in (2, 3) or not parts[1]:
            raise FaultSpecError(f"fault {text!r}: {kind} needs a variant, e.g. {kind}:locked or {kind}:locked:2")
        if parts[1] not in variants:
            raise FaultSpecError(f"fault {text!r}: variant {parts[1]!r} is not running; running: {', '.join(variants)}")
        return Fault(kind, parts[1], _replica(text, parts[2]) if len(parts) == 3 else 1)
    if kind == "kill-worker":
        if len(parts) > 2:
            raise FaultSpecError(f"fault {text!r}: expected kill-worker or kill-worker:REPLICA")
        return Fault(kind, replica=_replica(text, parts[1]) if len(parts) == 2 else 1)
    if len(parts) > 1:
        raise FaultSpecError(f"fault {text!r}: {kind} takes no target")
    return Fault(kind)


def _replica(text: str, raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise FaultSpecError(f"fault {text!r}: replica {raw!r} must be a number from 1")
    return int(raw)


_SECONDS = r"(\d+(?:\.\d+)?)(s|m)?"


def _seconds(value: str, unit: str | None) -> float:
    return float(value) * (60 if unit == "m" else 1)


def parse_schedule(spec: str, variants: tuple[str, ...]) -> list[Scheduled]:
    """`kill-pod:locked@10s,kill-redis@every30s,kill-postgres@5s/every20s`"""
    out = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        fault_text, at, when = item.partition("@")
        if not at:
            raise FaultSpecError(f"{item!r}: expected FAULT@WHEN, e.g. kill-redis@10s or kill-redis@every30s")
        fault = parse_fault(fault_text, variants)
        m = (re.fullmatch(rf"{_SECONDS}", when) or re.fullmatch(rf"every{_SECONDS}", when)
             or re.fullmatch(rf"{_SECONDS}/every{_SECONDS}", when))
        if not m:
            raise FaultSpecError(f"{item!r}: WHEN {when!r} must be like 10s, every30s or 5s/every20s")
        g = m.groups()
        if when.startswith("every"):
            every = _seconds(g[0], g[1])
            scheduled = Scheduled(fault, every, every)
        elif len(g) == 4:
            scheduled = Scheduled(fault, _seconds(g[0], g[1]), _seconds(g[2], g[3]))
        else:
            scheduled = Scheduled(fault, _seconds(g[0], g[1]))
        if "every" in when and scheduled.every_s < 1:  # (every0s too: it would have fired once)
            raise FaultSpecError(f"{item!r}: faults at most once a second")
        out.append(scheduled)
    if not out:
        raise FaultSpecError("no fault given")
    return out
