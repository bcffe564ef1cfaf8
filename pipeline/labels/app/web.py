"""What the page and API routes share: the loaded parts of the app and the request checks.

A request is authenticated by `Authorization: Bearer <token>` or by the login cookie; a
request that sends an Authorization header is judged by it alone (a wrong token is a 401 even
with a valid cookie). A cookie-authenticated request that changes something must carry the
session's CSRF token (form field `csrf` or header `X-CSRF-Token`); Bearer requests need none,
since a browser never adds that header to a cross-site request by itself.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates

from pipeline.labels.app.auth import Annotators
from pipeline.labels.app.book import LabelBook
from pipeline.labels.app.config import LabelAppConfig
from pipeline.labels.app.images import Crops
from pipeline.labels.app.sessions import Session, Sessions
from pipeline.labels.app.tasks import Task, TaskList
from storage import DatasetStore

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "dspo_label_session"
LOGIN_COOKIE = "dspo_label_login"      # double-submit CSRF value of the login form
CSRF_HEADER = "x-csrf-token"
STATIC = {"task.js": "text/javascript", "style.css": "text/css"}


class NotAuthenticated(Exception):
    """No valid token or cookie: 401 for the API and images, the login page for pages."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Forbidden(Exception):
    """Authenticated, but not allowed to do this (CSRF token missing, writing as another)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    """The annotator a request acts for; `session` is None when it came with a Bearer token."""

    annotator: str
    session: Session | None


def letter(position: int) -> str:
    """The name a candidate is shown under: A, B, ..., Z, then 27, 28, ..."""
    return string.ascii_uppercase[position] if position < len(string.ascii_uppercase) else str(position + 1)


class LabelApp:
    """The loaded app: pinned tasks, known labels, crops, auth state, templates and static files.

    Args:
        store: the dataset store to read from and publish to.
        config: the app config (refs are resolved here, once).
    """

    def __init__(self, store: DatasetStore, config: LabelAppConfig):
        self.config = config
        self.store = store
        self.tasks = TaskList(store, config)
        self.crops = Crops(store, self.tasks, config.cache_samples, config.show_hr)
        self.annotators = Annotators(config.state_dir)
        self.sessions = Sessions(config.state_dir, self.annotators, int(config.session_hours * 3600))
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.static = {name: ((HERE / "static" / name).read_bytes(), media) for name, media in STATIC.items()}
        # Last: it takes the state folder's journal, which only its `stop` gives back.
        self.book = LabelBook(store, self.tasks, config)
        # Per annotator, instances skipped in this process (in skip order); not persisted.
        self.skipped: dict[str, dict[str, None]] = {}

    def identify(self, request: Request) -> Identity:
        """Who sent `request`; NotAuthenticated if nobody valid."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            who = self.annotators.who(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
            if who is None:
                raise NotAuthenticated("invalid bearer token")
            return Identity(who, None)
        session = self.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise NotAuthenticated("not logged in: send Authorization: Bearer <token> or log in at /login")
        return Identity(session.annotator, session)

    def check_csrf(self, identity: Identity, request: Request, form_value: str | None = None) -> None:
        """Forbidden unless a cookie-authenticated write carries its session's CSRF token."""
        if identity.session is None:
            return
        value = form_value if form_value is not None else request.headers.get(CSRF_HEADER)
        if not self.sessions.csrf_ok(identity.session, value):
            raise Forbidden("missing or wrong CSRF token; reload the page")

    def next_task(self, annotator: str) -> Task | None:
        """The task `annotator` should label now."""
        return self.tasks.next_for(self.book.done(annotator), self.skipped.get(annotator))

    def skip(self, annotator: str, instance_id: str) -> None:
        """Put `instance_id` behind every unskipped task for `annotator` (unknown ids are ignored)."""
        if instance_id in self.tasks.by_id:
            order = self.skipped.setdefault(annotator, {})
            order.pop(instance_id, None)
            order[instance_id] = None

    def progress(self, annotator: str) -> dict:
        """Counts for the page header and /api/me."""
        done = self.book.done(annotator)
        return {"annotator": annotator, "labelled": len(done & self.tasks.by_id.keys()),
                "remaining": self.tasks.remaining(done), "tasks": len(self.tasks.tasks),
                "waiting": len(self.book.pending), "published": self.book.published_ref}

    def task_data(self, task: Task) -> dict:
        """A task as the task page and /api/tasks/next show it (image URLs are app routes)."""
        base = f"/img/{task.instance_id}"
        return {"instance_id": task.instance_id, "sample_id": task.sample_id, "index": task.index,
                "gap": task.gap, "weight": task.weight,
                "candidates": [{"id": cid, "letter": letter(position), "key": position + 1, "image": f"{base}/{cid}"}
                               for position, cid in enumerate(task.candidates)],
                "lq": f"{base}/lq", "hr": f"{base}/hr" if self.config.show_hr else None}
