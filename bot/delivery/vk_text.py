"""How a message looks on VK, with no VK client involved: plain text, split to VK's length, and keyboards.

Kept apart from `bot.delivery.vk` so the pacing arithmetic can count VK requests without importing
vkbottle, which a Telegram-only installation never loads.
"""

from __future__ import annotations

import html
import json
import re

from bot.messages import Button

TEXT_LIMIT = 4096
# VK's limits for inline keyboards; a longer list goes as a regular keyboard (up to 10 rows of 5).
INLINE_ROWS, INLINE_BUTTONS = 6, 10
LABEL_LIMIT = 40
_LINK = re.compile(r'<a href="([^"]*)">(.*?)</a>', re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


def html_to_text(text: str) -> str:
    """VK shows plain text: drop our formatting, keep links readable, and turn entities back into the
    characters the user typed (VK does not interpret markup, so nothing can be injected)."""
    text = _LINK.sub(lambda m: f"{m.group(2)} ({html.unescape(m.group(1))})", text)
    return html.unescape(_TAG.sub("", text))


def keyboard(rows: list[list[Button]]) -> str | None:
    if not rows:
        return None
    count = sum(len(row) for row in rows)
    inline = len(rows) <= INLINE_ROWS and count <= INLINE_BUTTONS
    if not inline:
        flat = [button for row in rows for button in row]
        rows = [flat[i : i + 2] for i in range(0, len(flat), 2)]
    return json.dumps(
        {
            "inline": inline,
            "one_time": False,
            "buttons": [
                [
                    {
                        "action": {
                            "type": "callback",
                            "label": _label(button.text),
                            "payload": json.dumps({"d": button.data}),
                        },
                        "color": "secondary",
                    }
                    for button in row
                ]
                for row in rows
            ],
        },
        ensure_ascii=False,
    )


def _label(text: str) -> str:
    return text if len(text) <= LABEL_LIMIT else text[: LABEL_LIMIT - 1] + "…"


def split_plain(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = text.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit
        parts.append(text[:cut])
        text = text[cut:].lstrip("\n ")
    parts.append(text)
    return [p for p in parts if p.strip()] or [""]
