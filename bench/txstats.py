"""The bot with every write transaction counted and timed by the code that opened it (`--tx-stats`).

    python -m bench.txstats run     # same arguments as `python -m bot`

`Database.transaction` is wrapped before the bot starts; at exit a summary goes to the JSON file named by
$BENCH_TX_STATS: per call site, how many transactions, the time spent getting one (waiting for the
writer's turn, a pooled connection and BEGIN IMMEDIATE) and the time inside (statements and COMMIT),
with the event loop thread's CPU time meanwhile (equal to the time inside when nothing else ran).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database

ROOT = Path(__file__).resolve().parent.parent
OURS = ("bot", "handlers", "scheduler")
SKIP = ("storage/db.py", "bench/txstats.py", "contextlib.py")

_stats: defaultdict[str, dict[str, float]] = defaultdict(
    lambda: {"count": 0, "getting_s": 0.0, "inside_s": 0.0, "inside_cpu_s": 0.0}
)
_original = Database.transaction


def _site() -> str:
    """The two innermost frames of our code that led to this transaction, innermost first."""
    found: list[str] = []
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename)
        try:
            relative = path.resolve().relative_to(ROOT)
        except ValueError:
            continue
        if relative.parts[0] not in OURS or any(str(relative).endswith(skip) for skip in SKIP):
            continue
        found.append(f"{relative}:{frame.name}")
        if len(found) == 2:
            break
    return " ← ".join(found) or "other"


@asynccontextmanager
async def _transaction(self: Database) -> AsyncIterator[AsyncConnection]:
    site = _site()
    asked = time.perf_counter()
    async with _original(self) as conn:
        began = time.perf_counter()
        began_cpu = time.thread_time()
        yield conn
    entry = _stats[site]
    entry["count"] += 1
    entry["getting_s"] += began - asked
    entry["inside_s"] += time.perf_counter() - began
    # The event loop's thread: CPU of this transaction, and of whatever else ran while it awaited.
    entry["inside_cpu_s"] += time.thread_time() - began_cpu


def _dump() -> None:
    target = os.environ.get("BENCH_TX_STATS")
    if not target:
        return
    rows: dict[str, Any] = dict(sorted(_stats.items(), key=lambda item: -item[1]["count"]))
    Path(target).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


def main() -> int:
    Database.transaction = _transaction  # type: ignore[method-assign]
    atexit.register(_dump)
    from bot.__main__ import main as bot_main

    return bot_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
