"""The one description of the lab's services (LAB.md "Topology").

The native lab feeds it to supervisor (racelab.lab.native); every other way to run the lab
must be derived from this list too, so the two cannot drift. A service has a start stage
(infra, then app, then gateway), a command, a port per replica and a health check.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import AGENT_VARIANT, ALL_VARIANTS, NAIVE_NAMESPACE, Settings

STAGES = ("infra", "app", "gateway", "observability")


@dataclass(frozen=True)
class Instance:
    """One process: a replica of a service."""
    name: str
    service: "Service"
    argv: tuple[str, ...]
    port: int


@dataclass(frozen=True)
class Service:
    name: str
    stage: str
    argv: tuple[str, ...]          # "{port}" and "{name}" are filled in per replica
    ports: tuple[int, ...]         # one per replica
    health: str                    # postgres | redis | temporal | http | gateway
    health_path: str = "/healthz"  # for http health checks
    run_as: str | None = None      # user to run as (postgres refuses root)
    stop_signal: str = "TERM"
    extra_ports: tuple[int, ...] = field(default=())  # further ports it binds (UI)

    @property
    def replicas(self) -> int:
        return len(self.ports)

    def instances(self) -> list[Instance]:
        out = []
        for i, port in enumerate(self.ports, start=1):
            name = self.name if self.replicas == 1 else f"{self.name}-{i}"
            argv = tuple(a.format(port=port, name=name) for a in self.argv)
            out.append(Instance(name=name, service=self, argv=argv, port=port))
        return out


def find_binary(name: str, *patterns: str) -> str:
    """A server binary on PATH, else in the usual Debian places."""
    found = shutil.which(name)
    if found:
        return found
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[-1]
    raise FileNotFoundError(f"{name} not found on PATH; install it (make install)")


def gateway_user() -> str | None:
    """The account nginx runs as: not root. Without a master process (nginx_conf) it drops no
    privileges itself, so under root (CI, a root shell) supervisor starts it as nobody; otherwise
    it runs as the user who runs the lab."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return None
    return "nobody"


def venv_binary(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else find_binary(name)


def paths(settings: Settings) -> dict[str, Path]:
    d = settings.state_dir
    return {"pgdata": d / "pgdata", "pgsock": d / "pgsock", "redis": d / "redis", "temporal": d / "temporal",
            "nginx": d / "nginx", "logs": d / "logs", "supervisor": d / "supervisor",
            "prometheus": d / "prometheus"}


POOL_MAX = 10  # connections per process (db.create_pool's max_size)


def max_connections(settings: Settings) -> int:
    """Enough for every pool at its maximum (pods, workers, queue workers) plus the checker,
    clients and tests: 300 for the default three variants, more with the race zoo."""
    pools = settings.replicas * len(settings.variants) + settings.workers + settings.queue_workers
    return max(300, POOL_MAX * pools + 100)


def services(settings: Settings, run_as_postgres: str | None = None) -> list[Service]:
    p = paths(settings)
    python = sys.executable
    host = settings.host
    out = [
        Service("postgres", "infra",
                (find_binary("postgres", "/usr/lib/postgresql/*/bin/postgres"), "-D", str(p["pgdata"]),
                 "-h", host, "-p", "{port}", "-k", str(p["pgsock"]), "-c", f"max_connections={max_connections(settings)}",
                 "-c", "fsync=on", "-c", "log_min_messages=warning"),
                (settings.pg_port,), "postgres", run_as=run_as_postgres, stop_signal="INT"),
        Service("redis", "infra",
                (find_binary("redis-server", "/usr/bin/redis-server"), "--bind", host, "--port", "{port}",
                 "--save", "", "--appendonly", "no", "--dir", str(p["redis"]),
                 "--set-proc-title", "no"),  # keep argv and environment intact: `down` finds it by them
                (settings.redis_port,), "redis"),
        Service("temporal", "infra",
                (venv_binary("temporal"), "server", "start-dev", "--ip", host, "--port", "{port}",
                 "--ui-port", str(settings.temporal_ui_port), "--db-filename", str(p["temporal"] / "temporal.db"),
                 "--namespace", NAIVE_NAMESPACE,  # temporal-naive's (config.NAIVE_NAMESPACE)
                 # its HTTP API port, else a random free one: in the kernel's ephemeral range
                 "--http-port", str(settings.temporal_http_port),
                 "--metrics-port", str(settings.temporal_metrics_port), "--log-level", "warn",
                 # WAL with synchronous=normal: durable across a crash of the server process (not
                 # of the machine); took signal-with-start ingest from ~50 to ~100 events/s here
                 "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
                 # a task's workflow completes when idle; its closed run must then leave the history
                 # cache (8096 entries, its cache_size metric), which drops an expired entry only
                 # when touched, unless it evicts in the background. make soak, dev server PSS over
                 # 10 min: +21 % before, +13 % with this (the rest: the XDC cache below)
                 "--dynamic-config-value", 'history.cacheTTL="2m"',
                 "--dynamic-config-value",
                 'history.cacheBackgroundEvict={{"Enabled":true,"LoopInterval":"30s","MaxEntryPerCall":4096}}',  # ({{}}: format)
                 # the cross-cluster replication cache (XDC): every appended history batch goes in it
                 # and stays until the cache is full: 8 MiB of blob bytes by its own count, several
                 # times that in heap (found by scanning the dev server's heap for the lab's payloads;
                 # docs/performance-journal.md, seventh pass). Only replication reads it, which a
                 # single-cluster lab never does: the smallest size the server takes (64 KiB).
                 "--dynamic-config-value", "history.xdcCacheMaxSizeBytes=65536",
                 # Go's GOGC stays at its default: 200 (a larger heap, fewer collections) was no
                 # better under make load USERS=100, apply p99 18.6 and 28.8 s against 7.2 and
                 # 10.3 s in alternating runs (docs/performance-journal.md, fourteenth pass)
                 "--ui-disable-news-fetch"),  # the UI must not reach out to the network
                (settings.temporal_port,), "temporal",
                extra_ports=(settings.temporal_ui_port, settings.temporal_metrics_port, settings.temporal_http_port)),
    ]
    for variant in settings.variants:
        if variant == AGENT_VARIANT:  # the user's agent and the lab's Agentex API in front of it
            from ..agentex.lab import agent_services
            out.extend(agent_services(settings, Service, python))
            continue
        out.append(Service(f"pod-{variant}", "app",
                           (python, "-m", "racelab.pod", "--variant", variant, "--port", "{port}", "--name", "{name}"),
                           tuple(settings.pod_port(variant, r) for r in range(1, settings.replicas + 1)), "http"))
    out.append(Service("worker", "app", (python, "-m", "racelab.worker", "--port", "{port}"),
                       tuple(settings.worker_port(r) for r in range(1, settings.workers + 1)), "http"))
    if "queue" in settings.variants:  # the queue variant's consumers (Redis Streams)
        out.append(Service("queue-worker", "app",
                           (python, "-m", "racelab.variants.queue", "--port", "{port}", "--name", "{name}"),
                           tuple(settings.queue_worker_port(r) for r in range(1, settings.queue_workers + 1)),
                           "http"))
    out.append(Service("checker", "app", (python, "-m", "racelab.checker.exporter", "--port", "{port}"),
                       (settings.checker_port,), "http"))
    out.append(Service("gateway", "gateway",
                       # -e: its error log before it reads its configuration (the compiled-in
                       # /var/log/nginx/error.log is not writable by its user)
                       (find_binary("nginx", "/usr/sbin/nginx"), "-p", str(p["nginx"]),
                        "-c", str(p["nginx"] / "nginx.conf"), "-e", "stderr"),
                       # (without a master, QUIT ends it at once as TERM does: no drain of
                       # requests in flight; the app stage stops after it in any case)
                       (settings.gateway_port,), "gateway", stop_signal="QUIT", run_as=gateway_user()))
    out.append(Service("prometheus", "observability",
                       (find_binary("prometheus", "/usr/bin/prometheus"),
                        f"--config.file={p['prometheus'] / 'prometheus.yml'}",
                        f"--storage.tsdb.path={p['prometheus'] / 'data'}",
                        f"--web.listen-address={host}:{{port}}", "--storage.tsdb.retention.time=7d",
                        # the live dashboard, /consoles/racelab.html (racelab.lab.console writes it)
                        f"--web.console.templates={p['prometheus'] / 'consoles'}",
                        f"--web.console.libraries={p['prometheus'] / 'console_libraries'}",
                        "--log.level=warn"),
                       (settings.prometheus_port,), "http", health_path="/-/ready"))
    return out


SCRAPE_INTERVAL = "5s"


def prometheus_conf(settings: Settings) -> str:
    """Scrape every pod, worker, the checker exporter and Temporal. The metrics carry their own
    `variant` label, so targets get none (it would rename theirs to exported_variant)."""
    def job(name: str, ports) -> str:
        targets = ", ".join(f"'{settings.host}:{p}'" for p in ports)
        return f"  - job_name: {name}\n    static_configs:\n      - targets: [{targets}]\n"
    pods = [settings.pod_port(v, r) for v in settings.variants for r in range(1, settings.replicas + 1)]
    workers = [settings.worker_port(r) for r in range(1, settings.workers + 1)]
    queue_workers = [settings.queue_worker_port(r) for r in range(1, settings.queue_workers + 1)]
    return ("# generated by racelab.lab from the services description; edits are overwritten\n"
            f"global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n" + job("pods", pods) + job("workers", workers)
            + (job("queue-workers", queue_workers) if "queue" in settings.variants else "")
            + job("checker", [settings.checker_port]) + job("temporal", [settings.temporal_metrics_port]))


# What the gateway does, the same natively and in compose (racelab.lab.compose).
GATEWAY_PROXY = """\
    # the pods answer oversized bodies themselves, with a JSON-RPC error (over 8 MiB, the gateway)
    client_max_body_size 8m;
    client_body_buffer_size 8m;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_read_timeout 120s;
    # The path a pod is sent: the client's own request URI, still percent-encoded and with its
    # slashes as sent, minus its first segment (/<variant>). proxy_pass with a URI part (or a
    # rewrite) sends nginx's decoded, slash-merged path instead: the state of task "a/b"
    # (GET /locked/tasks/a%2Fb/state) was asked for as /tasks/a/b/state, a 404.
    map $request_uri $pod_uri {
        "~^/+[^/?]*(?<rest>/.*)$" $rest;
        default /;
    }
    # the prefix a request was routed by (/queue/), named in the gateway's 503: with Docker a
    # variant whose pods were not started looks to nginx like one whose pods are all down
    map $uri $gateway_prefix {
        "~^(?<prefix>/[a-z][a-z-]*/)" $prefix;
        default "/";
    }"""
def _json_error(status: int, code: int, message: str, extra: str = "") -> str:
    return (f"default_type application/json;{extra} return {status} "
            f"""'{{"jsonrpc":"2.0","id":null,"error":{{"code":{code},"message":"{message}"}}}}';""")


# What nginx itself refuses, before any pod sees the request, as JSON-RPC errors (it answered with
# HTML pages: a body over 8 MiB, a 10,000-character task id, a 20-KB header, %00 in the path, a
# request line it cannot parse). Each is a URI location, not a named one: a request whose line
# nginx could not parse has no URI, and error_page to a named location then gave a 500.
NO_SUCH_PATH = "no such path: the gateway serves /<variant>/api and /<variant>/tasks/<task id>/state"
_GATEWAY_REFUSALS = (
    (400, 400, "bad HTTP request: nginx could not parse its request line, headers or body framing"),
    (404, 404, NO_SUCH_PATH),  # nginx's own 404s only: a pod's 404 passes as it is
    (413, 413, "request body over 8 MiB (client_max_body_size): refused by the gateway"),
    (414, 414, "request URI too long"),
    (494, 431, "request header fields too large"),  # 494: nginx's own code for that 400
)
# /unguarded without its slash: nginx answered a 301 to /unguarded/ (a proxy_pass location's
# redirect), where the JSON-RPC 404 of a path under no variant is due
# variant "agent"'s routes (racelab.agentex.lab.nginx_parts, compose.compose_nginx_conf): its ACP
# front, the Agentex REST API, the agent's own pods
AGENT_PREFIXES = (AGENT_VARIANT, "agentex", "agent-pods")
GATEWAY_PREFIXES = ALL_VARIANTS + AGENT_PREFIXES + ("bare",)

GATEWAY_HEALTHZ = "\n".join([
    """        location = /healthz { return 200 '{"status":"ok","role":"gateway"}'; default_type application/json; }""",
    "        # nginx's own errors (no pod answers: killed, restarting, paused past the timeout) as",
    "        # JSON-RPC errors a client can act on, never an HTML page; the pods' own replies pass as they are",
    "        error_page 502 503 504 = @unavailable;",
    "        location @unavailable { " + _json_error(
        503, -32001, "no pod behind $gateway_prefix answered (not started in this lab, or down); retry",
        " add_header Retry-After 1 always;") + " }",
    *(f"        error_page {nginx_status} = /__gateway_error/{status};\n"
      f"        location = /__gateway_error/{status} {{ internal; {_json_error(status, -32600, message)} }}"
      for nginx_status, status, message in _GATEWAY_REFUSALS),
    *(f"        location = /{prefix} {{ return 404; }}" for prefix in GATEWAY_PREFIXES),
    "        # a path under no variant of this lab: a JSON-RPC error too (the pods' own 404 says the same)",
    "        location / { return 404; }",
])


def gateway_not_running(prefix: str, what: str, start: str) -> str:
    """A location for a variant the lab knows but does not run: the gateway's JSON-RPC 503, as with
    Docker Compose (whose nginx finds no pod to resolve), saying how to start it."""
    return (f"        location /{prefix}/ {{ " + _json_error(
        503, -32001, f"{what} is not running in this lab (make down, then {start})",
        " add_header Retry-After 1 always;") + " }")


# Idle connections nginx keeps open to an upstream's pods (nginx's keepalive: one cache per
# upstream, shared by its pods, least recently used closed first). With 64, make bench's 64
# requests in flight over 3 pods opened a new connection to a pod for about one request in three
# (the one a request needed was rarely the idle one: connections belong to one pod): 300+ sockets
# in TIME_WAIT per pod after 3,000 events, and `locked`/bare 0.74-0.78; with 256, none and
# 0.84-0.86 (2026-11-26). A cache larger than the concurrency leaves idle ones to time out (60 s).
UPSTREAM_KEEPALIVE = 256


# How long nginx skips a pod after a request to it failed (connection refused: killed,
# restarting). nginx's default, 10 s, held a variant at 503 for 9.4 s after its three pods were
# back (each had been marked failed), most of a fault's 15-s recovery budget. At 1 s (1-2 s: nginx
# counts whole seconds) a dead pod costs one refused connection a second, and nginx passes that
# request on to the next pod.
UPSTREAM_FAIL_TIMEOUT = "1s"


def nginx_upstream(name: str, addresses) -> str:
    """An upstream block of the gateway: round-robin over addresses (host:port), idle connections kept."""
    servers = "\n".join(f"        server {address} max_fails=1 fail_timeout={UPSTREAM_FAIL_TIMEOUT};"
                         for address in addresses)
    return f"    upstream {name} {{\n{servers}\n        keepalive {UPSTREAM_KEEPALIVE};\n    }}"


def nginx_conf(settings: Settings) -> str:
    """The gateway: one upstream per variant (round-robin), the /<variant>/ prefix stripped."""
    p = paths(settings)
    upstreams, locations = [], []
    for variant in settings.variants:
        upstreams.append(nginx_upstream(variant, (f"{settings.host}:{settings.pod_port(variant, r)}"
                                                  for r in range(1, settings.replicas + 1))))
        if variant == AGENT_VARIANT:  # /agent/ -> the Agentex API's ACP front; /agentex/, /agent-pods/
            from ..agentex.lab import nginx_parts
            extra_upstreams, extra_locations = nginx_parts(settings)
            upstreams += extra_upstreams
            locations += extra_locations
            continue
        locations.append(f"        location /{variant}/ {{ proxy_pass http://{variant}$pod_uri; }}")
    locations += [gateway_not_running(v, f"variant {v}", "make up VARIANTS=all")
                  for v in ALL_VARIANTS if v not in settings.variants]
    if AGENT_VARIANT not in settings.variants:  # its routes (racelab.agentex.lab.nginx_parts)
        locations += [gateway_not_running(prefix, "variant agent (your agent)", "make up AGENT=<its folder>")
                      for prefix in AGENT_PREFIXES]
    # /bare/: the benchmark's baseline (racelab.bench), the same path to as many bare pods (ack
    # after one INSERT); they run only while make bench does
    upstreams.append(nginx_upstream("bench-bare", (f"{settings.host}:{settings.bare_pod_port(r)}"
                                                   for r in range(1, settings.replicas + 1))))
    locations.append("        location /bare/ { proxy_pass http://bench-bare$pod_uri; }")
    tmp = p["nginx"] / "tmp"
    return f"""# generated by racelab.lab from the services description; edits are overwritten
daemon off;
# One process, no master: with a master, a SIGKILL to it (the pid supervisor knows) left its
# worker serving as an orphan that held the port, and each nginx supervisor restarted failed to
# bind ("Address already in use") while the orphan ran on with the old configuration. One
# process dies whole and comes back whole; one worker is what the lab ran anyway. It cannot
# reload (`nginx -s reload` left it refusing every connection): make bench restarts it instead.
master_process off;
pid {p['nginx'] / 'nginx.pid'};
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{GATEWAY_PROXY}
{chr(10).join(upstreams)}
    server {{
        listen {settings.host}:{settings.gateway_port};
{chr(10).join(locations)}
{GATEWAY_HEALTHZ}
    }}
}}
"""
