"""Command line: `python -m bot [run|migrate|check-config]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Sequence

from bot.config import (
    ConfigError,
    Routing,
    RoutingError,
    Settings,
    channels,
    load_routing,
    load_settings,
    routing_summary,
)
from bot.lean_import import defer as defer_aiogram_models
from bot.redaction import RedactSecrets, describe, remember_secrets

EXIT_FAILURE = 1
EXIT_CONFIG = 2


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    tokens = (
        settings.telegram_bot_token,
        settings.vk_group_token,
        settings.webhook_secret,
        settings.vk_callback_secret,
        settings.redis_url,
    )
    secrets = [token.get_secret_value() for token in tokens if token is not None]
    # The same secrets are kept out of the error texts the outbox stores (bot.redaction.redact).
    remember_secrets(secrets)
    handler.addFilter(RedactSecrets(secrets))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    # vkbottle gives its logger a stderr handler of its own as it is imported, unless the logger has one
    # already: that handler would print every line, token and traceback and all, before the redaction
    # above saw it. A handler that prints nothing takes its place, whether vkbottle came first or comes
    # later, and vkbottle's lines go on to the root's handler only.
    vkbottle = logging.getLogger("vkbottle")
    for own in list(vkbottle.handlers):
        vkbottle.removeHandler(own)
    vkbottle.addHandler(logging.NullHandler())
    vkbottle.propagate = True
    # aiogram says "Update id=... is handled" for every update: a line for debugging, not for the log of
    # a bot serving thousands. Its warnings and errors still show.
    level = logging.getLogger().level
    quiet = level if level <= logging.DEBUG else max(level, logging.WARNING)
    logging.getLogger("aiogram.event").setLevel(quiet)


def fail(message: str) -> int:
    print(f"civicdesk: {message}", file=sys.stderr)
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    # Before anything imports aiogram: its Bot API models are built as they are first used.
    defer_aiogram_models()
    parser = argparse.ArgumentParser(prog="python -m bot", description="CivicDesk citizen reports bot")
    parser.add_argument("command", nargs="?", default="run", choices=("run", "migrate", "check-config"))
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as error:
        return fail(str(error))
    configure_logging(settings)
    if args.command == "migrate":
        from storage.db import migrate

        migrate(settings.database_url)
        print("database is up to date")
        return 0
    try:
        routing = load_routing(settings.routing_file)
    except RoutingError as error:
        return fail(str(error))
    if args.command == "check-config":
        print(routing_summary(routing))
        return 0
    try:
        channels(settings)
    except ConfigError as error:
        return fail(str(error))
    from storage.db import migrate

    migrate(settings.database_url)
    try:
        asyncio.run(serve(settings, routing))
    except Exception as error:
        # Not Python's own print of the traceback: it would show the request URL, token and all.
        logging.getLogger("civicdesk").exception("stopped by an error")
        print(
            f"civicdesk: stopped by an error ({describe(error)}); the log above tells more", file=sys.stderr
        )
        return EXIT_FAILURE
    return 0


async def serve(settings: Settings, routing: Routing) -> None:
    from bot.app import App

    app = App(settings, routing)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await app.start()
    # What start-up built (aiogram's and pydantic's models of the whole Bot API, above all) lives as long
    # as the process; frozen, the garbage collector stops walking it at every full collection, which
    # took about 200 ms each time under load.
    gc.freeze()
    waiter = asyncio.create_task(app.wait())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        await app.stop()
        if waiter.done() and not waiter.cancelled():
            waiter.result()
        else:
            waiter.cancel()
        logging.getLogger("civicdesk").info("stopped")


if __name__ == "__main__":
    sys.exit(main())
