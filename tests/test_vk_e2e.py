"""End-to-end stories of a VK citizen: the real vkbottle client against the fake VK API, the agency in
the fake Telegram, the bot started as production starts it with both channels on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from bot.config import Routing
from bot.domain import Platform, TicketStatus
from bot.messages import transfer_target
from storage.schema import citizens, outbox
from tests.conftest import ROADS_CHAT, VK_GROUP, VK_TOKEN
from tests.fakes.vk import FakeVK
from tests.telegram_world import ROADS_STAFF, World, plain, running_world

ANNA = 5001
TIMEOUT = 10.0
Message = dict[str, Any]


@dataclass
class VkWorld:
    vk: FakeVK
    world: World

    async def says(self, user_id: int, needle: str) -> Message:
        return await self.vk.wait_for_message(user_id, lambda m: needle in m["text"], timeout=TIMEOUT)

    async def says_key(self, user_id: int, key: str, locale: str = "ru", **params: object) -> Message:
        first_line = plain(self.world.t.render(locale, key, **params)).splitlines()[0].strip()
        return await self.says(user_id, first_line)

    async def keyboard(self, user_id: int, data_prefix: str) -> Message:
        """The newest bot message whose keyboard has a button with data starting with `data_prefix`."""

        def newest_with_buttons(message: Message) -> bool:
            with_keyboards = [m for m in self.vk.bot_messages(user_id) if self.vk.button_payloads(m)]
            data = [p.get("d", "") for p in self.vk.button_payloads(message)]
            return (
                bool(with_keyboards)
                and with_keyboards[-1]["id"] == message["id"]
                and any(d.startswith(data_prefix) for d in data)
            )

        return await self.vk.wait_for_message(user_id, newest_with_buttons, timeout=TIMEOUT)

    async def without_buttons(self, message: Message) -> Message:
        """The bot's message as it is once an edit took its keyboard off."""

        def bare() -> bool:
            return not self.vk.button_payloads(self.vk.get_message(message["id"]) or {})

        await self.vk.wait_until(bare, timeout=TIMEOUT)
        current = self.vk.get_message(message["id"])
        assert current is not None
        return current

    async def press(self, user_id: int, message: Message, data: str) -> str:
        event_id = await self.vk.press(user_id, message, {"d": data})
        await self.vk.wait_until(lambda: self.vk.event_answer(event_id) is not None, timeout=TIMEOUT)
        return event_id

    async def file_report(self, user_id: int, text: str = "Яма у школы", photos: int = 0) -> int:
        before = await self.world.ticket_count()
        await self.vk.send_text(user_id, "/new")
        await self.press(user_id, await self.keyboard(user_id, "c:"), "c:potholes")
        await self.keyboard(user_id, "d:cancel")
        if photos:
            await self.vk.send_photos(user_id, photos, text)
        else:
            await self.vk.send_text(user_id, text)
        await self.press(user_id, await self.keyboard(user_id, "d:skip"), "d:skip")
        await self.press(user_id, await self.keyboard(user_id, "d:confirm"), "d:confirm")
        await self.world.tg.wait_until(lambda: len(self._tagged(user_id)) > 0 and self._new(user_id, before))
        assert await self.world.ticket_count() == before + 1
        return before + 1

    def _tagged(self, user_id: int) -> list[Message]:
        return [m for m in self.vk.bot_messages(user_id) if "#T" in m["text"]]

    def _new(self, user_id: int, before: int) -> bool:
        return any(f"#T{before + 1}" in m["text"] for m in self._tagged(user_id))


@pytest.fixture
async def both(
    database_url: str, routing: Routing, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[VkWorld]:
    monkeypatch.chdir(tmp_path)  # nothing may be written into the working directory
    async with FakeVK(token=VK_TOKEN, group_id=VK_GROUP) as vk:
        vk.add_user(user_id=ANNA, first_name="Анна", last_name="Иванова", lang="ru")
        async with running_world(
            database_url,
            routing,
            vk_group_token=VK_TOKEN,
            vk_group_id=VK_GROUP,
            vk_api_url=vk.api_url,
            vk_polling_wait=1,
        ) as world:
            yield VkWorld(vk, world)
    assert not (tmp_path / ".vkbottle").exists()


async def test_vk_citizen_report_reaches_the_card_and_a_photo_answer_comes_back(both: VkWorld) -> None:
    vk, tg = both.vk, both.world.tg
    await vk.send_text(ANNA, "Начать")
    greeting = await both.says_key(ANNA, "dialog.greeting", name="Анна")
    assert [p["d"] for p in vk.button_payloads(greeting)] == ["m:new", "m:my", "m:lang", "m:help"]
    await both.press(ANNA, greeting, "m:new")
    await both.press(ANNA, await both.keyboard(ANNA, "c:"), "c:potholes")
    await both.keyboard(ANNA, "d:cancel")
    await vk.send_photos(ANNA, 2, "<b>Яма</b> & лужа во дворе")
    await both.keyboard(ANNA, "d:skip")
    await vk.send_location(ANNA, 55.75, 37.61)
    summary = await both.keyboard(ANNA, "d:confirm")
    assert "<b>Яма</b> & лужа во дворе" in summary["text"]  # shown as written, no markup
    filed = summary["text"]
    await both.press(ANNA, summary, "d:confirm")
    await both.says(ANNA, "#T1")
    # The summary stays, as the record of what was filed, without its buttons.
    kept = vk.get_message(summary["id"])
    assert kept is not None and vk.button_payloads(kept) == [] and kept["text"] == filed

    card = await both.world.card(ROADS_CHAT, 1)
    assert "<b>Яма</b> & лужа во дворе" in card["text"]
    assert "Анна" not in card["text"] and str(ANNA) not in card["text"]
    album = [m for m in tg.bot_messages(ROADS_CHAT) if m.get("photo")]
    assert len(album) == 2

    staff_photo = await tg.send_photo(
        ROADS_STAFF, caption="Вот что сделано", chat_id=ROADS_CHAT, reply_to=card["message_id"]
    )
    assert staff_photo["photo"]
    answer = await both.says(ANNA, "Вот что сделано")
    assert "#T1" in answer["text"]
    photos = [a for a in answer["attachments"] if a["type"] == "photo"]
    assert len(photos) == 1


async def test_a_pressed_vk_prompt_becomes_the_next_step(both: VkWorld) -> None:
    """VK's button events name the message by its number in the conversation, and so do the edits."""
    vk = both.vk
    await vk.send_text(ANNA, "/new")
    categories = await both.keyboard(ANNA, "c:")
    await both.press(ANNA, categories, "c:potholes")
    describe = await both.keyboard(ANNA, "d:cancel")
    assert describe["id"] == categories["id"]
    await vk.send_text(ANNA, "Яма у школы")
    location = await both.keyboard(ANNA, "d:skip")
    assert location["id"] > describe["id"]
    await both.press(ANNA, location, "d:skip")
    summary = await both.keyboard(ANNA, "d:confirm")
    assert summary["id"] == location["id"] and "Яма у школы" in summary["text"]
    assert len(vk.bot_messages(ANNA)) == 2
    edits = vk.calls("messages.edit")
    assert len(edits) == 2 and all("conversation_message_id" in edit for edit in edits)


async def test_a_category_pressed_on_an_older_vk_prompt_takes_that_prompts_buttons_off(both: VkWorld) -> None:
    vk = both.vk
    await vk.send_text(ANNA, "/new")
    older = await both.keyboard(ANNA, "c:")
    await vk.send_text(ANNA, "/new")
    newer = await vk.wait_for_message(
        ANNA, lambda m: m["id"] > older["id"] and bool(vk.button_payloads(m)), timeout=TIMEOUT
    )
    await both.press(ANNA, newer, "c:potholes")
    await both.keyboard(ANNA, "d:cancel")
    await both.press(ANNA, older, "c:garbage")  # changes the category; the next step comes below
    assert (await both.without_buttons(older))["text"] == older["text"]
    assert vk.calls("messages.getByConversationMessageId")


async def test_a_document_from_the_agency_reaches_the_vk_citizen_unless_vk_refuses_it(
    both: VkWorld,
) -> None:
    vk, tg = both.vk, both.world.tg
    await both.file_report(ANNA, "Яма у школы")
    card = await both.world.card(ROADS_CHAT, 1)

    async def reply_with(file_name: str, caption: str) -> dict[str, Any]:
        return await tg.send_document(
            ROADS_STAFF, file_name=file_name, caption=caption, chat_id=ROADS_CHAT, reply_to=card["message_id"]
        )

    sent = await reply_with("акт осмотра.pdf", "Акт осмотра")
    answer = await both.says(ANNA, "Акт осмотра")
    [doc] = [a["doc"] for a in answer["attachments"] if a["type"] == "doc"]
    assert doc["title"] == "акт осмотра.pdf"
    assert vk.docs[doc["id"]]["content"] == tg.file_bytes(sent["document"]["file_id"])

    # A file VK does not take: the words still go, without it.
    await reply_with("setup.exe", "Программа")
    answer = await both.says(ANNA, "Программа")
    assert answer["attachments"] == []
    assert len(vk.docs) == 1

    # A document without a name is named after its type: VK takes no file without an extension.
    await tg.send_document(
        ROADS_STAFF,
        file_name=None,
        mime_type="application/pdf",
        caption="Схема",
        chat_id=ROADS_CHAT,
        reply_to=card["message_id"],
    )
    unnamed = await both.says(ANNA, "Схема")
    assert [a["doc"]["title"] for a in unnamed["attachments"] if a["type"] == "doc"] == ["document.pdf"]


async def test_a_vk_album_is_one_report(both: VkWorld) -> None:
    await both.vk.send_photos(ANNA, 3, "Мусор у подъезда")  # the quick path: text and photos first
    await both.press(ANNA, await both.keyboard(ANNA, "c:"), "c:potholes")
    await both.press(ANNA, await both.keyboard(ANNA, "d:skip"), "d:skip")
    await both.press(ANNA, await both.keyboard(ANNA, "d:confirm"), "d:confirm")
    await both.world.card(ROADS_CHAT, 1)
    assert len([m for m in both.world.tg.bot_messages(ROADS_CHAT) if m.get("photo")]) == 3
    assert await both.world.ticket_count() == 1


async def test_vk_need_info_round_trip_and_resolution(both: VkWorld) -> None:
    tg = both.world.tg
    number = await both.file_report(ANNA)
    card = await both.world.card(ROADS_CHAT, number)
    await tg.send_text(ROADS_STAFF, "/ask Какой подъезд?", chat_id=ROADS_CHAT, reply_to=card["message_id"])
    question = await both.says(ANNA, "Какой подъезд?")
    await both.world.recorded(ANNA, question["id"], Platform.vk)
    await both.vk.send_text(ANNA, "Второй", reply_to=question)
    forwarded = await both.world.bot_says(ROADS_CHAT, lambda m: "Второй" in (m.get("text") or ""))
    assert forwarded["reply_to_message"]["message_id"] == card["message_id"]
    await both.world.card_shows(ROADS_CHAT, number, TicketStatus.in_progress)

    await tg.send_text(ROADS_STAFF, "/resolve Починили", chat_id=ROADS_CHAT, reply_to=card["message_id"])
    solved = await both.says(ANNA, "Починили")
    assert [p["d"] for p in both.vk.button_payloads(solved)] == [f"f:yes:{number}", f"f:no:{number}"]
    await both.press(ANNA, solved, f"f:no:{number}")
    await both.world.card_shows(ROADS_CHAT, number, TicketStatus.in_progress)
    # The question is settled: its buttons go, its words stay.
    assert (await both.without_buttons(solved))["text"] == solved["text"]
    await tg.send_text(ROADS_STAFF, "/resolve Теперь точно", chat_id=ROADS_CHAT, reply_to=card["message_id"])
    again = await both.says(ANNA, "Теперь точно")
    await both.press(ANNA, again, f"f:yes:{number}")
    await both.world.card_shows(ROADS_CHAT, number, TicketStatus.closed)


async def test_a_vk_resolution_keeps_its_photo_when_its_buttons_go(both: VkWorld) -> None:
    tg = both.world.tg
    number = await both.file_report(ANNA)
    card = await both.world.card(ROADS_CHAT, number)
    await tg.send_photo(
        ROADS_STAFF, "/resolve Заасфальтировали", chat_id=ROADS_CHAT, reply_to=card["message_id"]
    )
    solved = await both.says(ANNA, "Заасфальтировали")
    assert [a["type"] for a in solved["attachments"]] == ["photo"]
    await both.press(ANNA, solved, f"f:yes:{number}")
    await both.world.card_shows(ROADS_CHAT, number, TicketStatus.closed)
    now = await both.without_buttons(solved)
    assert now["text"] == solved["text"]
    assert [a["photo"]["id"] for a in now["attachments"]] == [a["photo"]["id"] for a in solved["attachments"]]


async def test_vk_rejection_and_transfer_reach_the_citizen(both: VkWorld) -> None:
    tg = both.world.tg
    number = await both.file_report(ANNA)
    card = await both.world.card(ROADS_CHAT, number)
    await tg.press(ROADS_STAFF, card, f"t:tr:{number}:new")
    to_waste = transfer_target("waste", number, shown_for="roads")
    await tg.wait_until(lambda: to_waste in tg.button_data(both.world.card_now(ROADS_CHAT, number)))
    await tg.press(ROADS_STAFF, both.world.card_now(ROADS_CHAT, number), to_waste)
    await both.says(ANNA, "Региональный оператор")


async def test_a_citizen_who_forbade_messages_is_marked_and_the_agency_told(both: VkWorld) -> None:
    tg = both.world.tg
    number = await both.file_report(ANNA)
    card = await both.world.card(ROADS_CHAT, number)
    both.vk.forbid(ANNA)
    answer = await tg.send_text(ROADS_STAFF, "Ответ", chat_id=ROADS_CHAT, reply_to=card["message_id"])
    notice = plain(both.world.t.render("ru", "agency.citizen_unreachable", tag=f"#T{number}"))
    ack = await both.world.bot_says(
        ROADS_CHAT, lambda m: m.get("reply_to_message", {}).get("message_id") == answer["message_id"]
    )
    # If VK's message_deny arrived first, the acknowledgement already says so; either way the failed
    # send adds one notice, and only after the failure is recorded.
    expected = 2 if ack["text"] == notice else 1
    await tg.wait_until(
        lambda: [m.get("text") for m in tg.bot_messages(ROADS_CHAT)].count(notice) == expected
    )
    async with both.world.app.db.read() as conn:
        assert await conn.scalar(sa.select(citizens.c.unreachable_at).where(citizens.c.external_id == ANNA))
        failed = await conn.scalar(
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.status == "failed")
        )
    assert failed == 1


async def test_a_replayed_event_changes_nothing(both: VkWorld) -> None:
    number = await both.file_report(ANNA)
    sent_before = len(both.vk.bot_messages(ANNA))
    await both.vk.replay_last(3)  # the last text, the confirm press, and whatever came just before
    await both.vk.send_text(
        ANNA, "/my"
    )  # a fresh event after the replays: once it is answered, they were seen
    await both.says_key(ANNA, "dialog.my_header")
    assert len(both.vk.bot_messages(ANNA)) == sent_before + 1
    assert await both.world.ticket_count() == number


async def test_every_vk_send_carries_a_random_id_and_a_resend_shows_once(both: VkWorld) -> None:
    both.vk.fail_next("messages.send", error_code=10, times=1)
    await both.vk.send_text(ANNA, "/help")
    await both.says_key(ANNA, "dialog.help", name="Анна")
    calls = both.vk.calls("messages.send")
    assert calls and all(int(c["random_id"]) > 0 for c in calls)
    assert len({c["random_id"] for c in calls}) < len(calls)  # the retry reused its random_id
    assert len(both.vk.bot_messages(ANNA)) == 1


async def test_button_answers_and_sends_share_vk_rate_budget(both: VkWorld) -> None:
    vk = both.vk
    citizens = range(6001, 6016)
    for user_id in citizens:
        vk.add_user(user_id=user_id, first_name="Житель", lang="ru")
    vk.enforce_limits = True  # 20 calls a second for the community's token, all methods together
    for user_id in citizens:
        await vk.send_text(user_id, "/new")
    menus = {user_id: await both.keyboard(user_id, "c:") for user_id in citizens}
    # Fifteen presses at once: fifteen answers to the buttons, fifteen prompts through the outbox.
    events = [await vk.press(user_id, menus[user_id], {"d": "c:potholes"}) for user_id in citizens]
    await vk.wait_until(lambda: all(vk.event_answer(e) is not None for e in events), timeout=TIMEOUT)
    for user_id in citizens:
        await both.keyboard(user_id, "d:cancel")
    assert vk.stats.too_many_requests == 0


async def _fetch(url: str) -> bytes:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        return await response.read()


async def test_a_vk_document_is_an_attachment_up_to_the_download_limit(both: VkWorld) -> None:
    vk, tg = both.vk, both.world.tg
    await vk.send_doc(ANNA, title="огромный.pdf", size=30 * 1024 * 1024)
    await both.says_key(ANNA, "dialog.file_too_big")
    act = vk.doc_attachment(ANNA, title="акт осмотра.pdf", size=200_000)
    await vk.send_message(ANNA, "Акт осмотра, яма", [act])
    await both.press(ANNA, await both.keyboard(ANNA, "c:"), "c:potholes")
    await both.press(ANNA, await both.keyboard(ANNA, "d:skip"), "d:skip")
    await both.press(ANNA, await both.keyboard(ANNA, "d:confirm"), "d:confirm")
    card = await both.world.card(ROADS_CHAT, 1)
    assert "Акт осмотра, яма" in card["text"]
    document = await both.world.bot_says(ROADS_CHAT, lambda m: bool(m.get("document")))
    assert tg.file_bytes(document["document"]["file_id"]).startswith(b"%fake document")
    assert await both.world.ticket_count() == 1


async def test_a_vk_document_reaches_the_agency_whole_and_under_its_name(both: VkWorld) -> None:
    act = both.vk.doc_attachment(ANNA, title="акт осмотра.pdf", size=200_000)
    await both.vk.send_message(ANNA, "Акт осмотра, яма", [act])
    await both.press(ANNA, await both.keyboard(ANNA, "c:"), "c:potholes")
    await both.press(ANNA, await both.keyboard(ANNA, "d:skip"), "d:skip")
    await both.press(ANNA, await both.keyboard(ANNA, "d:confirm"), "d:confirm")
    document = await both.world.bot_says(ROADS_CHAT, lambda m: bool(m.get("document")))
    assert document["document"]["file_name"] == "акт осмотра.pdf"
    assert both.world.tg.file_bytes(document["document"]["file_id"]) == await _fetch(act["doc"]["url"])


async def test_vk_forwards_are_taken_and_what_cannot_be_is_named(both: VkWorld) -> None:
    vk, t = both.vk, both.world.t
    neighbour = vk.forwarded(7001, "Третий день течёт вода из люка", [vk.photo_attachment(7001)])
    older = vk.forwarded(7002, "Люк открыт с понедельника")
    await vk.send_message(
        ANNA,
        "Пересылаю от соседей",
        [vk.photo_attachment(ANNA), vk.video_attachment(ANNA)],
        forward=[neighbour, vk.forwarded(7001, "", forward=[older])],
    )
    await both.says_key(ANNA, "dialog.skipped_parts", items=t.get("ru", "dialog.part_video"))
    await both.press(ANNA, await both.keyboard(ANNA, "c:"), "c:potholes")
    await both.press(ANNA, await both.keyboard(ANNA, "d:skip"), "d:skip")
    summary = await both.keyboard(ANNA, "d:confirm")
    for line in ("Пересылаю от соседей", "Третий день течёт вода из люка", "Люк открыт с понедельника"):
        assert line in summary["text"]
    await both.press(ANNA, summary, "d:confirm")
    await both.world.card(ROADS_CHAT, 1)
    assert len([m for m in both.world.tg.bot_messages(ROADS_CHAT) if m.get("photo")]) == 2

    # Alone, what cannot be taken gets the plain refusal, and files nothing.
    await vk.send_wall(ANNA)
    await vk.send_message(ANNA, "", [vk.video_attachment(ANNA)])
    refusal = plain(t.render("ru", "dialog.unsupported")).splitlines()[0].strip()
    await vk.wait_until(
        lambda: sum(refusal in m["text"] for m in vk.bot_messages(ANNA)) == 2, timeout=TIMEOUT
    )
    assert await both.world.ticket_count() == 1


async def test_an_edit_in_vk_is_answered_as_on_telegram(both: VkWorld) -> None:
    vk = both.vk
    written = await vk.send_text(ANNA, "Яма у школы")
    prompt = await both.keyboard(ANNA, "c:")
    # VK reports the community's own edits too (here, of its prompt): those are not answered.
    vk.push_event("message_edit", {**vk.get_message(prompt["id"]), "from_id": -VK_GROUP, "out": 1})
    await vk.edit_message(ANNA, written, "Яма у школы №5")
    await both.says_key(ANNA, "dialog.edit_ignored")
    await both.world.handled_all()
    notice = plain(both.world.t.render("ru", "dialog.edit_ignored")).splitlines()[0].strip()
    assert [notice in m["text"] for m in vk.bot_messages(ANNA)].count(True) == 1
