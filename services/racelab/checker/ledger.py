"""The client ledger: which event ids a client saw acked with {"status": "processing"}.

What the client saw acked is the truth the lab's numbers must match, so every client that sends
(burst, load, chaos, matrix) writes one: JSON Lines, one acked event per line,
  {"variant": "locked", "task_id": "...", "agent_id": "...", "event_id": "..."}
one file per client process (Locust: one per worker process), merged by reading them all.
An event acked twice (a retry, a redelivery) may appear twice; the checker counts distinct ids.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, NamedTuple


class LedgerEntry(NamedTuple):
    variant: str
    task_id: str
    agent_id: str
    event_id: str


class LedgerError(ValueError):
    """A ledger file that cannot be read: the checker refuses it rather than guess."""


class LedgerWriter:
    """Appends acked events to a JSON Lines file, one line each, flushed per line: a client
    that crashes keeps what it wrote."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # a ledger is one run's acks: appending to an older file (or to any file a user names
            # by mistake) would mix runs, so it must be new
            self._file = open(self.path, "x", buffering=1, encoding="utf-8")
        except FileExistsError:
            raise LedgerError(f"ledger {self.path} exists already: a ledger holds one run's acks; "
                              "name a new file") from None

    def acked(self, variant: str, task_id: str, agent_id: str, event_id: str) -> None:
        self._file.write(json.dumps({"variant": variant, "task_id": task_id, "agent_id": agent_id,
                                     "event_id": event_id}, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._file.close()


def ledger_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named, and the ledger*.jsonl files in the directories named."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.glob("ledger*.jsonl")))
        elif p.exists():
            out.append(p)
        else:
            raise LedgerError(f"ledger {p}: no such file or directory")
    return out


def read_ledger(paths: Iterable[str | os.PathLike]) -> list[LedgerEntry]:
    entries: list[LedgerEntry] = []
    for path in ledger_files(paths):
        try:
            entries += _read_one(path)
        except UnicodeDecodeError as exc:
            raise LedgerError(f"{path}: not a ledger (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    return entries


def _read_one(path: Path) -> list[LedgerEntry]:
    entries: list[LedgerEntry] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                entries.append(LedgerEntry(str(doc["variant"]), str(doc["task_id"]), str(doc["agent_id"]),
                                           str(doc["event_id"])))
            except (ValueError, KeyError, TypeError) as exc:
                if not line.endswith("\n"):
                    continue  # a writer killed mid-line: its last, unfinished line was never an ack it saw
                raise LedgerError(f"{path}:{n}: not a ledger line ({exc.__class__.__name__}: {exc})") from None
    return entries
