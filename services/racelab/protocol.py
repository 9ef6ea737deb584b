"""Agentex ACP over JSON-RPC 2.0: parsing and validation, no I/O.

Accepts the full Agentex shapes (extra fields are ignored) and requires only what processing
needs: agent.id, task.id, event.id, event.content. Every rejection is an RpcError carrying the
standard JSON-RPC code and the HTTP status the pod answers with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

METHODS = ("task/create", "event/send", "task/cancel")
MAX_ID_LENGTH = 256
MAX_BODY_BYTES = 1024 * 1024  # a larger body is refused with 413 before it is parsed


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


def parse_envelope(body: bytes) -> Request:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RpcError(PARSE_ERROR, f"parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise RpcError(INVALID_REQUEST, "invalid request: expected one JSON-RPC object (batches are not supported)")
    rpc_id = doc.get("id")
    if rpc_id is not None and (isinstance(rpc_id, bool) or not isinstance(rpc_id, (str, int, float))):
        raise RpcError(INVALID_REQUEST, "invalid request: id must be a string, a number or null")
    if doc.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"', rpc_id=rpc_id)
    method = doc.get("method")
    if not isinstance(method, str) or not method:
        raise RpcError(INVALID_REQUEST, 'invalid request: "method" must be a non-empty string', rpc_id=rpc_id)
    if method not in METHODS:
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method[:64]!r}; expected one of {', '.join(METHODS)}",
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
    value = obj.get("id")
    if not isinstance(value, str) or not value.strip():
        raise RpcError(INVALID_PARAMS, f'invalid params: "{where}.id" must be a non-empty string', rpc_id=rpc_id)
    if len(value) > MAX_ID_LENGTH:
        raise RpcError(INVALID_PARAMS, f'invalid params: "{where}.id" is longer than {MAX_ID_LENGTH} characters',
                       rpc_id=rpc_id)
    return value


def parse_task(req: Request) -> TaskRef:
    agent = _object(req.params, "agent", req.rpc_id)
    task = _object(req.params, "task", req.rpc_id)
    task_params = task.get("params") or {}
    if not isinstance(task_params, dict):
        raise RpcError(INVALID_PARAMS, 'invalid params: "task.params" must be an object', rpc_id=req.rpc_id)
    return TaskRef(agent_id=_identifier(agent, "agent", req.rpc_id),
                   task_id=_identifier(task, "task", req.rpc_id), task_params=task_params)


def parse_event_send(req: Request) -> Event:
    ref = parse_task(req)
    event = _object(req.params, "event", req.rpc_id)
    event_id = _identifier(event, "event", req.rpc_id)
    content = event.get("content")
    if not isinstance(content, dict):
        raise RpcError(INVALID_PARAMS, 'invalid params: "event.content" must be an object', rpc_id=req.rpc_id)
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
