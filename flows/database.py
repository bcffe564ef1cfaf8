"""The Prefect server's database: SQLite in the state folder, or PostgreSQL (`dspo up --database`).

    dspo up                                            SQLite at <state>/prefect.db (one machine)
    dspo up --database postgresql://user:pw@host/db    PostgreSQL (several machines, many runs at once)
    DSPO_DATABASE_URL=postgresql://...  dspo up        the same, the password kept off the command line

Under load (8 pipelines at once) the SQLite server logged "database is locked"; PostgreSQL does
not have one writer lock. The server talks to it through asyncpg, so the URL is given to Prefect
as `postgresql+asyncpg://...`. A URL without a password uses asyncpg's own sources (PGPASSWORD,
~/.pgpass). Only the server's environment holds the URL: workers, `prefect deploy` and flow runs
talk to the API. Everything that is printed or saved (stack.json, `dspo status`, error lines)
carries `Database.shown`, its credentials removed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from storage.redact import redact_url

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")


class DatabaseError(ValueError):
    """The --database URL cannot be used; the message names it (credentials removed) and the fix."""


@dataclass(frozen=True)
class Database:
    """Where the server keeps its state: `connection_url` for PREFECT_API_DATABASE_CONNECTION_URL
    (secret: only the server's environment gets it), `shown` to print and save, `kind`."""

    kind: str            # "sqlite" or "postgresql"
    connection_url: str = field(repr=False)
    shown: str


def sqlite(path: Path) -> Database:
    return Database("sqlite", f"sqlite+aiosqlite:///{path}", f"sqlite {path}")


def postgresql(url: str) -> Database:
    """A PostgreSQL URL (postgresql://, postgres:// or postgresql+asyncpg://) as the server's
    database; DatabaseError for another scheme or one without host or database name."""
    shown = redact_url(url.strip())
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as exc:
        raise DatabaseError(f"--database {shown}: not a URL ({exc})") from None
    if parts.scheme not in POSTGRES_SCHEMES:
        raise DatabaseError(f"--database {shown}: expected postgresql://user:password@host:port/database "
                            "(SQLite needs no option: it is the default)")
    if not parts.hostname or not parts.path.strip("/"):
        raise DatabaseError(f"--database {shown}: name the host and the database, "
                            "e.g. postgresql://prefect:PASSWORD@db.example.org:5432/prefect")
    rest = url.strip().split("://", 1)[1]
    return Database("postgresql", f"postgresql+asyncpg://{rest}", redact_url(f"postgresql://{rest}"))


def chosen(url: str | None, default_path: Path) -> Database:
    """--database / $DSPO_DATABASE_URL when given, else SQLite at `default_path`."""
    return postgresql(url) if url and url.strip() else sqlite(default_path)
