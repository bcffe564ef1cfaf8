"""What every `dspo` command shares: choosing the store, reporting every failure as one
`error:` line (the traceback only with --debug / DSPO_DEBUG=1), and the consoles and size
format the commands print with."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator
from typing import Annotated

import pyarrow as pa
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from pipeline.config import ConfigError
from pipeline.paths import store_uri
from storage import DatasetStore, StoreError, StoreNotFoundError
from storage.redact import REDACTED, is_secret_key

# Exit status of a command stopped by a problem with its input: store, config, file, usage
# (click uses 2 for usage errors too).
ERROR_EXIT = 2
# Exit status of any other failure (as for an uncaught Python exception).
FAILURE_EXIT = 1
# Width of output that is not a terminal (pipes, logs, tests): rich would wrap at 80 columns.
PIPE_WIDTH = 160
_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
# Loggers of this project's layers whose warnings a user of the command line should see.
LOGGERS = ("storage", "pipeline", "dspo")
# What the running command is doing ("stage score"), for the `error: <what> failed (...)` line
# of an unexpected exception; reset by the outermost group for each invocation.
_DOING: contextvars.ContextVar[str | None] = contextvars.ContextVar("dspo_doing", default=None)
# Longest exception text quoted in an error line (a repr of an array would fill the screen).
MESSAGE_CHARS = 1000
# Secret-named environment values shorter than this are not scrubbed from messages: too likely
# to occur as ordinary words ("1", "true").
SECRET_MIN_CHARS = 6
# user[:password]@ after a scheme, and key:secret@ anywhere (a library quoting "bucket names").
_URL_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
_PAIR_CREDENTIALS = re.compile(r"[^\s/:@\"'<>=]+:[^\s/@\"'<>]+@(?=[\w.-])")
_AWS_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_TRUE = ("1", "true", "yes", "on")

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store", metavar="URI", envvar="DSPO_STORE", show_default=False,
        help="Dataset store: s3://bucket/prefix, file:///path or a path. Default: $DSPO_STORE, else "
             ".dspo/store in the project folder (nearest parent with a pyproject.toml, else the current "
             "folder). S3 endpoint and credentials come from the AWS environment (AWS_ENDPOINT_URL, ...).",
    ),
]


class CommandError(Exception):
    """A mistake in what the user asked for that a command detects itself (an unknown stage,
    an input the stage does not take); reported as its message alone, like a store error."""


def console(*, stderr: bool = False) -> Console:
    """A console for this invocation. Built per call so that it writes to the current
    sys.stdout / sys.stderr and reads $COLUMNS as they are now (test runners swap both)."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPE_WIDTH if wide else None)


def _missing_store_hint(store: DatasetStore) -> str:
    if store.backend.creates_root:
        return f"check --store / $DSPO_STORE, or create it with a publish: dspo ingest SOURCE --store {store.uri}"
    return "check --store / $DSPO_STORE, or create the bucket first (the store never creates one)"


@contextlib.contextmanager
def opened_store(option: str | None, *, publishing: bool = False) -> Iterator[DatasetStore]:
    """Open the selected store for the length of a command, closing its clients after.

    The store must exist (a mistyped --store must neither read as an empty store nor create
    one), unless the command publishes and a publish can create it (a folder, not a bucket).
    """
    store = DatasetStore(store_uri(option))
    try:
        try:
            store.require(publishing=publishing)
        except StoreNotFoundError as exc:
            raise StoreNotFoundError(f"{exc}; {_missing_store_hint(store)}") from None
        yield store
    finally:
        store.close()


def doing(what: str) -> None:
    """Name what the running command is doing ("stage score"), for the error line of an
    unexpected failure; without it the line names the command."""
    _DOING.set(what)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message alone says what is wrong and what to do: store errors,
    config errors (unknown profile, bad override), CommandError, OS errors (permissions,
    missing paths), Arrow I/O and format errors, a stage's refusals (an empty output, an input it
    does not take),
    and botocore's errors -- the last two only once their modules are loaded, so a local
    command never pays for importing them."""
    errors: list[type[BaseException]] = [StoreError, ConfigError, CommandError, OSError, pa.ArrowException]
    stage = sys.modules.get("pipeline.stage")
    if stage is not None:
        errors.append(stage.StageRefusal)
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        errors += [botocore.BotoCoreError, botocore.ClientError]
    return tuple(errors)


def scrub(text: str) -> str:
    """`text` without credentials: user:password of URLs (and key:secret@ without a scheme),
    AWS access key ids, and the values of secret-named environment variables
    (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, ...), wherever a library's message put them."""
    text = _URL_CREDENTIALS.sub(rf"\g<1>{REDACTED}@", text)
    text = _PAIR_CREDENTIALS.sub(f"{REDACTED}@", text)
    text = _AWS_ACCESS_KEY_ID.sub(REDACTED, text)
    for name, value in os.environ.items():
        if len(value) >= SECRET_MIN_CHARS and is_secret_key(name):
            text = text.replace(value, REDACTED)
    return text


def error_message(exc: BaseException, *, limit: int | None = None) -> str:
    """One line describing `exc`, credentials scrubbed, cut at `limit` characters if given."""
    text = " ".join(str(exc).split())
    if limit is not None and len(text) > limit:
        text = text[:limit - 1] + "…"
    return scrub(text) or type(exc).__name__


def report_error(message: str) -> None:
    """Print `error: <message>` to stderr as one red line, never wrapped, credentials scrubbed."""
    console(stderr=True).print(f"[bold red]error:[/bold red] {escape(scrub(message))}", soft_wrap=True,
                               highlight=False)


class WarningLines(logging.Handler):
    """Prints our loggers' warnings (a transient storage error being retried, gc skipping an
    unreadable dataset) as `warning: ...` lines on stderr; without a handler, Python's
    last-resort one would print them bare and unformatted."""

    def emit(self, record: logging.LogRecord) -> None:
        """Print one record as a single, never wrapped, `warning:` line."""
        console(stderr=True).print(f"[yellow]warning:[/yellow] {escape(scrub(self.format(record)))}",
                                   soft_wrap=True, highlight=False)


def show_warnings() -> None:
    """Attach WarningLines to the project's loggers once per process."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(handler, WarningLines) for handler in logger.handlers):
            logger.addHandler(WarningLines(logging.WARNING))


def debugging(ctx: typer.Context) -> bool:
    """Whether tracebacks are wanted: the root command's --debug, else $DSPO_DEBUG."""
    if ctx.find_root().params.get("debug"):
        return True
    return os.environ.get("DSPO_DEBUG", "").strip().lower() in _TRUE


def _print_traceback(exc: BaseException) -> None:
    sys.stderr.write(scrub("".join(traceback.format_exception(exc))))
    sys.stderr.flush()


class ReportingGroup(TyperGroup):
    """A command group whose commands print warnings as `warning:` lines and report every
    exception as one `error:` line: a user error (`user_errors()`) as its message, exit 2;
    anything else as `<what> failed (<Type>: message); rerun with --debug ...`, exit 1.
    --debug / DSPO_DEBUG=1 prints the traceback before that line. Typer's and click's own
    exceptions pass: usage errors keep their usage text and exit 2, Exit keeps its status,
    and Ctrl+C ends in typer's quiet exit 130 (KeyboardInterrupt is not an Exception).

    Doing it in the group covers every sub-command, including ones other packages mount
    (flows/cli.py), without a decorator on each command.
    """

    def invoke(self, ctx: typer.Context):
        """Run the chosen sub-command, reporting its failure as described in the class doc."""
        show_warnings()
        outermost = _DOING.set(None) if ctx.parent is None else None
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # TyperException: click's usage errors
            raise
        except Exception as exc:  # noqa: BLE001 -- every failure a user can cause ends as one line
            expected = isinstance(exc, user_errors())
            debug = debugging(ctx)
            if debug:
                _print_traceback(exc)
            if expected:
                report_error(error_message(exc))
            else:
                what = _DOING.get() or " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))
                hint = "the traceback is above" if debug else "rerun with --debug for the traceback"
                report_error(f"{what} failed ({type(exc).__name__}: {error_message(exc, limit=MESSAGE_CHARS)}); "
                             f"{hint}")
            raise typer.Exit(ERROR_EXIT if expected else FAILURE_EXIT) from None
        finally:
            if outermost is not None:
                _DOING.reset(outermost)


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
