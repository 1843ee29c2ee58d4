"""Telegram handlers, one router per audience."""

from aiogram import Router

from bot.chats import ChatDirectory
from bot.config import Routing

from .agency import staff_router, unconnected_router
from .citizen import citizen_router


def get_routers(routing: Routing, album_wait: float, chats: ChatDirectory) -> list[Router]:
    return [citizen_router(album_wait), staff_router(routing, chats, album_wait), unconnected_router(chats)]
