"""Runs every benchmark, prints one table and writes the same figures as JSON.

    python -m bench                # the full run (make bench), under 10 minutes on 2 cores
    python -m bench --quick        # fewer citizens, messages and tickets (make bench ARGS=--quick)
    python -m bench --only scan,storage
    python -m bench --profile      # py-spy on every bot process; collapsed stacks kept in the work dir
    python -m bench --tx-stats     # the bot's write transactions counted by call site (bench/txstats.py)
    python -m bench --cprofile     # cProfile and SQL statements of the measured part (bench/cprofile.py)
    python -m bench --citizens 100 # intake with this many citizens instead of the plan's

Everything runs on 127.0.0.1: the fake Telegram server inside this process, the bot (`python -m bot
run`) and the echo bot as child processes configured through their environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import delivery, intake, memory, recovery, scan, writes
from bench.harness import ROOT, Profiler, Row, Section, TxStats, load_average, machine, table

NAMES = ("intake", "delivery", "scan", "memory", "storage", "recovery")


@dataclass(frozen=True)
class Plan:
    citizens: int  # intake: citizens filing at once (and echo users)
    status_messages: int  # delivery: one to each of this many citizens
    cards: int  # delivery: cards to one group
    group_rate: int  # delivery: per-group limit per minute, bot and fake alike
    scan_sizes: tuple[int, ...]
    scan_repetitions: int
    writes: int  # storage: tickets filed each way
    backlog: int  # crash recovery: queued messages
    idle_seconds: float  # memory: how long the bot sits idle before its peak is read
    # --quick saves bot start-ups (about 5-10 s each on 2 cores): one delivery run with both kinds of
    # message, and no idle run on an empty database.
    quick: bool = False


FULL = Plan(
    citizens=500,
    status_messages=1000,
    cards=200,
    group_rate=100,
    scan_sizes=(10_000, 100_000, 1_000_000),
    scan_repetitions=5,
    writes=1000,
    backlog=1000,
    idle_seconds=5.0,
)
QUICK = Plan(
    citizens=40,
    status_messages=200,
    cards=30,
    group_rate=120,
    scan_sizes=(10_000, 100_000),
    scan_repetitions=3,
    writes=300,
    backlog=200,
    idle_seconds=2.0,
    quick=True,
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, under 2 minutes")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(NAMES)}")
    parser.add_argument(
        "--output", type=Path, help="JSON file (default bench/results.json, -quick for --quick)"
    )
    parser.add_argument("--citizens", type=int, help="intake: this many citizens instead of the plan's")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (databases, bot logs)")
    parser.add_argument("--profile", action="store_true", help="py-spy every bot process (implies --keep)")
    parser.add_argument(
        "--cprofile",
        action="store_true",
        help="cProfile the bot while measured, and count its SQL statements (implies --keep)",
    )
    parser.add_argument(
        "--tx-stats", action="store_true", help="count the bot's write transactions by call site (slower)"
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(NAMES)
    unknown = sorted(set(chosen) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    args.chosen = chosen
    if args.output is None:
        args.output = ROOT / "bench" / ("results-quick.json" if args.quick else "results.json")
    return args


class Runner:
    def __init__(self, plan: Plan, workdir: Path, chosen: list[str]) -> None:
        self.plan = plan
        self.workdir = workdir
        self.chosen = chosen
        self.sections: list[Section] = []
        self.failed: list[str] = []
        self.intake_memory: dict[str, int] | None = None
        self.stored: Path | None = None

    async def step(self, name: str, make: Callable[[], Awaitable[Section]]) -> None:
        if name not in self.chosen:
            return
        print(f"… {name}", flush=True)
        started = time.perf_counter()
        try:
            section = await make()
        except Exception as error:
            traceback.print_exc()
            self.failed.append(name)
            section = Section(name, rows=[Row("FAILED", type(error).__name__, note=str(error)[:200])])
        section.seconds = time.perf_counter() - started
        print(f"  {name}: {section.seconds:.0f} s", flush=True)
        self.sections.append(section)

    async def intake(self) -> Section:
        section = await intake.run(self.workdir, self.plan.citizens)
        self.intake_memory = section.details.get("bot_memory_kib")
        return section

    async def scan(self) -> Section:
        section, self.stored = await scan.run(
            self.workdir, list(self.plan.scan_sizes), self.plan.scan_repetitions
        )
        return section

    async def memory(self) -> Section:
        if self.stored is None:
            # Run alone: the stored tickets are made here.
            largest = self.plan.scan_sizes[-1]
            self.stored = self.workdir / "memory_full.db"
            await scan.prepare(self.stored, largest)
        return await memory.run(
            self.workdir, self.stored, self.intake_memory, self.plan.idle_seconds, empty=not self.plan.quick
        )

    async def run(self) -> None:
        plan = self.plan
        await self.step("intake", self.intake)
        await self.step(
            "delivery",
            lambda: delivery.run(
                self.workdir, plan.status_messages, plan.cards, plan.group_rate, together=plan.quick
            ),
        )
        await self.step("scan", self.scan)
        await self.step("memory", self.memory)
        await self.step("storage", lambda: writes.run(self.workdir, plan.writes))
        await self.step("recovery", lambda: recovery.run(self.workdir, plan.backlog))


def report(sections: list[Section]) -> str:
    lines = [table(sections), ""]
    for section in sections:
        for note in section.notes:
            lines.append(f"- {section.name}: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    plan = QUICK if args.quick else FULL
    if args.citizens:
        plan = replace(plan, citizens=args.citizens)
    workdir = Path(tempfile.mkdtemp(prefix="civicdesk-bench-"))
    if args.profile:
        Profiler.folder = workdir
    Profiler.cprofile = args.cprofile
    TxStats.enabled = args.tx_stats
    command = "python -m bench" + (" --quick" if args.quick else "")
    host = machine()
    print(f"{command}: {host['cores']} cores, {host['cpu']}, Python {host['python']}; work dir {workdir}")
    started_at = datetime.now(UTC)
    load_before = load_average()
    started = time.perf_counter()
    runner = Runner(plan, workdir, args.chosen)
    try:
        asyncio.run(runner.run())
    finally:
        seconds = time.perf_counter() - started
        keep = args.keep or args.profile or args.cprofile or bool(runner.failed)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = load_average()
    print()
    print(report(runner.sections))
    print()
    load = f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    print(f"{command}: {seconds:.0f} s in all; {load}")
    if load_before[0] > 0.5 * (host["cores"] or 1):
        print("note: the machine was busy when the run started; figures are lower than on an idle machine")
    if keep:
        print(f"work dir kept: {workdir}")
    results: dict[str, Any] = {
        "command": command,
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "machine": host,
        "load_average": {"before": load_before, "after": load_after},
        "plan": asdict(plan),
        "sections": [section.to_json() for section in runner.sections],
        "failed": runner.failed,
    }
    args.output.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {args.output}")
    return 1 if runner.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
