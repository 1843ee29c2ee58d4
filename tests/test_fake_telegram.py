"""The fake Telegram server checked against the real aiogram client: replies, errors and the
behaviours other tests rely on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    BotCommand,
    BufferedInputFile,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
    ReplyParameters,
    Update,
)

from tests.fakes.html_check import format_text, parse_html
from tests.fakes.telegram import FakeTelegram

TOKEN = "123456:TEST-token"
ALICE = 1001
BOB = 1002
GROUP = -1001000000010
OLD_GROUP = -4000000001


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN, bot_id=123456, bot_username="civicdesk_test_bot") as server:
        server.add_user(ALICE, "Alice", username="alice")
        server.add_user(BOB, "Bob", last_name="Builder")
        server.add_group(GROUP, title="Roads department", type="supergroup")
        server.add_member(GROUP, ALICE)
        yield server


def make_bot(fake: FakeTelegram, token: str = TOKEN) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(fake.base_url))
    return Bot(token, session=session, default=DefaultBotProperties(parse_mode="HTML"))


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    client = make_bot(fake)
    yield client
    await client.session.close()


def keyboard(*data: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text=f"btn {d}", callback_data=d)] for d in data]
    )


async def test_get_me_and_wrong_token(fake: FakeTelegram, bot: Bot) -> None:
    me = await bot.get_me()
    assert (me.id, me.username, me.is_bot) == (123456, "civicdesk_test_bot", True)

    intruder = make_bot(fake, token="999:wrong")
    try:
        with pytest.raises(TelegramUnauthorizedError, match="Unauthorized"):
            await intruder.get_me()
    finally:
        await intruder.session.close()


async def test_raw_http_shapes(fake: FakeTelegram) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.base_url}/bot{TOKEN}/GETME") as resp:
            body = await resp.json()
            assert resp.status == 200
            assert body["ok"] is True
            assert body["result"]["id"] == 123456
        async with http.post(f"{fake.base_url}/bot{TOKEN}/noSuchMethod") as resp:
            assert resp.status == 404
            assert await resp.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
        async with http.get(f"{fake.base_url}/botnope:x/getMe") as resp:
            assert resp.status == 401
            assert await resp.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
        payload = {"chat_id": ALICE, "text": "<b>json</b>", "parse_mode": "HTML"}
        async with http.post(f"{fake.base_url}/bot{TOKEN}/sendMessage", json=payload) as resp:
            result = (await resp.json())["result"]
            assert result["text"] == "json"
            assert result["entities"] == [{"offset": 0, "length": 4, "type": "bold"}]
            assert "_html" not in result
        query = f"chat_id={ALICE}&text=query"
        async with http.get(f"{fake.base_url}/bot{TOKEN}/sendMessage?{query}") as resp:
            assert (await resp.json())["result"]["text"] == "query"
    assert [m["text"] for m in fake.bot_messages(ALICE)] == ["json", "query"]


async def test_send_press_answer_and_edit(fake: FakeTelegram, bot: Bot) -> None:
    sent = await bot.send_message(
        ALICE, "Report <b>#12</b> received", reply_markup=keyboard("ok:12", "no:12")
    )
    stored = fake.bot_messages(ALICE)[-1]
    assert sent.message_id == stored["message_id"] == 1
    assert stored["text"] == "Report #12 received"
    assert stored["_html"] == "Report <b>#12</b> received"
    assert {"offset": 7, "length": 3, "type": "bold"} in stored["entities"]
    assert fake.button_data(stored) == ["ok:12", "no:12"]
    assert fake.button_texts(stored) == ["btn ok:12", "btn no:12"]

    query_id = await fake.press(ALICE, stored, "ok:12")
    update = fake.updates[-1]
    assert update["callback_query"]["data"] == "ok:12"
    assert fake.callback_answer(query_id) is None
    assert await bot.answer_callback_query(query_id, text="Thanks", show_alert=True)
    assert fake.callback_answer(query_id) == {
        "text": "Thanks",
        "show_alert": True,
        "url": None,
        "cache_time": 0,
    }
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_callback_query(query_id)

    edited = await bot.edit_message_text("Report <i>closed</i>", chat_id=ALICE, message_id=sent.message_id)
    assert isinstance(edited, Message)
    assert edited.text == "Report closed"
    assert stored["_html"] == "Report <i>closed</i>"
    assert stored["_edits"] == 1
    assert "reply_markup" not in stored, "editing text without a markup removes the keyboard"
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("Report <i>closed</i>", chat_id=ALICE, message_id=sent.message_id)
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("x", chat_id=ALICE, message_id=99)

    incoming = await fake.send_text(ALICE, "hello")
    with pytest.raises(TelegramBadRequest, match="message can't be edited"):
        await bot.edit_message_text("x", chat_id=ALICE, message_id=incoming["message_id"])
    await bot.edit_message_reply_markup(chat_id=ALICE, message_id=sent.message_id, reply_markup=keyboard("a"))
    assert fake.button_data(stored) == ["a"]
    assert await bot.delete_message(ALICE, sent.message_id)
    assert fake.get_message(ALICE, sent.message_id) is None
    assert fake.deleted[-1]["message_id"] == sent.message_id


async def test_html_is_validated_like_telegram(fake: FakeTelegram, bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="can't parse entities") as caught:
        await bot.send_message(ALICE, "Status: <foo>open</foo>")
    assert 'Unsupported start tag "foo" at byte offset 8' in caught.value.message
    with pytest.raises(TelegramBadRequest, match='Can\'t find end tag corresponding to start tag "b"'):
        await bot.send_message(ALICE, "<b>unclosed")
    with pytest.raises(TelegramBadRequest, match="Unsupported HTML entity"):
        await bot.send_message(ALICE, "a&nbsp;b")

    await bot.send_message(ALICE, "&lt;b&gt;5 &amp; 6&lt;/b&gt;")
    stored = fake.bot_messages(ALICE)[-1]
    assert stored["text"] == "<b>5 & 6</b>"
    assert "entities" not in stored
    assert stored["_html"] == "&lt;b&gt;5 &amp; 6&lt;/b&gt;"
    assert len(fake.bot_messages(ALICE)) == 1, "rejected sends leave no message behind"


async def test_length_limits(fake: FakeTelegram, bot: Bot) -> None:
    await bot.send_message(ALICE, "я" * 4096)
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(ALICE, "я" * 4097)
    # Markup doesn't count, only what remains after parsing.
    await bot.send_message(ALICE, "<b>" + "x" * 4096 + "</b>")
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.send_message(ALICE, "<b> </b>\n")

    photo = BufferedInputFile(b"\x89PNG fake image bytes", filename="p.png")
    with pytest.raises(TelegramBadRequest, match="message caption is too long"):
        await bot.send_photo(ALICE, photo, caption="c" * 1025)
    await bot.send_photo(ALICE, photo, caption="c" * 1024)


async def test_callback_data_limit(fake: FakeTelegram, bot: Bot) -> None:
    await bot.send_message(ALICE, "fits", reply_markup=keyboard("x" * 64))
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(ALICE, "too long", reply_markup=keyboard("x" * 65))
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        # 33 Cyrillic letters are 66 bytes: the limit is in bytes, not characters.
        await bot.send_message(ALICE, "too long", reply_markup=keyboard("ж" * 33))


async def test_blocked_and_deactivated_users(fake: FakeTelegram, bot: Bot) -> None:
    fake.block(ALICE)
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.send_message(ALICE, "hello?")
    member_update = fake.updates[-1]["my_chat_member"]
    assert (member_update["old_chat_member"]["status"], member_update["new_chat_member"]["status"]) == (
        "member",
        "kicked",
    )
    Update.model_validate(fake.updates[-1])

    await fake.send_command(ALICE, "/start")
    await bot.send_message(ALICE, "welcome back")

    fake.deactivate(BOB)
    with pytest.raises(TelegramForbiddenError, match="user is deactivated"):
        await bot.send_message(BOB, "hello?")


async def test_migrated_group(fake: FakeTelegram, bot: Bot) -> None:
    fake.add_group(OLD_GROUP, title="Parks", type="group")
    new_id = -1002000000077
    fake.migrate_group(OLD_GROUP, new_id)
    with pytest.raises(TelegramMigrateToChat) as caught:
        await bot.send_message(OLD_GROUP, "hi")
    assert caught.value.migrate_to_chat_id == new_id
    assert "group chat was upgraded to a supergroup chat" in caught.value.message

    sent = await bot.send_message(new_id, "hi")
    assert sent.chat.type == "supergroup"
    assert sent.chat.title == "Parks"
    service = [u["message"] for u in fake.updates if "message" in u]
    assert service[-2]["migrate_to_chat_id"] == new_id
    assert service[-1]["migrate_from_chat_id"] == OLD_GROUP


async def test_injected_failures_and_drops(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail_next("sendMessage", error_code=429, retry_after=3)
    with pytest.raises(TelegramRetryAfter) as caught:
        await bot.send_message(ALICE, "x")
    assert caught.value.retry_after == 3
    assert "Too Many Requests: retry after 3" in caught.value.message
    assert fake.stats.too_many_requests == 1

    fake.fail_next("sendmessage", error_code=502, times=2, chat_id=BOB)
    await bot.send_message(ALICE, "other chats are unaffected")
    for _ in range(2):
        with pytest.raises(TelegramServerError, match="Bad Gateway"):
            await bot.send_message(BOB, "x")
    await bot.send_message(BOB, "third time lucky")

    fake.drop_next("sendMessage")
    with pytest.raises(TelegramNetworkError):
        await bot.send_message(ALICE, "lost")
    await bot.send_message(ALICE, "delivered")
    assert [m["text"] for m in fake.bot_messages(ALICE)] == ["other chats are unaffected", "delivered"]
    assert fake.stats.methods["sendMessage"] == 7
    assert fake.stats["sent_messages"] == 3


async def test_flood_control(fake: FakeTelegram, bot: Bot) -> None:
    now = [1000.0]
    fake.clock = lambda: now[0]
    fake.enforce_limits = True

    await bot.send_message(ALICE, "first")
    with pytest.raises(TelegramRetryAfter) as caught:
        await bot.send_message(ALICE, "second")
    assert caught.value.retry_after == 1
    await bot.send_message(BOB, "another private chat is fine")
    now[0] += 1.0
    await bot.send_message(ALICE, "after a second")

    for index in range(20):
        await bot.send_message(GROUP, f"group {index}")
        now[0] += 2.0
    with pytest.raises(TelegramRetryAfter) as caught:
        await bot.send_message(GROUP, "21st")
    # The first of the twenty, sent 40 s ago, leaves the one-minute window in 20 s.
    assert caught.value.retry_after == 20
    assert fake.stats.too_many_requests == 2


async def test_get_updates_long_poll(fake: FakeTelegram, bot: Bot) -> None:
    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await fake.wait_until(lambda: fake.stats.methods["getUpdates"] == 1)
    await fake.send_text(ALICE, "pushed while waiting")
    updates = await poll
    assert time.monotonic() - started < 3
    assert [u.message.text for u in updates if u.message] == ["pushed while waiting"]
    first_id = updates[0].update_id
    assert first_id == 1
    assert fake.pending_updates == 1
    assert fake.confirmed_update_id == 0

    await fake.send_text(BOB, "second")
    fake.block(BOB)
    updates = await bot.get_updates(offset=first_id + 1, allowed_updates=["message"])
    assert [u.message.text for u in updates if u.message] == ["second"]
    assert fake.confirmed_update_id == first_id
    assert fake.dropped_updates[-1]["my_chat_member"]["new_chat_member"]["status"] == "kicked"

    assert await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0) == []
    assert fake.confirmed_update_id == 2
    assert fake.pending_updates == 0


async def test_concurrent_polls_conflict(fake: FakeTelegram, bot: Bot) -> None:
    older = asyncio.create_task(bot.get_updates(timeout=5))
    await fake.wait_until(lambda: fake.stats.methods["getUpdates"] == 1)
    newer = asyncio.create_task(bot.get_updates(timeout=5))
    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates request"):
        await older
    await fake.send_text(ALICE, "for the newer poll")
    assert len(await newer) == 1


async def test_media_group_and_files(fake: FakeTelegram, bot: Bot) -> None:
    upload = BufferedInputFile(b"jpeg-bytes" * 100, filename="road.jpg")
    first = await bot.send_photo(GROUP, upload, caption="Pothole on <b>Main St</b>")
    stored = fake.bot_messages(GROUP)[-1]
    assert stored["caption"] == "Pothole on Main St"
    assert stored["caption_entities"] == [{"offset": 11, "length": 7, "type": "bold"}]
    sizes = stored["photo"]
    assert [s["width"] for s in sizes] == sorted(s["width"] for s in sizes)
    largest = first.photo[-1]

    album = await bot.send_media_group(
        GROUP,
        [
            InputMediaPhoto(media=largest.file_id, caption="<i>three</i> photos"),
            InputMediaPhoto(media=BufferedInputFile(b"second", filename="2.jpg")),
            InputMediaPhoto(media="AgACnew-photo-id"),
        ],
    )
    assert len(album) == 3
    group_ids = {m.media_group_id for m in album}
    assert len(group_ids) == 1 and None not in group_ids
    assert [m.message_id for m in album] == [2, 3, 4]
    assert album[0].caption == "three photos"
    assert album[0].photo[-1].file_unique_id == largest.file_unique_id, "a re-sent file keeps its unique id"
    assert album[1].photo[-1].file_unique_id != largest.file_unique_id
    with pytest.raises(TelegramBadRequest, match="wrong number of media items"):
        await bot.send_media_group(GROUP, [InputMediaPhoto(media=largest.file_id)])

    file = await bot.get_file(largest.file_id)
    assert file.file_path
    downloaded = await bot.download_file(file.file_path)
    assert downloaded is not None
    assert downloaded.read() == b"jpeg-bytes" * 100

    photo = await fake.send_photo(ALICE, caption="from a citizen", file_size=2_000)
    incoming = await bot.get_file(photo["photo"][-1]["file_id"])
    assert incoming.file_size == 2_000
    document = await fake.send_document(ALICE, file_name="huge.pdf", file_size=25 * 1024 * 1024)
    with pytest.raises(TelegramBadRequest, match="file is too big"):
        await bot.get_file(document["document"]["file_id"])


async def test_replies_copies_and_other_methods(fake: FakeTelegram, bot: Bot) -> None:
    question = await fake.send_text(ALICE, "Where is my report?")
    answer = await bot.send_message(
        ALICE, "Here", reply_parameters=ReplyParameters(message_id=question["message_id"])
    )
    assert answer.reply_to_message is not None
    assert answer.reply_to_message.text == "Where is my report?"
    with pytest.raises(TelegramBadRequest, match="message to be replied not found"):
        await bot.send_message(ALICE, "x", reply_parameters=ReplyParameters(message_id=404))
    await bot.send_message(
        ALICE, "fine", reply_parameters=ReplyParameters(message_id=404, allow_sending_without_reply=True)
    )
    prompt = await bot.send_message(ALICE, "Your address?", reply_markup=ForceReply())
    assert prompt.reply_markup is None, "Telegram never echoes a ForceReply back"
    assert fake.bot_messages(ALICE)[-1]["reply_markup"] == {"force_reply": True}
    assert fake.bot_messages(ALICE)[-1]["_reply_markup"] == {"force_reply": True}
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(-100999, "nobody")

    copied = await bot.copy_message(GROUP, from_chat_id=ALICE, message_id=question["message_id"])
    copy_stored = fake.get_message(GROUP, copied.message_id)
    assert copy_stored is not None
    assert copy_stored["text"] == "Where is my report?"
    assert copy_stored["from"]["id"] == 123456
    forwarded = await bot.forward_message(GROUP, from_chat_id=ALICE, message_id=question["message_id"])
    assert forwarded.forward_origin is not None

    location = await bot.send_location(ALICE, latitude=55.75, longitude=37.61)
    assert location.location is not None
    assert await bot.send_chat_action(ALICE, "typing")
    assert fake.chat_actions == [(ALICE, "typing")]
    chat = await bot.get_chat(GROUP)
    assert chat.title == "Roads department"

    await bot.set_my_commands([BotCommand(command="start", description="Begin")])
    assert [c.command for c in await bot.get_my_commands()] == ["start"]
    assert await bot.delete_webhook(drop_pending_updates=True)
    assert await bot.set_webhook("https://example.org/hook")
    info = await bot.get_webhook_info()
    assert info.url == "https://example.org/hook"
    with pytest.raises(TelegramConflictError, match="webhook is active"):
        await bot.get_updates()
    await bot.delete_webhook()
    assert await bot.leave_chat(GROUP)
    with pytest.raises(TelegramForbiddenError, match="bot is not a member of the supergroup chat"):
        await bot.send_message(GROUP, "gone")
    with pytest.raises(aiohttp.ClientResponseError) as missing:
        await bot.download_file("documents/missing.pdf")
    assert missing.value.status == 404


async def test_simulated_updates_parse_in_aiogram(fake: FakeTelegram) -> None:
    first = await fake.send_command(ALICE, "/start@civicdesk_test_bot ref42", chat_id=GROUP)
    assert first["entities"][0] == {"offset": 0, "length": 25, "type": "bot_command"}
    await fake.send_text(
        ALICE, "Look https://example.com/a @somebody", reply_to=first["message_id"], chat_id=GROUP
    )
    await fake.send_album(ALICE, 3, caption="three")
    await fake.send_location(ALICE, 55.7, 37.6)
    await fake.send_sticker(ALICE)
    await fake.send_voice(ALICE)
    await fake.send_video_note(ALICE)
    await fake.send_video(ALICE)
    await fake.send_document(ALICE, file_name="scan.pdf", file_size=10_000)
    await fake.send_contact(ALICE)
    await fake.send_poll(ALICE)
    await fake.send_dice(ALICE)
    await fake.send_animation(ALICE)
    note = await fake.send_text(BOB, "typo")
    await fake.edit_text(BOB, note, "fixed")
    await fake.forward_text(BOB, "news", from_user=ALICE)
    await fake.forward_text(BOB, "rumour", from_user="Hidden Person")
    fake.block(BOB)
    fake.unblock(BOB)
    for update in fake.updates:
        Update.model_validate(update)
    kinds = [next(k for k in u if k != "update_id") for u in fake.updates]
    assert kinds.count("edited_message") == 1
    assert kinds.count("my_chat_member") == 2
    album = [m for m in fake.messages(ALICE) if "media_group_id" in m]
    assert len({m["media_group_id"] for m in album}) == 1
    assert [m.get("caption") for m in album] == ["three", None, None]
    link_message = fake.messages(GROUP)[-1]
    assert [e["type"] for e in link_message["entities"]] == ["url", "mention"]
    assert [u["update_id"] for u in fake.updates] == list(range(1, len(fake.updates) + 1))


async def test_dispatcher_echo_over_polling(fake: FakeTelegram, bot: Bot) -> None:
    dispatcher = Dispatcher()

    @dispatcher.message()
    async def echo(message: Message) -> None:
        await message.answer(f"echo: {message.text}")

    polling = asyncio.create_task(
        dispatcher.start_polling(bot, polling_timeout=1, handle_signals=False, close_bot_session=False)
    )
    try:
        await fake.send_text(ALICE, "ping")
        reply = await fake.wait_for_message(ALICE, lambda m: m["text"] == "echo: ping")
        assert reply["from"]["id"] == 123456
        await fake.send_text(ALICE, "pong")
        await fake.wait_for_message(ALICE, lambda m: m["text"] == "echo: pong", after=reply["message_id"])
    finally:
        await dispatcher.stop_polling()
        await asyncio.wait_for(polling, 5)
    assert fake.calls("getUpdates")[0]["allowed_updates"] == ["message"]


async def test_malformed_requests_and_lenient_entities(fake: FakeTelegram) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{fake.base_url}/bot{TOKEN}/sendMediaGroup"
        media = '[{"type": "photo"}, {"type": "photo", "media": "AgACx"}]'
        async with http.post(url, data={"chat_id": str(ALICE), "media": media}) as resp:
            assert resp.status == 400
            assert (await resp.json())["description"].startswith("Bad Request:")
        fake.strict_html_entities = False
        url = f"{fake.base_url}/bot{TOKEN}/sendMessage"
        payload = {"chat_id": ALICE, "text": "a&nbsp;b", "parse_mode": "HTML"}
        async with http.post(url, json=payload) as resp:
            assert (await resp.json())["result"]["text"] == "a&nbsp;b", (
                "Telegram keeps unknown entities as text"
            )
    assert fake.internal_errors == []
    assert fake.calls("sendMediaGroup")[0]["media"][1] == {"type": "photo", "media": "AgACx"}


async def test_wait_for_message_reports_what_it_saw(fake: FakeTelegram, bot: Bot) -> None:
    await bot.send_message(ALICE, "something else")
    with pytest.raises(AssertionError, match="something else"):
        await fake.wait_for_message(ALICE, lambda m: m["text"] == "never", timeout=0.2)


def test_html_parser_offsets_and_errors() -> None:
    text, entities = format_text("😀 <b>bold</b> <a href='https://example.org'>link</a>", parse_mode="HTML")
    assert text == "😀 bold link"
    assert entities == [
        {"offset": 3, "length": 4, "type": "bold"},
        {"offset": 8, "length": 4, "type": "text_link", "url": "https://example.org/"},
    ]
    text, entities = format_text(
        '<pre><code class="language-python">x = 1</code></pre><blockquote expandable>q</blockquote>',
        parse_mode="HTML",
    )
    assert entities == [
        {"offset": 0, "length": 5, "type": "pre", "language": "python"},
        {"offset": 5, "length": 1, "type": "expandable_blockquote"},
    ]
    assert parse_html("<tg-spoiler>a</tg-spoiler>&#x27;&#39;")[0] == "a''"
    assert format_text("AT&T &copy 1 &gt; 0", parse_mode="HTML")[0] == "AT&T &copy 1 > 0"
    for source, detail in [
        ("a<b", "Unclosed start tag at byte offset 1"),
        ("ж <x>", 'Unsupported start tag "x" at byte offset 3'),
        ("1 < 2", 'Unsupported start tag "" at byte offset 2'),
        ("<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("</b>", "Unexpected end tag at byte offset 0"),
        ('<span class="x">s</span>', 'Tag "span" must have class "tg-spoiler"'),
    ]:
        with pytest.raises(ValueError, match=detail):
            format_text(source, parse_mode="HTML")
