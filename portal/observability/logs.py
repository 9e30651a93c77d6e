"""Logs: one JSON object a line (or plain text lines). Known secret values (settings) and anything
shaped like a card number are masked as the line is written: a safety net under the rule that
nothing logs them.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from datetime import UTC, datetime

from portal.config import Settings
from portal.observability.request_ids import order_reference_var, request_id_var

# 13 to 19 digits, optionally grouped by spaces or dashes: a payment card number's shape.
# A card number stands on its own: a run of digits inside a longer word (a hex request id, a
# Stripe object id) is left alone even when it happens to pass the Luhn check.
CARD_NUMBER = re.compile(r"(?<![0-9A-Za-z])(?:\d[ -]?){12,18}\d(?![0-9A-Za-z])")
STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "order_id", "taskName"}
)


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        number = int(char)
        if index % 2:
            number *= 2
            if number > 9:
                number -= 9
        total += number
    return total % 10 == 0


def mask_cards(text: str) -> str:
    def replace(match: re.Match) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        return "[card number]" if _luhn(digits) else match.group(0)

    return CARD_NUMBER.sub(replace, text)


def secret_values(settings: Settings) -> tuple[str, ...]:
    """The secret values among the settings, longest first (so no secret is half-masked)."""
    values: set[str] = set()
    from portal.config import secret_names

    for name in secret_names(settings):
        value = getattr(settings, name.lower(), None)
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if isinstance(item, str) and len(item) >= 6:
                values.add(item)
                if "://" in item and "@" in item:  # a URL with a password: mask that part too
                    password = item.split("://", 1)[1].rsplit("@", 1)[0].partition(":")[2]
                    if len(password) >= 6:
                        values.add(password)
    return tuple(sorted(values, key=len, reverse=True))


class ScrubbingFormatter(logging.Formatter):
    """A formatter that masks, in each finished line, the values of the secret settings and
    anything shaped like a card number: the safety net under both log formats."""

    def __init__(self, secrets: tuple[str, ...] = (), fmt: str | None = None):
        super().__init__(fmt)
        self.secrets: tuple[str, ...] = ()
        self.add_secrets(secrets)

    def add_secrets(self, secrets) -> None:
        self.secrets = tuple(sorted(set(self.secrets) | set(secrets), key=len, reverse=True))
        # Each secret, and as it appears inside a JSON string where that differs: made once
        # here, not for every line.
        forms = []
        for secret in self.secrets:
            forms.append(secret)
            quoted = json.dumps(secret)[1:-1]
            if quoted != secret:
                forms.append(quoted)
        self._forms = tuple(forms)

    def scrub(self, line: str) -> str:
        for form in self._forms:
            if form in line:
                line = line.replace(form, "[redacted]")
        return mask_cards(line)


# A line break or other control character in a message (a platform's error text, a name) would
# start what looks like a new log line in a plain-text log; it is written as its escape.
CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def _escaped(match: re.Match) -> str:
    return json.dumps(match.group(0))[1:-1]


class TextFormatter(ScrubbingFormatter):
    """Plain lines (PORTAL_LOG_FORMAT=text): time, level, logger, order id and message, one line
    a record (control characters in the message escaped; a traceback follows on its own lines),
    with the same masking as the JSON lines."""

    FORMAT = "%(asctime)s %(levelname)s %(name)s [order=%(order_id)s] %(message)s"

    def __init__(self, secrets: tuple[str, ...] = ()):
        super().__init__(secrets, self.FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = CONTROL.sub(_escaped, record.message)
        if not hasattr(record, "order_id"):
            record.order_id = "-"
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(super().format(record))


class JsonFormatter(ScrubbingFormatter):
    """One JSON object a line: time, level, logger, message, request id, order id/reference,
    any `extra` fields, and the exception if there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        order_id = getattr(record, "order_id", None)
        if order_id not in (None, "-"):
            entry["order_id"] = order_id
        reference = order_reference_var.get()
        if reference:
            entry["order_reference"] = reference
        for key, value in record.__dict__.items():
            if key not in STANDARD_ATTRIBUTES and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info))
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return self.scrub(json.dumps(entry, default=str, ensure_ascii=False))


def json_handler(stream=None, secrets=()) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(secrets))
    return handler
