"""The fake VK server checked against the real vkbottle client: API answers and errors, photo uploads, the
Bots Long Poll, and the behaviours other tests rely on."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from vkbottle import API, AiohttpClient, BotPolling, DocMessagesUploader, PhotoMessageUploader, VKAPIError
from vkbottle.api.request_rescheduler import BlockingRequestRescheduler
from vkbottle.bot import Bot, BotLabeler, Message
from vkbottle.tools.mini_types.bot import MessageEventMin, message_min

from tests.fakes.vk import FakeVK

TOKEN = "vk1.a.test-group-token"
GROUP = 222000
ANNA = 5001
BORIS = 5002
STRANGER = 5999


@pytest.fixture
async def fake() -> AsyncIterator[FakeVK]:
    async with FakeVK(token=TOKEN, group_id=GROUP, group_name="Решаем вместе") as server:
        server.add_user(user_id=ANNA, first_name="Анна", last_name="Иванова", lang="ru")
        server.add_user(user_id=BORIS, first_name="Boris", last_name="Smith", lang="en")
        yield server


def make_api(fake: FakeVK, token: str = TOKEN, **kwargs: Any) -> API:
    # A client of its own: vkbottle's default is shared by the whole process, and one test closing it
    # would leave the next one a closed session.
    kwargs.setdefault("http_client", AiohttpClient())
    api = API(token, **kwargs)
    api.API_URL = fake.api_url
    return api


@pytest.fixture
async def api(fake: FakeVK) -> AsyncIterator[API]:
    client = make_api(fake)
    yield client
    await client.http_client.close()


def keyboard(*data: str, inline: bool = True) -> str:
    rows = [
        [
            {
                "action": {"type": "callback", "label": f"btn {d}", "payload": json.dumps({"d": d})},
                "color": "secondary",
            }
        ]
        for d in data
    ]
    return json.dumps({"inline": inline, "buttons": rows}, ensure_ascii=False)


def callback_rows(*row_sizes: int, inline: bool = True, label: str = "b", payload: str = "{}") -> str:
    button = {"action": {"type": "callback", "label": label, "payload": payload}}
    return json.dumps({"inline": inline, "buttons": [[button] * size for size in row_sizes]})


async def send(api: API, peer_id: int, text: str, random_id: int = 0, **params: Any) -> int:
    response = await api.request(
        "messages.send", {"peer_id": peer_id, "random_id": random_id, "message": text, **params}
    )
    return int(response["response"])


async def test_group_by_id_auth_errors_and_raw_shapes(fake: FakeVK, api: API) -> None:
    assert fake.api_url == f"{fake.base_url}/method/"
    response = await api.request("groups.getById", {})
    assert response["response"]["profiles"] == []
    group = response["response"]["groups"][0]
    assert (group["id"], group["name"], group["screen_name"], group["type"]) == (
        GROUP,
        "Решаем вместе",
        "club222000",
        "group",
    )
    typed = await api.groups.get_by_id()
    assert typed.groups[0].id == GROUP

    intruder = make_api(fake, token="vk1.a.wrong")
    with pytest.raises(VKAPIError[5], match=re.escape("invalid access_token (4).")):
        await intruder.request("groups.getById", {})
    with pytest.raises(VKAPIError[3], match="Unknown method passed"):
        await api.request("groups.noSuchMethod", {})

    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{fake.api_url}users.get", data={"access_token": TOKEN, "user_ids": "5001"}
        ) as r:
            assert r.status == 200
            assert await r.json() == {
                "error": {
                    "error_code": 8,
                    "error_msg": "Invalid request: v (version) is required",
                    "request_params": [
                        {"key": "method", "value": "users.get"},
                        {"key": "oauth", "value": "1"},
                        {"key": "user_ids", "value": "5001"},
                    ],
                }
            }
        query = f"access_token={TOKEN}&v=5.199&user_ids=5001,id5002,77&fields=screen_name"
        async with http.get(f"{fake.api_url}USERS.GET?{query}") as r:
            users = (await r.json())["response"]
        form = aiohttp.FormData()
        form.add_field("user_ids", str(BORIS), content_type="text/plain")
        form.add_field("photo", b"ignored", filename="x.jpg")
        async with http.post(f"{fake.api_url}users.get?access_token={TOKEN}&v=5.199", data=form) as r:
            multipart_users = (await r.json())["response"]
    assert users[0] == {
        "id": ANNA,
        "first_name": "Анна",
        "last_name": "Иванова",
        "can_access_closed": True,
        "is_closed": False,
        "screen_name": "id5001",
    }
    assert users[1]["first_name"] == "Boris"
    assert (users[2]["id"], users[2]["deactivated"]) == (77, "deleted")
    assert [u["id"] for u in multipart_users] == [BORIS]
    assert fake.stats.errors[8] == 1
    assert fake.stats.methods["users.get"] == 3
    assert "access_token" not in fake.calls("users.get")[1]


async def test_send_and_deduplication_by_random_id(fake: FakeVK, api: API) -> None:
    first = await api.messages.send(peer_id=ANNA, random_id=77, message="Заявка принята")
    again = await api.messages.send(peer_id=ANNA, random_id=77, message="Заявка принята")
    assert first == again
    assert fake.stats["duplicate_random_id"] == 1
    stored = fake.bot_messages(ANNA)[0]
    assert {k: stored[k] for k in ("id", "peer_id", "from_id", "text", "random_id", "keyboard")} == {
        "id": first,
        "peer_id": ANNA,
        "from_id": -GROUP,
        "text": "Заявка принята",
        "random_id": 77,
        "keyboard": None,
    }
    assert (
        stored["attachments"],
        stored["reply_to"],
        stored["conversation_message_id"],
        stored["_edits"],
    ) == (
        [],
        None,
        1,
        0,
    )
    assert await send(api, BORIS, "the same random_id elsewhere", random_id=77) != first
    await send(api, ANNA, "zero never de-duplicates")
    await send(api, ANNA, "zero never de-duplicates")
    assert len(fake.bot_messages(ANNA)) == 3
    assert fake.stats.sent_messages == 4

    incoming = await fake.send_text(ANNA, "Где моя заявка?")
    reply_id = await send(api, ANNA, "Здесь", random_id=78, reply_to=incoming["id"])
    assert fake.get_message(reply_id)["reply_to"] == incoming["id"]
    with pytest.raises(VKAPIError[100], match="reply_to is invalid"):
        await send(api, BORIS, "x", reply_to=incoming["id"])

    # A peer that fails gets an error item without message_id, as VK sends it (vkbottle's typed
    # messages.send cannot parse that item, so this goes through the raw request).
    params = {"peer_ids": f"{ANNA},{STRANGER}", "random_id": 0, "message": "Всем"}
    items = (await api.request("messages.send", params))["response"]
    assert items == [
        {"peer_id": ANNA, "message_id": fake.bot_messages(ANNA)[-1]["id"], "conversation_message_id": 6},
        {"peer_id": STRANGER, "error": {"code": 936, "description": "Contact not found"}},
    ]
    [item] = await api.messages.send(peer_ids=[BORIS], random_id=0, message="typed")
    assert item.message_id == fake.bot_messages(BORIS)[-1]["id"]

    with pytest.raises(VKAPIError[100], match="random_id is a required parameter"):
        await api.request("messages.send", {"peer_id": ANNA, "message": "x"})
    with pytest.raises(VKAPIError[100], match="message is empty or invalid"):
        await send(api, ANNA, "  ")
    with pytest.raises(VKAPIError[936], match="Contact not found"):
        await send(api, STRANGER, "hello?")
    assert len(fake.bot_messages(ANNA)) == 5
    assert [m["conversation_message_id"] for m in fake.messages(ANNA)] == [1, 2, 3, 4, 5, 6]


async def test_a_user_who_forbade_messages(fake: FakeVK, api: API) -> None:
    fake.forbid(ANNA)
    assert (fake.events[-1]["type"], fake.events[-1]["object"]) == ("message_deny", {"user_id": ANNA})
    with pytest.raises(VKAPIError[901], match="Can't send messages for users without permission"):
        await api.messages.send(peer_id=ANNA, random_id=1, message="Ответ по заявке")
    await fake.send_text(ANNA, "writing does not lift it")
    with pytest.raises(VKAPIError[901]):
        await send(api, ANNA, "still no")
    conversation = (await api.request("messages.getConversationsById", {"peer_ids": ANNA}))["response"]
    assert conversation["items"][0]["can_write"] == {"allowed": False, "reason": 901}

    fake.allow(ANNA)
    assert fake.events[-1]["type"] == "message_allow"
    await send(api, ANNA, "welcome back")
    assert [m["text"] for m in fake.bot_messages(ANNA)] == ["welcome back"]


@pytest.mark.parametrize(
    ("board", "detail"),
    [
        ("{not json", "invalid JSON"),
        (callback_rows(1, 1, 1, 1, 1, 1, 1), "no more than 6 rows"),
        (callback_rows(6), "no more than 5 buttons in a row"),
        (callback_rows(5, 5, 1), "no more than 10 buttons"),
        (callback_rows(*[1] * 11, inline=False), "no more than 10 rows"),
        (callback_rows(1, label="x" * 41), "label"),
        (callback_rows(1, payload=json.dumps({"d": "x" * 250})), "payload"),
        (callback_rows(1, payload="{broken"), "payload"),
        (json.dumps({"buttons": [[{"action": {"type": "teleport", "label": "go"}}]]}), "action type"),
        (json.dumps({"buttons": [[{"action": {"type": "text", "label": "a"}, "color": "pink"}]]}), "color"),
        (json.dumps({"buttons": [[{"action": {"type": "open_link", "label": "site"}}]]}), "link"),
        (json.dumps({"buttons": {"row": []}}), "array of arrays"),
    ],
)
async def test_bad_keyboards_are_refused(fake: FakeVK, api: API, board: str, detail: str) -> None:
    with pytest.raises(VKAPIError[911], match="Keyboard format is invalid") as caught:
        await send(api, ANNA, "Выберите", keyboard=board)
    assert detail in caught.value.error_msg
    assert fake.bot_messages(ANNA) == []


async def test_text_limit_and_good_keyboards(fake: FakeVK, api: API) -> None:
    await send(api, ANNA, "я" * 4096)
    with pytest.raises(VKAPIError[914], match="Message is too long"):
        await send(api, ANNA, "я" * 4097)

    await send(api, ANNA, "Категория?", keyboard=keyboard("c:roads", "c:trash"))
    stored = fake.bot_messages(ANNA)[-1]
    assert stored["keyboard"]["inline"] is True
    assert fake.button_payloads(stored) == [{"d": "c:roads"}, {"d": "c:trash"}]
    assert fake.button_labels(stored) == ["btn c:roads", "btn c:trash"]

    # The largest keyboards VK takes: 10 inline buttons, 40 regular ones in 10 rows, 40-character labels.
    await send(api, ANNA, "inline", keyboard=callback_rows(5, 5, label="л" * 40))
    await send(api, ANNA, "regular", keyboard=callback_rows(*[4] * 10, inline=False))
    mixed = {
        "one_time": True,
        "buttons": [
            [
                {
                    "action": {"type": "text", "label": "Начать", "payload": '{"command":"start"}'},
                    "color": "primary",
                }
            ],
            [{"action": {"type": "location"}}],
            [{"action": {"type": "open_link", "label": "Сайт", "link": "https://example.org"}}],
        ],
    }
    await send(api, ANNA, "mixed", keyboard=json.dumps(mixed))
    assert fake.button_payloads(fake.bot_messages(ANNA)[-1]) == [{"command": "start"}]
    assert fake.button_labels(fake.bot_messages(ANNA)[-1]) == ["Начать", "", "Сайт"]


async def test_document_upload_through_vkbottle(fake: FakeVK, api: API) -> None:
    data = b"%PDF-1.7 an inspection report"
    attachment = await DocMessagesUploader(api).upload(file_source=data, peer_id=ANNA, title="акт.pdf")
    match = re.fullmatch(rf"doc-{GROUP}_(\d+)", attachment)
    assert match is not None
    assert fake.calls("docs.getMessagesUploadServer")[0]["peer_id"] == ANNA
    assert fake.docs[int(match[1])]["content"] == data
    await api.messages.send(peer_id=ANNA, random_id=7, message="Акт", attachment=attachment)
    [stored] = fake.bot_messages(ANNA)[-1]["attachments"]
    assert stored["type"] == "doc" and stored["doc"]["title"] == "акт.pdf"
    with pytest.raises(VKAPIError):
        await send(api, ANNA, "", attachment=f"doc-{GROUP}_999")
    # An executable is refused at upload, so there is no file to save.
    with pytest.raises(VKAPIError[100]):
        await DocMessagesUploader(api).upload(file_source=b"MZ", peer_id=ANNA, title="setup.exe")


async def test_photo_upload_through_vkbottle(fake: FakeVK, api: API) -> None:
    data = b"\xff\xd8\xff\xe0 a photo the agency took"
    attachment = await PhotoMessageUploader(api).upload(file_source=data, peer_id=ANNA)
    match = re.fullmatch(rf"photo-{GROUP}_(\d+)_([0-9a-f]+)", attachment)
    assert match is not None
    assert fake.calls("photos.getMessagesUploadServer")[0]["peer_id"] == ANNA
    assert fake.uploaded[int(match[1])] == data

    await api.messages.send(peer_id=ANNA, random_id=5, message="Сделано", attachment=attachment)
    stored = fake.bot_messages(ANNA)[-1]
    photo = stored["attachments"][0]["photo"]
    assert (photo["id"], photo["owner_id"], photo["album_id"], photo["access_key"]) == (
        int(match[1]),
        -GROUP,
        -64,
        match[2],
    )
    assert [s["type"] for s in photo["sizes"]] == ["s", "m", "x", "y", "w"]
    async with aiohttp.ClientSession() as http:
        async with http.get(photo["sizes"][-1]["url"]) as r:
            assert (r.status, await r.read()) == (200, data)
        async with http.get(f"{fake.base_url}/photos/1_w.jpg") as r:
            assert r.status == 404

        # The community's own photo goes without its key too; anyone else's needs the right key.
        await send(api, ANNA, "", attachment=f"photo-{GROUP}_{photo['id']}")
        album = await fake.send_photos(ANNA, 2, "Вот")
        theirs = album["attachments"][1]["photo"]
        await send(api, ANNA, "", attachment=f"photo{ANNA}_{theirs['id']}_{theirs['access_key']}")
        for wrong in (
            f"photo{ANNA}_{theirs['id']}",
            f"photo{ANNA}_{theirs['id']}_0000",
            f"photo-{GROUP}_{theirs['id']}",
            f"photo-{GROUP}_1_abc",
            "doc1_2",
            ",".join([attachment] * 11),
        ):
            with pytest.raises(VKAPIError[100], match="attachment is invalid"):
                await send(api, ANNA, "x", attachment=wrong)

        server = (await api.request("photos.getMessagesUploadServer", {"peer_id": ANNA}))["response"]
        assert (server["album_id"], server["group_id"]) == (-64, GROUP)
        form = aiohttp.FormData()
        form.add_field("file1", b"\x89PNG other bytes", filename="scan.png")
        async with http.post(server["upload_url"], data=form) as r:
            uploaded = json.loads(await r.text())
        async with http.post(server["upload_url"], data={"nothing": "here"}) as r:
            empty = json.loads(await r.text())
    assert uploaded["server"] == empty["server"] == 12345
    assert empty["photo"] == "[]"
    with pytest.raises(VKAPIError[121], match="Invalid hash"):
        await api.request("photos.saveMessagesPhoto", {**uploaded, "hash": "0" * 32})
    with pytest.raises(VKAPIError[100]):
        await api.request("photos.saveMessagesPhoto", empty)
    saved = (await api.request("photos.saveMessagesPhoto", uploaded))["response"][0]
    assert fake.uploaded[saved["id"]] == b"\x89PNG other bytes"


async def test_long_poll_waits_repeats_and_fails_like_vk(fake: FakeVK, api: API) -> None:
    server = (await api.request("groups.getLongPollServer", {"group_id": GROUP}))["response"]
    assert (server["server"], server["ts"]) == (f"{fake.base_url}/lp", "1")
    with pytest.raises(VKAPIError[100]):
        await api.request("groups.getLongPollServer", {"group_id": GROUP + 1})

    async with aiohttp.ClientSession() as http:

        async def check(ts: str, key: str = server["key"], wait: int = 5) -> dict[str, Any]:
            params = {"act": "a_check", "key": key, "ts": ts, "wait": wait}
            async with http.post(server["server"], params=params) as r:
                return dict(await r.json())

        waiting = asyncio.create_task(check(server["ts"]))
        await fake.wait_until(lambda: len(fake.lp_requests) == 1)
        assert not waiting.done()
        sent = await fake.send_text(ANNA, "Яма у школы")
        answer = await asyncio.wait_for(waiting, 5)
        assert answer["ts"] == "2"
        [event] = answer["updates"]
        assert (event["type"], event["group_id"], event["v"]) == ("message_new", GROUP, "5.199")
        assert re.fullmatch(r"[0-9a-f]{40}", event["event_id"])
        message = event["object"]["message"]
        assert (message["id"], message["text"], message["from_id"], message["peer_id"]) == (
            sent["id"],
            "Яма у школы",
            ANNA,
            ANNA,
        )
        assert event["object"]["client_info"]["lang_id"] == 0

        # No confirmation in VK: asking the same ts again gives the same events, which is how a bot resumes.
        assert await check("1") == answer
        assert await check("2", wait=0) == {"ts": "2", "updates": []}

        replayed = await fake.replay_last()
        assert replayed[0]["event_id"] == event["event_id"]
        again = await check("2")
        assert (again["ts"], again["updates"]) == ("3", [event])

        assert await check("1", key="wrong") == {"failed": 2}
        fake.expire_keys()
        assert await check("1") == {"failed": 2}
        server = (await api.request("groups.getLongPollServer", {"group_id": GROUP}))["response"]
        assert server["ts"] == "3"
        assert await check("99", key=server["key"]) == {"failed": 1, "ts": "3"}
    assert fake.lp_requests == [1, 1, 2, 2, 99]


async def test_an_old_ts_fails_with_the_oldest_kept() -> None:
    async with FakeVK(token=TOKEN, group_id=GROUP, history=3) as fake:
        fake.add_user(ANNA, "Анна")
        for index in range(5):
            await fake.send_text(ANNA, f"message {index}")
        api = make_api(fake)
        try:
            server = (await api.request("groups.getLongPollServer", {"group_id": GROUP}))["response"]
            assert server["ts"] == "6"
            async with aiohttp.ClientSession() as http:
                base = {"act": "a_check", "key": server["key"], "wait": 0}
                async with http.get(server["server"], params={**base, "ts": "1"}) as r:
                    assert await r.json() == {"failed": 1, "ts": "3"}
                async with http.get(server["server"], params={**base, "ts": "3"}) as r:
                    answer = await r.json()
        finally:
            await api.http_client.close()
    assert answer["ts"] == "6"
    assert [u["object"]["message"]["text"] for u in answer["updates"]] == [f"message {i}" for i in (2, 3, 4)]


async def test_callback_button_press_and_answer(fake: FakeVK, api: API) -> None:
    await send(api, ANNA, "Категория?", keyboard=keyboard("c:roads", "c:trash"))
    stored = fake.bot_messages(ANNA)[-1]
    event_id = await fake.press(ANNA, stored, {"d": "c:roads"})
    event = fake.events[-1]
    assert event["type"] == "message_event"
    assert event["object"] == {
        "user_id": ANNA,
        "peer_id": ANNA,
        "event_id": event_id,
        "payload": {"d": "c:roads"},
        "conversation_message_id": stored["conversation_message_id"],
    }
    assert fake.event_answer(event_id) is None

    # vkbottle's own view of the event, answered through its typed method.
    pressed = MessageEventMin(**event, unprepared_ctx_api=api)
    assert pressed.payload == {"d": "c:roads"}
    assert await pressed.show_snackbar("Принято") == 1
    assert fake.event_answer(event_id) == {"type": "show_snackbar", "text": "Принято"}
    params = {"event_id": event_id, "user_id": ANNA, "peer_id": ANNA}
    with pytest.raises(VKAPIError[100], match="event_id is invalid"):
        await api.request("messages.sendMessageEventAnswer", params)

    second = await fake.press(ANNA, stored, {"d": "c:trash"})
    with pytest.raises(VKAPIError[100], match="user_id is invalid"):
        await api.request("messages.sendMessageEventAnswer", {**params, "event_id": second, "user_id": BORIS})
    too_long = json.dumps({"type": "show_snackbar", "text": "x" * 91})
    with pytest.raises(VKAPIError[100], match="event_data is invalid"):
        await api.request(
            "messages.sendMessageEventAnswer", {**params, "event_id": second, "event_data": too_long}
        )
    response = await api.request("messages.sendMessageEventAnswer", {**params, "event_id": second})
    assert response["response"] == 1
    assert fake.event_answer(second) == {}, "an empty answer still counts as answered"

    incoming = await fake.send_text(ANNA, "no buttons here")
    with pytest.raises(AssertionError, match="community's messages"):
        await fake.press(ANNA, incoming, {"d": "x"})
    with pytest.raises(AssertionError, match="not in the conversation"):
        await fake.press(BORIS, stored, {"d": "x"})


async def test_edit_and_read_back(fake: FakeVK, api: API) -> None:
    message_id = await send(api, ANNA, "Статус: новая", random_id=3, keyboard=keyboard("ok"))
    assert await api.messages.edit(peer_id=ANNA, message_id=message_id, message="Статус: в работе") == 1
    stored = fake.get_message(message_id)
    assert (stored["text"], stored["keyboard"], stored["_edits"]) == ("Статус: в работе", None, 1)
    cmid = stored["conversation_message_id"]
    params = {
        "peer_id": ANNA,
        "conversation_message_id": cmid,
        "message": "Решено",
        "keyboard": keyboard("f:yes"),
    }
    await api.request("messages.edit", params)
    assert (stored["text"], fake.button_payloads(stored), stored["_edits"]) == ("Решено", [{"d": "f:yes"}], 2)

    incoming = await fake.send_text(ANNA, "моё сообщение")
    with pytest.raises(VKAPIError[15], match="Access denied"):
        await api.request("messages.edit", {"peer_id": ANNA, "message_id": incoming["id"], "message": "x"})
    with pytest.raises(VKAPIError[100]):
        await api.request("messages.edit", {"peer_id": ANNA, "message_id": 999, "message": "x"})
    with pytest.raises(VKAPIError[100]):
        await api.request("messages.edit", {"peer_id": BORIS, "message_id": message_id, "message": "x"})

    items = (await api.request("messages.getById", {"message_ids": f"{message_id},{incoming['id']},999"}))[
        "response"
    ]["items"]
    assert [(m["id"], m["out"], m["text"]) for m in items] == [
        (message_id, 1, "Решено"),
        (incoming["id"], 0, "моё сообщение"),
    ]
    assert items[0]["keyboard"]["buttons"][0][0]["action"]["label"] == "btn f:yes"
    assert "update_time" in items[0]
    typed = await api.messages.get_by_id(message_ids=[message_id])
    assert typed.items[0].text == "Решено"
    numbered = await api.request(
        "messages.getByConversationMessageId",
        {"peer_id": ANNA, "conversation_message_ids": f"{items[1]['conversation_message_id']},999"},
    )
    assert [m["id"] for m in numbered["response"]["items"]] == [incoming["id"]]
    conversations = await api.messages.get_conversations_by_id(peer_ids=[ANNA, BORIS])
    assert [c.peer.id for c in conversations.items] == [ANNA]
    assert conversations.items[0].last_message_id == incoming["id"]


async def test_incoming_messages_parse_as_vkbottle_messages(fake: FakeVK, api: API) -> None:
    bot_message = fake.get_message(await send(api, ANNA, "Опишите проблему"))
    album = await fake.send_photos(ANNA, 3, "Мусор у подъезда", reply_to=bot_message)
    await fake.send_location(ANNA, 55.75, 37.61)
    await fake.send_text(ANNA, "Начать", payload={"command": "start"})
    await fake.send_sticker(ANNA)
    await fake.send_voice(ANNA)
    await fake.send_doc(ANNA, title="scan.pdf", size=12_345)
    await fake.send_wall(ANNA)
    await fake.send_audio(ANNA)
    await fake.send_text(BORIS, "hello")

    parsed = [message_min(event, api) for event in fake.events]
    photos, geo, start, sticker, voice, doc, wall, audio, english = parsed
    assert photos.text == "Мусор у подъезда"
    assert [a.type.value for a in photos.attachments] == ["photo"] * 3
    sizes = photos.attachments[0].photo.sizes
    assert [s.type.value for s in sizes][-4:] == ["x", "y", "z", "w"]
    assert sizes[-1].width > sizes[0].width
    assert photos.reply_message is not None and photos.reply_message.id == bot_message["id"]
    assert photos.client_info.lang_id == 0 and english.client_info.lang_id == 3
    assert (geo.geo.coordinates.latitude, geo.geo.coordinates.longitude) == (55.75, 37.61)
    assert json.loads(start.payload) == {"command": "start"}
    assert sticker.attachments[0].sticker.sticker_id
    assert voice.attachments[0].audio_message.duration == 3
    assert (doc.attachments[0].doc.title, doc.attachments[0].doc.size) == ("scan.pdf", 12_345)
    assert wall.attachments[0].wall is not None and audio.attachments[0].audio.title
    assert [m.conversation_message_id for m in parsed[:-1]] == list(range(2, 10))
    assert english.conversation_message_id == 1
    ids = [m.id for m in parsed]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    assert album["attachments"][0]["photo"]["album_id"] == -3
    async with aiohttp.ClientSession() as http:
        urls = [a["photo"]["sizes"][-1]["url"] for a in album["attachments"]]
        bodies = []
        for url in urls:
            async with http.get(url) as r:
                assert r.content_type == "image/jpeg"
                bodies.append(await r.read())
    assert all(body.startswith(b"\xff\xd8\xff") and body.endswith(b"\xff\xd9") for body in bodies)
    assert len(set(bodies)) == 3


async def test_echo_bot_over_long_poll(
    fake: FakeVK, api: API, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # vkbottle keeps its ts in .vkbottle/ under the working directory
    labeler = BotLabeler()

    @labeler.private_message()
    async def echo(message: Message) -> None:
        await message.answer(f"echo: {message.text}")

    polling = BotPolling(api, group_id=GROUP, wait=1)
    bot = Bot(api=api, labeler=labeler, polling=polling)
    task = asyncio.create_task(bot.run_polling())
    try:
        # Events from before the bot asked for its server are skipped, so wait until it listens.
        await fake.wait_until(lambda: bool(fake.lp_requests))
        await fake.send_text(ANNA, "ping")
        reply = await fake.wait_for_message(ANNA, lambda m: m["text"] == "echo: ping")
        assert reply["random_id"] == 0
        await fake.send_text(ANNA, "pong")
        await fake.wait_for_message(ANNA, lambda m: m["text"] == "echo: pong", after=reply["id"])
    finally:
        polling.stop()
        await asyncio.wait_for(task, 5)
    assert fake.calls("groups.getLongPollServer")[0]["group_id"] == GROUP
    assert (tmp_path / ".vkbottle" / "bot-polling" / f"{GROUP}.json").exists()


async def test_injected_failures(fake: FakeVK, api: API) -> None:
    fake.fail_next("messages.send", error_code=6)
    with pytest.raises(VKAPIError[6], match="Too many requests per second"):
        await send(api, ANNA, "x")
    assert (fake.stats.too_many_requests, fake.stats.errors[6]) == (1, 1)
    await send(api, ANNA, "after the error")

    fake.fail_next("*", error_code=10, times=2, peer_id=BORIS)
    await send(api, ANNA, "other peers are unaffected")
    for _ in range(2):
        with pytest.raises(VKAPIError[10], match="Internal server error"):
            await send(api, BORIS, "x")
    await send(api, BORIS, "third time lucky")
    fake.fail_next("messages.send", error_code=9, error_msg="Flood control: too much messages sent to user")
    with pytest.raises(VKAPIError[9], match="too much messages"):
        await send(api, ANNA, "x")

    fake.drop_next("messages.send")
    with pytest.raises(aiohttp.ClientConnectionError):
        await send(api, ANNA, "lost")
    assert len(fake.calls("messages.send")) == 8

    # vkbottle retries a non-JSON answer through its rescheduler; without the delay the retry is immediate.
    patient = make_api(fake, request_rescheduler=BlockingRequestRescheduler(delay=0))
    fake.html_next("groups.getById")
    assert (await patient.request("groups.getById", {}))["response"]["groups"][0]["id"] == GROUP
    assert fake.stats.methods["groups.getById"] == 2
    async with aiohttp.ClientSession() as http:
        fake.html_next("longpoll")
        async with http.get(f"{fake.base_url}/lp") as r:
            assert (r.status, r.content_type) == (502, "text/html")
            assert "502 Bad Gateway" in await r.text()

    now = 1000.0
    fake.clock = lambda: now
    fake.enforce_limits = True
    for _ in range(20):
        await api.request("users.get", {"user_ids": ANNA})
    with pytest.raises(VKAPIError[6]):
        await api.request("users.get", {"user_ids": ANNA})
    now += 1.0
    await api.request("users.get", {"user_ids": ANNA})
    assert fake.stats.too_many_requests == 2
    assert [m["text"] for m in fake.bot_messages(BORIS)] == ["third time lucky"]


async def test_wait_for_message_reports_what_it_saw(fake: FakeVK, api: API) -> None:
    await send(api, ANNA, "something else")
    with pytest.raises(AssertionError, match="something else"):
        await fake.wait_for_message(ANNA, lambda m: m["text"] == "never", timeout=0.2)


async def test_mixed_messages_forwards_and_edits_parse_in_vkbottle(fake: FakeVK, api: API) -> None:
    doc = fake.doc_attachment(ANNA, title="акт осмотра.pdf", size=70_000)
    nested = fake.forwarded(BORIS, "Люк открыт")
    forward = [fake.forwarded(BORIS, "Течёт вода", [fake.photo_attachment(BORIS)], forward=[nested])]
    sent = await fake.send_message(
        ANNA, "Смотрите", [fake.photo_attachment(ANNA), doc, fake.video_attachment(ANNA)], forward=forward
    )
    await fake.edit_message(ANNA, sent, "Смотрите внимательно")
    with pytest.raises(AssertionError):
        await fake.edit_message(BORIS, sent, "не своё")

    new, edit = fake.events[-2:]
    assert (new["type"], edit["type"]) == ("message_new", "message_edit")
    message = message_min(new, api)
    assert [a.type.value for a in message.attachments] == ["photo", "doc", "video"]
    assert (message.attachments[1].doc.title, message.attachments[1].doc.size) == ("акт осмотра.pdf", 70_000)
    [outer] = message.fwd_messages
    assert outer.text == "Течёт вода" and outer.from_id == BORIS and outer.attachments[0].photo
    assert [m.text for m in outer.fwd_messages] == ["Люк открыт"]
    # message_edit's object is the message itself, as it stands after the edit.
    assert "client_info" not in edit["object"] and edit["object"]["text"] == "Смотрите внимательно"
    assert edit["object"]["update_time"] and edit["object"]["id"] == sent["id"]
    assert edit["object"]["fwd_messages"][0]["text"] == "Течёт вода"

    async with aiohttp.ClientSession() as http:
        async with http.get(doc["doc"]["url"]) as response:
            body = await response.read()
        async with http.get(f"{fake.base_url}/docs/1/none.pdf") as missing:
            assert missing.status == 404
    assert len(body) == 70_000 and body.startswith(b"%fake document")
