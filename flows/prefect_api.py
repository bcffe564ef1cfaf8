"""The stack's Prefect server as seen from outside: its address, whether a port can take it, and
the few REST calls the stack needs (health, the work pools and their workers, the deployments).

Plain HTTP (urllib), no Prefect import: `dspo up/down/status` stay fast.
"""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from flows.common import WORK_POOL

HOST = "127.0.0.1"


def api_url(port: int) -> str:
    return f"http://{HOST}:{port}/api"


def ui_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def port_free(port: int) -> bool:
    """Whether the server could listen on `port` of HOST now.

    Binds as the server does (uvicorn, through asyncio, sets SO_REUSEADDR): a plain bind fails for
    about a minute after a server on the port stops, while its connections sit in TIME_WAIT,
    although the server itself could bind. A port another program listens on is still refused.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port of HOST that nothing listens on now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, object]:
    """(status, decoded JSON or text); status 0 when the server cannot be reached."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        payload, status = exc.read().decode(errors="replace"), exc.code
    except (urllib.error.URLError, OSError):
        return 0, None
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


def healthy(port: int) -> bool:
    """Whether the server on `port` answers its health check."""
    status, _ = http("GET", f"{api_url(port)}/health", timeout=2)
    return status == 200


def work_pool(port: int, name: str = WORK_POOL) -> tuple[int, object]:
    """(HTTP status, record) of a work pool of the stack (default: the local one); 404 when it does
    not exist, 0 when the server does not answer within 15 s."""
    return http("GET", f"{api_url(port)}/work_pools/{name}", timeout=15)


def work_pool_status(port: int, name: str = WORK_POOL) -> str | None:
    """A work pool's status ("READY" once a worker polls it), or None when it cannot be read."""
    status, pool = work_pool(port, name)
    return pool.get("status") if status == 200 and isinstance(pool, dict) else None


def online_workers(port: int, name: str) -> set[str]:
    """Names of the workers polling work pool `name` now (status ONLINE); empty when it cannot be read."""
    status, workers = http("POST", f"{api_url(port)}/work_pools/{name}/workers/filter", {"limit": 200})
    if status != 200 or not isinstance(workers, list):
        return set()
    return {worker["name"] for worker in workers if worker.get("status") == "ONLINE"}


def deployed_names(port: int) -> list[str]:
    """`flow/deployment` names of the server's deployments, sorted; [] when they cannot be read."""
    status, deployments = http("POST", f"{api_url(port)}/deployments/filter", {"limit": 200})
    status_flows, flows = http("POST", f"{api_url(port)}/flows/filter", {"limit": 200})
    if status != 200 or status_flows != 200:
        return []
    names = {flow["id"]: flow["name"] for flow in flows}
    return sorted(f"{names.get(item['flow_id'], '?')}/{item['name']}" for item in deployments)
