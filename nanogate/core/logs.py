"""Logging setup: one JSON object per line, scrubbed of keys and base64 on the way out."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from nanogate.core.redact import scrub

# uvicorn adds `color_message`, a duplicate of msg with terminal escapes.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage(), limit=2000),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and value is not None:
                entry[name] = scrub(value, limit=500) if isinstance(value, str) else value
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type and scrubbed message only: tracebacks go nowhere near clients,
            # and in logs they would carry request locals.
            entry["error"] = f"{record.exc_info[0].__name__}: {scrub(str(record.exc_info[1]))}"
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and v is not None
        )
        text = f"{record.levelname.lower():7} {record.name}: {record.getMessage()} {extras}"
        if record.exc_info and record.exc_info[0] is not None:
            text += f" error={record.exc_info[0].__name__}: {record.exc_info[1]}"
        return scrub(text, limit=4000)


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log prints the query string, which may hold ?key=: ours replaces it.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
