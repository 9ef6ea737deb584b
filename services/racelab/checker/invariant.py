"""The invariant a user declares for a black-box agent (variant "agent"), and what the checker
makes of it. Pure: no I/O but reading the declaration's text.

The lab cannot know an arbitrary agent's state schema, so the user says, in `racelab.toml`
beside the agent (the folder given as AGENT=), what must hold after every event:

    [invariant]
    counter = "turn_number"        # dotted path to an int that must equal the number of accepted events
    counter_start = 0              # its value before the first event (default 0)
    list = "messages"              # dotted path to a list that must hold each accepted event exactly once
    item = "content"               # how an entry names its event: "id" (the event id) or "content" (its text)
    key = "content"                # entries are objects: the field holding that id or text
    where = { role = "user" }      # only entries whose fields equal these count

Every key is optional. translate() turns the agent's own state into the lab's view of a state,
{"history": [event ids in the order applied], "processing_count": n}, so counts.compute() counts
lost updates, duplicates and drift for the agent exactly as for the lab's own variants:
- with `list`: the history is the list's entries matched to accepted events (an entry that matches
  none is a phantom); with `counter` too, processing_count is the counter, else the entry count;
- with `counter` only: which events were lost cannot be seen, only how many: the history is
  min(counter, accepted) accepted events (those a model call served first), then repeats for a
  counter above accepted, so lost = accepted - counter and duplicate applications = counter - accepted;
- with no declaration: the generic view, "applied" = served by at least one model call (an effect
  row), so lost = accepted events no model call served; duplicate side effects as for any variant.
"""
from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

FILE_NAME = "racelab.toml"
ITEM_KINDS = ("id", "content")
_KEYS = {"counter", "counter_start", "list", "item", "key", "where"}
_MISSING = object()


class InvariantError(ValueError):
    pass


@dataclass(frozen=True)
class Invariant:
    counter: str | None = None
    counter_start: int = 0
    list: str | None = None
    item: str = "id"
    key: str | None = None
    where: dict = field(default_factory=dict)

    @property
    def declared(self) -> bool:
        return self.counter is not None or self.list is not None

    def describe(self) -> str:
        parts = []
        if self.list:
            what = f"{self.list}[]" + (f".{self.key}" if self.key else "")
            cond = "".join(f" where {k} == {v!r}" for k, v in self.where.items())
            parts.append(f"{what}{cond} holds each event's {self.item} exactly once")
        if self.counter:
            parts.append(f"{self.counter} - {self.counter_start} == accepted events")
        return "; ".join(parts) or "none declared (generic counts: an event is applied when a model call served it)"


class AgentEvent(NamedTuple):
    """What translate() needs of one logged event of the agent variant."""
    task_id: str
    agent_id: str
    event_id: str
    seq: int
    text: str | None  # content.content when it is a string (a text message), else None


def parse(text: str, where_from: str = FILE_NAME) -> Invariant:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvariantError(f"{where_from}: not valid TOML: {exc}") from None
    section = doc.get("invariant", {})
    if not isinstance(section, dict):
        raise InvariantError(f"{where_from}: [invariant] must be a table")
    unknown = sorted(set(section) - _KEYS)
    if unknown:
        raise InvariantError(f"{where_from}: unknown key(s) {', '.join(unknown)} in [invariant]; "
                             f"known: {', '.join(sorted(_KEYS))}")
    for name in ("counter", "list", "key"):
        if name in section and (not isinstance(section[name], str) or not section[name].strip()):
            raise InvariantError(f"{where_from}: {name} must be a non-empty string (a dotted path)")
    start = section.get("counter_start", 0)
    if isinstance(start, bool) or not isinstance(start, int):
        raise InvariantError(f"{where_from}: counter_start must be an integer")
    item = section.get("item", "id")
    if item not in ITEM_KINDS:
        raise InvariantError(f"{where_from}: item must be one of {', '.join(ITEM_KINDS)}, not {item!r}")
    where = section.get("where", {})
    if not isinstance(where, dict):
        raise InvariantError(f"{where_from}: where must be a table, e.g. where = {{ role = \"user\" }}")
    if ("key" in section or where) and "list" not in section:
        raise InvariantError(f"{where_from}: key and where describe the entries of list; list is missing")
    return Invariant(counter=section.get("counter"), counter_start=start, list=section.get("list"),
                     item=item, key=section.get("key"), where=dict(where))


def load(agent_path: str | Path | None) -> Invariant | None:
    """The declaration beside the agent (None when there is no file, or no agent)."""
    if not agent_path:
        return None
    path = Path(agent_path) / FILE_NAME
    if not path.is_file():
        return None
    return parse(path.read_text(), str(path))


def resolve(doc: Any, path: str) -> Any:
    """A dotted path into nested objects; a numeric part indexes a list. _MISSING if absent."""
    node = doc
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is _MISSING or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def entry_keys(inv: Invariant | None, state: Any) -> list[str]:
    """A key for each entry of the invariant's list in an agent's state: the md5 of the entry's
    canonical JSON and how many equal entries come before it (the n-th copy of a text is the n-th
    event with that text). The Agentex API model records when each key first appeared in a state
    the agent wrote (agentex_applied): the entry's apply time."""
    if inv is None or not inv.list or not isinstance(state, dict):
        return []
    entries = resolve(state, inv.list)
    keys, seen = [], {}
    for entry in entries if isinstance(entries, list) else []:
        digest = hashlib.md5(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        seen[digest] = seen.get(digest, 0) + 1
        keys.append(f"{digest}:{seen[digest]}")
    return keys


def translate(inv: Invariant | None, state: dict | None, events: list[AgentEvent],
              served: dict[str, int] | None = None, applied: dict[str, float] | None = None) -> dict:
    """The lab's view of one task's agent state. events: the task's logged events; served:
    effect rows per event id; applied: when each list entry (entry_keys) first appeared in a state
    the agent wrote (epoch seconds). Returns {"history", "processing_count", "invariant",
    "unmatched"}, and "applied_at" (parallel to history, as the lab's variants keep it) as far as
    those times go."""
    served = served or {}
    ordered = sorted(events, key=lambda e: e.seq)
    state = state if isinstance(state, dict) else {}
    out: dict[str, Any] = {"invariant": inv.describe() if inv else Invariant().describe(), "unmatched": 0}
    if inv is None or not inv.declared:
        history = [e.event_id for e in ordered if served.get(e.event_id)]
        return {**out, "history": history, "processing_count": len(history)}
    counter = None
    if inv.counter:
        raw = _as_int(resolve(state, inv.counter))
        counter = None if raw is None else raw - inv.counter_start
    if inv.list:
        entries = resolve(state, inv.list)
        entries = entries if isinstance(entries, list) else []
        history: list[str] = []
        by_text: dict[str, list[str]] = {}
        for e in ordered:
            if e.text is not None:
                by_text.setdefault(e.text, []).append(e.event_id)
        used: dict[str, int] = {}
        unmatched = 0
        kept_keys: list = []  # entry_keys of the entries in history, in its order (hashed only with times)
        for entry, entry_key in zip(entries, entry_keys(inv, state) if applied else [None] * len(entries)):
            if inv.where:
                if not isinstance(entry, dict) or any(entry.get(k) != v for k, v in inv.where.items()):
                    continue
            kept_keys.append(entry_key)
            value = entry.get(inv.key, _MISSING) if inv.key else entry
            if inv.key and not isinstance(entry, dict):
                value = _MISSING
            if inv.item == "id":
                if isinstance(value, (str, int)) and not isinstance(value, bool):
                    history.append(str(value))
                    continue
            elif isinstance(value, str) and value in by_text:
                # the n-th entry with a text is the n-th accepted event with that text (then repeats)
                ids = by_text[value]
                n = used.get(value, 0)
                used[value] = n + 1
                history.append(ids[n] if n < len(ids) else ids[n % len(ids)])
                continue
            unmatched += 1
            history.append(f"?unmatched:{unmatched}")  # a phantom: no accepted event behind it
        out = {**out, "history": history, "unmatched": unmatched,
               "processing_count": counter if counter is not None else len(history)}
        if applied:
            times = []
            for k in kept_keys:
                if k not in applied:
                    break  # (a state written before the times were kept): the rest has no time
                times.append(applied[k])
            out["applied_at"] = times
        return out
    # counter only: how many, not which
    n = max(0, counter or 0)
    candidates = sorted(ordered, key=lambda e: (not served.get(e.event_id), e.seq))
    history = [e.event_id for e in candidates[:n]]
    while candidates and len(history) < n:
        history.append(candidates[(len(history) - len(candidates)) % len(candidates)].event_id)
    return {**out, "history": history, "processing_count": counter if counter is not None else 0}


def translate_states(inv: Invariant | None, variant: str, states: Iterable, events: Iterable[AgentEvent],
                     effects: Iterable, applied: dict[tuple, dict[str, float]] | None = None) -> list:
    """counts.FinalState rows with the agent variant's states replaced by their lab view (one per
    task of the variant that has events or a state). effects: counts.EffectCount rows; applied:
    (task, agent) -> its entries' first-seen times (translate)."""
    applied = applied or {}
    from .counts import FinalState
    by_task: dict[tuple, list[AgentEvent]] = {}
    for e in events:
        by_task.setdefault((e.task_id, e.agent_id), []).append(e)
    served: dict[tuple, dict[str, int]] = {}
    for f in effects:
        if f.variant == variant:
            served.setdefault((f.task_id, f.agent_id), {})[f.event_id] = f.rows
    out, seen = [], set()
    for s in states:
        if s.variant != variant:
            out.append(s)
            continue
        key = (s.task_id, s.agent_id)
        seen.add(key)
        out.append(FinalState(variant, s.task_id, s.agent_id,
                              translate(inv, s.state, by_task.get(key, []), served.get(key), applied.get(key))))
    for key, evs in by_task.items():  # events but no state: the agent never wrote one
        if key not in seen:
            out.append(FinalState(variant, key[0], key[1], translate(inv, None, evs, served.get(key))))
    return out
