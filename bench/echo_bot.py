"""The baseline for the intake benchmark: a bare aiogram echo bot, no storage, standard long polling.

Run as `python -m bench.echo_bot` with TELEGRAM_BOT_TOKEN and TELEGRAM_API_URL set; it answers every
text message with the same text, `ECHO_ANSWERS` times (1 unless set: 2 makes two Bot API calls per
update, as the bot does). Logging is at INFO like the bot's, so both pay for aiogram's
"Update id=... is handled" line.
"""

from __future__ import annotations

import asyncio
import logging
import os

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import Message


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Without aiogram's line per update, as the bot logs.
    logging.getLogger("aiogram.event").setLevel(logging.WARNING)
    session = AiohttpSession(api=TelegramAPIServer.from_base(os.environ["TELEGRAM_API_URL"]))
    bot = Bot(os.environ["TELEGRAM_BOT_TOKEN"], session=session)
    dispatcher = Dispatcher()
    answers = int(os.environ.get("ECHO_ANSWERS", "1"))

    @dispatcher.message()
    async def echo(message: Message) -> None:
        for _ in range(answers):
            await message.answer(message.text or "…")

    await dispatcher.start_polling(bot, polling_timeout=int(os.environ.get("TELEGRAM_POLLING_TIMEOUT", "10")))


if __name__ == "__main__":
    asyncio.run(main())
