"""The command line as an operator meets it: clear errors and exit code 2, migrations, config check,
and the real process serving a citizen against the fake Telegram server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.__main__ import configure_logging
from bot.config import Settings
from storage.db import Database
from storage.schema import tickets
from tests.conftest import TEST_ROUTING, TOKEN
from tests.fakes.telegram import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent


def clean_env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "DATABASE_", "ROUTING_", "VK_"))
    }
    routing = tmp_path / "routing.toml"
    routing.write_text(TEST_ROUTING, encoding="utf-8")
    env.update(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        ROUTING_FILE=str(routing),
        PYTHONPATH=str(ROOT),
    )
    env.update(values)
    return env


async def run(tmp_path: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """`python -m bot` with `args`: exit code, stdout, stderr."""
    return await run_python(tmp_path, "-m", "bot", *args, **env)


async def run_python(tmp_path: Path, *argv: str, **env: str) -> tuple[int, str, str]:
    """`python` with `argv` in `tmp_path`, in a clean environment plus `env`: exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        cwd=tmp_path,
        env=clean_env(tmp_path, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_run_without_a_token_names_the_setting_and_exits_2(tmp_path: Path) -> None:
    code, _, err = await run(tmp_path, "run")
    assert code == 2
    assert "TELEGRAM_BOT_TOKEN" in err and ".env" in err


async def test_invalid_setting_is_named_with_exit_2(tmp_path: Path) -> None:
    code, _, err = await run(tmp_path, "check-config", LOG_LEVEL="LOUD")
    assert code == 2
    assert "LOG_LEVEL" in err


async def test_broken_routing_file_is_explained(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(TEST_ROUTING.replace('agency = "waste"', 'agency = "wastes"'), encoding="utf-8")
    code, _, err = await run(tmp_path, "check-config", ROUTING_FILE=str(broken))
    assert code == 2
    assert 'unknown agency "wastes"' in err


async def test_migrate_and_check_config(tmp_path: Path, empty_database_url: str) -> None:
    code, out, _ = await run(tmp_path, "migrate", DATABASE_URL=empty_database_url)
    assert code == 0
    database = Database(empty_database_url)
    try:
        async with database.read() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(tickets)) == 0
    finally:
        await database.close()
    code, out, _ = await run(tmp_path, "check-config", DATABASE_URL=empty_database_url)
    assert code == 0 and "roads" in out and "waste" in out


@pytest.mark.timeout(60)
async def test_the_real_process_serves_a_citizen_and_stops_cleanly(
    tmp_path: Path, empty_database_url: str
) -> None:
    async with FakeTelegram(token=TOKEN, bot_id=123456, bot_username="civicdesk_test_bot") as tg:
        tg.add_user(user_id=77, first_name="Вера", language_code="ru")
        env = clean_env(
            tmp_path,
            DATABASE_URL=empty_database_url,
            TELEGRAM_BOT_TOKEN=TOKEN,
            TELEGRAM_API_URL=tg.base_url,
            TELEGRAM_POLLING_TIMEOUT="1",
            LOG_LEVEL="DEBUG",
        )
        # Failures make the libraries log requests and tracebacks: none may show the token.
        tg.fail_next("sendMessage", error_code=502, times=1)
        tg.drop_next("sendMessage", times=1)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
        )
        try:
            await tg.send_command(77, "/start")
            greeting = await tg.wait_for_message(77, lambda m: bool(tg.button_data(m)), timeout=30)
            assert tg.button_data(greeting)[0] == "m:new"
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()
        log = err.decode()
        assert TOKEN not in log and TOKEN.split(":")[1] not in log
        assert "DEBUG" in log and "Bad Gateway" in log


@pytest.mark.parametrize(("level", "per_update"), [("INFO", False), ("DEBUG", True)])
def test_a_line_per_update_is_logged_only_when_debugging(
    level: str, per_update: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    event, root = logging.getLogger("aiogram.event"), logging.getLogger()
    saved = event.level, root.level
    # The root logger as basicConfig leaves it, without taking the test runner's handlers off it.
    monkeypatch.setattr(logging, "basicConfig", lambda level, **_: root.setLevel(level))
    try:
        configure_logging(Settings(_env_file=None, log_level=level))  # type: ignore[call-arg]
        assert event.isEnabledFor(logging.INFO) is per_update
        assert event.isEnabledFor(logging.ERROR)
    finally:
        event.setLevel(saved[0])
        root.setLevel(saved[1])
