"""The first thing a request meets: its sender is authenticated from the headers before one
byte of its body is read, and the body is capped.

FastAPI reads and parses a body before a route's dependencies run, so without this an
unauthenticated client could make the server hold and parse any amount of data (a 50 MB POST
raised RSS by about 100 MB). Here a request with a body (Content-Length or chunked) is
refused with 401 (the login page for page routes) unless its token or session cookie is
valid, except on OPEN_PATHS, where the body is what proves the token; then a body declared
or found to be over MAX_BODY_BYTES is refused with 413. A refused body is never read: uvicorn
buffers at most 64 KiB of it before it stops reading from the socket.
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.labels.app.pages import SEE_OTHER
from pipeline.labels.app.web import LabelApp, NotAuthenticated

# The largest body a route takes: a label form carries a description of at most
# DESCRIPTION_LIMIT characters, under 25 KB even URL-encoded 4-byte characters.
MAX_BODY_BYTES = 64 * 1024
# Routes whose body is the credential (the login form's token).
OPEN_PATHS = frozenset({"/login"})


def wants_json(request: Request) -> bool:
    """Whether a refusal is for a script (JSON) rather than a browser page (a redirect)."""
    return request.url.path.startswith(("/api/", "/img/")) or "authorization" in request.headers


def unauthenticated(request: Request, exc: NotAuthenticated) -> Response:
    """401 with the reason for the API and images, the login page for pages."""
    if wants_json(request):
        return JSONResponse({"detail": exc.reason}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return RedirectResponse("/login", status_code=SEE_OTHER)


def _too_large(request: Request) -> Response:
    message = f"request body over {MAX_BODY_BYTES} bytes"
    if wants_json(request):
        return JSONResponse({"detail": message}, status_code=413)
    return PlainTextResponse(message, status_code=413)


class RequestGate:
    """ASGI middleware: authenticate, then cap the body (module doc).

    Args:
        app: the application behind the gate.
        labelling: the LabelApp whose `identify` judges the headers.
    """

    def __init__(self, app: ASGIApp, labelling: LabelApp):
        self.app = app
        self.labelling = labelling

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        length = request.headers.get("content-length")
        if "transfer-encoding" not in request.headers and length in (None, "0"):
            await self.app(scope, receive, send)
            return
        if request.url.path not in OPEN_PATHS:
            try:
                self.labelling.identify(request)
            except NotAuthenticated as exc:
                await unauthenticated(request, exc)(scope, receive, send)
                return
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _too_large(request)(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await _too_large(request)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body read already, then what the client sends next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
