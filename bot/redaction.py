"""Keeping secrets out of what the bot writes: log lines, tracebacks and the error texts it stores.

The secrets are the ones configuration gave (`remember_secrets`, called as logging is set up); the
token parts of the platforms' URLs, and the password of any URL that carries one (`DATABASE_URL`,
`REDIS_URL`), are hidden too, whoever's they are.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence

MASK = "***"

# A token in a request URL: VK's `access_token=...` query parameter, Telegram's `/bot<id>:<secret>/`.
URL_TOKENS = (
    re.compile(r"(?<=access_token=)[^&\s'\"<>]+"),
    re.compile(r"(?<=/bot)\d+:[\w-]+"),
)
# The password in a URL's `user:password@`. A password of a few letters, remembered as a secret, would
# blank those letters in every word of every line; in its URL it is hidden whatever its length.
URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^\s:/@'\"<>]*:)[^\s/@'\"<>]+(?=@)")

_secrets: tuple[str, ...] = ()


def remember_secrets(secrets: Iterable[str | None]) -> None:
    """The process's secrets, which `redact` hides from then on (in place of any remembered before)."""
    global _secrets
    _secrets = tuple(s for s in secrets if s)


def redact(text: str, secrets: Sequence[str] | None = None) -> str:
    """`text` with every secret (`secrets`, or else the remembered ones) and URL token replaced."""
    for secret in _secrets if secrets is None else secrets:
        if secret:
            text = text.replace(secret, MASK)
    for pattern in URL_TOKENS:
        text = pattern.sub(MASK, text)
    return URL_PASSWORD.sub(rf"\g<1>{MASK}", text)


def describe(error: BaseException) -> str:
    """An exception in words safe to keep: its type, and the HTTP status when it has one. Not its text:
    aiohttp's quotes the request's URL, and the token is part of it."""
    name = type(error).__name__
    status = getattr(error, "status", None)
    return f"{name} (HTTP {status})" if isinstance(status, int) and status else name


class RedactSecrets(logging.Filter):
    """Keeps tokens out of every log line, whichever library wrote it."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info:
            # A traceback can quote a request URL, and the token is part of every one. Formatted again
            # each time: a handler that ran first (a library's own) may have left the text unredacted.
            record.exc_text = self.redact(self._formatter.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)
