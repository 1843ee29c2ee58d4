"""The scheduler in the running bot: a category with a few seconds' SLA, the real clock, the fake Telegram."""

from __future__ import annotations

from bot.config import parse_routing
from tests.conftest import COORDINATORS_CHAT, ROADS_CHAT, TEST_ROUTING
from tests.telegram_world import running_world

FAST_ROUTING = TEST_ROUTING.replace('sla = "3d"', 'sla = "3s"\nremind_before = "2s"')


async def test_an_overdue_alert_reaches_the_coordinators_chat(database_url: str) -> None:
    async with running_world(database_url, parse_routing(FAST_ROUTING), scheduler_interval=1) as world:
        world.tg.add_user(user_id=31, first_name="Олег", language_code="ru")
        number = await world.file_report(31)
        alert = await world.bot_says(
            COORDINATORS_CHAT, lambda m: f"#T{number}" in (m.get("text") or ""), timeout=15
        )
        assert world.app.routing.agency("roads").title_in("ru") in alert["text"]
        card = await world.card(ROADS_CHAT, number)
        alert_in_agency = await world.bot_says(ROADS_CHAT, lambda m: "🔴" in (m.get("text") or ""))
        assert alert_in_agency["reply_to_message"]["message_id"] == card["message_id"]
        await world.bot_says(31, lambda m: "⌛" in (m.get("text") or ""))
