"""Doing one fault and keeping its record: JSON Lines in the run's results folder (the report
draws them) and a row in the lab's `faults` table (the checker exporter exports it for the
dashboards' annotations). The row is written once the faulted component is back, retried while
PostgreSQL itself is the one restarting."""
from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import db
from ..config import Settings
from .faults import Fault

PAUSE_LEASES = 2.5  # a pause lasts this many lock leases: long enough for another holder to take over


@dataclass
class FaultRecord:
    kind: str
    target: str
    at: float               # epoch seconds: when the fault was injected
    back_at: float | None   # when the component was back and healthy
    run_id: str = ""
    error: str = ""

    @property
    def down_s(self) -> float | None:
        return None if self.back_at is None else self.back_at - self.at


async def inject(settings: Settings, runtime, fault: Fault, run_id: str = "", log_path=None,
                 pause_s: float | None = None) -> FaultRecord:
    process = fault.target
    # when the signal went (the runtime marks it): the time before the runtime looked the process
    # up was up to 190 ms earlier under a burst (supervisor's answer), and the events accepted
    # meanwhile were not counted in flight at the fault
    signalled = {"at": time.time()}
    try:
        if fault.kind == "pause-pod":
            await runtime.pause(process, pause_s if pause_s is not None else settings.lock_ttl_s * PAUSE_LEASES,
                                signalled=signalled)
            back_at = await runtime.wait_back(process, None)
        else:
            old = await runtime.kill(process, signalled=signalled)
            back_at = await runtime.wait_back(process, old)
        record = FaultRecord(fault.kind, process, signalled["at"], back_at, run_id)
    except asyncio.CancelledError:
        # the nemesis was stopped mid-fault (the fault itself is undone by then): the fault
        # happened, so it is recorded all the same, as not seen back
        record = FaultRecord(fault.kind, process, signalled["at"], None, run_id,
                             error="cancelled: the nemesis was stopped")
        try:
            await asyncio.wait_for(keep(settings, runtime, record, log_path, store_timeout_s=3.0), 5.0)
        except (asyncio.TimeoutError, OSError):
            pass  # the JSON line is written first; the row is best effort while stopping
        raise
    except Exception as exc:
        record = FaultRecord(fault.kind, process, signalled["at"], None, run_id,
                             error=f"{exc.__class__.__name__}: {exc}")
    await keep(settings, runtime, record, log_path)
    return record


async def keep(settings: Settings, runtime, record: FaultRecord, log_path, store_timeout_s: float = 30.0) -> None:
    """The fault's JSON line in the run's log and its row in the lab's faults table."""
    if log_path:
        path = Path(log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"t": record.at, **asdict(record)}) + "\n")
    if getattr(runtime, "name", "native") == "docker":
        stored = await runtime.store(record)  # the lab's PostgreSQL is reachable from inside the compose network only
    else:
        stored = await store(settings, record, store_timeout_s)
    if not stored:
        where = f"; it is in {log_path}" if log_path else ""
        print(f"nemesis: the {record.kind} of {record.target} is not in the lab's faults table (PostgreSQL did not "
              f"take it{where}): the dashboards will not mark it", file=sys.stderr, flush=True)


async def store(settings: Settings, record: FaultRecord, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            async with db.connection(settings.pg_dsn) as conn:
                await conn.execute(
                    """INSERT INTO faults (run_id, kind, target, at, back_at)
                       VALUES ($1, $2, $3, to_timestamp($4), to_timestamp($5))""",
                    record.run_id, record.kind, record.target, record.at, record.back_at)
            return True
        except Exception:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)


if __name__ == "__main__":
    # `python -m racelab.nemesis.record '<FaultRecord as JSON>'`: store one record in the lab's
    # faults table (the compose runtime runs this inside the checker container).
    doc = json.loads(sys.argv[1])
    ok = asyncio.run(store(Settings.from_env(), FaultRecord(**{k: doc[k] for k in FaultRecord.__dataclass_fields__})))
    sys.exit(0 if ok else 1)
