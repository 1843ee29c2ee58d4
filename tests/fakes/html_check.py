"""Telegram's text formatting as the Bot API server applies it: HTML parse mode, entity clean-up and
the automatic detection of commands, links and mentions, so the fake returns text exactly as Telegram."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

__all__ = ["HtmlParseError", "format_text", "parse_html", "utf16_len"]

UserLookup = Callable[[int], dict[str, Any] | None]


class HtmlParseError(ValueError):
    """The detail Telegram puts after "can't parse entities: "."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


_TAGS = frozenset(
    {
        "a",
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "tg-emoji",
        "code",
        "pre",
        "blockquote",
    }
)
_SIMPLE_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
}
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}

_SPLITTABLE = frozenset({"bold", "italic", "underline", "strikethrough", "spoiler"})
_QUOTES = frozenset({"blockquote", "expandable_blockquote"})
_PRE = frozenset({"code", "pre"})
# Entities whose meaning lives outside the visible text survive being whitespace-only.
_HIDDEN = frozenset({"text_link", "text_mention", "custom_emoji"})
# Tie-break order Telegram uses when two entities share offset and length.
_PRIORITY = {
    "blockquote": 0,
    "expandable_blockquote": 0,
    "pre": 11,
    "code": 20,
    "text_link": 49,
    "text_mention": 49,
    "bold": 90,
    "italic": 91,
    "underline": 92,
    "strikethrough": 93,
    "spoiler": 94,
    "custom_emoji": 99,
}
_WHITESPACE = " \n"


@dataclass
class _Entity:
    """An entity in code-point positions; converted to UTF-16 only on the way out."""

    type: str
    start: int
    end: int
    extra: dict[str, Any] = field(default_factory=dict)


def utf16_len(text: str) -> int:
    """Length the way Telegram counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def parse_html(
    source: str, *, strict_entities: bool = True, user_lookup: UserLookup | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Parse HTML into plain text and entities (UTF-16 offsets), before Telegram's clean-up pass."""
    text, entities = _scan_html(source, strict_entities, user_lookup)
    _sort(entities)
    return text, _export(text, entities)


def format_text(
    text: str,
    *,
    parse_mode: str | None = None,
    entities: Iterable[dict[str, Any]] | None = None,
    detect: bool = True,
    strict_entities: bool = True,
    user_lookup: UserLookup | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """Everything the server does to a message text: parse, clean, trim, detect. An empty result means
    the text had nothing visible (the caller decides whether that is an error)."""
    if parse_mode and parse_mode.lower() == "html":
        plain, found = _scan_html(text, strict_entities, user_lookup)
    else:
        plain, found = text, _import(text, entities or [])
    plain, found = _clean(plain, found)
    found = _fix(found)
    found = _strip_entity_whitespace(plain, found)
    if not any(ch not in _WHITESPACE for ch in plain):
        return "", []
    found = _fix(found)
    plain, found = _trim(plain, found)
    if detect:
        found = _merge_detected(found, _detect(plain))
    found = _strip_entity_whitespace(plain, found)
    _sort(found)
    return plain, _export(plain, found)


# --- HTML scanning ---------------------------------------------------------------------------------


def _scan_html(source: str, strict: bool, user_lookup: UserLookup | None) -> tuple[str, list[_Entity]]:
    n = len(source)

    def at(k: int) -> str:
        # Telegram's parser walks a NUL-terminated buffer; "\0" plays the terminator here.
        return source[k] if k < n else "\0"

    def byte_offset(k: int) -> int:
        return len(source[:k].encode("utf-8", "surrogatepass"))

    out: list[str] = []
    entities: list[_Entity] = []
    # (tag, argument, start position in the output)
    stack: list[tuple[str, str, int]] = []
    decoded_surrogate = False
    i = 0
    while i < n:
        c = source[i]
        if c == "&":
            decoded, nxt = _decode_entity(source, i, strict, byte_offset)
            if decoded is not None:
                decoded_surrogate = decoded_surrogate or 0xD800 <= ord(decoded) <= 0xDFFF
                out.append(decoded)
                i = nxt
                continue
        if c != "<":
            out.append(c)
            i += 1
            continue

        begin = i
        i += 1
        if at(i) != "/":
            while not _is_space(at(i)) and at(i) != ">":
                i += 1
            if i >= n:
                raise HtmlParseError(f"Unclosed start tag at byte offset {byte_offset(begin)}")
            tag = source[begin + 1 : i].lower()
            if tag not in _TAGS:
                raise HtmlParseError(f'Unsupported start tag "{tag}" at byte offset {byte_offset(begin)}')
            argument = ""
            while at(i) != ">":
                while i < n and _is_space(at(i)):
                    i += 1
                if at(i) == ">":
                    break
                name_begin = i
                while not _is_space(at(i)) and at(i) not in "=>":
                    i += 1
                name = source[name_begin:i]
                if not name:
                    raise HtmlParseError(
                        f'Empty attribute name in the tag "{tag}" at byte offset {byte_offset(begin)}'
                    )
                while i < n and _is_space(at(i)):
                    i += 1
                if at(i) != "=":
                    if tag == "blockquote" and name.lower() == "expandable":
                        argument = "expandable"
                        continue
                    raise HtmlParseError(
                        f'Expected equal sign in declaration of an attribute of the tag "{tag}" '
                        f"at byte offset {byte_offset(begin)}"
                    )
                i += 1
                while i < n and _is_space(at(i)):
                    i += 1
                if i >= n:
                    raise HtmlParseError(f'Unclosed start tag "{tag}" at byte offset {byte_offset(begin)}')
                value, i = _attribute_value(source, i, byte_offset)
                if i >= n:
                    raise HtmlParseError(f"Unclosed start tag at byte offset {byte_offset(begin)}")
                argument = _tag_argument(tag, name, value, argument)
            if tag == "span" and argument != "spoiler":
                raise HtmlParseError(
                    f'Tag "span" must have class "tg-spoiler" at byte offset {byte_offset(begin)}'
                )
            stack.append((tag, argument, len(out)))
            i += 1
            continue

        if not stack:
            raise HtmlParseError(f"Unexpected end tag at byte offset {byte_offset(begin)}")
        i += 1
        name_begin = i
        while not _is_space(at(i)) and at(i) != ">":
            i += 1
        end_tag = source[name_begin:i].lower()
        while i < n and _is_space(at(i)):
            i += 1
        if at(i) != ">":
            raise HtmlParseError(f"Unclosed end tag at byte offset {byte_offset(begin)}")
        tag, argument, start = stack.pop()
        if end_tag and end_tag != tag:
            raise HtmlParseError(
                f'Unmatched end tag at byte offset {byte_offset(begin)}, expected "</{tag}>", '
                f'found "</{end_tag}>"'
            )
        if len(out) > start:
            _close_tag(entities, tag, argument, start, out, user_lookup)
        i += 1

    if stack:
        raise HtmlParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    if decoded_surrogate:
        raise HtmlParseError(
            "Text contains invalid Unicode characters after decoding HTML entities, "
            "check for unmatched surrogate code units"
        )
    for entity in entities:
        if entity.type == "code":
            # A language only means something on a <pre>; a lone <code class> drops it.
            entity.extra.pop("language", None)
    return "".join(out), entities


def _is_space(ch: str) -> bool:
    return ch in " \t\r\n\v\0"


def _decode_entity(
    source: str, pos: int, strict: bool, byte_offset: Callable[[int], int]
) -> tuple[str | None, int]:
    n = len(source)
    end = pos + 1
    if end < n and source[end] == "#":
        end += 1
        value = 0
        if end < n and source[end] == "x":
            end += 1
            while end < n and source[end] in "0123456789abcdefABCDEF":
                value = value * 16 + int(source[end], 16)
                end += 1
        else:
            while end < n and source[end] in "0123456789":
                value = value * 10 + int(source[end])
                end += 1
        if value == 0 or value >= 0x10FFFF or end - pos >= 10:
            return None, pos
        decoded = chr(value)
    else:
        while end < n and source[end].isascii() and source[end].isalpha():
            end += 1
        name = source[pos + 1 : end]
        named = _NAMED_ENTITIES.get(name)
        if named is None:
            # Telegram would show "&nbsp;" literally; a formed-but-unknown entity is almost always
            # a formatting bug, so the fake refuses it unless told to be lenient.
            if strict and name and end < n and source[end] == ";":
                raise HtmlParseError(f'Unsupported HTML entity "&{name};" at byte offset {byte_offset(pos)}')
            return None, pos
        decoded = named
    if end < n and source[end] == ";":
        end += 1
    return decoded, end


def _attribute_value(source: str, i: int, byte_offset: Callable[[int], int]) -> tuple[str, int]:
    n = len(source)
    quote = source[i]
    if quote not in "'\"":
        token_begin = i
        while i < n and ((source[i].isascii() and source[i].isalnum()) or source[i] in ".-"):
            i += 1
        if i < n and not _is_space(source[i]) and source[i] != ">":
            raise HtmlParseError(f"Unexpected end of name token at byte offset {byte_offset(token_begin)}")
        return source[token_begin:i].lower(), i
    i += 1
    value: list[str] = []
    while i < n and source[i] != quote:
        if source[i] == "&":
            decoded, nxt = _decode_entity(source, i, False, byte_offset)
            if decoded is not None:
                value.append(decoded)
                i = nxt
                continue
        value.append(source[i])
        i += 1
    if i < n:
        i += 1
    return "".join(value), i


def _tag_argument(tag: str, name: str, value: str, current: str) -> str:
    name = name.lower()
    if tag == "a" and name == "href":
        return value
    if tag == "code" and name == "class" and value.startswith("language-"):
        return value[len("language-") :]
    if tag == "span" and name == "class" and value.startswith("tg-"):
        return value[len("tg-") :]
    if tag == "tg-emoji" and name == "emoji-id":
        return value
    return current


def _close_tag(
    entities: list[_Entity],
    tag: str,
    argument: str,
    start: int,
    out: list[str],
    user_lookup: UserLookup | None,
) -> None:
    end = len(out)
    last = entities[-1] if entities else None
    same_span = last is not None and last.start == start and last.end == end
    if tag in _SIMPLE_TAGS:
        entities.append(_Entity(_SIMPLE_TAGS[tag], start, end))
    elif tag == "tg-emoji":
        if not argument.isdigit() or int(argument) == 0 or int(argument) >= 2**63:
            raise HtmlParseError("Invalid custom emoji identifier specified")
        entities.append(_Entity("custom_emoji", start, end, {"custom_emoji_id": argument}))
    elif tag == "a":
        url = argument or "".join(out[start:end])
        mention = re.fullmatch(r"tg://user\?id=(\d{1,15})", url.strip())
        if mention:
            user_id = int(mention.group(1))
            user = user_lookup(user_id) if user_lookup else None
            # Telegram can only mention users the bot has met; others lose the entity, not the text.
            if user is not None:
                entities.append(_Entity("text_mention", start, end, {"user": user}))
        else:
            checked = checked_link(url)
            if checked:
                entities.append(_Entity("text_link", start, end, {"url": checked}))
    elif tag == "pre":
        if last is not None and same_span and last.type == "code" and last.extra.get("language"):
            last.type = "pre"
        else:
            entities.append(_Entity("pre", start, end))
    elif tag == "code":
        if last is not None and same_span and last.type == "pre" and argument:
            last.extra["language"] = argument
        else:
            extra = {"language": argument} if argument else {}
            entities.append(_Entity("code", start, end, extra))
    elif tag == "blockquote":
        kind = "expandable_blockquote" if argument == "expandable" else "blockquote"
        entities.append(_Entity(kind, start, end))


def checked_link(url: str) -> str | None:
    """Telegram's normalisation of a link target, or None when it silently drops the link."""
    url = url.strip()
    if not url or any(_is_space(ch) for ch in url):
        return None
    lowered = url.lower()
    if lowered.startswith(("tg:", "ton:", "mailto:")):
        return url
    if "://" not in url:
        if ":" in url.split("/", 1)[0].split("?", 1)[0] and not re.match(r"^[^:/]+:\d+", url):
            return None
        url = "http://" + url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https", "ftp") or not host:
        return None
    if not re.fullmatch(r"[\w.-]+", host) or host.startswith(".") or ".." in host:
        return None
    if "." not in host and host != "localhost":
        return None
    scheme_end = url.index("://") + 3
    rest = url[scheme_end:]
    cut = min((rest.find(ch) for ch in "/?#" if ch in rest), default=len(rest))
    path = rest[cut:] if rest[cut:].startswith("/") else "/" + rest[cut:]
    return parts.scheme.lower() + "://" + rest[:cut] + path


# --- clean-up Telegram applies to every formatted text -------------------------------------------


def _import(text: str, entities: Iterable[dict[str, Any]]) -> list[_Entity]:
    """Entities given in UTF-16 units (Bot API `entities` parameter) to code-point positions."""
    to_cp: dict[int, int] = {}
    units = 0
    for index, ch in enumerate(text):
        to_cp[units] = index
        units += 2 if ord(ch) > 0xFFFF else 1
    to_cp[units] = len(text)
    result = []
    for raw in entities:
        offset, length = int(raw.get("offset", 0)), int(raw.get("length", 0))
        start = to_cp.get(offset)
        end = to_cp.get(min(offset + length, units))
        if start is None or end is None or end <= start:
            continue
        extra = {k: v for k, v in raw.items() if k not in ("type", "offset", "length")}
        result.append(_Entity(str(raw.get("type")), start, end, extra))
    return result


def _export(text: str, entities: list[_Entity]) -> list[dict[str, Any]]:
    to_units = [0]
    for ch in text:
        to_units.append(to_units[-1] + (2 if ord(ch) > 0xFFFF else 1))
    result = []
    for entity in entities:
        offset = to_units[entity.start]
        item: dict[str, Any] = {
            "offset": offset,
            "length": to_units[entity.end] - offset,
            "type": entity.type,
        }
        item.update(entity.extra)
        result.append(item)
    return result


def _remap(
    text: str, entities: list[_Entity], keep: Callable[[int, str], str | None]
) -> tuple[str, list[_Entity]]:
    """Rewrite text character by character (None drops one) and move entity bounds along."""
    out: list[str] = []
    position = [0] * (len(text) + 1)
    for index, ch in enumerate(text):
        position[index] = len(out)
        replacement = keep(index, ch)
        if replacement is not None:
            out.append(replacement)
    position[len(text)] = len(out)
    moved = [_Entity(e.type, position[e.start], position[e.end], e.extra) for e in entities]
    return "".join(out), [e for e in moved if e.end > e.start]


def _clean(text: str, entities: list[_Entity]) -> tuple[str, list[_Entity]]:
    def keep(_: int, ch: str) -> str | None:
        code = ord(ch)
        if ch == "\r" or 0x2028 <= code <= 0x202E or ch in "\u0333\u033f\u030a":
            return None
        if code < 32 and ch != "\n":
            return " "
        return ch

    return _remap(text, entities, keep)


def _sort(entities: list[_Entity]) -> None:
    entities.sort(key=lambda e: (e.start, -(e.end - e.start), _PRIORITY.get(e.type, 50)))


def _drop_intersecting(entities: list[_Entity]) -> list[_Entity]:
    """Keep the first of any entities that overlap or nest; those kinds can't share text."""
    _sort(entities)
    kept: list[_Entity] = []
    last_end = 0
    for entity in entities:
        if entity.start >= last_end:
            kept.append(entity)
            last_end = entity.end
    return kept


def _crosses(entity: _Entity, quotes: list[_Entity]) -> bool:
    for quote in quotes:
        overlaps = entity.start < quote.end and quote.start < entity.end
        if overlaps and not (quote.start <= entity.start and entity.end <= quote.end):
            return True
    return False


def _fix(entities: list[_Entity]) -> list[_Entity]:
    entities = [e for e in entities if e.end > e.start]
    splittable = [e for e in entities if e.type in _SPLITTABLE]
    quotes = _drop_intersecting([e for e in entities if e.type in _QUOTES])
    continuous = _drop_intersecting([e for e in entities if e.type not in _SPLITTABLE | _QUOTES])
    others = [e for e in continuous if not _crosses(e, quotes)] + quotes
    result = _resplit(splittable, others) + others
    _sort(result)
    return result


def _resplit(splittable: list[_Entity], others: list[_Entity]) -> list[_Entity]:
    """Telegram merges touching runs of one style, then cuts every run wherever another entity starts
    or ends inside it and drops the pieces that fall inside code or pre."""
    runs: list[_Entity] = []
    for kind in sorted({e.type for e in splittable}):
        current: _Entity | None = None
        for entity in sorted((e for e in splittable if e.type == kind), key=lambda e: e.start):
            if current is not None and entity.start <= current.end:
                current.end = max(current.end, entity.end)
            else:
                current = _Entity(kind, entity.start, entity.end)
                runs.append(current)
    cuts = {e.start for e in runs} | {e.start for e in others} | {e.end for e in others}
    code_spans = [(e.start, e.end) for e in others if e.type in _PRE]
    pieces = []
    for run in runs:
        bounds = [run.start, *sorted(p for p in cuts if run.start < p < run.end), run.end]
        for a, b in pairwise(bounds):
            if not any(s <= a and b <= e for s, e in code_spans):
                pieces.append(_Entity(run.type, a, b))
    return pieces


def _strip_entity_whitespace(text: str, entities: list[_Entity]) -> list[_Entity]:
    kept = []
    for entity in entities:
        if entity.type not in _HIDDEN:
            while entity.start < entity.end and text[entity.start] in _WHITESPACE:
                entity.start += 1
            if not any(ch not in _WHITESPACE for ch in text[entity.start : entity.end]):
                continue
        kept.append(entity)
    return kept


def _trim(text: str, entities: list[_Entity]) -> tuple[str, list[_Entity]]:
    last = max(i for i, ch in enumerate(text) if ch not in _WHITESPACE)
    text = text[: last + 1]
    for entity in entities:
        entity.end = min(entity.end, last + 1)
    entities = [e for e in entities if e.end > e.start]
    # Leading blanks go only up to the first entity; Telegram keeps any inside or after it.
    first_entity = min((e.start for e in entities), default=len(text))
    lead = 0
    while lead < first_entity and text[lead] in _WHITESPACE:
        lead += 1
    if lead:
        text = text[lead:]
        for entity in entities:
            entity.start -= lead
            entity.end -= lead
    return text, entities


# --- automatic entities (commands, mentions, links...) ----------------------------------------------

_TLDS = (
    "com|org|net|ru|su|xn--p1ai|рф|io|me|info|biz|gov|edu|app|dev|ai|co|uk|de|fr|ua|by|kz|uz|online|site|"
    "tech|xyz|tv|us|eu|pro|link|moscow|store|shop|news|live|blog|cloud"
)
_DETECTORS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("email", re.compile(r"(?<![\w.+%-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}(?![\w@])")),
    ("url", re.compile(r"(?<![\w/@])(?:https?|ftp|tg)://[^\s<>\"]+", re.IGNORECASE)),
    (
        "url",
        re.compile(
            rf"(?<![\w@./:-])(?:[\w-]+\.)+(?:{_TLDS})(?::\d{{1,5}})?(?:/[^\s<>\"]*)?(?![\w-])",
            re.IGNORECASE,
        ),
    ),
    ("bot_command", re.compile(r"(?<![\w/<>])/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?(?![\w/<>@])")),
    ("mention", re.compile(r"(?<![\w@])@[A-Za-z0-9_]{4,32}(?![\w@])")),
    ("hashtag", re.compile(r"(?<![\w\u200c#])#[\w\u200c]{1,256}(?![\w\u200c]*#)")),
    ("cashtag", re.compile(r"(?<![\w$])\$(?:1INCH|[A-Z]{1,8})(?![\w$])")),
)


def _detect(text: str) -> list[_Entity]:
    found = []
    for kind, pattern in _DETECTORS:
        for match in pattern.finditer(text):
            start, end = match.span()
            if kind == "url":
                end = start + len(_trim_url(match.group()))
            elif kind == "hashtag" and not any(ch.isalpha() for ch in match.group()[1:]):
                continue
            if end > start:
                found.append(_Entity(kind, start, end))
    return _drop_intersecting(found)


def _trim_url(url: str) -> str:
    while url and url[-1] in ".,:;!?'\"":
        url = url[:-1]
    while url.endswith(")") and url.count(")") > url.count("("):
        url = url[:-1]
    return url


def _merge_detected(entities: list[_Entity], detected: list[_Entity]) -> list[_Entity]:
    """Detected entities never override formatting the sender chose: any that touch an existing
    link, code or similar entity are dropped, and bold/italic runs get cut around the rest."""
    if not detected:
        return entities
    quotes = [e for e in entities if e.type in _QUOTES]
    taken = [e for e in entities if e.type not in _SPLITTABLE | _QUOTES]
    kept = [
        d
        for d in detected
        if not _crosses(d, quotes) and not any(d.start < t.end and t.start < d.end for t in taken)
    ]
    return _fix(entities + kept)
