"""The ASGI app and its server: `create_app` for tests and embedding, `serve` for the CLI.

The app loads its tasks and the known labels (published, and journalled but not yet
published) before it binds, starts the label publisher when it starts and publishes what waits
when it stops (uvicorn stops it on SIGINT / SIGTERM). Requests pass the gate first
(pipeline.labels.app.gate: authenticated before their body is read, bodies capped). Responses
carry a strict Content-Security-Policy (scripts and styles from /static only), deny framing
and are not cached, except crops (private, by immutable ids). Logs never show query strings
(pipeline.labels.app.logs).
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from pipeline.labels.app.api import api_routes
from pipeline.labels.app.config import LabelAppConfig
from pipeline.labels.app.gate import RequestGate, unauthenticated, wants_json
from pipeline.labels.app.logs import log_config
from pipeline.labels.app.pages import page_routes
from pipeline.labels.app.web import Forbidden, LabelApp, NotAuthenticated
from storage import DatasetStore

log = logging.getLogger("pipeline.labels.app")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(store: DatasetStore, config: LabelAppConfig) -> FastAPI:
    """The labelling app on `store`; `app.state.labelling` is its LabelApp."""
    labelling = LabelApp(store, config)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        labelling.book.start()
        try:
            yield
        finally:
            labelling.book.stop()

    # No /docs or /openapi.json: they would load scripts from a CDN and sit outside the auth.
    app = FastAPI(title="DSPO labelling", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.labelling = labelling
    app.include_router(api_routes(labelling))
    app.include_router(page_routes(labelling))

    @app.exception_handler(NotAuthenticated)
    async def not_authenticated(request: Request, exc: NotAuthenticated) -> Response:
        return unauthenticated(request, exc)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        if wants_json(request):
            return JSONResponse({"detail": exc.reason}, status_code=403)
        return PlainTextResponse(exc.reason, status_code=403)

    # Added before the headers middleware, so it runs inside it: its refusals get the headers too.
    app.add_middleware(RequestGate, labelling=labelling)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on (host, port); port 0 picks a free one."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock


def serve(store: DatasetStore, config: LabelAppConfig, say: Callable[[str], None] = print) -> None:
    """Load the app, bind, print where it is, and serve until SIGINT / SIGTERM."""
    app = create_app(store, config)
    labelling: LabelApp = app.state.labelling
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    say(f"labelling app: http://{shown}:{port}/ ({len(labelling.tasks.tasks)} tasks from "
        f"{', '.join(labelling.tasks.inputs)}; {len(labelling.annotators.names())} annotator(s); labels published "
        f"as human_labels every {config.batch_size} labels or {config.batch_seconds:g} s, and on exit)")
    if not config.loopback:
        say(f"warning: bound to {config.host}, reachable from other machines over plain HTTP")
    server = uvicorn.Server(uvicorn.Config(app, log_config=log_config(), timeout_graceful_shutdown=10))
    server.run(sockets=[sock])
