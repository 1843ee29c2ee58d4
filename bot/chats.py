"""Where the agencies and the coordinators are now: the routing file's chat ids, followed through
group-to-supergroup migrations that the database remembers across restarts."""

from __future__ import annotations

from datetime import datetime

from bot.config import Agency, Routing
from storage.repository import Repository

PREFIX = "moved-chat:"


class ChatDirectory:
    def __init__(self, routing: Routing) -> None:
        self.routing = routing
        self._moved: dict[int, int] = {}

    def current(self, chat_id: int) -> int:
        seen = {chat_id}
        while chat_id in self._moved and self._moved[chat_id] not in seen:
            chat_id = self._moved[chat_id]
            seen.add(chat_id)
        return chat_id

    def original(self, chat_id: int) -> int:
        """The id the routing file knows for a chat that may have moved since."""
        reverse = {new: old for old, new in self._moved.items()}
        seen = {chat_id}
        while chat_id in reverse and reverse[chat_id] not in seen:
            chat_id = reverse[chat_id]
            seen.add(chat_id)
        return chat_id

    def agency_chat(self, agency_id: str) -> int:
        return self.current(self.routing.agency(agency_id).chat_id)

    @property
    def coordinators_chat(self) -> int:
        return self.current(self.routing.coordinators.chat_id)

    def agency_at(self, chat_id: int) -> Agency | None:
        return self.routing.agency_by_chat(self.original(chat_id))

    def is_coordinators(self, chat_id: int) -> bool:
        return self.routing.is_coordinators_chat(self.original(chat_id))

    def is_staff_chat(self, chat_id: int) -> bool:
        return self.agency_at(chat_id) is not None or self.is_coordinators(chat_id)

    def locale(self, chat_id: int) -> str:
        agency = self.agency_at(chat_id)
        if agency is not None:
            return self.routing.agency_locale(agency)
        return self.routing.coordinators_locale()

    async def load(self, repo: Repository) -> None:
        for name, value in await repo.cursors_with_prefix(PREFIX):
            self._moved[int(name.removeprefix(PREFIX))] = int(value)

    async def remember(self, repo: Repository, old: int, new: int, now: datetime) -> None:
        await repo.save_cursor(f"{PREFIX}{old}", str(new), now)
        self._moved[old] = new
