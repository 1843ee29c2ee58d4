"""The citizen's private chat with the bot: commands, report content and buttons."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.enums import ChatMemberStatus, ChatType
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import CallbackQuery, ChatMemberUpdated, Message

from bot.dialog import FILE_TOO_BIG, CitizenDialog, CitizenInput
from bot.domain import Location, Platform
from bot.messages import Ref
from bot.tickets import TicketService

from .common import SERVICE, Where, answer, document_too_big, person, photos, text_of, unsupported_kind
from .middlewares import AlbumMiddleware

COMMANDS = ("help", "cancel", "my", "status", "lang", "new")


def citizen_router(album_wait: float) -> Router:
    router = Router(name="citizen")
    router.message.filter(Where(F.chat.type == ChatType.PRIVATE))
    router.edited_message.filter(Where(F.chat.type == ChatType.PRIVATE))
    router.callback_query.filter(Where(F.message.chat.type == ChatType.PRIVATE))
    router.message.middleware(AlbumMiddleware(album_wait))

    # Commands are typed: a photo captioned "/help" is a photo with its caption (aiogram's Command reads
    # captions too).
    typed = Where(F.text)

    @router.message(typed, CommandStart())
    async def start(message: Message, dialog: CitizenDialog) -> None:
        await dialog.command(person(message), "start")

    @router.message(typed, Command(*COMMANDS))
    async def command(message: Message, command: CommandObject, dialog: CitizenDialog) -> None:
        await dialog.command(person(message), command.command.lower(), command.args or "")

    @router.message(Where(F.text.startswith("/")))
    async def unknown_command(message: Message, dialog: CitizenDialog) -> None:
        await dialog.command(person(message), "")

    @router.message(Where(F.content_type.in_(SERVICE)))
    async def service(message: Message) -> None:
        """Nothing the person sent, so nothing to answer."""

    @router.message()
    async def content(message: Message, dialog: CitizenDialog, album: list[Message] | None = None) -> None:
        parts = album or [message]
        location = (
            Location(message.location.latitude, message.location.longitude) if message.location else None
        )
        # Each part of an album is judged on its own, its caption apart from its file: what can be taken
        # is, and the dialog says what was not (or, if nothing could be, why).
        reply = message.reply_to_message
        await dialog.message(
            CitizenInput(
                who=person(message),
                text=text_of(parts),
                photos=photos(parts),
                location=location,
                reply_to=reply.message_id if reply else None,
                skipped=[kind for part in parts if (kind := _unsupported(part)) is not None],
            )
        )

    @router.edited_message(Where(F.location.live_period))
    async def moved(message: Message) -> None:
        """A live location moving: Telegram sends such an edit every few seconds, for hours. The report
        keeps the point it was shared at."""

    @router.edited_message()
    async def edited(message: Message, dialog: CitizenDialog) -> None:
        await dialog.notice(person(message), "dialog.edit_ignored")

    @router.my_chat_member(Where(F.chat.type == ChatType.PRIVATE))
    async def membership(update: ChatMemberUpdated, tickets: TicketService) -> None:
        """Telegram's word that a citizen blocked (or unblocked) the bot."""
        if update.new_chat_member.status in (ChatMemberStatus.KICKED, ChatMemberStatus.LEFT):
            await tickets.citizen_unreachable(Platform.telegram, update.chat.id, None)
        else:
            await tickets.citizen_reachable(Platform.telegram, update.chat.id)

    @router.callback_query()
    async def button(query: CallbackQuery, dialog: CitizenDialog) -> None:
        if query.message is None or query.data is None:
            await answer(query)
            return
        who = person(query.message, query.from_user)
        toast = await dialog.press(who, query.data, Ref(message_id=query.message.message_id))
        await answer(query, toast)

    return router


def _unsupported(message: Message) -> str | None:
    """The kind of what this message (one part of an album, or the whole of a single message) brings
    and cannot be taken, its caption aside, or None if there is no such thing."""
    if document_too_big(message):
        return FILE_TOO_BIG
    if message.location or message.text or message.photo or message.document:
        return None
    kind = unsupported_kind(message)
    if kind is None and message.caption:
        return None
    return kind or "unknown"
