"""Structured logs: one line per event, each carrying the CallSid of the call it is about.

The CallSid lives in a context variable set when a stream starts; asyncio tasks copy
the context, so every log line from a call's tasks carries it without passing it around.
"""

from __future__ import annotations

import json
import logging
import logging.config
import math
import re
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

call_sid_var: ContextVar[str] = ContextVar("call_sid", default="-")

_RESERVED = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "call_sid",
    "color_message",  # uvicorn's duplicate of the message, with ANSI colours
}


# Credentials that libraries may log at DEBUG level (websockets logs request headers).
_CREDENTIALS = re.compile(r"(?i)(bearer|basic)\s+[^\s'\",)]+|\bsk-[A-Za-z0-9_-]{6,}")
_secret_values: set[str] = set()


def register_secrets(*values: str | None) -> None:
    """Values that must never reach a log line (API keys, tokens), wherever they appear."""
    _secret_values.update(v for v in values if v and len(v) >= 6)


def redact(text: str) -> str:
    for value in _secret_values:
        text = text.replace(value, "***")
    return _CREDENTIALS.sub(lambda m: f"{m.group(1)} ***" if m.group(1) else "sk-***", text)


class _CallContext(logging.Filter):
    """Adds the CallSid, and scrubs credentials from the message before any formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.call_sid = call_sid_var.get()
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def _one_line(text: str) -> str:
    """`text` with its control characters escaped (as `repr` does): a newline in a
    message or field from the network must not start a forged log line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _call_sid(record: logging.LogRecord) -> str:
    return str(getattr(record, "call_sid", "-"))


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """Extra fields passed with `extra={...}`."""
    return {k: v for k, v in vars(record).items() if k not in _RESERVED}


class TextFormatter(logging.Formatter):
    """`time level logger call=CA… message key=value…`, readable in a terminal: one line
    per record (but for a traceback), whatever the message and fields hold."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = _one_line(
            f"{moment} {record.levelname:<7} {record.name} call={_call_sid(record)} "
            f"{record.getMessage()}{' ' + extra if extra else ''}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (Fly, Loki, Datadog…)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "call_sid": _call_sid(record),
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def logging_config(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
    """Our logging as a `dictConfig` dict: uvicorn's reloader applies it in each worker
    process it spawns, which does not inherit the parent's handlers."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"call": {"()": _CallContext}},
        "formatters": {"line": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "filters": ["call"],
                "formatter": "line",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # Their own handlers removed, these propagate to ours.
        "loggers": {
            **{
                name: {"handlers": [], "propagate": True}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar")
            },
            # Frame-level protocol chatter: never per-frame logging, even at DEBUG.
            "websockets": {"level": "INFO"},
            "uvicorn.protocols.websockets": {"level": "INFO"},
        },
    }


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    logging.config.dictConfig(logging_config(level, fmt))


class RateLimitedLog:
    """Each kind of warning (its message template) at most once per `interval_s`, with a
    count of the ones held back: a flood of bad requests cannot flood the logs."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self._logger = logger
        self.interval_s = interval_s
        self._seen: dict[str, tuple[float, int]] = {}

    def warning(self, message: str, *args: object, extra: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        last, held_back = self._seen.get(message, (-math.inf, 0))
        if now - last < self.interval_s:
            self._seen[message] = (last, held_back + 1)
            return
        self._seen[message] = (now, 0)
        fields = {**(extra or {}), **({"held_back": held_back} if held_back else {})}
        self._logger.warning(message, *args, extra=fields)
