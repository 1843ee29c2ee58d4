"""An album's parts gathered into one handling: each part once, and their updates joined to the first's."""

from __future__ import annotations

import asyncio
from typing import Any

from aiogram.types import Message

from bot.delivery.outbox import Origin, current_origin
from bot.domain import Platform
from handlers.telegram.middlewares import AlbumMiddleware

CHAT = 5001


def part(message_id: int) -> Message:
    return Message.model_validate(
        {
            "message_id": message_id,
            "date": 1_770_000_000,
            "chat": {"id": CHAT, "type": "private", "first_name": "A"},
            "from": {"id": CHAT, "is_bot": False, "first_name": "A"},
            "media_group_id": "album-1",
            "photo": [
                {"file_id": f"f{message_id}", "file_unique_id": f"u{message_id}", "width": 1, "height": 1}
            ],
        }
    )


async def test_parts_join_the_first_once_each_and_their_updates_with_them() -> None:
    middleware = AlbumMiddleware(wait=0.2)
    handled: list[list[int]] = []
    origins = {message_id: Origin(Platform.telegram, str(message_id)) for message_id in (1, 2, 3)}

    async def handler(event: Any, data: dict[str, Any]) -> None:
        handled.append([m.message_id for m in data["album"]])

    async def deliver(message_id: int) -> None:
        current_origin.set(origins[message_id])  # as Intake does, in each update's own task
        await middleware(handler, part(message_id), {})

    first = asyncio.create_task(deliver(1))
    await asyncio.sleep(0)  # the first part opens the album
    # The second part twice: stored and handed out again (a replay racing the platform's redelivery).
    await asyncio.gather(deliver(2), deliver(3), deliver(2))
    await asyncio.wait_for(first, 5)

    assert handled == [[1, 2, 3]]
    assert [o.key for o in origins[1].joined] == ["2", "3"]
    assert origins[2].taken and origins[3].taken and not origins[1].taken
