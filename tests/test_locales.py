"""The translation catalogues against the code: every key the code asks for exists in both languages,
both languages agree on placeholders and plural forms, and every text renders into valid Telegram HTML."""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Callable, Iterator
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from babel.messages.pofile import read_po

from bot.app import CITIZEN_COMMANDS, STAFF_COMMANDS
from bot.domain import Action, DomainError, EventKind, TicketStatus
from bot.i18n import DOMAIN, LOCALES_DIR, SUPPORTED, Html, Translator, placeholders

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("bot", "handlers")
KEY = re.compile(
    r"^(status|button|prompt|event|actor|command|language|error|toast|dialog|citizen|card|agency|staff"
    r"|history|ticket|coordinators|digest|duration)\.[a-z_]+$"
)
NPLURALS = {"ru": 3, "en": 2}

# Read with `Translator.get` and shown as they are (button labels, pop-ups, menu entries, values put into
# other texts): plain text, no markup, no entities, no placeholders. Errors are pop-ups too (alerts).
PLAIN_PREFIXES = ("toast.", "button.", "status.", "event.", "actor.", "command.", "language.", "error.")
TOAST_LIMIT = 200  # Telegram's limit for a callback answer
COMMAND_LIMIT = 60

# Calls that take a key, and the parameters they add to the ones written at the call site.
KEY_CALLS: dict[str, frozenset[str]] = {
    "get": frozenset(),
    "render": frozenset(),
    "plural": frozenset({"count"}),
    "_say": frozenset(),
    "_say_in": frozenset(),
    "tell_citizen": frozenset({"tag"}),
    "tell_agency": frozenset({"tag"}),
    "_ack": frozenset({"tag"}),
    "notice": frozenset(),
    "staff_text": frozenset(),
    "_menu": frozenset({"name"}),
}
# Keyword arguments of those calls that are their own options, not text parameters.
CALL_OPTIONS: dict[str, frozenset[str]] = {
    "tell_citizen": frozenset({"photos", "role", "buttons"}),
    "tell_agency": frozenset({"dedupe_key"}),
}
# Keys that reach a call through a variable; what that call passes them.
INDIRECT: dict[str, frozenset[str]] = {
    # TicketService._apply: `kind, notice, role, ack = ...` then tell_citizen(..., agency=, text=), _ack.
    "citizen.question": frozenset({"tag", "agency", "text"}),
    "citizen.resolved": frozenset({"tag", "agency", "text"}),
    "citizen.rejected": frozenset({"tag", "agency", "text"}),
    "staff.asked": frozenset({"tag"}),
    "staff.resolved": frozenset({"tag"}),
    "staff.rejected": frozenset({"tag"}),
    # Deadlines._close: tell_citizen(f"citizen.{key}") and tell_agency(f"agency.{key}").
    "citizen.auto_closed": frozenset({"tag"}),
    "agency.auto_closed": frozenset({"tag"}),
    "citizen.no_answer": frozenset({"tag"}),
    "agency.no_answer": frozenset({"tag"}),
    # Renderer.duration: plural(f"duration.{unit}").
    "duration.days": frozenset({"count"}),
    "duration.hours": frozenset({"count"}),
    "duration.minutes": frozenset({"count"}),
    # TicketService._reply: `ack = "agency.citizen_unreachable" if ... else "staff.reply_sent"`, then _ack.
    "staff.reply_sent": frozenset({"tag"}),
    # CitizenDialog._feed: notes said with limit=.
    "dialog.text_trimmed": frozenset({"limit"}),
    "dialog.too_many_photos": frozenset({"limit"}),
    # CitizenDialog._advance: `key = "dialog.need_text" if ... else "dialog.describe"`.
    "dialog.need_text": frozenset({"category"}),
    "dialog.describe": frozenset({"category"}),
}
# Prompts ask staff for words; taking on and transferring need none.
PROMPTED = tuple(a for a in Action if a not in (Action.take, Action.transfer))

# Values for the placeholders when rendering; values the code passes as ready-made markup are Html.
SAMPLES: dict[str, object] = {
    "tag": Html("#T42"),
    "link": Html('<a href="https://maps.google.com/?q=55.751244,37.618423">55.75124, 37.61842</a>'),
    "photos": Html("📷 3"),
    "place": Html("📍 x"),
    "citizen": 7,
    "limit": 10,
    "length": 4000,
}
COUNTS = (0, 1, 2, 3, 5, 11, 12, 21, 22, 25, 101, 111)


# -- what the code uses


def _sources() -> Iterator[tuple[Path, ast.AST]]:
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    if isinstance(call.func, ast.Name):
        return call.func.id
    return None


@cache
def literal_keys() -> dict[str, list[str]]:
    """Every string constant in the code that looks like a key, with where it is (f-string parts aside)."""
    found: dict[str, list[str]] = {}
    for path, tree in _sources():
        in_fstrings = {
            id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and KEY.match(node.value)
                and id(node) not in in_fstrings
            ):
                found.setdefault(node.value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def family_keys() -> set[str]:
    """Keys the code builds from an enum or a list (`f"status.{status.value}"` and the like)."""
    keys = {f"status.{s.value}" for s in TicketStatus}
    keys |= {f"button.{a.name}" for a in Action}
    keys |= {f"prompt.{a.name}" for a in PROMPTED}
    keys |= {f"event.{e.value}" for e in EventKind}
    keys |= {f"actor.{kind}" for kind in ("staff", "citizen", "system")}
    keys |= {f"command.{c}" for c in CITIZEN_COMMANDS}
    keys |= {f"command.staff_{c}" for c in STAFF_COMMANDS}
    keys |= {"language.name"}
    keys |= {cls.key for cls in _subclasses(DomainError)} | {DomainError.key}
    return keys


def _subclasses(cls: type) -> Iterator[type[DomainError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@cache
def used_keys() -> frozenset[str]:
    return frozenset(literal_keys()) | frozenset(family_keys())


@cache
def call_sites() -> dict[str, list[frozenset[str]]]:
    """For each key, the parameters each call that renders it passes; keys built by an f-string are
    listed under their constant head followed by "*" ("status.*", "command.staff_*")."""
    sites: dict[str, list[frozenset[str]]] = {}
    for _, tree in _sources():
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            name = _call_name(call)
            if name not in KEY_CALLS:
                continue
            given = frozenset(k.arg for k in call.keywords if k.arg) - CALL_OPTIONS.get(name, frozenset())
            given |= KEY_CALLS[name]
            for arg in call.args:
                for node in _outside_calls(arg):
                    if (
                        isinstance(node, ast.Constant)
                        and isinstance(node.value, str)
                        and KEY.match(node.value)
                    ):
                        sites.setdefault(node.value, []).append(given)
                    elif isinstance(node, ast.JoinedStr) and node.values:
                        head = node.values[0]
                        if isinstance(head, ast.Constant) and re.fullmatch(
                            r"[a-z]+\.[a-z_]*", str(head.value)
                        ):
                            sites.setdefault(f"{head.value}*", []).append(given)
    return sites


def _outside_calls(node: ast.AST) -> Iterator[ast.AST]:
    """`node` and what it contains, except inner calls (each is a call site of its own) and f-string parts."""
    if isinstance(node, ast.Call):
        return
    yield node
    if not isinstance(node, ast.JoinedStr):
        for child in ast.iter_child_nodes(node):
            yield from _outside_calls(child)


def allowed_params(key: str) -> frozenset[str] | None:
    """The placeholders every place that renders `key` fills in; None if no such place is known."""
    sets = list(call_sites().get(key, []))
    sets += [
        s
        for pattern, found in call_sites().items()
        if pattern.endswith("*")
        for s in found
        if key.startswith(pattern[:-1])
    ]
    if key in INDIRECT:
        sets.append(INDIRECT[key])
    if key.startswith(PLAIN_PREFIXES):
        sets.append(frozenset())
    if not sets:
        return None
    result = sets[0]
    for s in sets[1:]:
        result &= s
    return result


# -- what the catalogues hold


@cache
def translator() -> Translator:
    return Translator()


@cache
def catalogue(locale: str) -> Any:
    with (LOCALES_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po").open("rb") as fh:
        return read_po(fh, locale=locale)


def entries(locale: str) -> dict[str, str | tuple[str, ...]]:
    return dict(translator().catalogues[locale].messages)


def forms(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return value if isinstance(value, tuple) else (value,)


def all_pairs() -> list[tuple[str, str]]:
    return [(locale, key) for locale in SUPPORTED for key in sorted(entries(locale))]


def _render(locale: str, key: str) -> list[str]:
    """The text of `key` rendered through the Translator, for every plural form."""
    t = translator()
    value = entries(locale)[key]
    names: set[str] = set()
    for form in forms(value):
        names |= placeholders(form)
    params = {name: SAMPLES.get(name, f"<{name} & co>") for name in names - {"count"}}
    if isinstance(value, tuple):
        return [str(t.plural(locale, key, n, **params)) for n in COUNTS]
    return [str(t.render(locale, key, **params))]


# -- HTML as Telegram parses it


def _telegram_parser() -> Callable[[str], object] | None:
    try:
        module = importlib.import_module("tests.fakes.html_check")
    except ModuleNotFoundError:
        return None
    parse = getattr(module, "parse_html", None)
    return parse if callable(parse) else None


ALLOWED_TAGS = frozenset({"b", "i", "u", "s", "code", "pre", "a", "blockquote"})
BARE_AMPERSAND = re.compile(r"&(?!(?:lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);)")


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.open: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            self.problems.append(f"tag <{tag}> is not allowed")
        self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.problems.append(f"self-closing <{tag}/> is not allowed")

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"unexpected </{tag}>")
        else:
            self.open.pop()

    def handle_entityref(self, name: str) -> None:
        if name not in ("lt", "gt", "amp", "quot"):
            self.problems.append(f"entity &{name}; is not supported")


def html_problem(text: str) -> str | None:
    """Why Telegram would refuse `text` in HTML parse mode, or None."""
    if BARE_AMPERSAND.search(text):
        return "a bare & (write &amp;)"
    if re.search(r"<(?!/?(?:" + "|".join(ALLOWED_TAGS) + r")\b)", text):
        return "a bare < (write &lt;)"
    parse = _telegram_parser()
    if parse is not None:
        try:
            result = parse(text)
        except Exception as error:
            return str(error)
        return result if isinstance(result, str) and result else None
    checker = _Checker()
    checker.feed(text)
    checker.close()
    problems = checker.problems + [f"<{tag}> is not closed" for tag in checker.open]
    return "; ".join(problems) or None


# -- tests


def test_the_code_uses_keys_and_the_scan_finds_them() -> None:
    keys = literal_keys()
    assert "citizen.registered" in keys and "dialog.greeting" in keys
    assert not any(k.endswith("_") for k in keys), "an f-string fragment was taken for a key"


@pytest.mark.parametrize("locale", SUPPORTED)
def test_every_key_the_code_uses_is_translated(locale: str) -> None:
    have = entries(locale)
    missing = sorted(k for k in used_keys() if k not in have)
    empty = sorted(k for k in used_keys() if k in have and not all(f.strip() for f in forms(have[k])))
    where = literal_keys()
    report = [f"{k}  ({', '.join(where.get(k, ['built from an enum or a list']))})" for k in missing]
    assert not missing, f"{locale}: missing keys:\n" + "\n".join(report)
    assert not empty, f"{locale}: empty translations: {empty}"


def test_both_languages_have_the_same_keys() -> None:
    ru, en = set(entries("ru")), set(entries("en"))
    assert not ru - en, f"only in ru: {sorted(ru - en)}"
    assert not en - ru, f"only in en: {sorted(en - ru)}"


def test_no_translation_for_a_key_the_code_does_not_use() -> None:
    unused = sorted(set(entries("ru")) - used_keys())
    assert not unused, f"keys no code uses: {unused}"


@pytest.mark.parametrize("locale", SUPPORTED)
def test_plural_forms_header_and_entries(locale: str) -> None:
    cat = catalogue(locale)
    assert cat.num_plurals == NPLURALS[locale]
    assert str(cat.locale) == locale
    assert cat.charset.lower() == "utf-8"
    plural_calls = {k for k, found in call_sites().items() if any("count" in s for s in found)}
    plural_calls |= {k for k, given in INDIRECT.items() if "count" in given}
    for key, value in entries(locale).items():
        if key in plural_calls:
            assert isinstance(value, tuple), f"{locale}: {key} is read with plural() but has no plural forms"
            assert len(value) == NPLURALS[locale], f"{locale}: {key} has {len(value)} forms"
        else:
            assert isinstance(value, str), f"{locale}: {key} has plural forms but is not read with plural()"


def test_placeholders_are_the_same_in_both_languages() -> None:
    different = []
    for key in sorted(set(entries("ru")) & set(entries("en"))):
        ru = set().union(*(placeholders(f) for f in forms(entries("ru")[key])))
        en = set().union(*(placeholders(f) for f in forms(entries("en")[key])))
        if ru != en:
            different.append(f"{key}: ru {sorted(ru)} / en {sorted(en)}")
    assert not different, "\n".join(different)


@pytest.mark.parametrize(("locale", "key"), all_pairs())
def test_placeholders_are_ones_the_code_passes(locale: str, key: str) -> None:
    allowed = allowed_params(key)
    assert allowed is not None, (
        f"no call renders {key}; if it is reached through a variable, add it to INDIRECT"
    )
    used = set().union(*(placeholders(f) for f in forms(entries(locale)[key])))
    assert used <= allowed, (
        f"{locale}: {key} uses {sorted(used - allowed)}, the code passes only {sorted(allowed)}"
    )
    if "tag" in allowed:
        assert "tag" in used, f"{locale}: {key} is about a ticket but does not show its tag"


@pytest.mark.parametrize(("locale", "key"), all_pairs())
def test_every_text_renders_into_valid_telegram_html(locale: str, key: str) -> None:
    for text in _render(locale, key):
        assert text.strip(), f"{locale}: {key} renders empty"
        problem = html_problem(text)
        assert problem is None, f"{locale}: {key}: {problem}\n{text}"


@pytest.mark.parametrize(
    ("locale", "key"), [(loc, k) for loc, k in all_pairs() if k.startswith(PLAIN_PREFIXES)]
)
def test_plain_texts_have_no_markup_or_placeholders(locale: str, key: str) -> None:
    for text in forms(entries(locale)[key]):
        assert not re.search(r"[<>&{}]", text), f"{locale}: {key} must be plain text: {text!r}"
        assert "\n" not in text, f"{locale}: {key} must be one line"


@pytest.mark.parametrize("locale", SUPPORTED)
def test_pop_ups_and_command_descriptions_fit(locale: str) -> None:
    too_long = []
    for key, value in entries(locale).items():
        text = forms(value)[0]
        if key.startswith(("toast.", "error.")) and len(text) > TOAST_LIMIT:
            too_long.append(f"{key}: {len(text)} > {TOAST_LIMIT}")
        if key.startswith("command.") and not 1 <= len(text) <= COMMAND_LIMIT:
            too_long.append(f"{key}: {len(text)} > {COMMAND_LIMIT}")
    assert not too_long, f"{locale}: " + "; ".join(too_long)


def test_translator_falls_back_to_the_default_language_and_reads_plurals() -> None:
    t = translator()
    assert t.get("uk", "language.name") == t.get("ru", "language.name") == "Русский"
    assert t.get("en-US", "language.name") == "English"
    ru = [str(t.plural("ru", "card.photos", n)) for n in (1, 2, 5, 21)]
    assert len({ru[0], ru[1], ru[2]}) == 3 and ru[3] != ru[2]
    assert str(t.plural("en", "card.photos", 1)) != str(t.plural("en", "card.photos", 2))


def test_citizen_data_is_escaped_when_rendered() -> None:
    text = translator().render("ru", "card.text", text="<b>5 & 6</b>")
    assert "&lt;b&gt;5 &amp; 6&lt;/b&gt;" in text
    assert html_problem(text) is None
