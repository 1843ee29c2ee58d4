"""Random updates thrown at the running bot's dispatcher: nothing raises, Telegram never rejects what the
bot sends (every text escaped, every length kept), and nothing invalid becomes a ticket."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
import sqlalchemy as sa
from aiogram.types import Update
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.config import parse_routing
from bot.intake import without_nul
from storage.schema import outbox, tickets
from tests.conftest import COORDINATORS_CHAT, ROADS_CHAT, TEST_ROUTING
from tests.databases import Backend
from tests.telegram_world import ROADS_STAFF, World, running_world

USERS = (7001, 7002, 7003)
UNCONNECTED = -1005550000000  # a group the routing does not name
CHATS = (*USERS, ROADS_CHAT, COORDINATORS_CHAT, UNCONNECTED)
ids = itertools.count(10_000)

PIECES = [*"<>&\"'/#@!\\\n\t\x00\x1b абвЯ😀bi", "</b>", "<b>", "&amp;", "&#", "<a href=x>", "#T1"]
nasty_text = st.lists(st.sampled_from(PIECES), max_size=80).map("".join) | st.text(max_size=5000)
button_data = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["t:", "t:take:1:new", "t:res:999:in_progress", "x:roads:1", "x:../:1", "b:1", "b:x"]),
    st.sampled_from(["c:potholes", "c:nope", "m:new", "m:my", "m:zzz", "l:de", "l:en", "f:yes:1", "f:no:x"]),
    st.sampled_from(["d:skip", "d:cancel", "d:edit", "d:", "::::", "t:take:1:new:extra"]),
    # Numbers no database integer holds, and digits int() does not read.
    st.sampled_from(
        [f"t:take:{'9' * 40}:new", f"f:yes:{'9' * 30}", "f:no:²", "t:take:²:new", f"b:{'9' * 19}"]
    ),
)


@st.composite
def updates(draw: st.DrawFn) -> dict[str, Any]:
    user_id = draw(st.sampled_from((*USERS, ROADS_STAFF)))
    chat_id = draw(st.sampled_from(CHATS))
    chat = {
        "id": chat_id,
        "type": "private" if chat_id > 0 else draw(st.sampled_from(["group", "supergroup"])),
    }
    user = {"id": user_id, "is_bot": False, "first_name": draw(nasty_text.filter(bool) | st.just("A"))}
    if draw(st.booleans()):
        user["language_code"] = draw(st.sampled_from(["ru", "en", "de", "zz-ZZ", ""]))
    message: dict[str, Any] = {"message_id": next(ids), "date": 1_770_000_000, "chat": chat, "from": user}
    kind = draw(
        st.sampled_from(["text", "command", "photo", "sticker", "location", "reply", "callback", "edit"])
    )
    text = draw(nasty_text)
    if kind in ("text", "reply", "edit"):
        message["text"] = text or "x"
        if draw(st.booleans()):
            length = max(len(message["text"]), 1)
            offset = draw(st.integers(0, length - 1))
            message["entities"] = [
                {
                    "type": draw(st.sampled_from(["bold", "italic", "code", "url", "hashtag"])),
                    "offset": offset,
                    "length": draw(st.integers(1, length - offset)),
                }
            ]
        if kind == "reply":
            message["reply_to_message"] = {
                "message_id": draw(st.integers(1, 50)),
                "date": 1_770_000_000,
                "chat": chat,
                "text": "x",
            }
    elif kind == "command":
        command = draw(
            st.sampled_from(["/start", "/help", "/my", "/status", "/history", "/card", "/zzz", "/lang"])
        )
        message["text"] = f"{command} {text}".strip()
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
    elif kind == "photo":
        message["photo"] = [
            {"file_id": f"AgACfuzz{next(ids)}", "file_unique_id": f"u{next(ids)}", "width": 90, "height": 90}
        ]
        if text:
            message["caption"] = text[:1024]
    elif kind == "sticker":
        message["sticker"] = {
            "file_id": "CAAC",
            "file_unique_id": "s",
            "type": "regular",
            "width": 1,
            "height": 1,
            "is_animated": False,
            "is_video": False,
        }
    elif kind == "location":
        message["location"] = {"latitude": draw(st.floats(-90, 90)), "longitude": draw(st.floats(-180, 180))}
    update: dict[str, Any] = {"update_id": next(ids)}
    if kind == "callback":
        update["callback_query"] = {
            "id": str(next(ids)),
            "from": user,
            "chat_instance": "1",
            "data": draw(button_data),
            "message": {
                "message_id": draw(st.integers(1, 50)),
                "date": 1_770_000_000,
                "chat": chat,
                "from": {"id": 123456, "is_bot": True, "first_name": "Bot"},
                "text": "card",
            },
        }
    elif kind == "edit":
        update["edited_message"] = {**message, "edit_date": 1_770_000_100}
    else:
        update["message"] = message
    return update


class Loop:
    """The bot and the fake run on a loop in a thread of their own; each example hands updates to it."""

    def __init__(self, database_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready: Future[World] = Future()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(database_url),))
        self.thread.start()
        self.world = self.ready.result(timeout=60)

    async def _main(self, database_url: str) -> None:
        async with running_world(database_url, parse_routing(TEST_ROUTING)) as world:
            for user_id in USERS:
                world.tg.add_user(user_id=user_id, first_name="Fuzz")
            # The bot is in that group (updates come from it), though the routing does not name it.
            world.tg.add_group(UNCONNECTED, title="Fuzz", type="supergroup")
            self.ready.set_result(world)
            await self.stop.wait()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=60)


@pytest.fixture(scope="module")
def bot_loop(tmp_path_factory: pytest.TempPathFactory, database_backend: Backend) -> Iterator[Loop]:
    url = database_backend.create(tmp_path_factory.mktemp("fuzz"), migrated=True)
    loop = Loop(url)
    yield loop
    loop.close()
    database_backend.drop(url)


async def _feed(world: World, data: dict[str, Any]) -> None:
    app = world.app
    assert app.bot is not None
    # As the intake stores it before it is handled: without NUL characters (PostgreSQL refuses them).
    update = Update.model_validate(without_nul(data), context={"bot": app.bot})
    await app.dispatcher.feed_update(app.bot, update)
    await app.worker.deliver_due()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(updates(), min_size=1, max_size=4))
def test_random_updates_raise_nothing_and_telegram_rejects_nothing(
    bot_loop: Loop, batch: list[dict[str, Any]]
) -> None:
    for data in batch:
        bot_loop.run(_feed(bot_loop.world, data))

    async def check() -> tuple[int, list[str]]:
        async with bot_loop.world.app.db.read() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(tickets))
            failed = await conn.execute(sa.select(outbox.c.last_error).where(outbox.c.status == "failed"))
            return int(count or 0), [str(row.last_error) for row in failed]

    count, failed = bot_loop.run(check())
    assert count == 0, "no generated update confirms a draft, so none may file a ticket"
    # Buttons pressed on messages that never existed, in chats it never wrote to, may fail to be edited;
    # anything else Telegram refused would be a bug in what the bot sends.
    assert [
        e for e in failed if "message to edit not found" not in e and "message can't be edited" not in e
    ] == []


def test_the_intake_takes_nul_characters_out_of_every_string_of_an_update() -> None:
    update = {
        "message": {"text": "a\x00b", "from": {"first_name": "\x00Ян"}, "entities": [{"type": "x\x00"}]}
    }
    assert without_nul(update) == {
        "message": {"text": "ab", "from": {"first_name": "Ян"}, "entities": [{"type": "x"}]}
    }
