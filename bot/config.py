"""Runtime configuration: environment settings (Settings, load_settings) and the routing file
that maps report categories to agencies' chats (Routing, load_routing)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    SecretStr,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from bot.policy import Policy
from bot.sla import (
    DEFAULT_REMIND_BEFORE,
    DEFAULT_WEEKENDS,
    DEFAULT_WORKING_HOURS,
    WEEKDAY_NAMES,
    RemindBefore,
    Sla,
    WorkingCalendar,
    parse_duration,
    parse_remind_before,
    parse_sla,
)
from bot.sla import deadline as _deadline
from bot.sla import reminder_at as _reminder_at

__all__ = [
    "LOCALES",
    "Agency",
    "CalendarSection",
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
DEFAULT_HTTP_PORT: Final = 8080
# Telegram's rule for setWebhook's secret_token; VK takes a secret key of up to 50 characters.
_WEBHOOK_SECRET: Final = re.compile(r"[A-Za-z0-9_-]{1,256}")
_VK_SECRET: Final = re.compile(r"\S{1,50}")
_HTTP_PATH: Final = re.compile(r"/[A-Za-z0-9/_.~-]*")
_REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")


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
    outbox_backoff_base: float = Field(
        default=1.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="Seconds before the first retry after a network or server error; doubles each try.",
    )
    outbox_claim_seconds: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        allow_inf_nan=False,
        description="With several instances on PostgreSQL: how long one instance's claim on a chat's "
        "queue holds; a chat of an instance that died waits this long before another takes it over.",
    )
    inbox_sweep_after: float = Field(
        default=60.0,
        ge=1,
        le=86400,
        allow_inf_nan=False,
        description="Updates stored this many seconds ago and still not handled (their instance died) "
        "are handled by whichever instance finds them.",
    )
    telegram_global_rate: int = Field(
        default=30, ge=0, description="Telegram messages per second across all chats; 0: no limit."
    )
    telegram_private_rate: int = Field(
        default=1, ge=0, description="Telegram messages per second to one private chat; 0: no limit."
    )
    telegram_group_rate: int = Field(
        default=20, ge=0, description="Telegram messages per minute to one group or supergroup; 0: no limit."
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
    reports_per_hour: int = Field(
        default=5, ge=0, description="New reports one citizen may file per hour; 0: no limit."
    )
    scheduler_interval: int = Field(
        default=60, ge=1, le=3600, description="Seconds between the scheduler's scans of due promises."
    )
    overdue_repeat: str = Field(default="4h", description="How often an overdue alert repeats, e.g. 4h.")
    overdue_group_threshold: int = Field(
        default=5, ge=1, description="More overdue tickets than this in one scan: one grouped message."
    )
    citizen_overdue_notice: bool = Field(
        default=True, description="Tell a citizen when their ticket is overdue and coordinators alerted."
    )
    citizen_update_interval: str = Field(
        default="3d", description='How often a waiting citizen hears "still in work"; "off" disables.'
    )
    resolved_autoclose: str = Field(
        default="3d", description='Close a resolved ticket whose citizen never answered "Solved?"; "off".'
    )
    need_info_timeout: str = Field(
        default="7d", description='Close a ticket waiting for the citizen\'s information this long; "off".'
    )
    digest_time: str = Field(
        default="09:00", description='Local time of the coordinators\' daily digest, HH:MM; "off".'
    )

    vk_group_token: SecretStr | None = Field(
        default=None, description="VK community access token (messages, photos, manage rights)."
    )
    vk_group_id: int | None = Field(default=None, gt=0, description="VK community id (a positive number).")
    vk_api_url: str = Field(
        default="https://api.vk.com/method/",
        description="Base URL the VK API method names are appended to; ends with /method/.",
    )
    vk_polling_wait: int = Field(default=25, ge=1, le=90, description="VK Bots Long Poll wait in seconds.")
    vk_rate: int = Field(default=20, ge=0, description="VK API requests per second for sending; 0: no limit.")
    redis_url: SecretStr | None = Field(
        default=None,
        description="Redis the instances share their rate limits through (redis://host:6379/0); "
        "unset: each instance keeps to the limits on its own.",
    )
    redis_key_prefix: str = Field(
        default="civicdesk:rl",
        min_length=1,
        description="Prefix of the rate-limit keys in Redis; bots that share one Redis need different ones.",
    )

    telegram_mode: Literal["polling", "webhook"] = Field(
        default="polling",
        description="How Telegram updates arrive: long polling, or a webhook Telegram calls.",
    )
    webhook_url: str | None = Field(
        default=None, description="Public https URL Telegram posts updates to (webhook mode)."
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Secret Telegram sends with every webhook call: 1-256 of A-Z, a-z, 0-9, _ and -.",
    )
    webhook_path: str = Field(default="/telegram", description="Path the HTTP server takes webhook calls on.")
    vk_mode: Literal["longpoll", "callback"] = Field(
        default="longpoll", description="How VK events arrive: Bots Long Poll, or the Callback API."
    )
    vk_callback_secret: SecretStr | None = Field(
        default=None, description="The Callback API secret key from the community's settings (callback mode)."
    )
    vk_confirmation_code: str | None = Field(
        default=None, description="The string the community's Callback API settings ask the server to return."
    )
    vk_callback_path: str = Field(default="/vk", description="Path the HTTP server takes VK callbacks on.")
    http_host: str = Field(
        default="127.0.0.1", description="Address the HTTP server (webhook, VK callback, health) listens on."
    )
    http_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="HTTP server port; unset: 8080 when a webhook or callback needs it, else no server.",
    )
    health_max_outbox_lag: float = Field(
        default=300.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds the oldest undelivered message may wait before /healthz reports degraded.",
    )

    @property
    def http_listen_port(self) -> int | None:
        """The HTTP server's port, None when nothing needs the server."""
        if self.http_port is not None:
            return self.http_port
        if self.telegram_mode == "webhook" or self.vk_mode == "callback":
            return DEFAULT_HTTP_PORT
        return None

    @field_validator("telegram_mode", "vk_mode", mode="before")
    @classmethod
    def _lower_mode(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("webhook_url", "vk_confirmation_code", "http_port", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return (value.strip() or None) if isinstance(value, str) else value

    @field_validator("webhook_url")
    @classmethod
    def _https_webhook(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith("https://"):
            raise ValueError("must start with https:// (Telegram calls webhooks over HTTPS only)")
        return value

    @field_validator("webhook_secret", "vk_callback_secret", "redis_url", mode="before")
    @classmethod
    def _blank_secret_is_none(cls, value: object) -> object:
        return (value.strip() or None) if isinstance(value, str) else value

    @field_validator("webhook_secret")
    @classmethod
    def _telegram_secret_charset(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _WEBHOOK_SECRET.fullmatch(value.get_secret_value()):
            raise ValueError("use 1-256 characters, each a letter A-Z or a-z, a digit, _ or -")
        return value

    @field_validator("vk_callback_secret")
    @classmethod
    def _vk_secret_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _VK_SECRET.fullmatch(value.get_secret_value()):
            raise ValueError("use at most 50 characters without spaces, as VK allows")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().lower().startswith(_REDIS_SCHEMES):
            raise ValueError("must start with redis://, rediss:// or unix://, e.g. redis://127.0.0.1:6379/0")
        return value

    @field_validator("redis_key_prefix")
    @classmethod
    def _strip_prefix(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        return value

    @field_validator("webhook_path", "vk_callback_path")
    @classmethod
    def _path_shape(cls, value: str) -> str:
        value = value.strip()
        if not _HTTP_PATH.fullmatch(value):
            raise ValueError('must start with "/" and hold only letters, digits and "/_.-~", e.g. /telegram')
        return value

    @model_validator(mode="after")
    def _modes_complete(self) -> Settings:
        problems: list[str] = []
        if self.telegram_mode == "webhook":
            problems += [
                f"{name} is not set: TELEGRAM_MODE=webhook needs WEBHOOK_URL and WEBHOOK_SECRET"
                for name, value in (
                    ("WEBHOOK_URL", self.webhook_url),
                    ("WEBHOOK_SECRET", self.webhook_secret),
                )
                if value is None
            ]
        if self.vk_mode == "callback":
            problems += [
                f"{name} is not set: VK_MODE=callback needs VK_CALLBACK_SECRET and VK_CONFIRMATION_CODE"
                for name, value in (
                    ("VK_CALLBACK_SECRET", self.vk_callback_secret),
                    ("VK_CONFIRMATION_CODE", self.vk_confirmation_code),
                )
                if value is None
            ]
        taken = {"/healthz": "the health check", "/metrics": "the metrics"}
        for name, path in (("WEBHOOK_PATH", self.webhook_path), ("VK_CALLBACK_PATH", self.vk_callback_path)):
            if path in taken:
                problems.append(f"{name}: {path} is taken by {taken[path]}; choose another path")
            taken[path] = name
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @field_validator("overdue_repeat", "citizen_update_interval", "resolved_autoclose", "need_info_timeout")
    @classmethod
    def _duration_or_off(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip().lower()
        if value == "off" and info.field_name != "overdue_repeat":
            return value
        parse_duration(value)
        return value

    @field_validator("digest_time")
    @classmethod
    def _clock_time_or_off(cls, value: str) -> str:
        value = value.strip().lower()
        if value != "off":
            try:
                time.fromisoformat(value)
            except ValueError:
                raise ValueError('use HH:MM, e.g. 09:00, or "off"') from None
        return value

    def policy(self) -> Policy:
        """The scheduler's policy, from these settings."""

        def optional(value: str) -> timedelta | None:
            return None if value == "off" else parse_duration(value)

        return Policy(
            overdue_repeat=parse_duration(self.overdue_repeat),
            group_threshold=self.overdue_group_threshold,
            citizen_overdue_notice=self.citizen_overdue_notice,
            citizen_update_every=optional(self.citizen_update_interval),
            resolved_autoclose=optional(self.resolved_autoclose),
            need_info_timeout=optional(self.need_info_timeout),
            digest_at=None if self.digest_time == "off" else time.fromisoformat(self.digest_time),
        )

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
    if not error["loc"]:
        # A check across several settings: its message names them itself.
        return _strip_value_error(str(error["msg"])).replace("\n", "\n  ")
    head = str(error["loc"][0])
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


def _to_sla(value: object) -> Sla:
    if isinstance(value, Sla):
        return value
    if isinstance(value, timedelta):
        return Sla.elapsed(value)
    return parse_sla(value if isinstance(value, str) else str(value))


def _lead(value: object) -> RemindBefore:
    if isinstance(value, RemindBefore):
        return value
    if isinstance(value, timedelta):
        return RemindBefore.duration(value)
    return parse_remind_before(value if isinstance(value, str) else str(value))


def _to_remind_before(value: object) -> RemindBefore:
    try:
        return _lead(value)
    except ValueError as exc:
        raise ValueError(f"remind_before: {exc}") from None


_Id = Annotated[str, BeforeValidator(_check_id)]
_Translations = Annotated[dict[str, str], BeforeValidator(_check_translations)]
_OptionalLocale = Annotated[Locale | None, BeforeValidator(_check_locale)]
# Dumped in the file's own compact form ("5wd", "25%"), which validates back to the same value.
_Sla = Annotated[Sla, PlainValidator(_to_sla), PlainSerializer(str, return_type=str)]
_RemindBefore = Annotated[
    RemindBefore, PlainValidator(_to_remind_before), PlainSerializer(str, return_type=str)
]


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
    # Routing fills in default_sla and default_remind_before before a category is validated, so
    # in a routing `sla` is always set and `remind_before` too (a zero lead meaning no reminder).
    sla: _Sla
    emoji: str = ""
    remind_before: _RemindBefore | None = None

    def title_in(self, locale: Locale) -> str:
        return self.title[locale]


class Coordinators(_Frozen):
    chat_id: StrictInt
    locale: _OptionalLocale = None


_HOURS = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_WEEKDAYS: Final[dict[str, int]] = {
    **{name: number for number, name in enumerate(WEEKDAY_NAMES)},
    **{
        name: number
        for number, name in enumerate(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        )
    },
}


def _clock_time(hour: str, minute: str) -> time | None:
    h, m = int(hour), int(minute)
    return time(h, m) if h < 24 and m < 60 else None


def _day(value: object, field: str) -> date:
    # TOML has a date type of its own; a datetime is a date subclass but names an instant, not a day.
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f'{field}: bad date {_quoted(value)}: use YYYY-MM-DD, e.g. "2026-01-01"')


def _quoted(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


class CalendarSection(_Frozen):
    """The routing file's [calendar] table: when the region's agencies work."""

    working_hours: tuple[time, time] = DEFAULT_WORKING_HOURS
    weekends: frozenset[int] = DEFAULT_WEEKENDS
    holidays: frozenset[date] = frozenset()
    working_days: frozenset[date] = frozenset()

    @field_validator("working_hours", mode="plain")
    @classmethod
    def _hours(cls, value: object) -> tuple[time, time]:
        if isinstance(value, tuple) and len(value) == 2 and all(isinstance(t, time) for t in value):
            start, end = value
        else:
            match = _HOURS.fullmatch(value.strip()) if isinstance(value, str) else None
            start, end = (
                (_clock_time(match[1], match[2]), _clock_time(match[3], match[4])) if match else (None, None)
            )
            if start is None or end is None:
                raise ValueError(
                    f"working_hours {_quoted(value)} is invalid: use local times as"
                    ' "HH:MM-HH:MM", e.g. "09:00-18:00"'
                )
        if not start < end:
            raise ValueError(
                f'working_hours "{start:%H:%M}-{end:%H:%M}" is invalid: the working day must end'
                " after it starts on the same day"
            )
        return start, end

    @field_validator("weekends", mode="plain")
    @classmethod
    def _weekends(cls, value: object) -> frozenset[int]:
        if isinstance(value, frozenset | set) and all(isinstance(d, int) for d in value):
            numbers = frozenset(value)
        else:
            if not isinstance(value, list | tuple):
                raise ValueError('weekends must be a list of weekday names, e.g. ["sat", "sun"]')
            found: set[int] = set()
            for name in value:
                number = _WEEKDAYS.get(name.strip().lower()) if isinstance(name, str) else None
                if number is None:
                    raise ValueError(
                        f"weekends: unknown weekday {_quoted(name)} (use {', '.join(WEEKDAY_NAMES)})"
                    )
                found.add(number)
            numbers = frozenset(found)
        if not numbers <= set(range(7)):
            raise ValueError(f"weekends: weekday numbers run from 0 (Monday) to 6, got {sorted(numbers)}")
        if len(numbers) == 7:
            raise ValueError("weekends: every day of the week is a weekend; leave at least one working day")
        return numbers

    @field_validator("holidays", "working_days", mode="plain")
    @classmethod
    def _days(cls, value: object, info: ValidationInfo) -> frozenset[date]:
        field = str(info.field_name)
        if not isinstance(value, list | tuple | set | frozenset):
            raise ValueError(f'{field} must be a list of dates, e.g. {field} = ["2026-01-01"]')
        return frozenset(_day(item, field) for item in value)

    @model_validator(mode="after")
    def _no_day_twice(self) -> CalendarSection:
        both = sorted(self.holidays & self.working_days)
        if both:
            days = ", ".join(d.isoformat() for d in both)
            raise ValueError(f"{days}: listed both in holidays and in working_days")
        return self

    def build(self, timezone: ZoneInfo) -> WorkingCalendar:
        start, end = self.working_hours
        return WorkingCalendar(timezone, start, end, self.weekends, self.holidays, self.working_days)


class Routing(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    timezone: ZoneInfo
    default_locale: Annotated[Locale, BeforeValidator(_check_locale)] = "ru"
    ticket_prefix: str = "T"
    coordinators: Coordinators
    agencies: tuple[Agency, ...]
    categories: tuple[Category, ...]
    default_sla: _Sla | None = None
    default_remind_before: _RemindBefore = DEFAULT_REMIND_BEFORE
    # The TOML table is [calendar]; the attribute of that name is the calendar built from it.
    calendar_section: CalendarSection | None = Field(default=None, alias="calendar")

    _calendar: WorkingCalendar = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: object) -> object:
        """Give categories that name no sla or remind_before the file's defaults."""
        if not isinstance(data, Mapping):
            return data
        categories = data.get("categories")
        if not isinstance(categories, list | tuple):
            return data
        defaults: dict[str, object] = {"remind_before": DEFAULT_REMIND_BEFORE}
        for key, target, convert in (
            ("default_sla", "sla", _to_sla),
            ("default_remind_before", "remind_before", _lead),
        ):
            if key not in data:
                continue
            try:
                defaults[target] = convert(data[key])
            except ValueError:
                continue  # the default's own field reports it once, not once per category
        filled = [{**defaults, **entry} if isinstance(entry, Mapping) else entry for entry in categories]
        return {**data, "categories": filled}

    @field_validator("default_sla", mode="plain")
    @classmethod
    def _default_sla(cls, value: object) -> Sla | None:
        if value is None:
            return None
        try:
            return _to_sla(value)
        except ValueError as exc:
            raise ValueError(f"default_sla: {exc}") from None

    @field_validator("default_remind_before", mode="plain")
    @classmethod
    def _default_remind_before(cls, value: object) -> RemindBefore:
        try:
            return _lead(value)
        except ValueError as exc:
            raise ValueError(f"default_remind_before: {exc}") from None

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
        section = self.calendar_section
        self._calendar = section.build(self.timezone) if section else WorkingCalendar(self.timezone)
        return self

    @property
    def calendar(self) -> WorkingCalendar:
        """The calendar working-time SLAs are counted on: the [calendar] table's, or Mon-Fri
        09:00-18:00 without holidays in the routing's timezone when the file has none."""
        return self._calendar

    def deadline(self, category_id: str, opened_at: datetime) -> datetime:
        """When a ticket of `category_id` opened at aware `opened_at` falls due (aware UTC)."""
        return _deadline(opened_at, self.category(category_id).sla, self.calendar)

    def reminder_at(self, category_id: str, opened_at: datetime, due_at: datetime) -> datetime | None:
        """When to remind the agency about a ticket due at `due_at` (aware UTC): `due_at` minus the
        category's remind_before, a percentage being of the real time from `opened_at` to `due_at`.
        None when the category has no lead, the lead is zero, or the reminder would not come
        after the ticket was opened."""
        return _reminder_at(opened_at, due_at, self.category(category_id).remind_before)

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
        found = [
            f'agency "{a.id}" has no categories: its chat will never receive reports'
            for a in self.agencies
            if not self.categories_of(a.id)
        ]
        for category in self.categories:
            lead, sla = category.remind_before, category.sla
            if (
                lead is not None
                and lead.kind == "duration"
                and sla.kind == "elapsed"
                and lead.amount >= sla.amount
            ):
                found.append(
                    f'category "{category.id}": remind_before {lead} is not shorter than its SLA {sla}, '
                    "so no reminder will ever be sent"
                )
        return tuple(found)


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
    if loc and loc[0] in ("coordinators", "calendar"):
        return str(loc[0]), loc[1:]
    return "", loc


def _routing_problem(data: object, error: ErrorDetails) -> list[str]:
    where, rest = _entry_name(data, error["loc"])
    if error["type"] == "missing" and not rest:
        return [f"{where or 'the file'} is missing"]
    if error["type"] == "missing" and tuple(rest) == ("sla",) and error["loc"][0] == "categories":
        if isinstance(data, Mapping) and data.get("default_sla") is not None:
            return []  # default_sla is present but invalid, and its own error says why
        return [
            f"{where}: sla is missing: give the category an sla, or set default_sla at the top of the file"
        ]
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


def _calendar_line(routing: Routing) -> str:
    calendar = routing.calendar
    hours = f"{calendar.start:%H:%M}-{calendar.end:%H:%M}"
    weekends = ", ".join(WEEKDAY_NAMES[d] for d in sorted(calendar.weekends)) or "none"
    section = routing.calendar_section
    if section is None:
        return f"Calendar: none in the file; working-day SLAs count {hours}, weekends {weekends}, no holidays"
    return (
        f"Calendar: working hours {hours}, weekends {weekends}; {len(section.holidays)} holidays"
        f" and {len(section.working_days)} transferred working days in the file"
    )


def routing_summary(routing: Routing, locale: Locale = "en") -> str:
    """Human-readable overview of the routing for `python -m bot check-config`."""
    coordinators = routing.coordinators
    lines = [
        f"Timezone: {routing.timezone.key}",
        f"Default locale: {routing.default_locale}",
        f"Ticket hashtag: #{routing.ticket_prefix}123",
        f"Coordinators chat: {coordinators.chat_id} (locale {routing.coordinators_locale()})",
        _calendar_line(routing),
    ]
    if routing.default_sla is not None:
        lines.append(f"Default SLA: {routing.default_sla}")
    built_in = "" if "default_remind_before" in routing.model_fields_set else " (built in)"
    lines.append(f"Default reminder: {routing.default_remind_before} before the deadline{built_in}")
    lines.append(f"Agencies ({len(routing.agencies)}), categories ({len(routing.categories)}):")
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
            lead = category.remind_before
            remind = f", reminder {lead} before" if lead is not None else ""
            lines.append(f"    {emoji}{category.id}: {category.title_in(locale)}, SLA {category.sla}{remind}")
    warnings = routing.warnings()
    if warnings:
        lines.append(f"Warnings ({len(warnings)}):")
        lines.extend(f"  - {w}" for w in warnings)
    return "\n".join(lines)
