"""The server's logging: uvicorn's, plus the app's own logger (publishes, failures) and the
store's warnings, with every query string redacted.

Nothing the app accepts travels in a query string, but clients put tokens there anyway
(`?token=...`, refused); uvicorn's access log would write them verbatim. The filter rewrites
the request path of access records and any `/path?query` in other messages and tracebacks to
`/path?[redacted]`.
"""
from __future__ import annotations

import copy
import logging
import re

import uvicorn

REDACTED = "?[redacted]"
_QUERY = re.compile(r'(/[^\s?"\']*)\?[^\s"\']*')
# uvicorn.access records: args are (client address, method, path with query, HTTP version, status).
_ACCESS_PATH = 2


def redact(text: str) -> str:
    """`text` with the query string of every path in it replaced by ?[redacted]."""
    return _QUERY.sub(lambda found: found.group(1) + REDACTED, text)


class RedactQueries(logging.Filter):
    """Redacts query strings in the records it passes (module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) > _ACCESS_PATH:
            args = list(record.args)
            path = str(args[_ACCESS_PATH])
            args[_ACCESS_PATH] = path.split("?", 1)[0] + REDACTED if "?" in path else path
            record.args = tuple(args)
            return True
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def log_config() -> dict:
    """uvicorn's logging config with the app's and the store's loggers, every handler redacting."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"redact_queries": {"()": RedactQueries}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact_queries"]
    config["loggers"]["pipeline.labels.app"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config["loggers"]["storage"] = {"handlers": ["default"], "level": "WARNING", "propagate": False}
    return config
