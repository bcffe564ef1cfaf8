"""A local HTTP server on 127.0.0.1 that serves weight files the way their public hosts do.

    with WeightsServer() as server:
        server.files["sam_vit_b_01ec64.pth"] = b"..."              # GET /files/<name>, Range honoured
        server.add_repo("org/model", "0123...abcd", {"config.json": b"{}"})   # enough hub API
        server.drop_after["sam_vit_b_01ec64.pth"] = [1000]          # next GET stops after 1000 bytes
        server.url("sam_vit_b_01ec64.pth"); server.endpoint         # base URLs
        server.requests                                            # (method, path, headers) seen

The hub part speaks what `huggingface_hub.snapshot_download` calls: GET
/api/models/<repo>/revision/<rev> (repo info, its `sha`), GET /api/models/<repo>/tree/<rev>
(?recursive, one page) and HEAD/GET /<repo>/resolve/<rev>/<file> with X-Repo-Commit, ETag
and Content-Length. A dropped connection sends the headers of the whole file, then fewer
bytes, then closes: what a client sees when a connection dies mid-file.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class HubRepo:
    commit: str
    files: dict[str, bytes]
    revisions: set[str] = field(default_factory=set)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        owner: WeightsServer = self.server.owner
        path = unquote(urlsplit(self.path).path)
        with owner.lock:
            owner.requests.append((self.command, path, dict(self.headers)))
        if path.startswith("/files/"):
            name = path[len("/files/"):]
            return self._file(owner.files.get(name), name, head)
        if match := re.fullmatch(r"/api/models/(.+?)/revision/([^/]+)", path):
            repo = owner.repo(match.group(1), match.group(2))
            if repo is None:
                return self._json({"error": "Repository not found"}, 404)
            siblings = [{"rfilename": name} for name in repo.files]
            return self._json({"id": match.group(1), "sha": repo.commit, "siblings": siblings})
        if match := re.fullmatch(r"/api/models/(.+?)/tree/([^/]+)", path):
            repo = owner.repo(match.group(1), match.group(2))
            if repo is None:
                return self._json({"error": "Revision not found"}, 404)
            entries = [{"type": "file", "path": name, "size": len(data), "oid": _git_blob_sha1(data)}
                       for name, data in repo.files.items()]
            return self._json(entries)
        if match := re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", path):
            repo = owner.repo(match.group(1), match.group(2))
            data = repo.files.get(match.group(3)) if repo else None
            extra = {"X-Repo-Commit": repo.commit} if repo else {}
            return self._file(data, match.group(3), head, extra)
        self._json({"error": "not found"}, 404)

    def _json(self, body: object, status: int = 200) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if status >= 400:
            self.send_header("X-Error-Code", "RepoNotFound")
        self.end_headers()
        self.wfile.write(payload)

    def _file(self, data: bytes | None, name: str, head: bool, extra: dict | None = None) -> None:
        if data is None:
            return self._json({"error": f"{name} not found"}, 404)
        start, status = 0, 200
        if (wanted := self.headers.get("Range")) and (match := _RANGE.match(wanted)):
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        owner: WeightsServer = self.server.owner
        with owner.lock:
            drops = owner.drop_after.get(name) or []
            cut = drops.pop(0) if drops else None
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: WeightsServer


class WeightsServer:
    """The server, started on a free port of 127.0.0.1 by `__enter__` and stopped by `__exit__`."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.repos: dict[str, HubRepo] = {}
        self.drop_after: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        return f"{self.endpoint}/files/{name}"

    def add_repo(self, repo_id: str, commit: str, files: dict[str, bytes], revisions: tuple[str, ...] = ("main",)) -> None:
        self.repos[repo_id] = HubRepo(commit, dict(files), set(revisions) | {commit})

    def repo(self, repo_id: str, revision: str) -> HubRepo | None:
        repo = self.repos.get(repo_id)
        return repo if repo is not None and revision in repo.revisions else None

    def gets(self, path_suffix: str) -> list[dict]:
        """Headers of every GET whose path ends with `path_suffix`, in order."""
        return [headers for method, path, headers in self.requests if method == "GET" and path.endswith(path_suffix)]

    def __enter__(self) -> WeightsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
