"""aiogram's Bot API models are built when first used (bot/lean_import.py); each case runs in a fresh
interpreter, since the deferral must come before aiogram is imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import aiogram  # noqa: F401  (imported here, so the in-process case below sees it imported)

from bot.lean_import import defer


def run(code: str) -> str:
    result = subprocess.run(  # noqa: S603 (this interpreter, this file's code)
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_nothing_is_built_at_import_and_what_is_used_works() -> None:
    out = run(
        """
        from bot.lean_import import defer
        assert defer()
        from aiogram.methods import Response, SendMessage
        from aiogram.types import Message, Poll, Update

        assert not Update.__pydantic_complete__ and not Poll.__pydantic_complete__
        update = Update.model_validate({
            "update_id": 1,
            "message": {"message_id": 5, "date": 0, "chat": {"id": 7, "type": "private"}, "text": "pothole",
                        "photo": [{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}]},
        })
        answer = Response[Message].model_validate(
            {"ok": True, "result": {"message_id": 6, "date": 0, "chat": {"id": 7, "type": "private"}}}
        )
        sent = SendMessage(chat_id=7, text="taken").model_dump(exclude_none=True)
        print(update.message.text, update.message.photo[0].file_id, answer.result.message_id, sent["text"])
        print(Poll.__pydantic_complete__)
        """
    )
    assert out.splitlines() == ["pothole f 6 taken", "False"]


def test_every_bot_api_model_builds_when_first_used() -> None:
    out = run(
        """
        from bot.lean_import import defer
        assert defer()
        import aiogram.methods, aiogram.types
        from pydantic import BaseModel

        failed = []
        for module in (aiogram.types, aiogram.methods):
            for name in module.__all__:
                model = getattr(module, name)
                if isinstance(model, type) and issubclass(model, BaseModel):
                    try:
                        model.__pydantic_validator__.validate_python  # noqa: B018 (builds it)
                    except Exception as error:
                        failed.append(f"{name}: {error}")
                    if not model.__pydantic_complete__:
                        failed.append(f"{name}: not complete")
        print(failed or "all built")
        """
    )
    assert out == "all built"


def test_other_models_still_resolve_names_where_they_are_rebuilt() -> None:
    out = run(
        """
        from bot.lean_import import defer
        assert defer()
        from pydantic import BaseModel

        def declare():
            class Ticket(BaseModel):
                place: "Place"

            class Place(BaseModel):
                address: str

            Ticket.model_rebuild()
            return Ticket

        print(declare().model_validate({"place": {"address": "Lenina 1"}}).place.address)
        """
    )
    assert out == "Lenina 1"


def test_too_late_once_aiogram_is_imported() -> None:
    assert defer() is False
