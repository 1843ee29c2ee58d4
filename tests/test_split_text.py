"""Long texts are cut into Telegram-sized messages without losing or breaking anything."""

from __future__ import annotations

import html
import re

from hypothesis import given
from hypothesis import strategies as st

from bot.delivery.telegram import CAPTION_LIMIT, fit_caption, split_text
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


def _visible(text: str) -> str:
    """The text without its tags and the whitespace a cut may take."""
    return re.sub(r"<[^>]+>|\s", "", text)


def test_a_tag_open_at_a_cut_is_closed_before_it_and_opened_again_after() -> None:
    # A ticket's history: each event's detail, a person's own lines, in italics.
    detail = "\n".join(f"строка {n} из ответа, " + "слово " * 12 for n in range(120))
    text = "<b>История #T1</b>\n" + f"↳ <i>{detail}</i>\n" + '<a href="https://example.org/t/1">#T1</a>'
    parts = split_text(text)
    assert len(parts) == 3
    for part in parts:
        assert len(part.encode("utf-16-le")) // 2 <= 4096
        parse_html(part)  # raises on a tag left open or closed twice
    assert parts[0].endswith("</i>") and parts[1].startswith("<i>") and parts[1].endswith("</i>")
    assert parts[2].startswith("<i>") and parts[2].endswith("</a>")
    assert _visible("".join(parts)) == _visible(text)


@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=120), min_size=1, max_size=60
    ).map("\n".join),
    st.integers(min_value=64, max_value=512),
)
def test_user_lines_inside_tags_split_into_valid_parts_that_add_up(user_text: str, limit: int) -> None:
    text = "<b>💬 #T1</b>\n<blockquote><i>" + html.escape(user_text, quote=False) + "</i></blockquote>"
    parts = split_text(text, limit=limit)
    assert all(len(part.encode("utf-16-le")) // 2 <= limit for part in parts)
    for part in parts:
        parse_html(part)
    assert _visible("".join(parts)) == _visible(text)


def test_a_caption_made_too_long_by_an_edit_is_cut_to_fit() -> None:
    card = "<b>#T1</b> Дороги\n" + "\n".join(f"строка {n} " + "слово " * 10 for n in range(30))
    fitted = fit_caption(card)
    assert len(fitted.encode("utf-16-le")) // 2 <= CAPTION_LIMIT
    assert fitted.startswith("<b>#T1</b> Дороги\n") and fitted.endswith("…")
    parse_html(fitted)
    assert fit_caption("<b>#T1</b> short") == "<b>#T1</b> short"
