"""Translation from the gettext catalogues in `locales/`, usable inside an update and outside it.

Every text a person reads is looked up here by key. Values passed to `render` are HTML-escaped unless
wrapped in `Html`, so user-written text can never inject markup.
"""

from __future__ import annotations

import gettext
import html
import string
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from babel.messages.pofile import read_po

LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"
DOMAIN = "messages"
SUPPORTED = ("ru", "en")

current_locale: ContextVar[str] = ContextVar("current_locale", default="ru")


class Html(str):
    """Markup we produced ourselves (another rendered text, a link): passed to `render` unescaped."""

    __slots__ = ()


@dataclass(frozen=True)
class Catalogue:
    messages: Mapping[str, str | tuple[str, ...]]
    plural: Callable[[int], int]


def _load(path: Path) -> Catalogue:
    with path.open("rb") as fh:
        catalog = read_po(fh)
    messages: dict[str, str | tuple[str, ...]] = {}
    for message in catalog:
        if not message.id:
            continue
        key = message.id[0] if isinstance(message.id, (list, tuple)) else message.id
        value = message.string
        messages[key] = tuple(value) if isinstance(value, (list, tuple)) else (value or "")
    return Catalogue(messages, gettext.c2py(catalog.plural_expr))


class Translator:
    def __init__(self, directory: Path = LOCALES_DIR, default: str = "ru") -> None:
        self.default = default
        self.catalogues = {
            locale: _load(directory / locale / "LC_MESSAGES" / f"{DOMAIN}.po") for locale in SUPPORTED
        }

    def normalise(self, locale: str | None) -> str:
        """Map a platform language code (`ru-RU`, `en-US`, `uk`) onto a supported locale."""
        if locale:
            short = locale.split("-")[0].split("_")[0].lower()
            if short in self.catalogues:
                return short
        return self.default

    def get(self, locale: str, key: str) -> str:
        value = self._lookup(locale, key)
        return value if isinstance(value, str) else value[0]

    def render(self, locale: str, key: str, /, **params: object) -> Html:
        """The translated text with `params` filled in; str params are escaped for HTML."""
        return Html(self.get(locale, key).format(**_escaped(params)))

    def plural(self, locale: str, key: str, count: int, /, **params: object) -> Html:
        value = self._lookup(locale, key)
        if isinstance(value, str):
            template = value
        else:
            index = self.catalogues[self.normalise(locale)].plural(count)
            template = value[min(index, len(value) - 1)]
        return Html(template.format(count=count, **_escaped(params)))

    def keys(self, locale: str) -> Iterable[str]:
        return self.catalogues[locale].messages.keys()

    def _lookup(self, locale: str, key: str) -> str | tuple[str, ...]:
        for candidate in (self.normalise(locale), self.default):
            value = self.catalogues[candidate].messages.get(key)
            if value and (isinstance(value, str) or all(value)):
                return value
        # A missing key is a bug the translation test catches; showing the key keeps the bot talking.
        return key


def _escaped(params: Mapping[str, object]) -> dict[str, object]:
    return {
        name: value
        if isinstance(value, Html) or not isinstance(value, str)
        else html.escape(value, quote=False)
        for name, value in params.items()
    }


def placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}
