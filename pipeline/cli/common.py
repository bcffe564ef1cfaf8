"""What every `dspo` command shares: choosing the store, turning storage failures into one
`error:` line, and the consoles and size format the commands print with."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Annotated

import pyarrow as pa
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from pipeline.config import ConfigError
from pipeline.paths import store_uri
from storage import DatasetStore, StoreError

# Exit status of a command stopped by a storage or usage problem (click uses 2 for usage errors too).
ERROR_EXIT = 2
# Width of output that is not a terminal (pipes, logs, tests): rich would wrap at 80 columns.
PIPE_WIDTH = 160
_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
# Loggers of this project's layers whose warnings a user of the command line should see.
LOGGERS = ("storage", "pipeline")

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store", metavar="URI", envvar="DSPO_STORE", show_default=False,
        help="Dataset store: s3://bucket/prefix, file:///path or a path. Default: $DSPO_STORE, else "
             ".dspo/store in the project folder (nearest parent with a pyproject.toml, else the current "
             "folder). S3 endpoint and credentials come from the AWS environment (AWS_ENDPOINT_URL, ...).",
    ),
]


def console(*, stderr: bool = False) -> Console:
    """A console for this invocation. Built per call so that it writes to the current
    sys.stdout / sys.stderr and reads $COLUMNS as they are now (test runners swap both)."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPE_WIDTH if wide else None)


@contextlib.contextmanager
def opened_store(option: str | None) -> Iterator[DatasetStore]:
    """Open the selected store for the length of a command, closing its clients after."""
    store = DatasetStore(store_uri(option))
    try:
        yield store
    finally:
        store.close()


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that describe a problem with the store or the environment, not a bug:
    store errors, config errors (unknown profile, bad override), OS errors (permissions, missing
    paths), Arrow I/O and format errors, and
    botocore's errors (no credentials, unreachable endpoint) -- the last only when an s3://
    store has loaded botocore, so a local command never pays for importing it."""
    errors: list[type[BaseException]] = [StoreError, ConfigError, OSError, pa.ArrowException]
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        errors += [botocore.BotoCoreError, botocore.ClientError]
    return tuple(errors)


def error_message(exc: BaseException) -> str:
    """One line describing `exc` (store messages already carry redacted URIs only)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def report_error(message: str) -> None:
    """Print `error: <message>` to stderr as one red line, never wrapped."""
    console(stderr=True).print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True, highlight=False)


class WarningLines(logging.Handler):
    """Prints our loggers' warnings (a transient storage error being retried, gc skipping an
    unreadable dataset) as `warning: ...` lines on stderr; without a handler, Python's
    last-resort one would print them bare and unformatted."""

    def emit(self, record: logging.LogRecord) -> None:
        """Print one record as a single, never wrapped, `warning:` line."""
        console(stderr=True).print(f"[yellow]warning:[/yellow] {escape(self.format(record))}",
                                   soft_wrap=True, highlight=False)


def show_warnings() -> None:
    """Attach WarningLines to the project's loggers once per process."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(handler, WarningLines) for handler in logger.handlers):
            logger.addHandler(WarningLines(logging.WARNING))


class ReportingGroup(TyperGroup):
    """A command group whose commands print warnings as `warning:` lines and report
    `user_errors()` as one `error:` line and exit 2.

    Doing it in the group covers every sub-command, including ones other packages mount
    (flows/cli.py), without a decorator on each command.
    """

    def invoke(self, ctx):
        """Run the chosen sub-command; a user error becomes an `error:` line and exit status 2."""
        show_warnings()
        try:
            return super().invoke(ctx)
        except user_errors() as exc:
            report_error(error_message(exc))
            raise typer.Exit(ERROR_EXIT) from None


def format_bytes(size: int | None) -> str:
    """A byte count for people: 512 B, 1.5 KiB, 33.4 MiB, ..."""
    if size is None:
        return "-"
    value, unit = float(size), _BYTE_UNITS[0]
    for unit in _BYTE_UNITS:
        if value < 1024 or unit == _BYTE_UNITS[-1]:
            break
        value /= 1024
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
