"""The native gateway (nginx): a task id travels through it as one path segment whatever it holds,
and what it does not serve gets a JSON-RPC error, never nginx's HTML page."""
import re
from pathlib import Path

import pytest

from helpers import (GATEWAY_ROUTES, assert_gateway_refusals, assert_gateway_routes, free_port, get_state, http,
                     new_id, nginx_running, path_echo, send_event, wait_until)
from racelab.config import AGENT_VARIANT, ALL_VARIANTS, Settings
from racelab.lab.topology import nginx_conf, paths

EXAMPLE_AGENT = Path(__file__).resolve().parents[1] / "examples" / "agents" / "race-prone"
# ids a URL path must carry percent-encoded: "/" (nginx decoded and re-split it: GET
# /<variant>/tasks/a%2Fb/state reached the pod as /tasks/a/b/state, a 404), "//" (merged into one),
# a literal "%2F", "?" and "#", a leading "/", dots (not a whole "." or ".." segment: refused, see
# test_bad_input), and 256 characters of 3-byte UTF-8 (768 bytes, the most an id may hold)
PATH_IDS = ("a/b", "a//b", "a%2Fb", "q?x#y", "/lead", "..x", "a/.b.", "sp ace+plus")


@pytest.mark.parametrize("variant", ["unguarded", "locked", "temporal"])
async def test_task_ids_with_path_characters_round_trip_through_the_gateway(lab, variant):
    tag = new_id("")[-6:]
    cjk_tag = "".join(chr(0x4E00 + int(c, 16)) for c in tag)
    tasks = [f"{t}-{tag}" for t in PATH_IDS] + ["界" * (256 - len(cjk_tag)) + cjk_tag]
    assert len(tasks[-1]) == 256 and len(tasks[-1].encode()) == 768
    sent = {}
    for task in tasks:
        sent[task] = new_id("ev")
        status, reply = await send_event(lab.settings, variant, task, sent[task])
        assert (status, reply.get("result")) == (200, {"status": "processing"}), (task, reply)

    async def all_applied():
        for task, event_id in sent.items():
            status, body = await get_state(lab.settings, variant, task)
            if status != 200 or event_id not in body["state"]["history"]:
                return False
        return True
    assert await wait_until(all_applied, timeout_s=30), [
        (task, await get_state(lab.settings, variant, task)) for task in tasks]


def test_native_gateway_passes_the_path_as_sent_and_answers_json_for_the_rest(tmp_path):
    """The native nginx.conf of a lab running `locked` and an agent (AGENT=), run by a real nginx
    with a path echo in place of every pod: each route passes the client's own path minus its
    prefix; a variant the lab does not run gets the gateway's JSON-RPC 503 with Retry-After (as with
    Docker Compose); a path under no variant a JSON-RPC 404."""
    port = free_port()
    settings = Settings(state_dir=tmp_path, gateway_port=port, variants=("locked", AGENT_VARIANT),
                        agent_path=str(EXAMPLE_AGENT))
    nginx_dir = paths(settings)["nginx"]
    (nginx_dir / "tmp").mkdir(parents=True)
    with path_echo() as echo:
        conf = re.sub(r"server 127\.0\.0\.1:\d+ ", f"server 127.0.0.1:{echo} ", nginx_conf(settings))
        (nginx_dir / "nginx.conf").write_text(conf)
        with nginx_running(nginx_dir / "nginx.conf", nginx_dir, port):
            g = f"http://127.0.0.1:{port}"
            assert_gateway_routes(g, GATEWAY_ROUTES + (("/agent-pods/api", "/api"), ("/bare/api", "/api"),
                                                       ("/locked/tasks/%2E%2E/state", "/tasks/%2E%2E/state")),
                                  ("/nope/api", "/", "/lockedx/api"))
            for variant in ALL_VARIANTS:
                if variant == "locked":
                    continue
                status, headers, body = http("POST", f"{g}/{variant}/api", b"{}")
                assert (status, headers["Retry-After"], body["error"]["code"]) == (503, "1", -32001), variant
                assert f"variant {variant} is not running" in body["error"]["message"]
            assert_gateway_refusals(port)


def test_native_gateway_without_an_agent_says_how_to_start_one(tmp_path):
    """Without AGENT=, the agent's routes (/agent/, /agentex/, /agent-pods/) answer the gateway's
    JSON-RPC 503 naming `make up AGENT=`, as a zoo variant that does not run names VARIANTS=all."""
    port = free_port()
    settings = Settings(state_dir=tmp_path, gateway_port=port)
    nginx_dir = paths(settings)["nginx"]
    (nginx_dir / "tmp").mkdir(parents=True)
    (nginx_dir / "nginx.conf").write_text(nginx_conf(settings))
    with nginx_running(nginx_dir / "nginx.conf", nginx_dir, port):
        for path in ("/agent/api", "/agentex/tasks", "/agent-pods/api"):
            status, headers, body = http("POST", f"http://127.0.0.1:{port}{path}", b"{}")
            assert (status, headers["Retry-After"], body["error"]["code"]) == (503, "1", -32001), path
            assert "make up AGENT=" in body["error"]["message"], path


def test_the_gateway_sends_to_a_pod_again_a_second_after_it_failed(tmp_path):
    """nginx marks a pod that refused a connection as failed for fail_timeout: its default (10 s)
    held a variant at 503 for 9.4 s after its pods were all back."""
    import time
    port, pod = free_port(), free_port()
    settings = Settings(state_dir=tmp_path, gateway_port=port, variants=("locked",))
    nginx_dir = paths(settings)["nginx"]
    (nginx_dir / "tmp").mkdir(parents=True)
    conf = re.sub(r"server 127\.0\.0\.1:\d+ ", f"server 127.0.0.1:{pod} ", nginx_conf(settings))
    assert conf.count("max_fails=1 fail_timeout=1s;") == conf.count("        server 127.0.0.1:")
    (nginx_dir / "nginx.conf").write_text(conf)
    with nginx_running(nginx_dir / "nginx.conf", nginx_dir, port):
        status, _, body = http("POST", f"http://127.0.0.1:{port}/locked/api", b"{}")  # every pod down
        assert (status, body["error"]["code"]) == (503, -32001)

        with path_echo(port=pod):  # the pod is back
            # it is served again once its fail_timeout has passed (1 s; nginx counts whole
            # seconds, so up to 2): by 5 s, where nginx's default held it out for 10
            deadline = time.monotonic() + 5
            while http("POST", f"http://127.0.0.1:{port}/locked/api", b"{}")[0] != 200:
                assert time.monotonic() < deadline, "the gateway still skips the pod after 5 s"
                time.sleep(0.2)
