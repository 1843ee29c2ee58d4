"""Runtime configuration: environment settings (Settings, load_settings) and the routing file
that maps report categories to agencies' chats (Routing, load_routing)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from bot.sla import format_duration, parse_duration

__all__ = [
    "LOCALES",
    "Agency",
    "Category",
    "ConfigError",
    "Coordinators",
    "Locale",
    "Routing",
    "RoutingError",
    "Settings",
    "load_routing",
    "load_settings",
    "missing_for_telegram",
    "parse_routing",
    "routing_summary",
]

ENV_FILE: Final = ".env"
_ENV_HINT: Final = "Set it in the environment or in .env (see .env.example)."


class ConfigError(Exception):
    """Settings from the environment are invalid; the message is meant for the operator."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    telegram_bot_token: SecretStr | None = Field(
        default=None, description="Telegram bot token issued by @BotFather."
    )
    telegram_api_url: str = Field(
        default="https://api.telegram.org",
        description="Base URL of the Telegram Bot API server (a self-hosted one, or the public one).",
    )
    database_url: str = Field(
        default="sqlite+aiosqlite:///data/civicdesk.db",
        description="SQLAlchemy async database URL.",
    )
    routing_file: Path = Field(
        default=Path("routing.toml"),
        description="TOML file mapping report categories to agencies and their chats.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Logging threshold."
    )
    album_wait_seconds: float = Field(
        default=0.8,
        gt=0,
        le=10,
        allow_inf_nan=False,
        description="How long to wait for the rest of a photo album before handling it.",
    )
    outbox_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="How often the outbox is checked for messages to deliver.",
    )
    outbox_max_attempts: int = Field(
        default=8, ge=1, description="Delivery attempts per outgoing message before it is given up."
    )
    polling_timeout: int = Field(
        default=25,
        ge=0,
        le=50,
        validation_alias="TELEGRAM_POLLING_TIMEOUT",
        description="Telegram long-poll timeout in seconds.",
    )
    max_report_length: int = Field(
        default=3500, ge=100, le=4000, description="Longest report description a citizen may send."
    )
    max_photos: int = Field(default=10, ge=1, le=10, description="Most photos attached to one report.")
    vk_group_token: SecretStr | None = Field(
        default=None, description="VK community access token (messages, photos, manage rights)."
    )
    vk_group_id: int | None = Field(default=None, gt=0, description="VK community id (a positive number).")
    vk_api_url: str = Field(
        default="https://api.vk.com/method/",
        description="Base URL the VK API method names are appended to; ends with /method/.",
    )
    vk_polling_wait: int = Field(default=25, ge=1, le=90, description="VK Bots Long Poll wait in seconds.")

    @field_validator("vk_group_id", mode="before")
    @classmethod
    def _blank_id_is_none(cls, value: object) -> object:
        return (value.strip() or None) if isinstance(value, str) else value

    @field_validator("vk_api_url", mode="before")
    @classmethod
    def _normalise_vk_url(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        url = value.strip()
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url if url.endswith("/") else url + "/"

    @field_validator("telegram_bot_token", "vk_group_token", mode="before")
    @classmethod
    def _blank_token_is_none(cls, value: object) -> object:
        # `TELEGRAM_BOT_TOKEN=` as shipped in .env.example means "not configured", not "empty token".
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    @field_validator("telegram_api_url", mode="before")
    @classmethod
    def _normalise_api_url(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        url = value.strip().rstrip("/")
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value


def _env_names() -> dict[str, str]:
    """Map every name pydantic may put in an error location to the variable the operator sets."""
    names: dict[str, str] = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env = alias if isinstance(alias, str) else field_name
        names[field_name.lower()] = env.upper()
        names[env.lower()] = env.upper()
    return names


def _settings_problem(error: ErrorDetails, env_names: Mapping[str, str]) -> str:
    head = str(error["loc"][0]) if error["loc"] else ""
    env = env_names.get(head.lower(), head.upper()) or "SETTINGS"
    # Only `msg` is used: `input` could be the bot token.
    return f"{env}: {_strip_value_error(str(error['msg']))}"


def load_settings(env_file: str | Path | None = ENV_FILE) -> Settings:
    """Build Settings from the environment and `env_file` (None: environment only)."""
    try:
        return Settings(_env_file=env_file)
    except ValidationError as exc:
        env_names = _env_names()
        problems = [_settings_problem(err, env_names) for err in exc.errors(include_input=False)]
        lines = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(f"invalid settings:\n{lines}\n{_ENV_HINT}") from None
    except SettingsError as exc:
        # Raised for values pydantic-settings cannot decode; its text names the field, not the value.
        raise ConfigError(f"invalid settings: {exc}\n{_ENV_HINT}") from None


def missing_for_telegram(settings: Settings) -> list[str]:
    """Environment variables the Telegram channel needs but that are not set."""
    token = settings.telegram_bot_token
    if token is None or not token.get_secret_value().strip():
        return ["TELEGRAM_BOT_TOKEN"]
    return []


def channels(settings: Settings) -> tuple[bool, bool]:
    """Which channels are configured: (telegram, vk). A half-configured VK channel is an error, not
    a silent "off", so an operator who set one of its variables learns what is missing."""
    telegram = not missing_for_telegram(settings)
    vk_token = settings.vk_group_token is not None
    if vk_token != (settings.vk_group_id is not None):
        missing = "VK_GROUP_ID" if vk_token else "VK_GROUP_TOKEN"
        raise ConfigError(f"{missing} is not set: the VK channel needs both VK_GROUP_TOKEN and VK_GROUP_ID.")
    if not telegram and not vk_token:
        raise ConfigError(
            "cannot start: no channel is configured. Set TELEGRAM_BOT_TOKEN (from @BotFather) and/or"
            " VK_GROUP_TOKEN with VK_GROUP_ID in .env (copy .env.example to .env) or in the environment,"
            " e.g. TELEGRAM_BOT_TOKEN=123456:ABC... make run"
        )
    return telegram, vk_token


# --- routing file -------------------------------------------------------------------------

Locale = Literal["ru", "en"]
LOCALES: tuple[Locale, ...] = ("ru", "en")

# Ids travel inside Telegram callback data (64 bytes at most), so they are short and plain.
_ID = re.compile(r"[a-z0-9_-]{1,32}")
_TICKET_PREFIX = re.compile(r"[A-Za-z]{1,8}")


class RoutingError(Exception):
    """The routing file is missing or wrong; the message names the offending entry."""


def _strip_value_error(message: str) -> str:
    return message.removeprefix("Value error, ")


def _check_id(value: object) -> object:
    if isinstance(value, str) and not _ID.fullmatch(value):
        raise ValueError(f'id "{value}" is invalid: use 1–32 lowercase letters, digits, "_" or "-"')
    return value


def _check_locale(value: object, info: ValidationInfo) -> object:
    if value is None or value in LOCALES:
        return value
    raise ValueError(f'unknown {info.field_name} "{value}" (supported: {", ".join(LOCALES)})')


def _check_translations(value: object, info: ValidationInfo) -> object:
    field = info.field_name
    if not isinstance(value, Mapping):
        raise ValueError(f'{field} must be a table of translations, e.g. {field} = {{ ru = "…", en = "…" }}')
    for key in value:
        if key not in LOCALES:
            raise ValueError(f'{field} has a translation for unknown locale "{key}" ({", ".join(LOCALES)})')
    for locale in LOCALES:
        text = value.get(locale)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f'{field} lacks the "{locale}" translation')
    return value


_Id = Annotated[str, BeforeValidator(_check_id)]
_Translations = Annotated[dict[str, str], BeforeValidator(_check_translations)]
_OptionalLocale = Annotated[Locale | None, BeforeValidator(_check_locale)]


class _Frozen(BaseModel):
    # extra="forbid" turns a misspelt key into an error instead of a silently ignored setting.
    model_config = ConfigDict(frozen=True, extra="forbid")


class Agency(_Frozen):
    id: _Id
    name: _Translations
    chat_id: StrictInt
    locale: _OptionalLocale = None

    def title_in(self, locale: Locale) -> str:
        return self.name[locale]


class Category(_Frozen):
    id: _Id
    title: _Translations
    agency: str
    sla: timedelta
    emoji: str = ""

    @field_validator("sla", mode="before")
    @classmethod
    def _parse_sla(cls, value: object) -> object:
        if isinstance(value, timedelta):
            if value <= timedelta(0):
                raise ValueError(f"sla must be positive, got {value}")
            return value
        return parse_duration(str(value))

    def title_in(self, locale: Locale) -> str:
        return self.title[locale]


class Coordinators(_Frozen):
    chat_id: StrictInt
    locale: _OptionalLocale = None


class Routing(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    timezone: ZoneInfo
    default_locale: Annotated[Locale, BeforeValidator(_check_locale)] = "ru"
    ticket_prefix: str = "T"
    coordinators: Coordinators
    agencies: tuple[Agency, ...]
    categories: tuple[Category, ...]

    @field_validator("timezone", mode="plain")
    @classmethod
    def _zone(cls, value: object) -> ZoneInfo:
        if isinstance(value, ZoneInfo):
            return value
        if not isinstance(value, str):
            raise ValueError('timezone must be a name such as "Europe/Moscow"')
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            hint = 'use an IANA name such as "Europe/Moscow"'
            if not available_timezones():
                hint = "no time zone database found on this system: install the tzdata package"
            raise ValueError(f'unknown timezone "{value}": {hint}') from None

    @field_validator("ticket_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _TICKET_PREFIX.fullmatch(value):
            raise ValueError(f'ticket_prefix "{value}" is invalid: use 1–8 ASCII letters, e.g. "T"')
        return value

    @field_validator("agencies")
    @classmethod
    def _some_agencies(cls, value: tuple[Agency, ...]) -> tuple[Agency, ...]:
        if not value:
            raise ValueError("no agencies: add at least one [[agencies]] table")
        return value

    @field_validator("categories")
    @classmethod
    def _some_categories(cls, value: tuple[Category, ...]) -> tuple[Category, ...]:
        if not value:
            raise ValueError("no categories: add at least one [[categories]] table")
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> Routing:
        problems: list[str] = []
        agency_ids: list[str] = []
        owner_of_chat: dict[int, str] = {}
        for agency in self.agencies:
            if agency.id in agency_ids:
                problems.append(f'agency "{agency.id}" is defined twice')
                continue
            agency_ids.append(agency.id)
            if agency.chat_id == self.coordinators.chat_id:
                problems.append(
                    f'agency "{agency.id}": chat_id {agency.chat_id} is the coordinators\' chat; '
                    "each agency needs a chat of its own"
                )
            elif agency.chat_id in owner_of_chat:
                problems.append(
                    f'agencies "{owner_of_chat[agency.chat_id]}" and "{agency.id}" share chat_id '
                    f"{agency.chat_id}; each agency needs a chat of its own"
                )
            else:
                owner_of_chat[agency.chat_id] = agency.id
        category_ids: set[str] = set()
        for category in self.categories:
            if category.id in category_ids:
                problems.append(f'category "{category.id}" is defined twice')
            category_ids.add(category.id)
            if category.agency not in agency_ids:
                problems.append(
                    f'category "{category.id}": unknown agency "{category.agency}" '
                    f"(known: {', '.join(agency_ids)})"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def agency(self, agency_id: str) -> Agency:
        for agency in self.agencies:
            if agency.id == agency_id:
                return agency
        raise KeyError(f'unknown agency "{agency_id}"')

    def category(self, category_id: str) -> Category:
        for category in self.categories:
            if category.id == category_id:
                return category
        raise KeyError(f'unknown category "{category_id}"')

    def agency_by_chat(self, chat_id: int) -> Agency | None:
        return next((a for a in self.agencies if a.chat_id == chat_id), None)

    def is_coordinators_chat(self, chat_id: int) -> bool:
        return chat_id == self.coordinators.chat_id

    def agency_locale(self, agency: Agency) -> Locale:
        return agency.locale or self.default_locale

    def coordinators_locale(self) -> Locale:
        return self.coordinators.locale or self.default_locale

    def categories_of(self, agency_id: str) -> tuple[Category, ...]:
        return tuple(c for c in self.categories if c.agency == agency_id)

    def warnings(self) -> tuple[str, ...]:
        """Legal but probably unintended setups, shown by check-config."""
        return tuple(
            f'agency "{a.id}" has no categories: its chat will never receive reports'
            for a in self.agencies
            if not self.categories_of(a.id)
        )


def _entry_name(data: object, loc: Sequence[int | str]) -> tuple[str, Sequence[int | str]]:
    """Describe where an error sits by the entry's id ("category "potholes"") rather than its index."""
    if len(loc) >= 2 and loc[0] in ("agencies", "categories") and isinstance(loc[1], int):
        kind = "agency" if loc[0] == "agencies" else "category"
        entries = data.get(loc[0]) if isinstance(data, Mapping) else None
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
        entry_id = entry.get("id") if isinstance(entry, Mapping) else None
        if isinstance(entry_id, str) and entry_id:
            return f'{kind} "{entry_id}"', loc[2:]
        return f"{kind} #{loc[1] + 1}", loc[2:]
    if loc and loc[0] == "coordinators":
        return "coordinators", loc[1:]
    return "", loc


def _routing_problem(data: object, error: ErrorDetails) -> list[str]:
    where, rest = _entry_name(data, error["loc"])
    if error["type"] == "missing" and not rest:
        return [f"{where or 'the file'} is missing"]
    message = _strip_value_error(str(error["msg"]))
    # Our own ValueErrors already say which key is wrong; pydantic's generic ones do not.
    if error["type"] != "value_error":
        field = ".".join(str(part) for part in rest)
        if error["type"] == "missing":
            message = f"{field} is missing"
        else:
            got = error.get("input")
            shown = f" (got {got!r})" if isinstance(got, str | int | float | bool) else ""
            message = f"{field}: {message}{shown}" if field else f"{message}{shown}"
    lines = message.splitlines() or [message]
    return [f"{where}: {line}" if where else line for line in lines]


def parse_routing(text: str, source: str = "routing.toml") -> Routing:
    """Parse and check the routing file's text; `source` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RoutingError(f"{source}: TOML syntax error: {exc}") from None
    try:
        return Routing.model_validate(data)
    except ValidationError as exc:
        problems = [line for error in exc.errors() for line in _routing_problem(data, error)]
    if len(problems) == 1:
        raise RoutingError(f"{source}: {problems[0]}")
    listed = "\n".join(f"  - {p}" for p in problems)
    raise RoutingError(f"{source}: {len(problems)} problems:\n{listed}")


def load_routing(path: Path) -> Routing:
    """Read and check the routing file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RoutingError(
            f"routing file {path} not found: copy routing.example.toml to routing.toml and edit it, "
            "or set ROUTING_FILE"
        ) from None
    except UnicodeDecodeError:
        raise RoutingError(f"routing file {path} is not valid UTF-8 text") from None
    except OSError as exc:
        raise RoutingError(f"cannot read routing file {path}: {exc.strerror or exc}") from None
    return parse_routing(text, source=str(path))


def routing_summary(routing: Routing, locale: Locale = "en") -> str:
    """Human-readable overview of the routing for `python -m bot check-config`."""
    coordinators = routing.coordinators
    lines = [
        f"Timezone: {routing.timezone.key}",
        f"Default locale: {routing.default_locale}",
        f"Ticket hashtag: #{routing.ticket_prefix}123",
        f"Coordinators chat: {coordinators.chat_id} (locale {routing.coordinators_locale()})",
        f"Agencies ({len(routing.agencies)}), categories ({len(routing.categories)}):",
    ]
    for agency in routing.agencies:
        lines.append(
            f"  {agency.id}: {agency.title_in(locale)} "
            f"[chat {agency.chat_id}, locale {routing.agency_locale(agency)}]"
        )
        categories = routing.categories_of(agency.id)
        if not categories:
            lines.append("    (no categories)")
        for category in categories:
            emoji = f"{category.emoji} " if category.emoji else ""
            lines.append(
                f"    {emoji}{category.id}: {category.title_in(locale)}, SLA {format_duration(category.sla)}"
            )
    warnings = routing.warnings()
    if warnings:
        lines.append(f"Warnings ({len(warnings)}):")
        lines.extend(f"  - {w}" for w in warnings)
    return "\n".join(lines)
