"""Secrets stay out of what the bot writes: stderr (whichever library logs, and when start-up fails)
and the error texts the outbox keeps in the database, which backups copy."""

from __future__ import annotations

import io
import logging
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from bot.clock import ManualClock
from bot.delivery.base import PermanentError, TransientError
from bot.delivery.media import MediaFetcher
from bot.delivery.outbox import Outbox
from bot.delivery.worker import DeliveryWorker
from bot.domain import Attachment, MediaKind, Platform
from bot.messages import Outgoing
from bot.redaction import RedactSecrets, remember_secrets
from storage.db import Database
from storage.schema import outbox as outbox_table
from tests.conftest import TOKEN, VK_GROUP, VK_TOKEN
from tests.test_cli import run_python
from tests.test_delivery_worker import RecordingMessenger, queue

VK_URL = f"https://api.vk.com/method/groups.getLongPollServer?access_token={VK_TOKEN}&v=5.199"
FILE_URL = f"https://api.telegram.org/file/bot{TOKEN}/photos/file_7.jpg"


def leaks(text: str) -> list[str]:
    """The secrets, or their distinctive parts, that `text` shows."""
    parts = (TOKEN, TOKEN.split(":")[1], VK_TOKEN, "test-group-token")
    return [part for part in parts if part in text]


async def run_script(tmp_path: Path, script: str, *args: str, **env: str) -> tuple[int, str]:
    """`python -c script args`: exit code, and all it wrote (stdout and stderr together)."""
    code, out, err = await run_python(tmp_path, "-c", textwrap.dedent(script), *args, **env)
    return code, out + err


# --- logs -----------------------------------------------------------------------------------------


def test_the_password_in_a_database_or_redis_url_is_hidden_whatever_its_length() -> None:
    logger = logging.getLogger("tests.secrets.urls")
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.addFilter(RedactSecrets([TOKEN]))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("no answer from %s", "postgresql+asyncpg://civic:pw@db.local:5432/civic")
        logger.warning("no answer from %s", "redis://:pw@cache:6379/0")
        logger.warning("pw, http://pw@host/, https://host:443/a@b and 12:30 are not passwords")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert written.getvalue().splitlines() == [
        "no answer from postgresql+asyncpg://civic:***@db.local:5432/civic",
        "no answer from redis://:***@cache:6379/0",
        "pw, http://pw@host/, https://host:443/a@b and 12:30 are not passwords",
    ]


VKBOTTLE_LOGS_A_TIMEOUT = f"""
    import asyncio, sys
    import aiohttp
    from bot.__main__ import configure_logging
    from bot.config import load_settings

    if sys.argv[1] == "vkbottle first":
        import vkbottle
    configure_logging(load_settings())
    from vkbottle import ErrorHandler

    async def poll() -> None:
        try:
            raise aiohttp.ConnectionTimeoutError("Connection timeout to host {VK_URL}")
        except Exception as error:
            await ErrorHandler().handle(error)  # what vkbottle's polling does with an error it meets

    asyncio.run(poll())
"""


@pytest.mark.parametrize("order", ["vkbottle first", "logging first"])
async def test_vkbottle_logs_a_timeout_with_the_token_url_and_stderr_shows_no_token(
    order: str, tmp_path: Path
) -> None:
    code, output = await run_script(
        tmp_path,
        VKBOTTLE_LOGS_A_TIMEOUT,
        order,
        VK_GROUP_TOKEN=VK_TOKEN,
        VK_GROUP_ID=str(VK_GROUP),
        TELEGRAM_BOT_TOKEN=TOKEN,
    )
    assert code == 0, output
    assert leaks(output) == [], output
    assert "ConnectionTimeoutError" in output and "Traceback" in output and "access_token=***" in output
    assert output.count("Connection timeout to host") == 2, "once as the message, once in the traceback"


def test_a_traceback_another_handler_formatted_first_is_redacted_again() -> None:
    logger = logging.getLogger("tests.secrets.library")
    # A library's own handler, without the redaction, runs first and leaves the traceback formatted.
    formats_first = logging.StreamHandler(io.StringIO())
    written = io.StringIO()
    redacting = logging.StreamHandler(written)
    redacting.addFilter(RedactSecrets([TOKEN, VK_TOKEN]))
    for handler in (formats_first, redacting):
        logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {VK_URL}")
        except aiohttp.ClientError:
            logger.exception("request failed")
    finally:
        for handler in (formats_first, redacting):
            logger.removeHandler(handler)
        logger.propagate = True
    assert "ConnectionTimeoutError" in written.getvalue()
    assert leaks(written.getvalue()) == [], written.getvalue()


# --- start-up -------------------------------------------------------------------------------------

START_UP_TIMES_OUT = f"""
    import sys
    import aiohttp
    import bot.__main__ as cli

    async def serve(settings, routing):  # App.start: vk.prepare() asks VK for a long poll server
        try:
            raise TimeoutError()
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError("Connection timeout to host {VK_URL}") from exc

    cli.serve = serve
    sys.exit(cli.main(["run"]))
"""


async def test_a_start_up_that_fails_with_the_token_in_the_error_prints_none_and_exits_1(
    tmp_path: Path,
) -> None:
    code, output = await run_script(
        tmp_path,
        START_UP_TIMES_OUT,
        VK_GROUP_TOKEN=VK_TOKEN,
        VK_GROUP_ID=str(VK_GROUP),
        TELEGRAM_BOT_TOKEN=TOKEN,
    )
    assert leaks(output) == [], output
    assert code == 1, output
    lines = output.splitlines()
    assert "civicdesk: stopped by an error (ConnectionTimeoutError); the log above tells more" in lines
    # The traceback is in the log, redacted, for whoever has to find out why.
    assert "Traceback" in output and "access_token=***" in output


# --- the outbox's error texts -----------------------------------------------------------------------


@pytest.fixture
def secrets() -> Iterator[None]:
    """The secrets as configure_logging tells them, for this test only."""
    remember_secrets([TOKEN, VK_TOKEN])
    yield
    remember_secrets([])


def response_error(url: str, status: int) -> aiohttp.ClientResponseError:
    request = aiohttp.RequestInfo(URL(url), "GET", CIMultiDictProxy(CIMultiDict()), URL(url))
    return aiohttp.ClientResponseError(request, (), status=status, message="Bad Gateway")


FAILURES: dict[str, Exception] = {
    # What MediaFetcher said of a failed Telegram file download, and VkMessenger of a connect timeout.
    "download": TransientError(f"Telegram file download failed: {response_error(FILE_URL, 502)!r}"),
    "vk": TransientError(
        f"messages.send: {aiohttp.ConnectionTimeoutError(f'Connection timeout to host {VK_URL}')!r}"
    ),
    "refused": PermanentError("bad_request", f"refused: {FILE_URL}"),
    "unexpected": RuntimeError(f"request {{'access_token': {VK_TOKEN!r}, 'token': {TOKEN!r}}} failed"),
}


@pytest.mark.parametrize("kind", FAILURES)
async def test_the_error_text_the_outbox_keeps_holds_no_token(
    kind: str, db: Database, clock: ManualClock, secrets: None
) -> None:
    messenger = RecordingMessenger()
    messenger.failures["photo"] = [FAILURES[kind]]  # type: ignore[list-item]
    worker = DeliveryWorker(db, {Platform.telegram: messenger}, clock, max_attempts=3)
    await queue(Outbox(db, clock), 1, Outgoing("photo"))
    await worker.deliver_due()
    async with db.read() as conn:
        row = (await conn.execute(sa.select(outbox_table))).one()
    assert row.status == ("failed" if kind == "refused" else "pending")
    assert row.last_error and leaks(row.last_error) == [], row.last_error


async def test_a_token_in_a_url_is_hidden_even_when_no_secret_was_told(
    db: Database, clock: ManualClock
) -> None:
    remember_secrets([])
    messenger = RecordingMessenger()
    messenger.failures["photo"] = [FAILURES["download"], FAILURES["vk"]]  # type: ignore[list-item]
    worker = DeliveryWorker(db, {Platform.telegram: messenger}, clock, max_attempts=2)
    await queue(Outbox(db, clock), 1, Outgoing("photo"))
    for _ in range(2):
        await worker.deliver_due()
        async with db.read() as conn:
            row = (await conn.execute(sa.select(outbox_table))).one()
        assert row.last_error and leaks(row.last_error) == [], row.last_error
        clock.advance(timedelta(minutes=10))
    assert row.status == "failed"


class FailingDownload:
    async def download(self, file_id: str, destination: Any) -> None:
        raise response_error(FILE_URL, 502)


async def test_a_failed_telegram_download_says_what_failed_without_the_url() -> None:
    fetcher = MediaFetcher(FailingDownload())  # type: ignore[arg-type]
    photo = Attachment(kind=MediaKind.photo, platform=Platform.telegram, file_id="AgAC-file")
    with pytest.raises(TransientError) as caught:
        await fetcher.fetch(photo)
    assert str(caught.value) == "Telegram file download failed: ClientResponseError (HTTP 502)"


async def test_a_vk_call_that_times_out_says_what_failed_without_the_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vkbottle import API

    from bot.delivery.vk import VkMessenger

    async def times_out(method: str, params: dict[str, Any]) -> Any:
        raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {VK_URL}")

    async def no_file(attachment: Attachment) -> bytes:
        raise AssertionError("no file here")

    api = API(token=VK_TOKEN)
    monkeypatch.setattr(api, "request", times_out)
    messenger = VkMessenger(api, VK_GROUP, no_file)
    with pytest.raises(TransientError) as caught:
        await messenger.send(5, Outgoing("hello"), None, nonce=1)
    assert str(caught.value) == "messages.send: ConnectionTimeoutError"
