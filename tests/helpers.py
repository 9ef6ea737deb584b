"""Small clients for the tests: JSON-RPC calls through the gateway, reads of the lab's tables."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import aiohttp

from racelab import db
from racelab.checker.quiescence import wait_for_quiescence
from racelab.clients.burst import AGENT, event_send, state_url


ZOO = ("temporal-naive", "cursor-only", "cursor-skip", "lock-only", "asyncio-lock", "queue", "optimistic")
# The bursts that test_burst.py and test_zoo.py share among their tests (their modules are marked
# pytest.mark.shared_burst(name)). The conftest starts a burst with `early` as soon as the
# session's lab is up, beside the session's load, while the tests that need no lab still run; the
# others when a test first needs them.
SHARED_BURSTS = {
    # 20 tasks x 30 concurrent events per variant through nginx, with a client ledger
    "design": dict(tasks=20, events=30, variants=("unguarded", "locked", "temporal"), ledger=True, early=True),
    # 160 concurrent events per variant, all seven at once. Not early: the zoo's races need the
    # burst to themselves (sent beside the load and the other burst, its events took 13 s to send
    # instead of about 4, and cursor-skip's commit-order race lost none of them)
    "zoo": dict(tasks=8, events=20, variants=ZOO, ledger=False, early=False),
}


def instances_of(settings, service: str) -> list:
    """The lab's processes of one service, as its topology names them (e.g. "queue-worker")."""
    from racelab.lab.topology import services
    return [inst for s in services(settings) if s.name == service for inst in s.instances()]


@contextlib.asynccontextmanager
async def stopped(settings, service: str):
    """The lab's processes of one service stopped (by supervisor) for the block, and started again
    after it, whatever happened in it; yields their names."""
    from racelab.lab import native
    names = [inst.name for inst in instances_of(settings, service)]
    try:
        await asyncio.to_thread(native.supervisorctl, settings, "stop", *names)
        yield names
    finally:
        await asyncio.to_thread(native.supervisorctl, settings, "start", *names, check=False)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def post(settings, variant: str, body, *, raw: bytes | None = None, content_type="application/json"):
    """POST to /<variant>/api; returns (HTTP status, parsed JSON reply or None)."""
    data = raw if raw is not None else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{settings.gateway_url}/{variant}/api", data=data,
                                headers={"Content-Type": content_type}) as resp:
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, None


async def send_event(settings, variant: str, task_id: str, event_id: str, sequence_id: int = 1, task_params=None):
    body = event_send(task_id, event_id, sequence_id, f"hello {sequence_id}")
    if task_params:
        body["params"]["task"]["params"] = task_params
    return await post(settings, variant, body)


async def send_events(settings, variant: str, task_id: str, event_ids, first_sequence_id: int = 1,
                      task_params=None) -> list[int]:
    """The events all in flight at once (sequence ids counting from first_sequence_id); their
    HTTP statuses, in order."""
    replies = await asyncio.gather(*(send_event(settings, variant, task_id, eid, first_sequence_id + i, task_params)
                                     for i, eid in enumerate(event_ids)))
    return [status for status, _ in replies]


def task_call(method: str, task_id: str) -> dict:
    """A task/create or task/cancel request."""
    return {"jsonrpc": "2.0", "id": f"{method}-{task_id}", "method": method,
            "params": {"agent": dict(AGENT), "task": {"id": task_id, "name": "lifecycle"}}}


async def get_state(settings, variant: str, task_id: str, agent_id: str = AGENT["id"]):
    async with aiohttp.ClientSession() as session:
        async with session.get(state_url(settings.gateway_url, variant, task_id, agent_id)) as resp:
            return resp.status, await resp.json()


async def table_counts(settings, task_id: str | None = None) -> dict[str, int]:
    """Rows per table: all rows of the ingestion tables (what a request records directly), or
    every table's rows for one task."""
    tables = ("events", "tasks") if task_id is None else ("events", "tasks", "task_states", "effects", "trackers")
    where = "" if task_id is None else " WHERE task_id = $1"
    args = () if task_id is None else (task_id,)
    async with db.connection(settings.pg_dsn) as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}{where}", *args) for t in tables}


async def counts_for(settings, task_prefix: str, settle_s: float = 3.0, applied_settle_s: float = 1.0, **wait):
    """The tasks' counts once quiescent (wait: wait_for_quiescence's other knobs, e.g. safe_settle_s).
    Once everything is applied the counts must hold still for applied_settle_s, as the checker's:
    a second delivery acked already may still be on its way to a duplicate (temporal's relay alone
    lingers up to 0.5 s). A test that only waits here for its events, and looks for duplicates
    later, may pass a shorter one."""
    results, quiescent = await wait_for_quiescence(settings.pg_dsn, task_prefix, settle_s=settle_s, timeout_s=120,
                                                   applied_settle_s=applied_settle_s, **wait)
    assert quiescent, f"tasks {task_prefix}* did not become quiescent"
    return results


async def wait_until(predicate, timeout_s: float = 30.0, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(poll_s)


async def stop_mid_pause(settings, cmd: list[str], sig, env: dict, pod: str = "pod-locked-1",
                         cwd=None) -> tuple[str, int, str, float]:
    """Run a fault injector (cmd) that pauses `pod`, send it `sig` once the pod is stopped, and
    return (the pod's process state right after the injector exited, its exit code, its output,
    seconds from the pause to that exit). The pod is resumed in any case afterwards."""
    import os
    import signal
    import subprocess

    from racelab.lab.native import process_state
    from racelab.nemesis.runtimes import NativeRuntime
    pid = NativeRuntime(settings).pid(pod)
    assert process_state(pid) != "T"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
    try:
        deadline = time.monotonic() + 30
        while process_state(pid) != "T":
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the pod was never paused: {proc.communicate()[0][-2000:]}")
            await asyncio.sleep(0.02)
        paused_at = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        return process_state(pid), proc.returncode, out, time.monotonic() - paused_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.killpg(pid, signal.SIGCONT)  # never leave the session's pod stopped, whatever happened


# ------------------------------------------------------------ a gateway's nginx.conf run on its own

def free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def nginx_running(conf_path, prefix, port: int):
    """nginx with conf_path (prefix: its -p directory; the conf says `daemon off;`), once its
    /healthz on port answers."""
    import shutil
    import subprocess
    import time
    import urllib.error
    import urllib.request
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf_path), "-e", "stderr"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(50):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    assert resp.status == 200
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.communicate()[1]
                time.sleep(0.1)
        else:
            raise AssertionError(f"nginx did not answer on port {port} in 5 s")
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def http(method: str, url: str, body: bytes | None = None):
    """(status, headers, JSON body) of one request, the URL sent as given (already percent-encoded)."""
    import urllib.error
    import urllib.request
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers, json.loads(refused.read())


# (sent to the gateway, what its pod must see) for the routes both gateways have, native and compose:
# the client's own path minus the prefix, percent-encoding and slashes as sent
GATEWAY_ROUTES = (("/locked/tasks/a%2Fb/state?agent_id=x", "/tasks/a%2Fb/state?agent_id=x"),
                  ("/locked/tasks/a//b/state?agent_id=x", "/tasks/a//b/state?agent_id=x"),
                  ("/locked/tasks/%E7%95%8C%20x/state", "/tasks/%E7%95%8C%20x/state"),
                  ("/agent/tasks/a%2Fb/state", "/acp/tasks/a%2Fb/state"),
                  ("/agentex/states?task_id=t", "/states?task_id=t"),
                  ("//locked/api", "/api"))  # (a gateway URL ending in "/")


def assert_gateway_routes(gateway: str, routes, json_404_paths) -> None:
    """Through a gateway whose pods are a path_echo: each route reaches its pod with the path it
    must see (a POST too), and each of json_404_paths gets the gateway's JSON-RPC 404."""
    for sent, seen in routes:
        status, _, body = http("GET", gateway + sent)
        assert (status, body) == (200, {"path": seen}), sent
    assert http("POST", gateway + "/locked/api", b"{}")[2] == {"path": "/api"}
    for path in json_404_paths:
        status, headers, body = http("GET", gateway + path)
        assert (status, body["jsonrpc"], body["error"]["code"]) == (404, "2.0", -32600), path
        assert headers["Content-Type"].startswith("application/json"), path


@contextlib.contextmanager
def path_echo(port: int = 0):
    """An HTTP server on 127.0.0.1 (port: a given one, else a free one) standing in for a pod:
    answers every request with the path (and query) it was sent, as JSON. Yields its port."""
    import http.server
    import threading

    class Echo(http.server.BaseHTTPRequestHandler):
        def answer(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        do_GET = do_POST = answer

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def raw_http(port: int, request: bytes) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one raw HTTP/1.1 exchange with 127.0.0.1:port (the gateway
    answers with Connection: close or a Content-Length)."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _length(data: bytes) -> int:
    head = data[:data.index(b"\r\n\r\n")].decode("latin-1").lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":", 1)[1])
    return 1 << 30  # no length: read until the gateway closes


# What nginx itself refuses, before a pod sees it: (raw request, status). Each must get the
# gateway's JSON-RPC error (-32600), never nginx's HTML page; and /<variant> without its slash a
# JSON-RPC 404, not a 301 to /<variant>/.
GATEWAY_REFUSALS = (
    (b"POST /locked/api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9437184\r\n\r\n", 413),
    (b"GET /locked/tasks/" + b"x" * 10000 + b"/state HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /locked/healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * 20000 + b"\r\n\r\n", 431),
    (b"GET /locked/tasks/%00/state HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"POST /locked/api HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    (b"POST /locked/api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST /locked HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", 404),
    (b"GET /agent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
)


def assert_gateway_refusals(port: int) -> None:
    for request, status in GATEWAY_REFUSALS:
        got, headers, body = raw_http(port, request)
        assert got == status and headers.get("Content-Type", "").startswith("application/json"), (
            request[:60], got, headers, body[:200])
        assert json.loads(body)["error"]["code"] == -32600, (request[:60], body[:200])
