"""Settings of one lab, read from environment variables with defaults that just work locally.

Every port and the state directory can be changed; the defaults are the ones in LAB.md.
A lab started with some settings is found again (status, down, burst, verify) by the same
environment, so the Makefile and the tests only ever pass environment variables.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

# Every variant the lab knows, in a fixed order: a pod's port is base + 10 × its index here, so
# the design card's three keep their ports and a new variant goes at the end.
ALL_VARIANTS = ("unguarded", "locked", "temporal",  # the design card's three
                "temporal-naive", "cursor-only", "cursor-skip", "lock-only", "asyncio-lock",  # the race zoo
                "sequential", "queue", "optimistic")
DEFAULT_VARIANTS = ALL_VARIANTS[:3]  # what `make up` starts without VARIANTS / RACELAB_VARIANTS
# A user's own agentex-sdk agent (`make up AGENT=<path>`, RACELAB_AGENT): a variant apart from the
# lab's own, never in ALL_VARIANTS (so no port of theirs moves), running after them when set.
AGENT_VARIANT = "agent"
AGENT_PATH_FILE = "agent.path"  # in the state dir while a lab runs with AGENT=
TASK_QUEUE = "racelab-tasks"
WORKFLOW_NAME = "racelab-task"
NAIVE_WORKFLOW_NAME = "racelab-task-naive"  # temporal-naive: the seed's tutorial workflow
# temporal-naive's workflows live in a namespace of their own (the dev server creates it at start),
# so that both Temporal variants use the task id as the workflow id, as the seed does. In one
# namespace temporal-naive prefixed its ids ("temporal-naive/<task id>"), and a `temporal` task
# whose id began with that prefix signalled the other variant's workflow.
NAIVE_NAMESPACE = "racelab-naive"
SIGNAL_RECEIVE_EVENT = "receive_event"  # the signal name Agentex uses
SIGNAL_CANCEL = "cancel_task"


PORT_RANGE = (1, 65535)


def _int(name: str, default: int, low: int | None = None, high: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r}: expected a whole number") from None
    return _in_range(name, raw, value, low, high)


def _in_range(name: str, raw: str, value, low, high):
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise SystemExit(f"{name}={raw!r}: expected a number {bounds}")
    return value


def _state_dir(raw: str) -> Path:
    """RACELAB_STATE_DIR: a directory (made by `up` if missing), its path without whitespace: the
    generated nginx, supervisor and Prometheus configurations name paths in it unquoted."""
    path = Path(raw).resolve()
    if any(c.isspace() for c in str(path)):
        raise SystemExit(f"RACELAB_STATE_DIR={raw!r}: a path without spaces, please (the lab's generated "
                         "configurations name files in it)")
    if path.exists() and not path.is_dir():
        raise SystemExit(f"RACELAB_STATE_DIR={raw!r}: not a directory")
    return path


def parse_variants(raw: str | None) -> tuple[str, ...]:
    """RACELAB_VARIANTS: "all", or a comma list of names; empty means the default three.
    Returned in ALL_VARIANTS order, so generated configs do not depend on how the list was typed."""
    if raw is None or not raw.strip():
        return DEFAULT_VARIANTS
    if raw.strip() == "all":
        return ALL_VARIANTS
    names = {n.strip() for n in raw.split(",") if n.strip()}
    if AGENT_VARIANT in names:  # "agent" alone, or beside others: Settings adds it when AGENT= is set
        rest = ",".join(sorted(names - {AGENT_VARIANT}))
        return (parse_variants(rest) if rest else ()) + (AGENT_VARIANT,)
    unknown = sorted(names - set(ALL_VARIANTS))
    if unknown:
        raise SystemExit(f"RACELAB_VARIANTS={raw!r}: unknown variant(s) {', '.join(unknown)}; "
                         f"valid: all, or a comma list of {', '.join(ALL_VARIANTS)}")
    return tuple(v for v in ALL_VARIANTS if v in names)


def _float(name: str, default: float, low: float | None = None, high: float | None = None,
           above: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r}: expected a number") from None
    if not math.isfinite(value):
        raise SystemExit(f"{name}={raw!r}: expected a finite number")
    if above is not None and value <= above:
        raise SystemExit(f"{name}={raw!r}: expected a number above {above:g}")
    return _in_range(name, raw, value, low, high)


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    host: str = "127.0.0.1"
    gateway_port: int = 8080
    pg_port: int = 15432
    redis_port: int = 16379
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    temporal_http_port: int = 7243
    temporal_metrics_port: int = 7235
    prometheus_port: int = 9090
    pod_base_port: int = 18000
    replicas: int = 3
    workers: int = 2
    queue_workers: int = 2
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    model_latency_ms: float = 50.0
    model_jitter_ms: float = 20.0
    lock_ttl_s: float = 3.0
    lock_wait_s: float = 60.0
    batch_limit: int = 50
    sweep_interval_s: float = 2.0
    skip_commit_delay_ms: float = 150.0
    pg_dsn_override: str = ""
    redis_url_override: str = ""
    temporal_address_override: str = ""
    gateway_url_override: str = ""
    agent_path: str = ""  # RACELAB_AGENT (make up AGENT=<path>): the user's agent project, variant "agent"

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            state_dir=_state_dir(os.environ.get("RACELAB_STATE_DIR") or "/var/tmp/racelab"),
            host=os.environ.get("RACELAB_HOST") or "127.0.0.1",
            gateway_port=_int("RACELAB_GATEWAY_PORT", 8080, *PORT_RANGE),
            pg_port=_int("RACELAB_PG_PORT", 15432, *PORT_RANGE),
            redis_port=_int("RACELAB_REDIS_PORT", 16379, *PORT_RANGE),
            temporal_port=_int("RACELAB_TEMPORAL_PORT", 7233, *PORT_RANGE),
            temporal_ui_port=_int("RACELAB_TEMPORAL_UI_PORT", 8233, *PORT_RANGE),
            temporal_http_port=_int("RACELAB_TEMPORAL_HTTP_PORT", 7243, *PORT_RANGE),
            temporal_metrics_port=_int("RACELAB_TEMPORAL_METRICS_PORT", 7235, *PORT_RANGE),
            prometheus_port=_int("RACELAB_PROMETHEUS_PORT", 9090, *PORT_RANGE),
            pod_base_port=_int("RACELAB_POD_BASE_PORT", 18000, *PORT_RANGE),
            replicas=_int("RACELAB_REPLICAS", 3, 1, 9),  # a variant has 10 ports (pod_port)
            workers=_int("RACELAB_WORKERS", 2, 1, 9),
            queue_workers=_int("RACELAB_QUEUE_WORKERS", 2, 1, 9),
            variants=parse_variants(os.environ.get("RACELAB_VARIANTS")),
            model_latency_ms=_float("RACELAB_MODEL_LATENCY_MS", 50.0, 0),
            model_jitter_ms=_float("RACELAB_MODEL_JITTER_MS", 20.0, 0),
            lock_ttl_s=_float("RACELAB_LOCK_TTL_S", 3.0, above=0),
            lock_wait_s=_float("RACELAB_LOCK_WAIT_S", 60.0, above=0),
            batch_limit=_int("RACELAB_BATCH_LIMIT", 50, 1),
            sweep_interval_s=_float("RACELAB_SWEEP_INTERVAL_S", 2.0, above=0),
            skip_commit_delay_ms=_float("RACELAB_SKIP_COMMIT_DELAY_MS", 150.0, 0),
            pg_dsn_override=os.environ.get("RACELAB_PG_DSN", ""),
            redis_url_override=os.environ.get("RACELAB_REDIS_URL", ""),
            temporal_address_override=os.environ.get("RACELAB_TEMPORAL_ADDRESS", ""),
            gateway_url_override=os.environ.get("RACELAB_GATEWAY_URL", ""),
        )._with_agent(os.environ.get("RACELAB_AGENT", ""))

    def _with_agent(self, path: str) -> "Settings":
        """With RACELAB_AGENT set, variant "agent" runs after the others (without it, not at all).
        A lab started with AGENT= is found again without it: `lab up` notes the path in the state
        dir (AGENT_PATH_FILE) and `lab down` removes it."""
        from dataclasses import replace
        variants = tuple(v for v in self.variants if v != AGENT_VARIANT)
        if not path and (self.state_dir / AGENT_PATH_FILE).is_file():
            path = (self.state_dir / AGENT_PATH_FILE).read_text().strip()
        if not path:
            return replace(self, variants=variants)
        return replace(self, agent_path=str(Path(path).resolve()), variants=variants + (AGENT_VARIANT,))
    # Connection strings: derived from the ports natively, overridable (compose sets them).
    @property
    def pg_dsn(self) -> str:
        return self.pg_dsn_override or f"postgresql://racelab@{self.host}:{self.pg_port}/racelab"

    @property
    def pg_admin_dsn(self) -> str:
        return self.pg_dsn.rsplit("/", 1)[0] + "/postgres"

    @property
    def redis_url(self) -> str:
        return self.redis_url_override or f"redis://{self.host}:{self.redis_port}/0"

    @property
    def temporal_address(self) -> str:
        return self.temporal_address_override or f"{self.host}:{self.temporal_port}"

    @property
    def gateway_url(self) -> str:
        return self.gateway_url_override or f"http://{self.host}:{self.gateway_port}"

    def pod_port(self, variant: str, replica: int) -> int:
        """Ports of the pods: base + 10 × index in ALL_VARIANTS + replica (1-based), whether the
        variant runs or not, so selecting variants never moves a port. Variant "agent"'s pods are
        the Agentex-compatible API in front of the user's agent (racelab.agentex)."""
        if variant == AGENT_VARIANT:
            return self.pod_base_port + 10 * (len(ALL_VARIANTS) + 3) + replica
        return self.pod_base_port + 10 * ALL_VARIANTS.index(variant) + replica

    def agent_port(self, replica: int) -> int:
        """The user's agent replicas (its FastACP app, `uvicorn project.acp:acp`)."""
        return self.pod_base_port + 10 * (len(ALL_VARIANTS) + 4) + replica

    @property
    def modelstub_port(self) -> int:
        """The OpenAI-compatible model stub (racelab.modelstub) the user's agent calls."""
        return self.pod_base_port + 10 * (len(ALL_VARIANTS) + 5) + 1

    def worker_port(self, replica: int) -> int:
        """Health/metrics port of a Temporal worker process."""
        return self.pod_base_port + 10 * len(ALL_VARIANTS) + replica

    @property
    def checker_port(self) -> int:
        """Port of the checker exporter."""
        return self.pod_base_port + 10 * (len(ALL_VARIANTS) + 1)

    def queue_worker_port(self, replica: int) -> int:
        """Health/metrics port of a queue worker (the queue variant's consumers)."""
        return self.pod_base_port + 10 * (len(ALL_VARIANTS) + 2) + replica

    def bare_pod_port(self, replica: int) -> int:
        """The benchmark's bare pods (racelab.bench.bare_pod: ack after one INSERT), behind the
        gateway's /bare/; make bench starts and stops them."""
        return self.pod_base_port + 10 * (len(ALL_VARIANTS) + 8) + replica

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}"
