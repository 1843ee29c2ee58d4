"""Long texts are cut into Telegram-sized messages without losing or breaking anything."""

from __future__ import annotations

import html

from hypothesis import given
from hypothesis import strategies as st

from bot.delivery.telegram import split_text
from tests.fakes.html_check import parse_html


def test_a_short_text_stays_whole() -> None:
    assert split_text("<b>#T1</b>\nshort") == ["<b>#T1</b>\nshort"]


def test_lines_are_kept_together_when_they_fit() -> None:
    text = "\n".join(["<b>header</b>", "a" * 3000, "b" * 3000])
    parts = split_text(text)
    assert parts == ["<b>header</b>\n" + "a" * 3000, "b" * 3000]


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=0, max_size=12000))
def test_escaped_user_text_splits_into_valid_parts_that_add_up(user_text: str) -> None:
    text = "<b>💬 Ответ по обращению #T1</b>\n" + html.escape(user_text, quote=False)
    parts = split_text(text, limit=4096)
    assert all(len(part.encode("utf-16-le")) // 2 <= 4096 for part in parts)
    for part in parts:
        parse_html(part)  # raises on a broken tag or entity
    joined = "".join(parts)
    assert joined.replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")
