"""The JSON API (for scripts and other front ends); every route needs a token or login cookie.

    GET  /api/me            {"annotator", "labelled", "remaining", "tasks", "waiting", "published"}
    GET  /api/tasks/next    {"task": {...} | null, "remaining": n}
    POST /api/labels        {"instance_id", "best", "worst", "hallucination", "description"} -> 201;
                            200 with "duplicate": true for an exact repeat of the caller's label
    GET  /api/stats         counts and inter-annotator agreement (pipeline.labels.app.stats)

A label is the caller's own: a body naming another `annotator` is refused with 403.
"""
from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pipeline.labels.app.book import LabelError
from pipeline.labels.app.stats import compute
from pipeline.labels.app.web import Forbidden, Identity, LabelApp

# Longest id accepted in a body: ids are 20 hex digits; anything much longer is not one.
MAX_ID = 128


class LabelIn(BaseModel):
    """A label as posted to /api/labels."""

    model_config = ConfigDict(extra="forbid")

    instance_id: str = Field(min_length=1, max_length=MAX_ID)
    best: str = Field(min_length=1, max_length=MAX_ID, description="Candidate id judged best.")
    worst: str = Field(min_length=1, max_length=MAX_ID, description="Candidate id judged worst.")
    hallucination: bool = Field(False, description="The worst candidate hallucinates in this instance.")
    # Its length is checked with the import path's limit once stripped (LabelBook.submit); the
    # request gate bounds the body.
    description: str = Field("", description="Required when hallucination is true; at most DESCRIPTION_LIMIT "
                                             "characters.")
    annotator: str | None = Field(None, description="Optional; must be the caller.")


def api_routes(app: LabelApp) -> APIRouter:
    """The /api routes of `app`."""
    router = APIRouter(prefix="/api")
    # A dependency, so that a request without a valid token gets its 401 before its body is judged.
    caller = Depends(app.identify)

    @router.get("/me")
    def me(identity: Identity = caller) -> dict:
        return app.progress(identity.annotator)

    @router.get("/tasks/next")
    def next_task(identity: Identity = caller) -> dict:
        annotator = identity.annotator
        task = app.next_task(annotator)
        return {"task": app.task_data(task) if task else None,
                "remaining": app.tasks.remaining(app.book.done(annotator))}

    @router.post("/labels", status_code=201)
    def post_label(body: LabelIn, request: Request, response: Response, identity: Identity = caller):
        app.check_csrf(identity, request)
        if body.annotator is not None and body.annotator != identity.annotator:
            raise Forbidden(f"you are {identity.annotator}; you cannot label as {body.annotator[:64]!r}")
        try:
            label, added = app.book.submit(identity.annotator, body.instance_id, body.best, body.worst,
                                           body.hallucination, body.description)
        except LabelError as error:
            return JSONResponse({"detail": error.message}, status_code=error.status)
        if not added:
            response.status_code = 200    # nothing new: the label was known already
        return {"label_id": app.book.label_key(label), "annotator": label.annotator,
                "instance_id": label.instance_id, "duplicate": not added, "waiting": len(app.book.pending),
                "published": app.book.published_ref}

    @router.get("/stats")
    def stats(identity: Identity = caller) -> dict:
        result = asdict(compute(app.book.snapshot(), app.tasks.candidate_position))
        result.update(publishing(app))
        return result

    return router


def publishing(app: LabelApp) -> dict:
    """The publisher's state, for /api/stats and the stats page."""
    return {"published": app.book.published_ref, "published_by_this_server": app.book.published_count,
            "waiting": len(app.book.pending), "last_error": app.book.last_error,
            "batch_size": app.config.batch_size, "batch_seconds": app.config.batch_seconds,
            "inputs": app.tasks.inputs, "tasks": len(app.tasks.tasks)}
