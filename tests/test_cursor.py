"""The agent task tracker's cursor only moves forward (real PostgreSQL)."""
import asyncpg
import pytest

from racelab import db
from helpers import new_id


async def test_cursor_moving_backwards_is_refused(lab):
    task = new_id("cursor")
    async with db.connection(lab.settings.pg_dsn) as conn:
        await db.advance_cursor(conn, "locked", task, "a", 10, fence=1)
        await db.advance_cursor(conn, "locked", task, "a", 10, fence=2)  # staying put is allowed
        with pytest.raises(db.CursorMovedBackwards):
            await db.advance_cursor(conn, "locked", task, "a", 5, fence=3)
        # refused at the table too, whoever writes
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE trackers SET last_processed_seq = 3 WHERE task_id = $1", task)
        await db.advance_cursor(conn, "locked", task, "a", 12, fence=4)
        row = await conn.fetchrow("SELECT last_processed_seq, fence FROM trackers WHERE task_id = $1", task)
    assert (row["last_processed_seq"], row["fence"]) == (12, 4)
