"""Agency and coordinators' chats: card buttons, replies to the ticket's messages, staff commands.

Authority comes from the chat: these handlers only see chats named in the routing file, and the service
checks again that the chat may act on the particular ticket.
"""

from __future__ import annotations

import logging

from aiogram import Bot, F, Router
from aiogram.enums import ChatMemberStatus, ChatType
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, ChatMemberUpdated, Message

from bot.chats import ChatDirectory
from bot.config import Routing
from bot.delivery.outbox import Outbox, Unit
from bot.dialog import NUMBER
from bot.domain import Action, DomainError, Platform, TicketStatus, parse_id
from bot.messages import Outgoing, Ref
from bot.tickets import TicketService

from .common import Where, answer, document_too_big, photos, staff, text_of, unsupported_kind
from .middlewares import AlbumMiddleware

log = logging.getLogger(__name__)


def staff_router(routing: Routing, chats: ChatDirectory, album_wait: float) -> Router:
    router = Router(name="staff")
    # Looked up on every update, so a chat that moved (group → supergroup) keeps its authority.
    router.message.filter(Where(F.chat.id.func(chats.is_staff_chat)))
    router.callback_query.filter(Where(F.message.chat.id.func(chats.is_staff_chat)))
    # An album sent as a reply is one answer with all its photos, not one answer per photo.
    router.message.middleware(AlbumMiddleware(album_wait))

    @router.my_chat_member(Where(F.chat.id.func(chats.is_staff_chat)))
    async def membership(update: ChatMemberUpdated, tickets: TicketService) -> None:
        """The bot was removed from (or added back to) an agency's or the coordinators' chat."""
        if update.new_chat_member.status in (ChatMemberStatus.KICKED, ChatMemberStatus.LEFT):
            await tickets.staff_chat_lost(update.chat.id)
        else:
            await tickets.staff_chat_back(update.chat.id)

    @router.message(Where(F.migrate_to_chat_id))
    async def migrated(message: Message, tickets: TicketService) -> None:
        assert message.migrate_to_chat_id is not None
        await tickets.chat_migrated(Platform.telegram, message.chat.id, message.migrate_to_chat_id)

    @router.callback_query(Where(F.data.startswith("t:")))
    async def card_button(query: CallbackQuery, tickets: TicketService) -> None:
        assert query.message is not None and query.data is not None
        parts = query.data.split(":")
        try:
            action, ticket_id, seen = Action(parts[1]), parse_id(parts[2]), TicketStatus(parts[3])
        except (IndexError, ValueError):
            ticket_id = None
        if ticket_id is None:
            await answer(query, tickets.staff_text(query.message.chat.id, "toast.unknown_button"), alert=True)
            return
        who = staff(query.message, query.from_user)
        try:
            if action is Action.take:
                key = await tickets.take(ticket_id, who, seen)
            elif action is Action.transfer:
                key = await tickets.show_transfer_targets(ticket_id, who, seen, query.message.message_id)
            else:
                key = await tickets.prompt(ticket_id, who, action, seen)
        except DomainError as error:
            await answer(query, tickets.staff_text(who.chat_id, error.key), alert=True)
            return
        await answer(query, tickets.staff_text(who.chat_id, key))

    @router.callback_query(Where(F.data.regexp(r"^x:[a-z0-9_-]{1,32}:\d{1,18}(:[0-9a-f]{6})?$")))
    async def transfer_to(query: CallbackQuery, tickets: TicketService) -> None:
        assert query.message is not None and query.data is not None
        _, agency_id, ticket_id, *shown_for = query.data.split(":")
        who = staff(query.message, query.from_user)
        try:
            key = await tickets.transfer(int(ticket_id), who, agency_id, *shown_for)
        except KeyError:
            key = "toast.unknown_button"
        except DomainError as error:
            await answer(query, tickets.staff_text(who.chat_id, error.key), alert=True)
            return
        await answer(query, tickets.staff_text(who.chat_id, key))

    @router.callback_query(Where(F.data.regexp(r"^b:\d{1,18}$")))
    async def back_to_card(query: CallbackQuery, tickets: TicketService) -> None:
        assert query.message is not None and query.data is not None
        who = staff(query.message, query.from_user)
        try:
            key = await tickets.restore_card(int(query.data[2:]), who)
        except DomainError as error:
            await answer(query, tickets.staff_text(who.chat_id, error.key), alert=True)
            return
        await answer(query, tickets.staff_text(who.chat_id, key))

    @router.callback_query()
    async def unknown_button(query: CallbackQuery, tickets: TicketService) -> None:
        assert query.message is not None
        await answer(query, tickets.staff_text(query.message.chat.id, "toast.unknown_button"), alert=True)

    @router.message(Command("history", "card"))
    async def ticket_command(
        message: Message, command: CommandObject, tickets: TicketService, outbox: Outbox
    ) -> None:
        match = NUMBER.match(command.args or "")
        chat_id = message.chat.id
        if match is None:
            usage = tickets.staff_text(chat_id, "staff.number_usage", prefix=routing.ticket_prefix)
            await _say(outbox, chat_id, usage, message.message_id)
            return
        try:
            if command.command == "history":
                await tickets.post_history(int(match.group(1)), chat_id, message.message_id)
            else:
                await tickets.post_card(int(match.group(1)), chat_id)
        except DomainError as error:
            await _say(outbox, chat_id, tickets.staff_text(chat_id, error.key), message.message_id)

    @router.message(Command("help", "start"))
    async def staff_help(message: Message, tickets: TicketService, outbox: Outbox) -> None:
        chat_id = message.chat.id
        await _say(
            outbox,
            chat_id,
            tickets.staff_text(chat_id, "staff.help", prefix=routing.ticket_prefix),
            message.message_id,
        )

    @router.message(Where(F.text.startswith("/") & ~F.reply_to_message))
    async def unknown_command(message: Message, bot: Bot, tickets: TicketService, outbox: Outbox) -> None:
        """A command the bot does not have; one addressed to another bot of the group is not ours."""
        assert message.text is not None
        _, _, mention = message.text.split(maxsplit=1)[0].partition("@")
        if mention and mention.lower() != ((await bot.me()).username or "").lower():
            return
        chat_id = message.chat.id
        await _say(outbox, chat_id, tickets.staff_text(chat_id, "staff.unknown_command"), message.message_id)

    @router.edited_message(Where(F.reply_to_message))
    async def edited_reply(message: Message, tickets: TicketService, outbox: Outbox) -> None:
        """An answer, note or reason edited after it went: what went stays as it was."""
        if await _linked(outbox, message) is not None:
            note = tickets.staff_text(message.chat.id, "staff.edit_not_passed")
            await _say(outbox, message.chat.id, note, message.message_id)

    @router.message(Where(F.reply_to_message))
    async def reply(
        message: Message, tickets: TicketService, outbox: Outbox, album: list[Message] | None = None
    ) -> None:
        link = await _linked(outbox, message)
        if link is None:
            return  # a conversation among staff, not about a ticket
        ticket_id, role = link
        parts = album or [message]
        text = text_of(parts)
        attachments = photos(parts)
        # What the citizen cannot be given (a voice message, a video, a file over the size limit).
        left_out = any(unsupported_kind(part) or document_too_big(part) for part in parts)
        if not text and not attachments:
            await _say(
                outbox,
                message.chat.id,
                tickets.staff_text(message.chat.id, "staff.text_or_photo"),
                message.message_id,
            )
            return
        chat_id = message.chat.id

        async def tell_left_out(u: Unit) -> None:
            # In the reply's own transaction: a crash cannot send the answer and lose this.
            await _say_in(u, chat_id, tickets.staff_text(chat_id, "staff.left_out"), message.message_id)

        try:
            await tickets.staff_message(
                ticket_id,
                staff(message),
                role,
                text,
                attachments,
                message.message_id,
                also=tell_left_out if left_out else None,
            )
        except DomainError as error:
            await _say(outbox, chat_id, tickets.staff_text(chat_id, error.key), message.message_id)

    return router


def unconnected_router(chats: ChatDirectory) -> Router:
    """Groups the routing file does not name: added to one, or called there by a command, the bot says
    the chat's id and where it goes, which is what whoever sets the bot up needs to connect it."""
    router = Router(name="unconnected")
    unconnected = Where((F.chat.type != ChatType.PRIVATE) & ~F.chat.id.func(chats.is_staff_chat))

    @router.my_chat_member(unconnected)
    async def added(update: ChatMemberUpdated, tickets: TicketService, outbox: Outbox) -> None:
        if update.new_chat_member.status in (ChatMemberStatus.MEMBER, ChatMemberStatus.ADMINISTRATOR):
            log.info(
                "added to chat %s (%s), which the routing file does not name",
                update.chat.id,
                update.chat.title,
            )
            await _tell_unconnected(tickets, outbox, update.chat.id, None)

    @router.message(unconnected, Command("start", "help"))
    async def called(message: Message, tickets: TicketService, outbox: Outbox) -> None:
        await _tell_unconnected(tickets, outbox, message.chat.id, message.message_id)

    return router


async def _tell_unconnected(
    tickets: TicketService, outbox: Outbox, chat_id: int, reply_to: int | None
) -> None:
    await _say(outbox, chat_id, tickets.staff_text(chat_id, "staff.not_connected", id=str(chat_id)), reply_to)


async def _linked(outbox: Outbox, message: Message) -> tuple[int, str] | None:
    """The ticket (and the role of its message) that the message replies to, if it replies to one."""
    assert message.reply_to_message is not None
    async with outbox.read() as repo:
        return await repo.linked_ticket(
            Platform.telegram, message.chat.id, message.reply_to_message.message_id
        )


async def _say(outbox: Outbox, chat_id: int, text: str, reply_to: int | None) -> None:
    async with outbox.unit() as u:
        await _say_in(u, chat_id, text, reply_to)


async def _say_in(u: Unit, chat_id: int, text: str, reply_to: int | None) -> None:
    reply = None if reply_to is None else Ref(message_id=reply_to)
    await u.send(Platform.telegram, chat_id, Outgoing(text, reply_to=reply))
