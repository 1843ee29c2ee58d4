"""Tests for bot.config: environment settings and the routing file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from bot.config import (
    LOCALES,
    ConfigError,
    Routing,
    RoutingError,
    Settings,
    load_routing,
    load_settings,
    missing_for_telegram,
    parse_routing,
    routing_summary,
)
from bot.sla import RemindBefore, Sla, WorkingCalendar

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "routing.example.toml"

ENV_VARS = (
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_API_URL",
    "DATABASE_URL",
    "ROUTING_FILE",
    "LOG_LEVEL",
    "ALBUM_WAIT_SECONDS",
    "OUTBOX_POLL_SECONDS",
    "OUTBOX_MAX_ATTEMPTS",
    "TELEGRAM_POLLING_TIMEOUT",
    "MAX_REPORT_LENGTH",
    "MAX_PHOTOS",
)
TOKEN = "123456:test-token-must-not-leak"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A process environment without any of our variables and a cwd without a .env."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


# --- Settings -----------------------------------------------------------------------------


def test_settings_defaults(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None)
    assert settings.telegram_bot_token is None
    assert settings.telegram_api_url == "https://api.telegram.org"
    assert settings.database_url == "sqlite+aiosqlite:///data/civicdesk.db"
    assert settings.routing_file == Path("routing.toml")
    assert settings.log_level == "INFO"
    assert settings.album_wait_seconds == 0.8
    assert settings.outbox_poll_seconds == 1.0
    assert settings.outbox_max_attempts == 8
    assert settings.polling_timeout == 25
    assert settings.max_report_length == 3500
    assert settings.max_photos == 10


def test_settings_read_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    clean_env.setenv("TELEGRAM_API_URL", "http://localhost:8081/")
    clean_env.setenv("DATABASE_URL", "sqlite+aiosqlite:///tmp/x.db")
    clean_env.setenv("ROUTING_FILE", "/etc/civicdesk/routing.toml")
    clean_env.setenv("LOG_LEVEL", "debug")
    clean_env.setenv("ALBUM_WAIT_SECONDS", "1.5")
    clean_env.setenv("OUTBOX_POLL_SECONDS", "0.2")
    clean_env.setenv("OUTBOX_MAX_ATTEMPTS", "3")
    clean_env.setenv("TELEGRAM_POLLING_TIMEOUT", "50")
    clean_env.setenv("MAX_REPORT_LENGTH", "1000")
    clean_env.setenv("MAX_PHOTOS", "5")

    settings = Settings(_env_file=None)

    assert isinstance(settings.telegram_bot_token, SecretStr)
    assert settings.telegram_bot_token.get_secret_value() == TOKEN
    assert settings.telegram_api_url == "http://localhost:8081"
    assert settings.database_url == "sqlite+aiosqlite:///tmp/x.db"
    assert settings.routing_file == Path("/etc/civicdesk/routing.toml")
    assert settings.log_level == "DEBUG"
    assert settings.album_wait_seconds == 1.5
    assert settings.outbox_poll_seconds == 0.2
    assert settings.outbox_max_attempts == 3
    assert settings.polling_timeout == 50
    assert settings.max_report_length == 1000
    assert settings.max_photos == 5


def test_env_names_are_case_insensitive(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("max_photos", "4")
    clean_env.setenv("telegram_polling_timeout", "7")
    settings = Settings(_env_file=None)
    assert settings.max_photos == 4
    assert settings.polling_timeout == 7


def test_settings_read_env_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text("LOG_LEVEL=warning\nMAX_PHOTOS=2\nUNRELATED_VARIABLE=1\n", encoding="utf-8")
    clean_env.setenv("MAX_PHOTOS", "3")
    settings = load_settings(env_file)
    assert settings.log_level == "WARNING"
    assert settings.max_photos == 3, "the real environment wins over the file"


def test_env_example_loads_with_defaults(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings(ROOT / ".env.example")
    assert settings == Settings(_env_file=None)
    assert missing_for_telegram(settings) == ["TELEGRAM_BOT_TOKEN"]


def test_env_example_lists_every_variable() -> None:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    for name in ENV_VARS:
        assert f"\n{name}=" in text
    assert "\nTELEGRAM_BOT_TOKEN=\n" in text
    assert "BotFather" in text


def test_every_setting_is_described() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_token_never_shown(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    settings = Settings(_env_file=None)
    assert TOKEN not in str(settings)
    assert TOKEN not in repr(settings)


def test_token_not_in_config_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    clean_env.setenv("LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    text = str(caught.value)
    assert TOKEN not in text
    assert "test-token" not in text
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_bad_log_level(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    message = str(caught.value)
    assert "LOG_LEVEL: Input should be 'DEBUG'" in message
    assert message.endswith("Set it in the environment or in .env (see .env.example).")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TELEGRAM_API_URL", "api.telegram.org"),
        ("ALBUM_WAIT_SECONDS", "0"),
        ("ALBUM_WAIT_SECONDS", "10.5"),
        ("ALBUM_WAIT_SECONDS", "nan"),
        ("OUTBOX_POLL_SECONDS", "-1"),
        ("OUTBOX_MAX_ATTEMPTS", "0"),
        ("TELEGRAM_POLLING_TIMEOUT", "51"),
        ("TELEGRAM_POLLING_TIMEOUT", "-1"),
        ("MAX_REPORT_LENGTH", "99"),
        ("MAX_REPORT_LENGTH", "4001"),
        ("MAX_PHOTOS", "0"),
        ("MAX_PHOTOS", "11"),
        ("MAX_PHOTOS", "many"),
    ],
)
def test_bad_values_name_the_variable(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match=rf"(?m)^  {name}: "):
        load_settings(None)


def test_every_problem_is_reported(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MAX_PHOTOS", "0")
    clean_env.setenv("TELEGRAM_POLLING_TIMEOUT", "99")
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    assert "MAX_PHOTOS" in str(caught.value)
    assert "TELEGRAM_POLLING_TIMEOUT" in str(caught.value)


@pytest.mark.parametrize("token", [None, "", "   "])
def test_missing_for_telegram_without_token(token: str | None) -> None:
    settings = Settings(_env_file=None, telegram_bot_token=token)
    assert missing_for_telegram(settings) == ["TELEGRAM_BOT_TOKEN"]


def test_missing_for_telegram_with_token() -> None:
    settings = Settings(_env_file=None, telegram_bot_token=TOKEN)
    assert missing_for_telegram(settings) == []


# --- routing file -------------------------------------------------------------------------

HEADER = """
timezone = "Europe/Moscow"
default_locale = "ru"
ticket_prefix = "T"

[coordinators]
chat_id = -1001000000001
"""

ROADS = """
[[agencies]]
id = "roads"
name = { ru = "Дороги", en = "Roads" }
chat_id = -1001000000011
"""

HOUSING = """
[[agencies]]
id = "housing"
name = { ru = "ЖКХ", en = "Housing" }
chat_id = -1001000000012
locale = "en"
"""

POTHOLES = """
[[categories]]
id = "potholes"
title = { ru = "Ямы", en = "Potholes" }
agency = "roads"
sla = "3d"
emoji = "🕳"
"""

HEATING = """
[[categories]]
id = "heating"
title = { ru = "Отопление", en = "Heating" }
agency = "housing"
sla = "12h"
"""

VALID = HEADER + ROADS + HOUSING + POTHOLES + HEATING


def routing_error(text: str) -> str:
    with pytest.raises(RoutingError) as caught:
        parse_routing(text)
    return str(caught.value)


def test_valid_routing() -> None:
    routing = parse_routing(VALID)
    assert routing.timezone.key == "Europe/Moscow"
    assert routing.default_locale == "ru"
    assert routing.ticket_prefix == "T"
    assert [a.id for a in routing.agencies] == ["roads", "housing"]
    assert [c.id for c in routing.categories] == ["potholes", "heating"]
    assert routing.category("potholes").sla == Sla.elapsed(timedelta(days=3))
    assert routing.category("potholes").remind_before == RemindBefore.percent(25), "the built-in default"
    assert routing.default_sla is None
    assert routing.default_remind_before == RemindBefore.percent(25)
    assert routing.category("heating").emoji == ""
    assert routing.agency("housing").name["en"] == "Housing"


def test_routing_lookups() -> None:
    routing = parse_routing(VALID)
    roads, housing = routing.agencies
    assert routing.agency_by_chat(-1001000000012) is housing
    assert routing.agency_by_chat(-1001000000001) is None
    assert routing.is_coordinators_chat(-1001000000001)
    assert not routing.is_coordinators_chat(-1001000000011)
    assert routing.agency_locale(roads) == "ru"
    assert routing.agency_locale(housing) == "en"
    assert routing.coordinators_locale() == "ru"
    assert [c.id for c in routing.categories_of("roads")] == ["potholes"]
    assert routing.categories_of("nobody") == ()
    with pytest.raises(KeyError):
        routing.agency("nobody")
    with pytest.raises(KeyError):
        routing.category("nothing")


def test_routing_is_frozen() -> None:
    routing = parse_routing(VALID)
    with pytest.raises(ValueError, match="frozen"):
        routing.ticket_prefix = "X"  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        routing.agencies[0].chat_id = 1  # type: ignore[misc]


def test_defaults_apply() -> None:
    text = VALID.replace('default_locale = "ru"\n', "").replace('ticket_prefix = "T"\n', "")
    routing = parse_routing(text)
    assert routing.default_locale == "ru"
    assert routing.ticket_prefix == "T"


def test_example_file_loads() -> None:
    routing = load_routing(EXAMPLE)
    assert {a.id for a in routing.agencies} == {
        "roads",
        "housing",
        "waste",
        "lighting",
        "transport",
        "parks",
        "administration",
    }
    assert routing.timezone.key == "Europe/Moscow"
    assert routing.default_locale == "ru"
    assert routing.ticket_prefix == "T"
    assert routing.coordinators.chat_id == -1001000000001
    assert len(routing.categories) == 12
    assert routing.categories[-1].id == "other"
    assert routing.warnings() == ()
    for category in routing.categories:
        assert category.emoji
        for locale in LOCALES:
            assert category.title[locale]
    slas = {c.id: str(c.sla) for c in routing.categories}
    assert slas == {
        "potholes": "10wd",
        "road_signs": "1d",
        "heating": "12h",
        "buildings": "5wd",
        "garbage": "1d",
        "illegal_dumps": "5wd",
        "street_lights": "2d",
        "transport_routes": "10wd",
        "bus_stops": "3d",
        "parks": "10wd",
        "snow_removal": "1d",
        "other": "10wd",
    }
    assert str(routing.default_sla) == "3d"
    assert str(routing.default_remind_before) == "25%"
    assert str(routing.category("heating").remind_before) == "3h"
    assert str(routing.category("parks").remind_before) == "25%"


def test_summary_lists_everything() -> None:
    routing = load_routing(EXAMPLE)
    summary = routing_summary(routing)
    assert "Europe/Moscow" in summary
    assert "-1001000000001" in summary
    for agency in routing.agencies:
        assert agency.name["en"] in summary
        assert str(agency.chat_id) in summary
    for category in routing.categories:
        assert category.title["en"] in summary
    assert "SLA 12h" in summary
    assert "potholes: Potholes, SLA 10wd, reminder 2d before" in summary
    assert "Default SLA: 3d" in summary
    assert "Default reminder: 25% before the deadline\n" in summary
    assert (
        "Calendar: working hours 09:00-18:00, weekends sat, sun; 18 holidays and 0 transferred working days"
        " in the file" in summary
    )
    assert "Warnings" not in summary
    assert "Управление дорожного хозяйства" in routing_summary(routing, "ru")


def test_agency_without_categories_is_a_warning() -> None:
    idle = HOUSING.replace('"housing"', '"idle"').replace("-1001000000012", "-1001000000019")
    routing = parse_routing(VALID + idle)
    assert routing.categories_of("idle") == ()
    summary = routing_summary(routing)
    assert "Warnings" in summary
    assert 'agency "idle" has no categories' in summary


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RoutingError) as caught:
        load_routing(tmp_path / "routing.toml")
    message = str(caught.value)
    assert "routing.toml not found" in message
    assert "copy routing.example.toml to routing.toml" in message
    assert "ROUTING_FILE" in message


def test_load_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "region.toml"
    path.write_text(VALID.replace('agency = "roads"', 'agency = "road"'), encoding="utf-8")
    with pytest.raises(RoutingError, match=r"region\.toml: category \"potholes\""):
        load_routing(path)


def test_toml_syntax_error_has_line() -> None:
    message = routing_error(VALID + "\n[[agencies]\n")
    assert "TOML syntax error" in message
    assert "line" in message


def test_unknown_agency() -> None:
    message = routing_error(VALID.replace('agency = "roads"', 'agency = "road"'))
    assert 'category "potholes": unknown agency "road" (known: roads, housing)' in message


def test_duplicate_agency() -> None:
    twin = ROADS.replace("-1001000000011", "-1001000000019")
    assert 'agency "roads" is defined twice' in routing_error(VALID + twin)


def test_duplicate_category() -> None:
    assert 'category "potholes" is defined twice' in routing_error(VALID + POTHOLES)


def test_shared_agency_chat() -> None:
    message = routing_error(VALID.replace("-1001000000012", "-1001000000011"))
    assert 'agencies "roads" and "housing" share chat_id -1001000000011' in message


def test_agency_in_coordinators_chat() -> None:
    message = routing_error(VALID.replace("-1001000000012", "-1001000000001"))
    assert 'agency "housing": chat_id -1001000000001 is the coordinators\' chat' in message


def test_missing_translation() -> None:
    message = routing_error(
        VALID.replace('name = { ru = "Дороги", en = "Roads" }', 'name = { ru = "Дороги" }')
    )
    assert 'agency "roads": name lacks the "en" translation' in message


def test_blank_translation() -> None:
    message = routing_error(VALID.replace('en = "Heating"', 'en = "  "'))
    assert 'category "heating": title lacks the "en" translation' in message


def test_plain_string_name() -> None:
    message = routing_error(VALID.replace('name = { ru = "Дороги", en = "Roads" }', 'name = "Roads"'))
    assert 'agency "roads": name must be a table of translations' in message


def test_translation_for_unknown_locale() -> None:
    message = routing_error(VALID.replace('en = "Roads" }', 'en = "Roads", de = "Straßen" }'))
    assert 'agency "roads": name has a translation for unknown locale "de"' in message


def test_bad_duration() -> None:
    message = routing_error(VALID.replace('sla = "3d"', 'sla = "3x"'))
    assert message == (
        'routing.toml: category "potholes": bad SLA "3x": use a number with s, m, h or d'
        " (30s, 15m, 4h, 3d, 1d12h), or with wd or wh for working days or hours (5wd, 8wh)"
    )


def test_numeric_duration() -> None:
    message = routing_error(VALID.replace('sla = "3d"', "sla = 3"))
    assert 'category "potholes": bad SLA "3"' in message


def test_zero_working_days() -> None:
    message = routing_error(VALID.replace('sla = "3d"', 'sla = "0wd"'))
    assert 'category "potholes": bad SLA "0wd": the number of working days must be positive' in message


def test_working_time_slas() -> None:
    routing = parse_routing(VALID.replace('sla = "3d"', 'sla = "5wd"').replace('sla = "12h"', 'sla = "8wh"'))
    assert routing.category("potholes").sla == Sla.working_days(5)
    assert routing.category("heating").sla == Sla.working_hours(8)
    summary = routing_summary(routing)
    assert "potholes: Potholes, SLA 5wd" in summary
    assert "heating: Heating, SLA 8wh" in summary


def test_default_sla_fills_categories_without_one() -> None:
    text = 'default_sla = "2wd"\n' + VALID.replace('sla = "3d"\n', "")
    routing = parse_routing(text)
    assert routing.default_sla == Sla.working_days(2)
    assert routing.category("potholes").sla == Sla.working_days(2)
    assert routing.category("heating").sla == Sla.elapsed(timedelta(hours=12)), "its own sla wins"
    assert "Default SLA: 2wd" in routing_summary(routing)


def test_sla_missing_without_default() -> None:
    message = routing_error(VALID.replace('sla = "3d"\n', ""))
    assert message == (
        'routing.toml: category "potholes": sla is missing: give the category an sla, '
        "or set default_sla at the top of the file"
    )


def test_bad_default_sla_is_reported_once() -> None:
    message = routing_error('default_sla = "3x"\n' + VALID.replace('sla = "3d"\n', ""))
    assert message.startswith('routing.toml: default_sla: bad SLA "3x": use a number with s, m, h or d')
    assert "problems" not in message
    assert "potholes" not in message


def test_remind_before_per_category_and_default() -> None:
    text = 'default_remind_before = "25%"\n' + VALID.replace(
        'sla = "12h"', 'sla = "12h"\nremind_before = "2h"'
    )
    routing = parse_routing(text)
    assert routing.default_remind_before == RemindBefore.percent(25)
    assert routing.category("potholes").remind_before == RemindBefore.percent(25)
    assert routing.category("heating").remind_before == RemindBefore.duration(timedelta(hours=2))
    summary = routing_summary(routing)
    assert "Default reminder: 25% before the deadline" in summary
    assert "potholes: Potholes, SLA 3d, reminder 25% before" in summary
    assert "heating: Heating, SLA 12h, reminder 2h before" in summary


@pytest.mark.parametrize("lead", ["x", "25", "100%", "-1h", "5wd"])
def test_bad_remind_before_names_the_category(lead: str) -> None:
    message = routing_error(VALID.replace('sla = "12h"', f'sla = "12h"\nremind_before = "{lead}"'))
    assert message.startswith(
        f'routing.toml: category "heating": remind_before: bad reminder lead "{lead}": '
    )


def test_bad_default_remind_before_is_reported_once() -> None:
    message = routing_error('default_remind_before = "soon"\n' + VALID)
    assert message.startswith('routing.toml: default_remind_before: bad reminder lead "soon": ')
    assert "problems" not in message


def test_lead_not_shorter_than_the_sla_is_a_warning() -> None:
    routing = parse_routing(VALID.replace('sla = "12h"', 'sla = "12h"\nremind_before = "12h"'))
    assert routing.warnings() == (
        'category "heating": remind_before 12h is not shorter than its SLA 12h, '
        "so no reminder will ever be sent",
    )


def test_routing_deadline_and_reminder() -> None:
    text = VALID.replace('sla = "3d"', 'sla = "5wd"\nremind_before = "1d"').replace(
        'sla = "12h"', 'sla = "12h"\nremind_before = "25%"'
    )
    routing = parse_routing(text)
    # Monday 2 March 2026, 10:00 in Moscow (UTC+3); no [calendar]: Mon-Fri 09:00-18:00.
    opened = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
    due = routing.deadline("potholes", opened)
    assert due == datetime(2026, 3, 9, 15, 0, tzinfo=UTC)
    assert due.tzinfo is UTC
    assert routing.reminder_at("potholes", opened, due) == datetime(2026, 3, 8, 15, 0, tzinfo=UTC)
    heating_due = routing.deadline("heating", opened)
    assert heating_due == datetime(2026, 3, 2, 19, 0, tzinfo=UTC)
    assert routing.reminder_at("heating", opened, heating_due) == datetime(2026, 3, 2, 16, 0, tzinfo=UTC)
    with pytest.raises(KeyError):
        routing.deadline("nothing", opened)


def test_reminders_default_to_a_quarter_of_the_time() -> None:
    routing = parse_routing(VALID)
    opened = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
    assert routing.reminder_at("potholes", opened, routing.deadline("potholes", opened)) == datetime(
        2026, 3, 4, 13, 0, tzinfo=UTC
    )
    assert "Default reminder: 25% before the deadline (built in)" in routing_summary(routing)


@pytest.mark.parametrize("lead", ["0", "0s", "0%"])
def test_a_zero_lead_turns_reminders_off(lead: str) -> None:
    routing = parse_routing(f'default_remind_before = "{lead}"\n' + VALID)
    opened = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
    assert routing.reminder_at("potholes", opened, routing.deadline("potholes", opened)) is None
    assert routing.reminder_at("heating", opened, routing.deadline("heating", opened)) is None


def test_default_calendar_without_a_section() -> None:
    routing = parse_routing(VALID)
    assert routing.calendar_section is None
    assert routing.calendar == WorkingCalendar(ZoneInfo("Europe/Moscow"))
    assert (
        "Calendar: none in the file; working-day SLAs count 09:00-18:00, weekends sat, sun, no holidays"
        in routing_summary(routing)
    )


def test_unknown_timezone() -> None:
    message = routing_error(VALID.replace("Europe/Moscow", "Europe/Moskow"))
    assert 'unknown timezone "Europe/Moskow"' in message


def test_unknown_default_locale() -> None:
    message = routing_error(VALID.replace('default_locale = "ru"', 'default_locale = "de"'))
    assert 'unknown default_locale "de" (supported: ru, en)' in message


def test_unknown_agency_locale() -> None:
    message = routing_error(VALID.replace('locale = "en"', 'locale = "fr"'))
    assert 'agency "housing": unknown locale "fr"' in message


def test_unknown_coordinators_locale() -> None:
    text = VALID.replace("chat_id = -1001000000001\n", 'chat_id = -1001000000001\nlocale = "de"\n')
    assert 'coordinators: unknown locale "de"' in routing_error(text)


@pytest.mark.parametrize("bad_id", ["Roads", "roads!", "", "дороги", "x" * 33, "two words"])
def test_bad_agency_id(bad_id: str) -> None:
    text = VALID.replace('id = "roads"', f'id = "{bad_id}"')
    message = routing_error(text)
    assert f'id "{bad_id}" is invalid' in message


def test_bad_category_id_names_the_entry() -> None:
    message = routing_error(VALID.replace('id = "heating"', 'id = "Heating"'))
    assert 'category "Heating": id "Heating" is invalid' in message


def test_entry_without_id_is_named_by_position() -> None:
    message = routing_error(VALID.replace('id = "heating"\n', ""))
    assert "category #2: id is missing" in message


@pytest.mark.parametrize("prefix", ["", "TOOLONGPREFIX", "T1", "Т"])
def test_bad_ticket_prefix(prefix: str) -> None:
    message = routing_error(VALID.replace('ticket_prefix = "T"', f'ticket_prefix = "{prefix}"'))
    assert "ticket_prefix" in message


def test_chat_id_must_be_an_integer() -> None:
    message = routing_error(VALID.replace("chat_id = -1001000000011", 'chat_id = "-1001000000011"'))
    assert 'agency "roads": chat_id: ' in message


def test_misspelt_key_is_rejected() -> None:
    message = routing_error(VALID.replace("emoji =", "emoij ="))
    assert 'category "potholes": emoij: ' in message


def test_no_agencies_or_categories() -> None:
    assert "no categories" in routing_error("categories = []\n" + HEADER + ROADS)
    assert "no agencies" in routing_error("agencies = []\n" + HEADER + POTHOLES)
    assert "agencies is missing" in routing_error(HEADER + POTHOLES)


def test_missing_coordinators() -> None:
    text = VALID.replace("[coordinators]\nchat_id = -1001000000001\n", "")
    assert "coordinators is missing" in routing_error(text)


def test_several_problems_in_one_message() -> None:
    text = VALID.replace('agency = "roads"', 'agency = "road"').replace(
        'agency = "housing"', 'agency = "home"'
    )
    message = routing_error(text)
    assert "2 problems" in message
    assert 'unknown agency "road"' in message
    assert 'unknown agency "home"' in message


def test_errors_are_not_pydantic_dumps() -> None:
    message = routing_error(VALID.replace('sla = "3d"', 'sla = "3x"'))
    assert "validation error" not in message
    assert "errors.pydantic.dev" not in message
    assert "Value error" not in message


def test_routing_built_in_python() -> None:
    routing = Routing.model_validate(
        {
            "timezone": "UTC",
            "coordinators": {"chat_id": 1},
            "agencies": [{"id": "a", "name": {"ru": "А", "en": "A"}, "chat_id": 2}],
            "categories": [
                {"id": "c", "title": {"ru": "В", "en": "C"}, "agency": "a", "sla": timedelta(hours=2)},
                {"id": "d", "title": {"ru": "Г", "en": "D"}, "agency": "a", "sla": Sla.working_days(3)},
            ],
            "default_remind_before": timedelta(minutes=30),
            "calendar": {"working_hours": "08:00-17:00"},
        }
    )
    assert routing.category("c").sla == Sla.elapsed(timedelta(hours=2))
    assert routing.category("d").sla == Sla.working_days(3)
    assert routing.category("d").remind_before == RemindBefore.duration(timedelta(minutes=30))
    assert routing.calendar.end.hour == 17


def test_routing_dumps_to_what_it_reads() -> None:
    routing = load_routing(EXAMPLE)
    dumped = routing.model_dump(by_alias=True)
    assert dumped["categories"][0]["sla"] == "10wd"
    assert dumped["categories"][0]["remind_before"] == "2d"
    assert Routing.model_validate(dumped) == routing


def test_channels_need_at_least_one_and_vk_needs_both_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.config import channels

    for name in ("TELEGRAM_BOT_TOKEN", "VK_GROUP_TOKEN", "VK_GROUP_ID", "VK_API_URL"):
        monkeypatch.delenv(name, raising=False)

    assert channels(Settings(_env_file=None, telegram_bot_token="1:x")) == (True, False)
    assert channels(Settings(_env_file=None, vk_group_token="vk", vk_group_id=5)) == (False, True)
    with pytest.raises(ConfigError, match="TELEGRAM_BOT_TOKEN"):
        channels(Settings(_env_file=None))
    with pytest.raises(ConfigError, match="VK_GROUP_ID"):
        channels(Settings(_env_file=None, telegram_bot_token="1:x", vk_group_token="vk"))
    assert Settings(_env_file=None, vk_api_url="http://127.0.0.1:9/method").vk_api_url.endswith("/method/")
