"""The bot under cProfile, from the moment the benchmark starts measuring (`--cprofile`).

    python -m bench.cprofile run    # same arguments as `python -m bot`

Profiling begins on SIGUSR1 (the harness sends it after start-up and warm-up, see
`Process.measuring`) and the statistics go at exit to the file named by $BENCH_CPROFILE, for
`python -m pstats` or snakeviz. Each SQL statement executed meanwhile is counted too, by its text, into
the same name with `.sql.txt`: how many statements an update costs is the first thing to look at.

Unlike py-spy's samples, cProfile sees every call on the event loop's thread, including the time spent
handing work to other threads; it slows pure-Python code down about twice, so read proportions, not
times.
"""

from __future__ import annotations

import atexit
import cProfile
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

_profile = cProfile.Profile()
_statements: Counter[str] = Counter()
_measuring = False


def _start(_signum: int, _frame: Any) -> None:
    global _measuring
    if not _measuring:
        _measuring = True
        _profile.enable()


def _count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    if _measuring:
        _statements[" ".join(statement.split())[:160]] += 1


def _dump() -> None:
    _profile.disable()
    target = os.environ.get("BENCH_CPROFILE")
    if not target or not _measuring:
        return
    _profile.dump_stats(target)
    lines = [f"{count}\t{statement}" for statement, count in _statements.most_common()]
    Path(f"{target}.sql.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    signal.signal(signal.SIGUSR1, _start)
    event.listen(Engine, "before_cursor_execute", _count)
    atexit.register(_dump)
    from bot.__main__ import main as bot_main

    return bot_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
