"""What every benchmark shares: the fake Telegram server with timestamps, the bot (or the echo bot) as a
separate process configured through its environment, statistics, and the rows of the results table."""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import signal
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.config import Routing, Settings, parse_routing
from tests.conftest import COORDINATORS_CHAT, ROADS_CHAT, TEST_ROUTING, TOKEN, WASTE_CHAT
from tests.fakes.telegram import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
JSON = dict[str, Any]
AGENCY_CHATS = (ROADS_CHAT, WASTE_CHAT)
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


# --- the fake Telegram server, with a clock on every message the bot sends ------------------------------


@dataclass
class _Watch:
    predicate: Callable[[JSON], bool]
    future: asyncio.Future[tuple[float, JSON]]


class BenchTelegram(FakeTelegram):
    """FakeTelegram that notes when (time.perf_counter) each bot message was stored and wakes exactly
    the waiter of that chat, so a thousand waiting citizens cost nothing per message."""

    def __init__(self) -> None:
        super().__init__(token=TOKEN)
        # (perf_counter, chat id) of every message the bot sent, in order.
        self.sent: list[tuple[float, int]] = []
        self._watches: defaultdict[int, list[_Watch]] = defaultdict(list)
        self._count_waiters: list[tuple[int, asyncio.Future[float]]] = []
        for chat_id, title in ((ROADS_CHAT, "Roads"), (WASTE_CHAT, "Waste"), (COORDINATORS_CHAT, "Coord")):
            self.add_group(chat_id, title)

    def _store(self, chat_id: int, message: JSON) -> JSON:
        stored = super()._store(chat_id, message)
        if stored.get("from", {}).get("id") != self.bot_id:
            return stored
        now = time.perf_counter()
        self.sent.append((now, chat_id))
        self._wake_watches(chat_id, stored, now)
        if self._count_waiters:
            total = len(self.sent)
            for entry in list(self._count_waiters):
                target, future = entry
                if total >= target:
                    if not future.done():
                        future.set_result(now)
                    self._count_waiters.remove(entry)
        return stored

    def _apply_edit(self, message: JSON, changes: JSON, markup: JSON) -> JSON:
        # An edited message may be what someone waits for (a prompt edited into the next step); it is
        # not a message sent.
        edited = super()._apply_edit(message, changes, markup)
        self._wake_watches(edited["chat"]["id"], edited, time.perf_counter())
        return edited

    def _wake_watches(self, chat_id: int, message: JSON, now: float) -> None:
        watches = self._watches.get(chat_id)
        if watches:
            for watch in list(watches):
                if watch.future.done():
                    watches.remove(watch)
                elif watch.predicate(message):
                    watch.future.set_result((now, message))
                    watches.remove(watch)

    def expect(self, chat_id: int, predicate: Callable[[JSON], bool]) -> asyncio.Future[tuple[float, JSON]]:
        """A future for the next bot message in the chat that matches: (when it was stored, the message)."""
        future: asyncio.Future[tuple[float, JSON]] = asyncio.get_running_loop().create_future()
        self._watches[chat_id].append(_Watch(predicate, future))
        return future

    async def sent_count(self, count: int, within: float) -> float:
        """Wait until the bot has sent `count` messages in all; returns when the last of them was stored."""
        if len(self.sent) >= count:
            return self.sent[count - 1][0]
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._count_waiters.append((count, future))
        try:
            return await asyncio.wait_for(future, within)
        except TimeoutError:
            raise BenchError(
                f"the bot sent {len(self.sent)} of {count} messages within {within:.0f}s"
            ) from None


class BenchError(Exception):
    """A benchmark could not complete; the message says what was missing."""


def text_of(message: JSON) -> str:
    return str(message.get("text") or message.get("caption") or "")


# --- the bot as a separate process -----------------------------------------------------------------------


def _settings_env_names() -> set[str]:
    names = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names.add((alias if isinstance(alias, str) else name).upper())
    return names


def bot_env(workdir: Path, api_url: str, database: Path, **settings: str | int | float) -> dict[str, str]:
    """The environment an operator would give the bot: every setting of ours comes from here, none
    from the caller's environment."""
    ours = _settings_env_names()
    env = {k: v for k, v in os.environ.items() if k.upper() not in ours}
    routing = workdir / "routing.toml"
    routing.write_text(TEST_ROUTING, encoding="utf-8")
    env.update(
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_API_URL=api_url,
        DATABASE_URL=sqlite_url(database),
        ROUTING_FILE=str(routing),
        LOG_LEVEL="INFO",
        TELEGRAM_POLLING_TIMEOUT="10",
        PYTHONPATH=str(ROOT),
    )
    env.update({key.upper(): str(value) for key, value in settings.items()})
    return env


def routing() -> Routing:
    """The routing every benchmark uses: two agencies and the coordinators, as in the tests."""
    return parse_routing(TEST_ROUTING)


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


class Profiler:
    """py-spy attached to every child process (`--profile`): one collapsed-stack file per process.
    (`--cprofile` runs bots under bench/cprofile.py instead; see `bot_process`.)"""

    folder: Path | None = None
    cprofile = False

    def __init__(self, name: str, pid: int, phase: str) -> None:
        self.name = name
        self.pid = pid
        self.phase = phase
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if self.folder is None:
            return
        py_spy = Path(sys.executable).parent / "py-spy"
        if not py_spy.exists():
            raise BenchError("--profile needs py-spy in the virtualenv: .venv/bin/pip install py-spy")
        target = self.folder / f"{self.name}-{self.pid}-{self.phase}.folded"
        self.process = await asyncio.create_subprocess_exec(
            str(py_spy),
            "record",
            "--pid",
            str(self.pid),
            "--output",
            str(target),
            "--rate",
            "200",
            # Collapsed stacks: greppable, and flamegraph.pl or speedscope.app draw them.
            "--format",
            "raw",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def stop(self) -> None:
        """py-spy writes its file when the process it watches exits, or on SIGINT."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)


class Process:
    """A child process (the bot, or the echo bot) that talks to the fake; its output goes to a log."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.profiler: Profiler | None = None
        # Run under bench/cprofile.py, which starts profiling on SIGUSR1.
        self.cprofiled = False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=self.workdir,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.profiler = Profiler(self.name, self.process.pid, "start")
        await self.profiler.start()

    async def measuring(self, phase: str = "measured") -> None:
        """From here on the profile (`--profile`) goes to a file of its own, named after `phase`: without
        start-up and warm-up, and a later phase apart from an earlier one. Under `--cprofile` profiling
        starts at the first phase and goes on to the end."""
        if self.cprofiled:
            os.kill(self.pid, signal.SIGUSR1)
        await self._stop_profiler()
        self.profiler = Profiler(self.name, self.pid, phase)
        await self.profiler.start()

    async def start(self, tg: FakeTelegram) -> float:
        """Spawn and wait until it long-polls the fake; returns the seconds that took."""
        polls = tg.stats.methods["getUpdates"]
        started = time.perf_counter()
        await self.spawn()
        deadline = started + START_TIMEOUT
        while tg.stats.methods["getUpdates"] <= polls:
            self.check_alive()
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.name} did not poll within {START_TIMEOUT:.0f}s\n{self.log_tail()}")
            await asyncio.sleep(0.02)
        return time.perf_counter() - started

    def check_alive(self) -> None:
        if self.process is None or self.process.returncode is not None:
            code = None if self.process is None else self.process.returncode
            raise BenchError(f"{self.name} is not running (exit code {code})\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User and system CPU time the process has used so far (all its threads), from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        # After the command name: state is field 3 of the file, utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kib(self) -> dict[str, int]:
        """VmHWM (peak resident set) and VmRSS of the process, in KiB, from /proc."""
        found: dict[str, int] = {}
        status = Path(f"/proc/{self.pid}/status").read_text(encoding="utf-8")
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(value.split()[0])
        return found

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
        await self._stop_profiler()

    async def kill(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await self._stop_profiler()

    async def _stop_profiler(self) -> None:
        if self.profiler is not None:
            await self.profiler.stop()
            self.profiler = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return "\n".join([f"--- {self.name} log tail ---", *tail])


class TxStats:
    """`--tx-stats`: bots run under bench/txstats.py, which counts their write transactions by caller."""

    enabled = False

    @staticmethod
    def path(process: Process) -> Path:
        return process.workdir / f"{process.name}.tx.json"

    @staticmethod
    def read(process: Process) -> JSON | None:
        """The summary the stopped bot wrote: {call site: {count, getting_s, inside_s}}."""
        path = TxStats.path(process)
        if not TxStats.enabled or not path.exists():
            return None
        found: JSON = json.loads(path.read_text(encoding="utf-8"))
        return found


def bot_process(workdir: Path, env: dict[str, str], name: str = "bot") -> Process:
    """`python -m bot run` as an operator starts it (under bench/txstats.py with --tx-stats, under
    bench/cprofile.py with --cprofile)."""
    if TxStats.enabled:
        process = Process(name, [sys.executable, "-m", "bench.txstats", "run"], dict(env), workdir)
        process.env["BENCH_TX_STATS"] = str(TxStats.path(process))
        return process
    if Profiler.cprofile:
        process = Process(name, [sys.executable, "-m", "bench.cprofile", "run"], dict(env), workdir)
        process.env["BENCH_CPROFILE"] = str(workdir / f"{name}.pstats")
        process.cprofiled = True
        return process
    return Process(name, [sys.executable, "-m", "bot", "run"], env, workdir)


async def migrate(database: Path) -> None:
    """The schema as `python -m bot migrate` makes it (Alembic runs its own event loop: another thread)."""
    from storage.db import migrate as upgrade

    await asyncio.to_thread(upgrade, sqlite_url(database))


def query(database: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(database, timeout=30)
    try:
        return list(connection.execute(sql, params))
    finally:
        connection.close()


# --- statistics --------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * share
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


def shortest_span(chats: Sequence[int], windows: Callable[[int], Sequence[tuple[str, int, float]]]) -> float:
    """The shortest time from the first to the last of these sends (in this order) that sliding-window
    limits allow: each send goes at the earliest moment every window it counts in has room.
    `windows(chat)` names the windows a send to that chat counts in: (key, limit, seconds)."""
    history: defaultdict[str, list[float]] = defaultdict(list)
    at = 0.0
    for chat in chats:
        limits = windows(chat)
        at = max(
            [at]
            + [history[key][-limit] + seconds for key, limit, seconds in limits if len(history[key]) >= limit]
        )
        for key, _, _ in limits:
            history[key].append(at)
    return at


# --- results ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    value: float | int | str
    unit: str = ""
    aim: str = ""
    ok: bool | None = None
    note: str = ""

    def shown(self) -> str:
        value = self.value
        if isinstance(value, float):
            if math.isnan(value):
                return "n/a"
            digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
            return f"{value:,.{digits}f}"
        if isinstance(value, int):
            return f"{value:,}"
        return value


@dataclass
class Section:
    name: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: JSON = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, metric: str, value: float | int | str, unit: str = "", **kwargs: Any) -> Row:
        row = Row(metric, value, unit, **kwargs)
        self.rows.append(row)
        return row

    def to_json(self) -> JSON:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 1),
            "rows": [
                {
                    "metric": r.metric,
                    "value": _json_number(r.value),
                    "unit": r.unit,
                    "aim": r.aim,
                    "ok": r.ok,
                    "note": r.note,
                }
                for r in self.rows
            ],
            "notes": self.notes,
            "details": self.details,
        }


def _json_number(value: float | int | str) -> float | int | str | None:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 3)
    return value


def table(sections: Sequence[Section]) -> str:
    """The results as a Markdown table (readable in a terminal, pasted as is into the README)."""
    header = ("benchmark", "metric", "value", "unit", "aim", "")
    lines = [header]
    for section in sections:
        for index, row in enumerate(section.rows):
            mark = "" if row.ok is None else ("ok" if row.ok else "MISSED")
            lines.append(
                (section.name if index == 0 else "", row.metric, row.shown(), row.unit, row.aim, mark)
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {2}

    def render(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 1) + ":" if i in right else "-" * (w + 2)) for i, w in enumerate(widths)
    )
    return "\n".join([render(lines[0]), rule + "|", *(render(line) for line in lines[1:])])


def machine() -> JSON:
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        first = meminfo.read_text(encoding="utf-8").splitlines()[0]
        memory = f"{int(first.split()[1]) // 1024} MiB"
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory": memory,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "system": f"{platform.system()} {platform.release()}",
    }


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()
