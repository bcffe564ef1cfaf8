"""A real Label Studio server for interop tests: started as its own process on 127.0.0.1 with a
private data folder, driven through its REST API, stopped by the test.

The server comes from its own virtual environment (`pip install label-studio==1.23.2
'sentry-sdk<3'`, README "Label Studio round trip"): $DSPO_LABEL_STUDIO names its `label-studio`
executable, default /opt/lsvenv/bin/label-studio."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

EXECUTABLE = Path(os.environ.get("DSPO_LABEL_STUDIO", "/opt/lsvenv/bin/label-studio"))
EMAIL = "annotator@example.org"     # the browser login refuses addresses like a@b.c
PASSWORD = "interop-check-0"
START_SECONDS = 600                 # first start migrates a new database: minutes on a busy 2-CPU machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LabelStudio:
    """A running server: `url`, the API token of its one user (EMAIL), and the process."""

    url: str
    token: str
    process: subprocess.Popen
    log: Path

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        """One REST call as the user; raises with the server's answer when it is not a 2xx."""
        response = requests.request(method, self.url + path, headers={"Authorization": f"Token {self.token}"},
                                    timeout=120, **kwargs)
        if not response.ok:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response

    def create_project(self, title: str, label_config: str) -> int:
        return self.api("POST", "/api/projects/", json={"title": title, "label_config": label_config}).json()["id"]

    def import_tasks(self, project: int, tasks: list[dict]) -> list[dict]:
        """Import `tasks`; the project's tasks as the server holds them, in id order."""
        self.api("POST", f"/api/projects/{project}/import", json=tasks)
        found = self.api("GET", "/api/tasks/", params={"project": project, "page_size": 1000}).json()
        found = found["tasks"] if isinstance(found, dict) else found
        return sorted(found, key=lambda task: task["id"])

    def annotate(self, task: int, result: list[dict]) -> dict:
        return self.api("POST", f"/api/tasks/{task}/annotations/", json={"result": result, "lead_time": 4.2}).json()

    def edit(self, annotation: int, result: list[dict]) -> dict:
        return self.api("PATCH", f"/api/annotations/{annotation}/", json={"result": result}).json()

    def export(self, project: int, kind: str) -> bytes:
        """The project's annotations in one of Label Studio's export types (JSON, JSON_MIN, CSV, TSV)."""
        return self.api("GET", f"/api/projects/{project}/export", params={"exportType": kind}).content

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


def start(data_dir: Path, token: str) -> LabelStudio:
    """Start Label Studio with its data in `data_dir` and one user (EMAIL / PASSWORD / `token`);
    returns once /health answers."""
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LATEST_VERSION_CHECK": "false",
           "COLLECT_ANALYTICS": "false"}
    log = data_dir / "label-studio.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [str(EXECUTABLE), "start", "--internal-host", "127.0.0.1", "--port", str(port), "--no-browser",
             "--username", EMAIL, "--password", PASSWORD, "--user-token", token, "--enable-legacy-api-token"],
            stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = LabelStudio(f"http://127.0.0.1:{port}", token, process, log)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"label-studio exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if requests.get(server.url + "/health", timeout=5).ok:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(2)
    server.stop()
    raise AssertionError(f"label-studio did not answer within {START_SECONDS} s: {log.read_text()[-2000:]}")
