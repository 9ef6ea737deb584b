"""Agentex ACP over JSON-RPC 2.0: parsing and validation, no I/O.

Accepts the full Agentex shapes (extra fields are ignored) and requires only what processing
needs: agent.id, task.id, event.id, event.content. Every rejection is an RpcError carrying the
standard JSON-RPC code and the HTTP status the pod answers with. Every request is checked once,
whole, before anything reads it (validate_document): strictly UTF-8, nesting, NULs, surrogates,
duplicate keys, numbers, so no variant can pass a store a value it would refuse with a 5xx.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UNAVAILABLE = -32001  # server error (-32000..-32099): a dependency is down; HTTP 503 with Retry-After

METHODS = ("task/create", "event/send", "task/cancel")
MAX_ID_LENGTH = 256
# ...and as UTF-8: Temporal refuses a workflow id over 1,000 bytes (the workflow id is the task id),
# and an id it refused after the ack was never applied: a task
# id of 250 emoji and 4 letters (1,004 bytes) was acked and lost. 768: any 256 characters of the BMP.
MAX_ID_BYTES = 768
MAX_BODY_BYTES = 1024 * 1024  # a larger body is refused with 413 before it is parsed
# What every stored value must satisfy (PostgreSQL text/jsonb, asyncpg's json.dumps, Temporal's
# JSON payloads), checked once over the whole parsed request, for every variant:
MAX_DEPTH = 64            # levels of objects/arrays, the request object being level 1
MAX_INT_DIGITS = 1000     # an integer literal longer than this is refused (Python's own limit is 4300)
# event.content as JSON with non-ASCII escaped, as Temporal's JSON payloads carry it (an agent's
# workflow gets the event in a signal): Temporal refuses a payload over 2 MiB, and a 1 MiB body of
# emoji escapes to 3 MiB. 1.5 MiB leaves the rest of a signal room. (It was 512 KiB, Temporal's
# warning size: 100,000 emoji, a 400-KB body, were refused.)
MAX_CONTENT_BYTES = 1536 * 1024
# Lab knobs an agent may pass in task.params, and their ranges (anything else in task.params is free);
# and shared_state, a boolean (state.state_agent).
TASK_KNOBS = {"continue_as_new_after": (int, 0, 1_000_000), "model_latency_ms": ((int, float), 0, 600_000),
              "idle_complete_s": ((int, float), 0, 86_400)}
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")  # NUL: refused by PostgreSQL; lone surrogates: not UTF-8


class RpcError(Exception):
    def __init__(self, code: int, message: str, http_status: int = 400, rpc_id: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.rpc_id = rpc_id

    def body(self) -> dict:
        return {"jsonrpc": "2.0", "id": self.rpc_id,
                "error": {"code": self.code, "message": self.message}}


def result_body(rpc_id: Any, result: dict) -> dict:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": result}


@dataclass(frozen=True)
class Request:
    rpc_id: Any
    method: str
    params: dict


@dataclass(frozen=True)
class TaskRef:
    agent_id: str
    task_id: str
    task_params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """One event/send, reduced to what processing needs (the event log's columns)."""
    event_id: str
    task_id: str
    agent_id: str
    content: dict
    sequence_id: int | None = None
    task_params: dict = field(default_factory=dict)

    def to_payload(self) -> dict:
        return {"event_id": self.event_id, "task_id": self.task_id, "agent_id": self.agent_id,
                "sequence_id": self.sequence_id, "content": self.content}


class _Unrepresentable:
    """A number literal no store can hold (1e999, an integer of thousands of digits): kept as its
    text by the parser, so the document walk can say where it was."""
    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def describe(self) -> str:
        if any(c in self.text for c in ".eE"):
            return f"number {self.text[:24]}{'...' if len(self.text) > 24 else ''} is out of range (not a finite double)"
        return f"integer of {len(self.text.lstrip('-'))} digits is longer than {MAX_INT_DIGITS} digits"


class _DuplicateKeys(dict):
    """An object that named a key more than once (kept: the walk reports it with its path)."""
    duplicates: list


def _parse_int(text: str) -> Any:
    return int(text) if len(text) <= MAX_INT_DIGITS + 1 else _Unrepresentable(text)


def _parse_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _Unrepresentable(text)


def _parse_constant(name: str) -> Any:
    raise RpcError(PARSE_ERROR, f"parse error: {name} is not valid JSON (numbers must be finite)")


def _object_pairs(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        obj = _DuplicateKeys(obj)
        obj.duplicates = [k for k, _ in pairs if k in seen or seen.add(k)]
    return obj


def _quote(text: str, limit: int = 40) -> str:
    shown = json.dumps(text[:limit])  # ASCII: NULs and surrogates show as escapes
    return shown[:-1] + '..."' if len(text) > limit else shown


def _render(path: tuple) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,40}", part):
            out += f".{part}" if out else part
        else:
            out += f"[{_quote(part)}]"
    if len(out) > 120:
        out = f"{out[:60]}...{out[-50:]} (level {len(path) + 1})"
    return out or "the request"


def _bad_string(text: str) -> str | None:
    found = _BAD_CHAR.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return f"contains a NUL character (\\u0000) at offset {found.start()}"
    return f"contains a lone surrogate (\\u{ord(found.group()):04x}) at offset {found.start()}, which is not valid Unicode"


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return _bad_string(value)
    if isinstance(value, _Unrepresentable):
        return value.describe()
    if isinstance(value, float) and not math.isfinite(value):
        return f"number {value} is not finite"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_DIGITS * 3.32:
        return f"integer is longer than {MAX_INT_DIGITS} digits"
    if value is None or isinstance(value, (bool, int, float)):
        return None
    return f"is a {type(value).__name__}, not a JSON value"


_CONTAINERS = (dict, list, _DuplicateKeys)
_PLAIN = (int, bool, type(None))  # the parser bounds integers already


def validate_document(doc: Any, rpc_id: Any = None) -> None:
    """One walk over a parsed request: nesting at most MAX_DEPTH levels, no NUL characters or lone
    surrogates in any string or key, no duplicate keys, only finite numbers that fit a double or
    MAX_INT_DIGITS digits. Raises RpcError naming what is wrong and where: -32600 for nesting (the
    request's shape) and for values outside "params", -32602 for values inside it."""
    def fail(path: tuple, problem: str) -> RpcError:
        inside_params = bool(path) and path[0] == "params"
        return RpcError(INVALID_PARAMS if inside_params else INVALID_REQUEST,
                        f"{'invalid params' if inside_params else 'invalid request'}: {_render(path)} {problem}",
                        rpc_id=rpc_id)

    if type(doc) not in _CONTAINERS:
        problem = _scalar_problem(doc)
        if problem:
            raise fail((), problem)
        return
    stack = [(doc, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RpcError(INVALID_REQUEST, f"invalid request: nested deeper than {MAX_DEPTH} levels at {_render(path)}",
                           rpc_id=rpc_id)
        if type(value) is list:
            items = enumerate(value)
        else:
            if type(value) is _DuplicateKeys:
                raise fail(path, f"names the key {_quote(value.duplicates[0])} more than once")
            items = value.items()
            for key in value:
                if _BAD_CHAR.search(key):
                    raise fail(path, f"has a key {_quote(key)} that {_bad_string(key)}")
        for key, item in items:
            kind = type(item)
            if kind in _CONTAINERS:
                if item or depth + 1 > MAX_DEPTH:  # an empty one needs no visit of its own
                    stack.append((item, path + (key,), depth + 1))
            elif kind in _PLAIN:
                continue
            elif kind is str:
                if _BAD_CHAR.search(item):
                    raise fail(path + (key,), _bad_string(item))
            else:
                problem = _scalar_problem(item)
                if problem:
                    raise fail(path + (key,), problem)


def check_identifier(value: Any, where: str, rpc_id: Any = None) -> str:
    """An id that becomes a key in PostgreSQL and Temporal: a non-blank string of at most
    MAX_ID_LENGTH characters and MAX_ID_BYTES bytes of UTF-8, without NUL characters or lone
    surrogates."""
    if not isinstance(value, str) or not value.strip():
        raise RpcError(INVALID_PARAMS, f'invalid params: "{where}" must be a non-empty string', rpc_id=rpc_id)
    if len(value) > MAX_ID_LENGTH:
        raise RpcError(INVALID_PARAMS, f'invalid params: "{where}" is longer than {MAX_ID_LENGTH} characters',
                       rpc_id=rpc_id)
    problem = _bad_string(value)
    if problem:
        raise RpcError(INVALID_PARAMS, f'invalid params: "{where}" {problem}', rpc_id=rpc_id)
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise RpcError(INVALID_PARAMS, f'invalid params: "{where}" is longer than {MAX_ID_BYTES} bytes in UTF-8',
                       rpc_id=rpc_id)
    return value


def parse_envelope(body: bytes) -> Request:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"parse error: the body is not valid UTF-8 ({exc.reason}, "
                       f"byte 0x{body[exc.start]:02x} at offset {exc.start})") from None
    try:
        doc = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant,
                         object_pairs_hook=_object_pairs)
    except json.JSONDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"parse error: {exc}") from None
    except RecursionError:
        raise RpcError(INVALID_REQUEST, f"invalid request: nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(doc, dict):
        raise RpcError(INVALID_REQUEST, "invalid request: expected one JSON-RPC object (batches are not supported)")
    rpc_id = doc.get("id")
    if rpc_id is not None and (isinstance(rpc_id, bool) or not isinstance(rpc_id, (str, int, float))):
        raise RpcError(INVALID_REQUEST, "invalid request: id must be a string, a number or null")
    if isinstance(rpc_id, str) and _bad_string(rpc_id):
        raise RpcError(INVALID_REQUEST, f"invalid request: id {_bad_string(rpc_id)}")
    validate_document(doc, rpc_id)
    if doc.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"', rpc_id=rpc_id)
    method = doc.get("method")
    if not isinstance(method, str) or not method:
        raise RpcError(INVALID_REQUEST, 'invalid request: "method" must be a non-empty string', rpc_id=rpc_id)
    if method not in METHODS:
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {_quote(method, 64)}; expected one of {', '.join(METHODS)}",
                       http_status=404, rpc_id=rpc_id)
    params = doc.get("params")
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, 'invalid params: "params" must be an object', rpc_id=rpc_id)
    return Request(rpc_id=rpc_id, method=method, params=params)


def _object(params: dict, key: str, rpc_id: Any) -> dict:
    value = params.get(key)
    if not isinstance(value, dict):
        raise RpcError(INVALID_PARAMS, f'invalid params: "{key}" must be an object', rpc_id=rpc_id)
    return value


def _identifier(obj: dict, where: str, rpc_id: Any) -> str:
    return check_identifier(obj.get("id"), f"{where}.id", rpc_id)


def _check_knobs(task_params: dict, rpc_id: Any) -> None:
    for name, (kind, low, high) in TASK_KNOBS.items():
        value = task_params.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
            what = "an integer" if kind is int else "a number"
            raise RpcError(INVALID_PARAMS, f'invalid params: "task.params.{name}" must be {what} from {low} to {high}',
                           rpc_id=rpc_id)
    if not isinstance(task_params.get("shared_state", False), (bool, type(None))):  # state.state_agent
        raise RpcError(INVALID_PARAMS, 'invalid params: "task.params.shared_state" must be a boolean', rpc_id=rpc_id)


def parse_task(req: Request) -> TaskRef:
    agent = _object(req.params, "agent", req.rpc_id)
    task = _object(req.params, "task", req.rpc_id)
    task_params = task.get("params") or {}
    if not isinstance(task_params, dict):
        raise RpcError(INVALID_PARAMS, 'invalid params: "task.params" must be an object', rpc_id=req.rpc_id)
    _check_knobs(task_params, req.rpc_id)
    task_id = _identifier(task, "task", req.rpc_id)
    if any(segment in (".", "..") for segment in task_id.split("/")):
        # the state endpoint takes the id as a path segment (percent-encoded); nginx decodes and
        # resolves dot segments before it routes: the state of task "../.." was asked of "/state"
        raise RpcError(INVALID_PARAMS, 'invalid params: "task.id" has a "." or ".." segment (split on "/"), which a '
                       "URL path cannot carry", rpc_id=req.rpc_id)
    return TaskRef(agent_id=_identifier(agent, "agent", req.rpc_id), task_id=task_id, task_params=task_params)


def parse_event_send(req: Request) -> Event:
    ref = parse_task(req)
    event = _object(req.params, "event", req.rpc_id)
    event_id = _identifier(event, "event", req.rpc_id)
    content = event.get("content")
    if not isinstance(content, dict):
        raise RpcError(INVALID_PARAMS, 'invalid params: "event.content" must be an object', rpc_id=req.rpc_id)
    size = len(json.dumps(content))
    if size > MAX_CONTENT_BYTES:
        raise RpcError(INVALID_PARAMS, f'invalid params: "event.content" is {size} bytes as JSON (non-ASCII escaped), '
                       f'more than {MAX_CONTENT_BYTES}', rpc_id=req.rpc_id)
    for key, expected in (("task_id", ref.task_id), ("agent_id", ref.agent_id)):
        if event.get(key) not in (None, expected):
            raise RpcError(INVALID_PARAMS, f'invalid params: "event.{key}" differs from the request\'s '
                           f'{key.split("_")[0]}.id', rpc_id=req.rpc_id)
    sequence_id = event.get("sequence_id")
    if sequence_id is not None and (isinstance(sequence_id, bool) or not isinstance(sequence_id, int)
                                    or not -2**63 <= sequence_id < 2**63):
        raise RpcError(INVALID_PARAMS, 'invalid params: "event.sequence_id" must be a 64-bit integer',
                       rpc_id=req.rpc_id)
    return Event(event_id=event_id, task_id=ref.task_id, agent_id=ref.agent_id, content=content,
                 sequence_id=sequence_id, task_params=ref.task_params)
