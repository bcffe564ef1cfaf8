"""The server-rendered pages: login, the task view, the stats page, plus crops and static files.

    GET  /login, POST /login (token + login CSRF)  -> the session cookie, then /
    POST /logout                                   ends the session on the server, not only the cookie
    GET  /                                         the next task of the logged-in annotator
    POST /label, POST /skip                        form posts (CSRF), then back to /
    GET  /stats
    GET  /img/{instance_id}/{view}                 PNG crop; view: lq | hr | a candidate id of the instance
    GET  /static/{name}                            task.js, style.css (from memory: a fixed table)
    GET  /favicon.ico                              204
"""
from __future__ import annotations

import secrets

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from pipeline.labels.app.api import publishing
from pipeline.labels.app.book import LabelError
from pipeline.labels.app.stats import compute
from pipeline.labels.app.web import LOGIN_COOKIE, SESSION_COOKIE, Identity, LabelApp
from pipeline.labels.records import DESCRIPTION_LIMIT

SEE_OTHER = 303


def _home() -> RedirectResponse:
    return RedirectResponse("/", status_code=SEE_OTHER)


def _csrf(app: LabelApp, identity: Identity) -> str:
    """The CSRF token the page's forms carry ("" for a Bearer request, which needs none)."""
    return app.sessions.csrf(identity.session) if identity.session else ""


def page_routes(app: LabelApp) -> APIRouter:
    """The page routes of `app`."""
    router = APIRouter()
    render = app.templates.TemplateResponse

    def login_page(request: Request, error: str | None = None, status: int = 200) -> Response:
        nonce = secrets.token_urlsafe(16)
        response = render(request, "login.html", {"csrf": nonce, "error": error}, status_code=status)
        response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict", max_age=3600)
        return response

    def task_page(request: Request, identity: Identity, error: str | None = None, chosen: dict | None = None,
                  status: int = 200, instance_id: str | None = None) -> Response:
        """The task `instance_id` (a refused label's, shown again with its choices), else the next one."""
        task = app.tasks.by_id.get(instance_id or "") or app.next_task(identity.annotator)
        context = {"me": app.progress(identity.annotator), "csrf": _csrf(app, identity),
                   "task": app.task_data(task) if task else None, "error": error, "chosen": chosen or {},
                   "max_description": DESCRIPTION_LIMIT}
        return render(request, "task.html", context, status_code=status)

    @router.get("/login")
    def login_form(request: Request) -> Response:
        return login_page(request)

    @router.post("/login")
    def login(request: Request, token: str = Form(""), csrf: str = Form("")) -> Response:
        expected = request.cookies.get(LOGIN_COOKIE)
        if not expected or not secrets.compare_digest(expected.encode(), csrf.encode("utf-8", "replace")):
            return login_page(request, "the login form expired; try again", 403)
        annotator = app.annotators.who(token.strip()) if token.strip() else None
        if annotator is None:
            return login_page(request, "unknown token", 401)
        response = _home()
        response.set_cookie(SESSION_COOKIE, app.sessions.issue(annotator), httponly=True, samesite="strict",
                            max_age=app.sessions.max_age)
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @router.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        identity = app.identify(request)
        app.check_csrf(identity, request, csrf)
        if identity.session is not None:
            app.sessions.end(identity.session)
        response = RedirectResponse("/login", status_code=SEE_OTHER)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @router.get("/")
    def task_view(request: Request) -> Response:
        return task_page(request, app.identify(request))

    @router.post("/label")
    def label(request: Request, instance_id: str = Form(""), best: str = Form(""), worst: str = Form(""),
              hallucination: bool = Form(False), description: str = Form(""), csrf: str = Form("")) -> Response:
        identity = app.identify(request)
        app.check_csrf(identity, request, csrf)
        try:
            app.book.submit(identity.annotator, instance_id, best, worst, hallucination, description)
        except LabelError as error:
            if error.status == 409:   # labelled otherwise already (another tab): on to the next task
                return task_page(request, identity, error.message, status=error.status)
            chosen = {"best": best, "worst": worst, "hallucination": hallucination, "description": description}
            return task_page(request, identity, error.message, chosen, error.status, instance_id)
        return _home()

    @router.post("/skip")
    def skip(request: Request, instance_id: str = Form(""), csrf: str = Form("")) -> Response:
        identity = app.identify(request)
        app.check_csrf(identity, request, csrf)
        app.skip(identity.annotator, instance_id)
        return _home()

    @router.get("/stats")
    def stats_page(request: Request) -> Response:
        identity = app.identify(request)
        context = {"me": app.progress(identity.annotator),
                   "csrf": _csrf(app, identity),
                   "stats": compute(app.book.snapshot(), app.tasks.candidate_position), "publishing": publishing(app)}
        return render(request, "stats.html", context)

    @router.get("/img/{instance_id}/{view}")
    def image(request: Request, instance_id: str, view: str) -> Response:
        app.identify(request)
        task = app.tasks.by_id.get(instance_id)
        try:
            png = app.crops.png(task, view) if task is not None else None
        except LookupError:   # a view the task lacks (KeyError), a sample missing from lq_pairs
            png = None
        if png is None:
            return Response("no such image", status_code=404, media_type="text/plain")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/favicon.ico")
    def favicon() -> Response:
        # Browsers ask for it on every page; answering spares a 404 in each console.
        return Response(status_code=204)

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        found = app.static.get(name)
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "no-cache"})

    return router
