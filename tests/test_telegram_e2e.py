"""End-to-end stories: the bot as production starts it, the real aiogram client, the fake Telegram server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.config import Routing, parse_routing
from bot.domain import Platform, TicketStatus
from bot.messages import transfer_target
from tests.conftest import COORDINATORS_CHAT, ROADS_CHAT, TEST_ROUTING, WASTE_CHAT
from tests.telegram_world import (
    COORDINATOR,
    ROADS_STAFF,
    WASTE_STAFF,
    Message,
    World,
    plain,
    running_world,
)

ALICE = 1001
BOB = 1002


@pytest.fixture
async def world(database_url: str, routing: Routing) -> AsyncIterator[World]:
    async with running_world(database_url, routing) as world:
        world.tg.add_user(user_id=ALICE, first_name="Алиса", last_name="Секретова", language_code="ru")
        world.tg.add_user(user_id=BOB, first_name="Bob", language_code="en")
        yield world


async def test_start_greets_explains_data_and_shows_the_menu(world: World) -> None:
    await world.tg.send_command(ALICE, "/start")
    greeting = await world.says_key(ALICE, "ru", "dialog.greeting", name="Алиса")
    assert world.tg.button_data(greeting) == ["m:new", "m:my", "m:lang", "m:help"]
    await world.tg.send_command(BOB, "/start")
    await world.says_key(BOB, "en", "dialog.greeting", name="Bob")


async def test_report_reaches_the_agency_card_and_the_answer_comes_back(world: World) -> None:
    tg = world.tg
    await tg.send_command(ALICE, "/start")
    menu = await world.last_buttons_message(ALICE, "m:new")
    await tg.press(ALICE, menu, "m:new")
    categories = await world.last_buttons_message(ALICE, "c:")
    assert "c:potholes" in tg.button_data(categories) and "c:garbage" in tg.button_data(categories)
    await tg.press(ALICE, categories, "c:potholes")
    await world.last_buttons_message(ALICE, "d:cancel", only=True)
    await tg.send_photo(ALICE, caption="<b>5 & 6</b> — яма во дворе")
    skip = await world.last_buttons_message(ALICE, "d:skip")
    await tg.send_location(ALICE, 55.751244, 37.618423)
    summary = await world.last_buttons_message(ALICE, "d:confirm")
    assert "<b>5 & 6</b>" in summary["text"]
    assert skip["message_id"] < summary["message_id"]
    await tg.press(ALICE, summary, "d:confirm")
    registered = await world.bot_says(ALICE, lambda m: "#T1" in (m.get("text") or ""))
    deadline = world.app.tickets.render.local_time((await _ticket(world, 1)).due_at)
    assert deadline in registered["text"]

    card = await world.card(ROADS_CHAT, 1)
    # One photo: the card is that photo, with the card's text as its caption and the buttons under it.
    assert tg.bot_messages(ROADS_CHAT) == [card]
    assert "<b>5 & 6</b> — яма во дворе" in card["caption"]
    assert card["_html"].count("&lt;b&gt;5 &amp; 6&lt;/b&gt;") == 1
    caption = card["caption"]
    assert "Алиса" not in caption and "Секретова" not in caption and str(ALICE) not in caption
    assert tg.button_data(card) == ["t:take:1:new", "t:ask:1:new", "t:res:1:new", "t:rej:1:new", "t:tr:1:new"]
    sent_by_alice = [m for m in tg.messages(ALICE) if m.get("photo") and m["from"]["id"] == ALICE]
    assert card["photo"][-1]["file_unique_id"] == sent_by_alice[0]["photo"][-1]["file_unique_id"]

    await tg.send_text(ROADS_STAFF, "Засыплем завтра утром", chat_id=ROADS_CHAT, reply_to=card["message_id"])
    answer = await world.bot_says(ALICE, lambda m: "Засыплем завтра утром" in (m.get("text") or ""))
    assert "#T1" in answer["text"] and "Управление дорог" in answer["text"]
    assert "Пётр" not in answer["text"]

    await world.recorded(ALICE, answer["message_id"])
    await tg.send_text(ALICE, "Спасибо, жду", reply_to=answer["message_id"])
    forwarded = await world.bot_says(ROADS_CHAT, lambda m: "Спасибо, жду" in (m.get("text") or ""))
    assert forwarded["reply_to_message"]["message_id"] == card["message_id"]
    assert "#T1" in forwarded["text"]

    # Taken: the caption shows the new status, the buttons follow it, and the photo stays.
    await tg.press(ROADS_STAFF, card, "t:take:1:new")
    taken = await world.card_shows(ROADS_CHAT, 1, TicketStatus.in_progress)
    assert taken["message_id"] == card["message_id"] and taken["photo"] == card["photo"]
    assert "<b>5 & 6</b> — яма во дворе" in taken["caption"]
    assert [c for c in tg.calls("editMessageText") if int(c["message_id"]) == card["message_id"]] == []


async def test_an_album_is_one_report_with_all_its_photos(world: World) -> None:
    number = await world.file_report(ALICE, photos=4, text="Мусор не вывозят неделю", category="garbage")
    assert number == 1
    card = await world.card(WASTE_CHAT, number)
    assert "Мусор не вывозят неделю" in card["text"]
    album = [m for m in world.tg.bot_messages(WASTE_CHAT) if m.get("photo")]
    assert len(album) == 4 and len({m["media_group_id"] for m in album}) == 1
    assert await world.ticket_count() == 1


async def test_a_photo_with_a_long_description_comes_before_its_card(world: World) -> None:
    """A card too long for a caption is a text message of its own, under the photo it tags."""
    text = "Провал асфальта у остановки. " * 30
    number = await world.file_report(ALICE, photos=1, text=text)
    card = await world.card(ROADS_CHAT, number)
    assert text.strip() in card["text"] and world.tg.button_data(card)
    photo, *rest = world.tg.bot_messages(ROADS_CHAT)
    assert photo["caption"] == f"#T{number}" and rest == [card]


async def test_a_photo_card_still_follows_its_ticket_once_the_citizen_added_photos(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE, photos=1, text="Яма у подъезда")
    card = await world.card(ROADS_CHAT, number)
    assert card.get("photo") and tg.button_data(card)
    registered = [m for m in tg.bot_messages(ALICE) if f"#T{number}" in (m.get("text") or "")][-1]
    await world.recorded(ALICE, registered["message_id"])
    await tg.send_photo(ALICE, caption="Вот ещё снимок", reply_to=registered["message_id"])
    await world.bot_says(ROADS_CHAT, lambda m: "Вот ещё снимок" in (m.get("caption") or ""))
    # Two photos now, but the card went with one: its edit goes to the caption, with no refused try first.
    await tg.press(ROADS_STAFF, card, f"t:take:{number}:new")
    taken = await world.card_shows(ROADS_CHAT, number, TicketStatus.in_progress)
    assert taken["message_id"] == card["message_id"] and "Яма у подъезда" in taken["caption"]
    assert world.t.plural("ru", "card.photos", 2) in taken["caption"]  # the card counts both
    assert [c for c in tg.calls("editMessageText") if c.get("message_id") == card["message_id"]] == []


async def test_quick_path_asks_only_for_what_is_missing(world: World) -> None:
    tg = world.tg
    await tg.send_text(ALICE, "Не горит фонарь у дома 7")
    categories = await world.last_buttons_message(ALICE, "c:")
    await tg.press(ALICE, categories, "c:potholes")
    await world.last_buttons_message(ALICE, "d:skip")  # the description is there: straight to the place
    await tg.send_text(ALICE, "ул. Садовая, 7")
    summary = await world.last_buttons_message(ALICE, "d:confirm")
    assert "Не горит фонарь у дома 7" in summary["text"] and "ул. Садовая, 7" in summary["text"]
    await tg.press(ALICE, summary, "d:confirm")
    card = await world.card(ROADS_CHAT, 1)
    assert "ул. Садовая, 7" in card["text"]


async def test_a_pressed_prompt_becomes_the_next_step(world: World) -> None:
    """The prompt a citizen presses is edited into the next step, so the chat keeps one prompt, not a
    trail of them; what the citizen types is answered below it."""
    tg = world.tg
    await tg.send_command(ALICE, "/new")
    categories = await world.last_buttons_message(ALICE, "c:")
    await tg.press(ALICE, categories, "c:potholes")
    describe = await world.last_buttons_message(ALICE, "d:cancel", only=True)
    assert describe["message_id"] == categories["message_id"]
    category = world.app.tickets.render.category("ru", "potholes")
    assert describe["text"] == plain(world.t.render("ru", "dialog.describe", category=category))
    await tg.send_text(ALICE, "Яма у дома 7")
    location = await world.last_buttons_message(ALICE, "d:skip")
    assert location["message_id"] > describe["message_id"]
    await tg.press(ALICE, location, "d:skip")
    summary = await world.last_buttons_message(ALICE, "d:confirm")
    assert summary["message_id"] == location["message_id"] and "Яма у дома 7" in summary["text"]
    assert len(tg.bot_messages(ALICE)) == 2
    assert tg.calls("editMessageReplyMarkup") == []
    # Cancelled: the summary becomes the menu.
    await tg.press(ALICE, summary, "d:cancel")
    menu = await world.says_key(ALICE, "ru", "dialog.cancelled")
    assert menu["message_id"] == summary["message_id"] and tg.button_data(menu)[0] == "m:new"
    assert len(tg.bot_messages(ALICE)) == 2


async def test_a_prompt_that_can_no_longer_be_edited_is_followed_by_a_new_one(world: World) -> None:
    tg = world.tg
    await tg.send_command(ALICE, "/new")
    categories = await world.last_buttons_message(ALICE, "c:")
    tg.fail_next("editMessageText", error_code=400, description="Bad Request: message can't be edited")
    await tg.press(ALICE, categories, "c:potholes")
    describe = await world.last_buttons_message(ALICE, "d:cancel", only=True)
    assert describe["message_id"] > categories["message_id"]
    await tg.send_text(ALICE, "Яма у дома 7")
    await world.last_buttons_message(ALICE, "d:skip")


async def test_need_info_round_trip(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)
    card = await world.card(ROADS_CHAT, number)
    await tg.press(ROADS_STAFF, card, f"t:ask:{number}:new")
    prompt = await world.bot_says(ROADS_CHAT, lambda m: m.get("_reply_markup", {}).get("force_reply") is True)
    await world.recorded(ROADS_CHAT, prompt["message_id"])
    await tg.send_text(
        ROADS_STAFF, "Какой номер подъезда?", chat_id=ROADS_CHAT, reply_to=prompt["message_id"]
    )
    question = await world.bot_says(ALICE, lambda m: "Какой номер подъезда?" in (m.get("text") or ""))
    assert f"#T{number}" in question["text"]
    await world.card_shows(ROADS_CHAT, number, TicketStatus.need_info)
    due_before = (await _ticket(world, number)).due_at

    await tg.send_text(ALICE, "Третий подъезд")  # not a reply: the waiting ticket takes it
    answer = await world.bot_says(ROADS_CHAT, lambda m: "Третий подъезд" in (m.get("text") or ""))
    assert answer["reply_to_message"]["message_id"] == card["message_id"]
    await world.card_shows(ROADS_CHAT, number, TicketStatus.in_progress)
    assert (await _ticket(world, number)).due_at >= due_before
    assert await world.ticket_count() == 1


async def test_resolve_then_no_reopens_then_yes_closes(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)
    card = await world.card(ROADS_CHAT, number)
    await tg.press(ROADS_STAFF, card, f"t:take:{number}:new")
    taken = await world.says_key(ALICE, "ru", "citizen.taken", tag=f"#T{number}", agency="Управление дорог")
    assert f"#T{number}" in taken["text"]
    card = await world.card_shows(ROADS_CHAT, number, TicketStatus.in_progress)

    await tg.press(ROADS_STAFF, card, f"t:res:{number}:in_progress")
    prompt = await world.bot_says(ROADS_CHAT, lambda m: m.get("_reply_markup", {}).get("force_reply") is True)
    await world.recorded(ROADS_CHAT, prompt["message_id"])
    await tg.send_text(ROADS_STAFF, "Яму заделали", chat_id=ROADS_CHAT, reply_to=prompt["message_id"])
    solved = await world.bot_says(ALICE, lambda m: "Яму заделали" in (m.get("text") or ""))
    assert tg.button_data(solved) == [f"f:yes:{number}", f"f:no:{number}"]
    await world.card_shows(ROADS_CHAT, number, TicketStatus.resolved)

    await tg.press(ALICE, solved, f"f:no:{number}")
    await world.says_key(ROADS_CHAT, "ru", "agency.reopened", tag=f"#T{number}")
    card = await world.card_shows(ROADS_CHAT, number, TicketStatus.in_progress)
    await tg.wait_until(lambda: tg.button_data(tg.messages(ALICE)[solved["message_id"] - 1]) == [])

    # The final answer can also come as a command in a reply to the card.
    await tg.send_text(
        ROADS_STAFF, "/resolve Заделали ещё раз", chat_id=ROADS_CHAT, reply_to=card["message_id"]
    )
    again = await world.bot_says(ALICE, lambda m: "Заделали ещё раз" in (m.get("text") or ""))
    await tg.press(ALICE, again, f"f:yes:{number}")
    await world.says_key(ALICE, "ru", "citizen.thanks", tag=f"#T{number}")
    await world.card_shows(ROADS_CHAT, number, TicketStatus.closed)
    assert await world.status_of(number) is TicketStatus.closed


async def test_reject_needs_a_reason_and_the_citizen_gets_it(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)
    card = await world.card(ROADS_CHAT, number)
    await tg.press(ROADS_STAFF, card, f"t:rej:{number}:new")
    prompt = await world.bot_says(ROADS_CHAT, lambda m: m.get("_reply_markup", {}).get("force_reply") is True)
    await world.recorded(ROADS_CHAT, prompt["message_id"])
    await tg.send_text(ROADS_STAFF, "Частная территория", chat_id=ROADS_CHAT, reply_to=prompt["message_id"])
    rejected = await world.bot_says(ALICE, lambda m: "Частная территория" in (m.get("text") or ""))
    assert f"#T{number}" in rejected["text"]
    card = await world.card_shows(ROADS_CHAT, number, TicketStatus.rejected)
    assert tg.button_data(card) == []


async def test_transfer_moves_the_ticket_to_another_agency(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE, photos=2)
    card = await world.card(ROADS_CHAT, number)
    to_waste = transfer_target("waste", number, shown_for="roads")
    await tg.press(ROADS_STAFF, card, f"t:tr:{number}:new")
    await tg.wait_until(lambda: to_waste in tg.button_data(world.card_now(ROADS_CHAT, number)))
    await tg.press(ROADS_STAFF, world.card_now(ROADS_CHAT, number), to_waste)

    new_card = await world.card(WASTE_CHAT, number)
    assert tg.button_data(new_card)[0] == f"t:take:{number}:new"
    assert len([m for m in tg.bot_messages(WASTE_CHAT) if m.get("photo")]) == 2
    await tg.wait_until(lambda: tg.button_data(world.card_now(ROADS_CHAT, number)) == [])
    assert "Региональный оператор" in world.card_now(ROADS_CHAT, number)["text"]
    await world.bot_says(ALICE, lambda m: "Региональный оператор" in (m.get("text") or ""))

    # The old agency no longer has a say: its reply to the old card is refused and reaches no one.
    sent_to_alice = len(tg.bot_messages(ALICE))
    await tg.send_text(ROADS_STAFF, "Мы всё же сделаем", chat_id=ROADS_CHAT, reply_to=card["message_id"])
    await world.says_key(ROADS_CHAT, "ru", "error.not_allowed_here")
    assert len(tg.bot_messages(ALICE)) == sent_to_alice


PARKS_CHAT = -1001000000030
PARKS = """
[[agencies]]
id = "parks"
name = { ru = "Парки и скверы", en = "Parks" }
chat_id = -1001000000030
"""


async def test_a_second_tap_on_a_list_of_agencies_does_not_move_the_ticket_again(database_url: str) -> None:
    """A coordinator taps one agency, then (before the list is gone) another: the first tap moves the
    ticket, the second, chosen from a list shown while the ticket was still with the roads, is stale."""
    async with running_world(database_url, parse_routing(TEST_ROUTING + PARKS)) as world:
        tg = world.tg
        tg.add_user(user_id=ALICE, first_name="Алиса", language_code="ru")
        tg.add_group(chat_id=PARKS_CHAT, title="Parks", type="supergroup")
        number = await world.file_report(ALICE)
        await tg.send_command(COORDINATOR, f"/card T{number}", chat_id=COORDINATORS_CHAT)
        copy = await world.card(COORDINATORS_CHAT, number)
        await tg.press(COORDINATOR, copy, f"t:tr:{number}:new")
        to_waste, to_parks = (transfer_target(a, number, shown_for="roads") for a in ("waste", "parks"))
        await tg.wait_until(lambda: to_parks in tg.button_data(world.card_now(COORDINATORS_CHAT, number)))
        first = await tg.press(COORDINATOR, copy, to_waste)
        second = await tg.press(COORDINATOR, copy, to_parks)
        await tg.wait_until(lambda: None not in (tg.callback_answer(first), tg.callback_answer(second)))

        assert tg.callback_answer(second)["text"] == plain(world.t.get("ru", "toast.stale"))  # type: ignore[index]
        await world.card(WASTE_CHAT, number)
        assert await world.status_of(number) is TicketStatus.new
        assert await world.agency_of(number) == "waste"
        assert not [m for m in tg.bot_messages(PARKS_CHAT) if f"#T{number}" in (m.get("text") or "")]


async def test_a_forged_button_from_another_agency_changes_nothing(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)  # a roads ticket
    await world.file_report(BOB, category="garbage", text="Overflowing bins")
    waste_card = await world.card(WASTE_CHAT, 2)
    query = await tg.press(WASTE_STAFF, waste_card, f"t:take:{number}:new")
    await tg.wait_until(lambda: tg.callback_answer(query) is not None)
    answer = tg.callback_answer(query)
    assert answer is not None and answer.get("show_alert") is True
    assert answer["text"] == plain(world.t.get("ru", "error.not_allowed_here"))
    assert await world.status_of(number) is TicketStatus.new

    unknown = plain(world.t.get("ru", "toast.unknown_button"))
    for data in ("t:take:not-a-number", f"t:take:{'9' * 40}:new", "t:take:²:new"):
        junk = await tg.press(WASTE_STAFF, waste_card, data)
        await tg.wait_until(lambda junk=junk: tg.callback_answer(junk) is not None)
        assert tg.callback_answer(junk)["text"] == unknown, data  # type: ignore[index]
    assert await world.status_of(2) is TicketStatus.new
    # A citizen's "Solved?" buttons, forged the same ways, on the last message the bot sent them (Bob
    # writes in English).
    last = tg.bot_messages(BOB)[-1]
    for data in (f"f:yes:{'9' * 30}", "f:yes:²"):
        junk = await tg.press(BOB, last, data)
        await tg.wait_until(lambda junk=junk: tg.callback_answer(junk) is not None)
        assert tg.callback_answer(junk)["text"] == world.t.get("en", "toast.unknown_button"), data  # type: ignore[index]


async def test_staff_commands_the_bot_lacks_are_answered_and_never_reach_the_citizen(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)
    card = await world.card(ROADS_CHAT, number)
    said = len(tg.bot_messages(ALICE))
    await tg.send_command(ROADS_STAFF, "/frobnicate", chat_id=ROADS_CHAT)
    await world.says_key(ROADS_CHAT, "ru", "staff.unknown_command")
    await tg.send_command(ROADS_STAFF, "/frobnicate@civicdesk_test_bot", chat_id=ROADS_CHAT)
    await tg.send_command(ROADS_STAFF, "/poll@some_other_bot", chat_id=ROADS_CHAT)  # not ours to answer
    # A mistyped command in a reply to the card: said back to the staff, not sent to the citizen.
    await tg.send_text(ROADS_STAFF, "/reslove засыпали", chat_id=ROADS_CHAT, reply_to=card["message_id"])
    await world.handled_all()
    refusal = plain(world.t.get("ru", "staff.unknown_command"))
    assert len([m for m in tg.bot_messages(ROADS_CHAT) if m.get("text") == refusal]) == 3
    assert len(tg.bot_messages(ALICE)) == said
    assert await world.status_of(number) is TicketStatus.new


async def test_a_staff_answer_edited_after_it_went_is_said_not_to_be_passed_on(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)
    card = await world.card(ROADS_CHAT, number)
    answer = await tg.send_text(
        ROADS_STAFF, "Приедем в среду", chat_id=ROADS_CHAT, reply_to=card["message_id"]
    )
    await world.bot_says(ALICE, lambda m: "Приедем в среду" in m.get("text", ""))
    await tg.edit_text(ROADS_STAFF, answer, "Приедем в четверг")
    await world.says_key(ROADS_CHAT, "ru", "staff.edit_not_passed")
    await world.handled_all()
    assert not [m for m in tg.bot_messages(ALICE) if "четверг" in m.get("text", "")]


async def test_a_group_the_routing_does_not_name_is_told_its_id(world: World) -> None:
    tg, group = world.tg, -1007770000001
    tg.add_group(group, title="Новое ведомство", type="supergroup")
    tg.add_member(group, ROADS_STAFF)
    tg.add_bot(group)  # someone adds the bot to set the group up
    told = await world.says_key(group, "ru", "staff.not_connected", id=str(group))
    assert f"{group}" in told["text"]
    await tg.send_text(ROADS_STAFF, "Проверка связи", chat_id=group)  # nothing to answer
    await tg.send_command(ROADS_STAFF, "/help@civicdesk_test_bot", chat_id=group)
    await world.handled_all()
    assert len(tg.bot_messages(group)) == 2 and tg.bot_messages(group)[1]["text"] == told["text"]


async def test_a_button_on_a_stale_card_is_refused_and_the_card_refreshed(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)
    card = await world.card(ROADS_CHAT, number)
    await tg.press(ROADS_STAFF, card, f"t:take:{number}:new")
    await world.card_shows(ROADS_CHAT, number, TicketStatus.in_progress)
    stale = await tg.press(ROADS_STAFF, card, f"t:rej:{number}:new")
    await tg.wait_until(lambda: tg.callback_answer(stale) is not None)
    assert tg.callback_answer(stale)["text"] == world.t.get("ru", "toast.stale")  # type: ignore[index]
    assert await world.status_of(number) is TicketStatus.in_progress
    assert not [m for m in tg.bot_messages(ROADS_CHAT) if m.get("_reply_markup", {}).get("force_reply")]


async def test_coordinators_can_act_on_any_ticket_and_read_its_history(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)
    card = await world.card(ROADS_CHAT, number)
    await tg.send_text(
        ROADS_STAFF, "!позвонить в подрядную организацию", chat_id=ROADS_CHAT, reply_to=card["message_id"]
    )
    await world.says_key(ROADS_CHAT, "ru", "staff.note_saved", tag=f"#T{number}")
    await tg.send_command(COORDINATOR, f"/card T{number}", chat_id=COORDINATORS_CHAT)
    copy = await world.card(COORDINATORS_CHAT, number)
    await tg.press(COORDINATOR, copy, f"t:take:{number}:new")
    await world.card_shows(ROADS_CHAT, number, TicketStatus.in_progress)
    await world.card_shows(COORDINATORS_CHAT, number, TicketStatus.in_progress)

    await tg.send_command(COORDINATOR, f"/history #T{number}", chat_id=COORDINATORS_CHAT)
    history = await world.bot_says(
        COORDINATORS_CHAT,
        lambda m: (m.get("text") or "").startswith(
            plain(world.t.render("ru", "history.header", tag=f"#T{number}")).splitlines()[0]
        ),
    )
    assert "позвонить в подрядную организацию" in history["text"]
    assert "Ирина" in history["text"]
    assert world.t.get("ru", "event.taken") in history["text"]
    # The citizen never hears of the internal note.
    assert not any("подрядную" in (m.get("text") or "") for m in tg.bot_messages(ALICE))


async def test_my_status_cancel_help_and_language(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)
    other = await world.file_report(BOB, category="garbage", text="Bins")
    await tg.send_command(ALICE, "/my")
    mine = await world.bot_says(
        ALICE,
        lambda m: (m.get("text") or "").startswith(
            plain(world.t.render("ru", "dialog.my_header")).splitlines()[0]
        ),
    )
    assert f"#T{number}" in mine["text"] and f"#T{other}" not in mine["text"]
    await tg.send_command(ALICE, f"/status {number}")
    await world.bot_says(
        ALICE, lambda m: (m.get("text") or "").count(f"#T{number}") >= 1 and "Управление дорог" in m["text"]
    )
    await tg.send_command(ALICE, f"/status {other}")
    await world.says_key(ALICE, "ru", "error.ticket_not_found")

    await tg.send_command(ALICE, "/new")
    await world.last_buttons_message(ALICE, "c:")
    await tg.send_command(ALICE, "/cancel")
    await world.says_key(ALICE, "ru", "dialog.cancelled", name="Алиса")
    await tg.send_command(ALICE, "/help")
    await world.says_key(ALICE, "ru", "dialog.help", name="Алиса")

    await tg.send_command(ALICE, "/lang")
    choice = await world.last_buttons_message(ALICE, "l:")
    await tg.press(ALICE, choice, "l:en")
    await world.says_key(ALICE, "en", "dialog.language_set", name="Алиса")
    await tg.send_command(ALICE, "/frobnicate")
    await world.says_key(ALICE, "en", "dialog.unknown_command")


async def test_a_live_location_moving_and_a_pin_get_no_answer_and_a_caption_is_no_command(
    world: World,
) -> None:
    tg = world.tg
    await tg.send_photo(ALICE, caption="/help")  # a photo with its caption, not a call for help
    categories = await world.last_buttons_message(ALICE, "c:")
    await tg.press(ALICE, categories, "c:potholes")
    await world.last_buttons_message(ALICE, "d:skip")  # described already ("/help"): where is it?
    live = await tg.share_live_location(ALICE, 55.7512, 37.6184)
    summary = await world.last_buttons_message(ALICE, "d:confirm")
    assert "/help" in summary["text"] and "55.75120" in summary["text"]
    await world.handled_all()
    said = len(tg.bot_messages(ALICE))
    for step in range(1, 4):  # the citizen walks on while sharing
        await tg.move_live_location(live, 55.7512 + step / 1000, 37.6184)
    await tg.pin(ALICE, summary)
    await world.handled_all()
    assert len(tg.bot_messages(ALICE)) == said, "moving and pinning are nothing to answer"
    await tg.press(ALICE, summary, "d:confirm")
    card = await world.card(ROADS_CHAT, 1)
    assert "/help" in card["caption"]


async def test_unsupported_content_gets_a_clear_answer_and_files_nothing(world: World) -> None:
    await world.tg.send_sticker(ALICE)
    await world.says_key(ALICE, "ru", "dialog.unsupported")
    await world.tg.send_voice(ALICE)
    await world.tg.wait_until(lambda: len(world.tg.bot_messages(ALICE)) == 2)
    assert await world.ticket_count() == 0


async def test_a_video_with_words_keeps_the_words_and_says_the_video_was_not_taken(world: World) -> None:
    """As on VK: what can be taken of a message is, whatever came with it."""
    tg = world.tg
    await tg.send_video(ALICE, caption="Яма у дома 7, видео с места")
    await world.says_key(ALICE, "ru", "dialog.skipped_parts", items=world.t.get("ru", "dialog.part_video"))
    await tg.press(ALICE, await world.last_buttons_message(ALICE, "c:"), "c:potholes")
    await tg.press(ALICE, await world.last_buttons_message(ALICE, "d:skip"), "d:skip")
    summary = await world.last_buttons_message(ALICE, "d:confirm")
    assert "Яма у дома 7, видео с места" in summary["text"]


async def _ticket(world: World, number: int):  # type: ignore[no-untyped-def]
    async with world.app.outbox.read() as repo:
        ticket = await repo.ticket_by_number(number)
    assert ticket is not None
    return ticket


async def test_a_staff_photo_reply_reaches_the_citizen_as_a_photo(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)
    card = await world.card(ROADS_CHAT, number)
    sent = await tg.send_photo(
        ROADS_STAFF, caption="Вот так сейчас", chat_id=ROADS_CHAT, reply_to=card["message_id"]
    )
    photo = await world.bot_says(ALICE, lambda m: bool(m.get("photo")))
    assert photo["photo"][-1]["file_unique_id"] == sent["photo"][-1]["file_unique_id"]
    assert "Вот так сейчас" in photo["caption"] and f"#T{number}" in photo["caption"]


async def test_a_staff_album_is_one_answer_and_what_cannot_go_is_said(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)
    card = await world.card(ROADS_CHAT, number)
    before = len(tg.bot_messages(ALICE))
    await tg.send_album(
        ROADS_STAFF, 3, caption="Было и стало", chat_id=ROADS_CHAT, reply_to=card["message_id"]
    )
    await world.handled_all()
    answers = tg.bot_messages(ALICE)[before:]
    assert len(answers) == 3 and all(m.get("photo") for m in answers)
    assert len({m.get("media_group_id") for m in answers}) == 1, "one album, not three answers"
    assert sum("Было и стало" in m.get("caption", "") for m in answers) == 1
    acks = [m for m in tg.bot_messages(ROADS_CHAT) if m.get("text", "").startswith("✅")]
    assert len(acks) == 1

    await tg.send_video(ROADS_STAFF, caption="Видео с места", chat_id=ROADS_CHAT, reply_to=card["message_id"])
    await world.bot_says(ALICE, lambda m: "Видео с места" in m.get("text", ""))
    await world.says_key(ROADS_CHAT, "ru", "staff.left_out")


async def test_a_long_staff_answer_arrives_whole_in_several_messages(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)
    card = await world.card(ROADS_CHAT, number)
    long_answer = " ".join(f"слово{i}" for i in range(700))  # about 6,000 characters
    await tg.send_text(ROADS_STAFF, long_answer, chat_id=ROADS_CHAT, reply_to=card["message_id"])
    await tg.wait_until(lambda: "слово699" in "".join(m.get("text") or "" for m in tg.bot_messages(ALICE)))
    received = " ".join(m.get("text") or "" for m in tg.bot_messages(ALICE))
    assert all(f"слово{i} " in received or f"слово{i}\n" in received for i in range(699))


async def test_a_citizen_who_cannot_be_reached_is_marked_and_the_agency_told_once(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)
    card = await world.card(ROADS_CHAT, number)
    await tg.send_text(ROADS_STAFF, "Первый ответ", chat_id=ROADS_CHAT, reply_to=card["message_id"])
    await world.bot_says(ALICE, lambda m: "Первый ответ" in (m.get("text") or ""))
    tg.deactivate(ALICE)  # fails sends without telling the bot first, as a deleted account does
    await tg.send_text(ROADS_STAFF, "Второй ответ", chat_id=ROADS_CHAT, reply_to=card["message_id"])
    notice = plain(world.t.render("ru", "agency.citizen_unreachable", tag=f"#T{number}"))
    await world.bot_says(ROADS_CHAT, lambda m: m.get("text") == notice)
    # Staff who answer again learn at once that it will not arrive; the notice itself is not repeated.
    await tg.send_text(ROADS_STAFF, "Третий ответ", chat_id=ROADS_CHAT, reply_to=card["message_id"])
    await tg.wait_until(lambda: len([m for m in tg.bot_messages(ROADS_CHAT) if m.get("text") == notice]) == 2)
    notices = [m for m in tg.bot_messages(ROADS_CHAT) if m.get("text") == notice]
    assert notices[1]["reply_to_message"]["text"] == "Третий ответ"
    async with world.app.outbox.read() as repo:
        citizen = await repo.citizen_by_external(Platform.telegram, ALICE)
    assert citizen is not None and citizen.unreachable_at is not None


@pytest.mark.parametrize("told", [True, False], ids=["bot told", "send fails"])
async def test_a_lost_agency_chat_is_reported_once_and_its_cards_follow_when_the_bot_is_back(
    world: World, told: bool
) -> None:
    tg = world.tg
    lost = plain(world.t.render("ru", "coordinators.chat_lost", chat="Управление дорог"))

    def notices(text: str) -> list[Message]:
        return [m for m in tg.bot_messages(COORDINATORS_CHAT) if m.get("text") == text]

    tg.remove_bot(ROADS_CHAT, tell_bot=told)
    first = await world.file_report(ALICE)
    second = await world.file_report(BOB, text="Ещё яма")
    await tg.wait_until(lambda: len(notices(lost)) == 1)
    await world.settled()
    assert len(notices(lost)) == 1
    assert not [m for m in tg.bot_messages(ROADS_CHAT) if f"#T{first}" in (m.get("text") or "")]

    tg.add_bot(ROADS_CHAT)
    back = plain(world.t.plural("ru", "coordinators.chat_back", 2, chat="Управление дорог"))
    await world.bot_says(COORDINATORS_CHAT, lambda m: m.get("text") == back)
    await world.card(ROADS_CHAT, first)
    await world.card(ROADS_CHAT, second)
    # A removal noticed again later is a new loss, told again.
    tg.remove_bot(ROADS_CHAT)
    await tg.wait_until(lambda: len(notices(lost)) == 2)


async def test_blocking_the_bot_marks_the_citizen_and_writing_again_clears_it(world: World) -> None:
    await world.file_report(ALICE)
    # Everything owed to her is out (the summary's buttons are gone), so no late send fails after she is back.
    await world.tg.wait_until(
        lambda: not [m for m in world.tg.bot_messages(ALICE) if "d:confirm" in world.tg.button_data(m)]
    )
    world.tg.block(ALICE)

    async def unreachable() -> bool:
        async with world.app.outbox.read() as repo:
            citizen = await repo.citizen_by_external(Platform.telegram, ALICE)
        return citizen is not None and citizen.unreachable_at is not None

    for _ in range(100):
        if await unreachable():
            break
        await world.tg.wait_until(lambda: world.tg.pending_updates == 0, timeout=1)
    assert await unreachable()
    await world.tg.send_command(ALICE, "/my")  # writing to the bot unblocks it
    await world.says_key(ALICE, "ru", "dialog.my_header")
    assert not await unreachable()


async def test_an_agency_group_upgraded_to_a_supergroup_is_followed_and_remembered(world: World) -> None:
    tg = world.tg
    first = await world.file_report(ALICE)
    new_chat = -1002000000010
    tg.migrate_group(ROADS_CHAT, new_chat)
    await tg.wait_until(lambda: world.app.tickets.agency_chat("roads") == new_chat)
    second = await world.file_report(BOB, text="Ещё одна яма")
    card = await world.card(new_chat, second)
    # Staff in the supergroup act on tickets of either card, old or new.
    await tg.press(ROADS_STAFF, card, f"t:take:{second}:new")
    await world.card_shows(new_chat, second, TicketStatus.in_progress)
    await tg.send_command(ROADS_STAFF, f"/card {first}", chat_id=new_chat)
    await world.card(new_chat, first)

    # A restart reads the move back from the database.
    from bot.chats import ChatDirectory

    directory = ChatDirectory(world.routing)
    async with world.app.outbox.read() as repo:
        await directory.load(repo)
    assert directory.agency_chat("roads") == new_chat
    assert directory.locale(new_chat) == "ru" and directory.is_staff_chat(new_chat)


async def test_documents_are_attachments_up_to_the_download_limit(world: World) -> None:
    tg = world.tg
    await tg.send_document(ALICE, file_name="huge.pdf", file_size=30 * 1024 * 1024)
    await world.says_key(ALICE, "ru", "dialog.file_too_big")
    sent = await tg.send_document(ALICE, file_name="act.pdf", file_size=200_000, caption="Акт осмотра, яма")
    await tg.press(ALICE, await world.last_buttons_message(ALICE, "c:"), "c:potholes")
    await tg.press(ALICE, await world.last_buttons_message(ALICE, "d:skip"), "d:skip")
    await tg.press(ALICE, await world.last_buttons_message(ALICE, "d:confirm"), "d:confirm")
    await world.card(ROADS_CHAT, 1)
    document = await world.bot_says(ROADS_CHAT, lambda m: bool(m.get("document")))
    assert document["document"]["file_unique_id"] == sent["document"]["file_unique_id"]
    assert await world.ticket_count() == 1


# -- a location with an answer, and albums with parts the bot cannot take

MAP_LINK = '<a href="https://maps.google.com/?q=55.751244,37.618423">55.75124, 37.61842</a>'


async def _ask(world: World, number: int, question: str, citizen: int = ALICE) -> None:
    """Staff ask the citizen a question about the ticket; returns once it reached them."""
    tg = world.tg
    card = await world.card(ROADS_CHAT, number)
    await tg.press(ROADS_STAFF, card, f"t:ask:{number}:new")
    prompt = await world.bot_says(ROADS_CHAT, lambda m: m.get("_reply_markup", {}).get("force_reply") is True)
    await world.recorded(ROADS_CHAT, prompt["message_id"])
    await tg.send_text(ROADS_STAFF, question, chat_id=ROADS_CHAT, reply_to=prompt["message_id"])
    await world.bot_says(citizen, lambda m: question in (m.get("text") or ""))
    await world.card_shows(ROADS_CHAT, number, TicketStatus.need_info)


async def _citizen_events(world: World, number: int) -> list[dict[str, object]]:
    ticket = await _ticket(world, number)
    async with world.app.outbox.read() as repo:
        events = await repo.events(ticket.id)
    return [dict(e.payload) for e in events if e.kind.value == "citizen_message"]


async def test_a_location_sent_as_the_answer_reaches_the_agency_and_places_the_ticket(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE, address=None)  # filed without a place
    await _ask(world, number, "Где именно яма?")

    await tg.send_location(ALICE, 55.751244, 37.618423)  # the answer: a location, no words
    answer = await world.bot_says(
        ROADS_CHAT, lambda m: "55.75124, 37.61842" in (m.get("text") or "") and f"#T{number}" in m["text"]
    )
    assert MAP_LINK in answer["_html"]
    assert "—" not in answer["text"]
    await world.says_key(ALICE, "ru", "citizen.message_added", tag=f"#T{number}")
    # The ticket had no place: the point becomes its place, and the card shows it.
    card = await world.card_shows(ROADS_CHAT, number, TicketStatus.in_progress)
    assert "55.75124, 37.61842" in card["text"]
    ticket = await _ticket(world, number)
    assert (ticket.latitude, ticket.longitude) == (55.751244, 37.618423)
    events = await _citizen_events(world, number)
    assert events[-1]["latitude"] == 55.751244 and events[-1]["longitude"] == 37.618423
    await world.handled_all()
    assert await world.ticket_count() == 1


async def test_a_location_sent_in_reply_reaches_the_agency_and_keeps_the_reports_address(
    world: World,
) -> None:
    tg = world.tg
    number = await world.file_report(ALICE, address="Ленина, 5")
    await world.card(ROADS_CHAT, number)
    registered = [m for m in tg.bot_messages(ALICE) if f"#T{number}" in (m.get("text") or "")][-1]
    await world.recorded(ALICE, registered["message_id"])
    # A location sent as a reply (the fake's send_location takes no reply, so the message is built here).
    sent = tg._incoming(
        ALICE, None, {"location": {"latitude": 55.751244, "longitude": 37.618423}}, registered["message_id"]
    )
    assert sent["reply_to_message"]["message_id"] == registered["message_id"]
    forwarded = await world.bot_says(ROADS_CHAT, lambda m: "55.75124, 37.61842" in (m.get("text") or ""))
    assert MAP_LINK in forwarded["_html"] and f"#T{number}" in forwarded["text"]
    await world.says_key(ALICE, "ru", "citizen.message_added", tag=f"#T{number}")
    # The report already had a place: it keeps it; the point is recorded with the message.
    ticket = await _ticket(world, number)
    assert ticket.address == "Ленина, 5" and ticket.latitude is None
    assert (await _citizen_events(world, number))[-1]["latitude"] == 55.751244


async def test_an_album_keeps_what_it_can_and_says_what_it_could_not_take(world: World) -> None:
    tg = world.tg
    # Nothing in it can be taken: the usual answer, and no report begins.
    await tg.send_mixed_album(ALICE, ["video", "audio"])
    await world.says_key(ALICE, "ru", "dialog.unsupported")
    # A file over the limit is named first, as on VK: the citizen can send it again, smaller.
    await tg.send_mixed_album(ALICE, ["video", "big_document"])
    await world.says_key(ALICE, "ru", "dialog.file_too_big")
    await world.handled_all()
    assert not [m for m in tg.bot_messages(ALICE) if "Не добавлено" in (m.get("text") or "")]

    await tg.send_command(ALICE, "/new")
    await tg.press(ALICE, await world.last_buttons_message(ALICE, "c:"), "c:potholes")
    await world.last_buttons_message(ALICE, "d:cancel", only=True)
    # The video comes first, with the album's caption: the photo and the caption are still taken.
    await tg.send_mixed_album(ALICE, ["video", "photo", "big_document", "video"], caption="Яма у дома 3")
    items = ", ".join(world.t.get("ru", k) for k in ("dialog.part_video", "dialog.part_big_file"))
    note = await world.says_key(ALICE, "ru", "dialog.skipped_parts", items=items)
    skip = await world.last_buttons_message(ALICE, "d:skip")
    assert note["message_id"] < skip["message_id"]
    await tg.press(ALICE, skip, "d:skip")
    summary = await world.last_buttons_message(ALICE, "d:confirm")
    assert "Яма у дома 3" in summary["text"]
    await tg.press(ALICE, summary, "d:confirm")
    card = await world.card(ROADS_CHAT, 1)
    assert "Яма у дома 3" in card["caption"] and card.get("photo")
    assert not any(m.get("video") or m.get("document") for m in tg.bot_messages(ROADS_CHAT))
    assert await world.ticket_count() == 1


async def test_an_album_answering_a_question_says_which_parts_were_not_added(world: World) -> None:
    tg = world.tg
    number = await world.file_report(BOB)
    await _ask(world, number, "Photo please", citizen=BOB)
    await tg.send_mixed_album(BOB, ["photo", "audio"], caption="Here it is")
    # The photo reaches the agency with the words; the audio does not, and the citizen hears so.
    added = await world.bot_says(ROADS_CHAT, lambda m: "Here it is" in (m.get("caption") or ""))
    assert added.get("photo") and f"#T{number}" in added["caption"]
    await world.says_key(BOB, "en", "citizen.message_added", tag=f"#T{number}")
    await world.says_key(BOB, "en", "dialog.skipped_parts", items=world.t.get("en", "dialog.part_audio"))
    await world.card_shows(ROADS_CHAT, number, TicketStatus.in_progress)
