"""Property-based fuzz of /api and the state endpoint (issue 9): valid event/send requests and
mutations of them (fields dropped or retyped, deep nesting, NULs, lone surrogates, numbers no store
holds, duplicate keys, random bytes) against every variant the lab runs.

Properties: no response is a 5xx; a rejected request records nothing (rows of events and tasks
unchanged) and gets a JSON-RPC error object; an accepted one gets {"status": "processing"}; at the
end every component of the lab is healthy and no pod counted an internal error.

RACELAB_FUZZ_EXAMPLES sets the examples per property (default 250; `make fuzz` runs 10000).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from collections import Counter

import aiohttp
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from racelab.clients.burst import AGENT, event_send
from racelab.lab import native
from racelab.lab.topology import services

EXAMPLES = int(os.environ.get("RACELAB_FUZZ_EXAMPLES") or 250)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
SERIAL = itertools.count()

# ---------------------------------------------------------------- strategies

# text of any Unicode but surrogates and NUL (those are inserted on purpose by the mutations)
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=24)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=10)
ONE_IN_TEN = st.sampled_from([False] * 9 + [True])  # (integers() would favour 0)
# literals spliced into the serialized body in place of a value
RAW_LITERALS = st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "9" * 5000, "-" + "9" * 4400,
                                str(2 ** 64), str(-2 ** 63 - 1), "1e-400", "0.0e99999", "1" * 1000])


@st.composite
def valid_requests(draw) -> dict:
    n = next(SERIAL)
    task_id = f"fuzz-{os.getpid()}-{n}-" + draw(TEXT)[:16]
    method = draw(st.sampled_from(["event/send"] * 8 + ["task/create", "task/cancel"]))
    body = event_send(task_id, f"fuzz-ev-{os.getpid()}-{n}-" + draw(TEXT)[:16],
                      draw(st.integers(0, 2 ** 63 - 1)), draw(TEXT))
    body["method"] = method
    body["params"]["event"]["content"].update(draw(st.dictionaries(TEXT, JSON_VALUES, max_size=3)))
    if draw(st.booleans()):
        body["params"]["task"]["params"] = draw(st.dictionaries(TEXT, JSON_VALUES, max_size=2))
    if draw(st.booleans()):
        body["id"] = draw(st.none() | st.integers() | TEXT)
    return body


def paths(doc, prefix=()):
    """Every place in the document: key paths to each value."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, prefix + (i,))
    return out


def parent_of(doc, path):
    for part in path[:-1]:
        doc = doc[part]
    return doc


def insert(text: str, at: int, piece: str) -> str:
    at = min(at, len(text))
    return text[:at] + piece + text[at:]


@st.composite
def requests(draw) -> tuple[str, bytes, str]:
    """(what was done, body, content type)."""
    doc = draw(valid_requests())
    raw: dict[str, str] = {}  # placeholder string -> literal spliced into the serialized body
    mutations = draw(st.lists(st.sampled_from(
        ["drop", "retype", "nest", "nul", "surrogate", "huge number", "bad key", "duplicate key", "method",
         "long string"]), max_size=3))
    for mutation in mutations:
        where = draw(st.sampled_from([p for p in paths(doc) if p]))
        parent, key = parent_of(doc, where), where[-1]
        if mutation == "drop":
            del parent[key]
        elif mutation == "retype":
            parent[key] = draw(JSON_VALUES)
        elif mutation == "nest":
            levels = draw(st.sampled_from([2, 30, 63, 64, 65, 100, 990, 1000, 5000, 100_000]))
            opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
            token = f"@@raw{len(raw)}@@"
            raw[token] = opener * levels + json.dumps(parent[key]) + closer * levels
            parent[key] = token
        elif mutation in ("nul", "surrogate"):
            piece = "\x00" if mutation == "nul" else chr(draw(st.integers(0xD800, 0xDFFF)))
            value = parent[key]
            if isinstance(value, str):
                parent[key] = insert(value, draw(st.integers(0, 30)), piece)
            elif isinstance(parent, dict):
                parent[insert(key, draw(st.integers(0, 30)), piece)] = parent.pop(key)
            else:
                parent[key] = piece
        elif mutation == "huge number":
            token = f"@@raw{len(raw)}@@"
            raw[token] = draw(RAW_LITERALS)
            parent[key] = token
        elif mutation == "bad key" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["", " ", "\x00", "\ud800", "k" * 70_000, "\uffff", "\U0010ffff"]))] = parent.pop(key)
        elif mutation == "duplicate key" and isinstance(parent, dict):
            token = f"@@raw{len(raw)}@@"
            raw[token] = json.dumps(parent[key]) + ", " + json.dumps(key) + ": " + json.dumps(draw(JSON_VALUES))
            parent[key] = token
        elif mutation == "method":
            doc[draw(st.sampled_from(["method", "jsonrpc", "params", "id"]))] = draw(JSON_VALUES)
        elif mutation == "long string":
            parent[key] = "x" * draw(st.sampled_from([257, 70_000, 600_000]))
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    for token, literal in raw.items():
        text = text.replace(json.dumps(token), literal)
    body = text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes its (invalid) UTF-8 bytes
    if draw(ONE_IN_TEN):  # random bytes: overwritten, inserted, or a body of noise
        if draw(st.booleans()):
            body = draw(st.binary(max_size=300))
        else:
            for _ in range(draw(st.integers(1, 4))):
                at = draw(st.integers(0, len(body)))
                body = body[:at] + draw(st.binary(min_size=1, max_size=4)) + body[at + draw(st.integers(0, 2)):]
        mutations.append("bytes")
    content_type = draw(st.sampled_from(["application/json"] * 30 + [
        "text/plain", "application/json; charset=latin-1", "", "application/x-www-form-urlencoded"]))
    return "+".join(mutations) or "valid", body, content_type


ID_BYTES = st.one_of(st.binary(max_size=40), TEXT.map(lambda t: t.encode("utf-8")),
                     st.sampled_from([b"\x00", b"a\x00b", b"\xed\xa0\x80", b"\xff", b"a/b", b"..", b".", b" ",
                                      b"%", b"?", b"#", b"t" * 300, b"\xef\xbb\xbf"]))


def pct(raw: bytes) -> str:
    return "".join(chr(b) if chr(b).isalnum() or chr(b) in "-_.~" else f"%{b:02X}" for b in raw)


# ---------------------------------------------------------------- the runs

def lab_variants(lab) -> tuple[str, ...]:
    from racelab import config
    return tuple(getattr(lab.settings, "variants", None) or config.VARIANTS)


class Probe:
    """One event loop, HTTP session and database connection for all examples of a test."""

    def __init__(self, lab):
        self.lab = lab
        self.loop = asyncio.new_event_loop()
        self.session = self.run(self._session())
        self.conn = self.run(asyncpg.connect(lab.settings.pg_dsn))
        self.seen: Counter = Counter()

    @staticmethod
    async def _session():
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    async def rows(self) -> tuple[int, int]:
        return tuple(await self.conn.fetchrow("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM tasks)"))

    async def errors_counted(self) -> float:
        """Internal errors the pods counted (racelab_requests_total{outcome="error"})."""
        total = 0.0
        for variant in lab_variants(self.lab):
            for replica in range(1, self.lab.settings.replicas + 1):
                url = f"http://{self.lab.settings.host}:{self.lab.settings.pod_port(variant, replica)}/metrics"
                async with self.session.get(url) as resp:
                    text = await resp.text()
                total += sum(float(v) for v in re.findall(r'^racelab_requests_total\{[^}]*outcome="error"[^}]*\} (\S+)$',
                                                          text, re.M))
        return total

    def close(self):
        self.run(self.session.close())
        self.run(self.conn.close())
        self.loop.close()

    def assert_lab_healthy(self):
        insts = [i for s in services(self.lab.settings) for i in s.instances()]

        async def check():
            return await asyncio.gather(*(native.healthy(i, self.lab.settings, self.session) for i in insts))
        health = self.run(check())
        assert all(health), f"unhealthy after the fuzz: {[i.name for i, ok in zip(insts, health) if not ok]}"


@pytest.fixture
def probe(lab):
    p = Probe(lab)
    yield p
    p.close()


def test_fuzz_api(lab, probe):
    variants = lab_variants(lab)
    errors_before = probe.run(probe.errors_counted())

    @FUZZ
    @given(variant=st.sampled_from(variants), request=requests())
    def one(variant, request):
        what, body, content_type = request

        async def go():
            before = await probe.rows()
            async with probe.session.post(f"{lab.settings.gateway_url}/{variant}/api", data=body,
                                          headers={"Content-Type": content_type}) as resp:
                status, text = resp.status, await resp.text()
            return status, text, before, await probe.rows()
        status, text, before, after = probe.run(go())
        probe.seen[(what if status == 200 else "rejected", status)] += 1
        assert status < 500, f"{variant} answered {status} to a {what} request: {text[:500]}\nbody: {body[:300]!r}"
        reply = json.loads(text) if status != 413 or text.startswith("{") else None
        if status == 200:
            assert reply["result"]["status"] in ("processing", "running", "cancelled"), reply
            assert after[0] - before[0] in (0, 1), (before, after)
        else:
            assert after == before, f"a rejected {what} request ({status}) recorded rows: {before} -> {after}"
            if reply is not None:
                assert reply["jsonrpc"] == "2.0" and reply["error"]["code"] < 0 and reply["error"]["message"]

    one()
    by_status: Counter = Counter()
    for (_, status), n in probe.seen.items():
        by_status[status] += n
    print(f"\nfuzz /api: {sum(by_status.values())} requests over {', '.join(variants)}: by status",
          dict(sorted(by_status.items())), "; accepted by mutation",
          {k[0]: v for k, v in probe.seen.most_common() if k[1] == 200})
    probe.assert_lab_healthy()
    assert probe.run(probe.errors_counted()) == errors_before, "a pod counted an internal error"


def test_fuzz_state_endpoint(lab, probe):
    variants = lab_variants(lab)
    statuses: Counter = Counter()

    @FUZZ
    @given(variant=st.sampled_from(variants), task=ID_BYTES, agent=ID_BYTES | st.just(AGENT["id"].encode()),
           direct=st.booleans(), replica=st.integers(1, lab.settings.replicas))
    def one(variant, task, agent, direct, replica):
        base = (f"http://{lab.settings.host}:{lab.settings.pod_port(variant, replica)}" if direct
                else f"{lab.settings.gateway_url}/{variant}")
        url = f"{base}/tasks/{pct(task)}/state?agent_id={pct(agent)}"

        async def go():
            async with probe.session.get(url) as resp:  # sent as given: already percent-encoded
                return resp.status, resp.headers.get("Content-Type", ""), await resp.text()
        status, ctype, text = probe.run(go())
        statuses[status] += 1
        assert status < 500, f"{url} answered {status}: {text[:300]}"
        if direct:  # the pod itself always answers JSON (nginx may refuse a NUL with its own page)
            assert ctype.startswith("application/json"), (url, status, text[:200])
            body = json.loads(text)
            assert ("state" in body) if status == 200 else body["error"]["code"] < 0, body

    one()
    print(f"\nfuzz state: {EXAMPLES} examples:", dict(sorted(statuses.items())))
    probe.assert_lab_healthy()
