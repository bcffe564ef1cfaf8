"""One run of the parent deployment as `dspo pipeline` makes it: created over the REST API (so the
run's id is known from the start), followed with `prefect flow-run watch ID` (Prefect's own live
events and logs in this terminal), and, when it does not complete, explained from the API: which
stage's flow run failed, its name, id and UI address, and the one-line reason it ended with.

    run = create_run(port, "dspo/full-pipeline", parameters)       # FlowRunRef: id, name, url
    ... prefect flow-run watch <run.id> ...
    failure(port, run)           # None when completed, else the line a user reads

Plain HTTP (flows.prefect_api), no Prefect import.
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from flows.common import FLOW_PREFIX, run_name
from flows.prefect_api import api_url, http, ui_url

TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
# How a stage run that did not complete ended, as the error line says it.
ENDED = {"FAILED": "failed", "CRASHED": "crashed", "CANCELLED": "was cancelled"}
# Prefect's prefix of the state message of a flow that raised; the exception follows it.
EXCEPTION_PREFIX = "Flow run encountered an exception: "
# Seconds for one API call: creating a run on a busy 2-core machine can take seconds.
API_TIMEOUT = 30


class RunError(RuntimeError):
    """The run could not be created or read; the message says why."""


@dataclass(frozen=True)
class FlowRunRef:
    """A flow run as a user finds it again: Prefect's id and name, and its page in the UI."""

    id: str
    name: str
    url: str

    def label(self) -> str:
        """"flow run 'brave-fox' (<id>, <url>)"."""
        return f"flow run {self.name!r} ({self.id}, {self.url})"


def _call(method: str, url: str, body: dict | None = None) -> tuple[int, object]:
    status, payload = http(method, url, body, timeout=API_TIMEOUT)
    if status == 0:
        raise RunError(f"the Prefect API at {url.partition('/api/')[0]}/api cannot be reached")
    return status, payload


def _ref(port: int, record: dict) -> FlowRunRef:
    return FlowRunRef(record["id"], record["name"], f"{ui_url(port)}/runs/flow-run/{record['id']}")


def create_run(port: int, deployment: str, parameters: dict) -> FlowRunRef:
    """A scheduled flow run of `deployment` ("flow/deployment") with `parameters`, as
    `prefect deployment run` creates it; the worker picks it up."""
    flow, _, name = deployment.partition("/")
    api = api_url(port)
    status, record = _call("GET", f"{api}/deployments/name/{urllib.parse.quote(flow)}/{urllib.parse.quote(name)}")
    if status == 404:
        raise RunError(f"the stack's server has no deployment {deployment}: run `dspo up` (it deploys prefect.yaml)")
    if status != 200:
        raise RunError(f"cannot read deployment {deployment} from {api}: HTTP {status}: {record}")
    body = {"parameters": parameters, "name": run_name("pipeline", parameters.get("profile") or "demo")}
    status, run = _call("POST", f"{api}/deployments/{record['id']}/create_flow_run", body)
    if status not in (200, 201):
        raise RunError(f"cannot create a flow run of {deployment} on {api}: HTTP {status}: {run}")
    return _ref(port, run)


def one_line(message: str | None) -> str:
    """A state message on one line, without Prefect's exception preamble ('' for none)."""
    return " ".join((message or "").split()).removeprefix(EXCEPTION_PREFIX)


def reason(record: dict) -> str:
    """Why a flow run (an API record) ended as it did, on one line."""
    state = record.get("state") or {}
    return one_line(state.get("message")) or f"ended {state.get('name') or record.get('state_type')} without a message"


def failed_child(port: int, parent_id: str) -> dict | None:
    """The most recently started stage flow run of `parent_id` that ended failed, crashed or
    cancelled, with its flow's name under "flow_name"; None when no stage run failed."""
    api = api_url(port)
    status, children = _call("POST", f"{api}/flow_runs/filter", {
        "flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}, "sort": "START_TIME_DESC", "limit": 200})
    if status != 200:
        raise RunError(f"cannot read the stage runs of flow run {parent_id}: HTTP {status}: {children}")
    for child in children:
        if child["state_type"] in ENDED:
            status, flow = _call("GET", f"{api}/flows/{child['flow_id']}")
            child["flow_name"] = flow["name"] if status == 200 else None
            return child
    return None


def failure(port: int, run: FlowRunRef) -> str | None:
    """None when `run` completed; else one line: the failed stage, its flow run (name, id, UI
    address) and its reason, or, when no stage failed, what the pipeline run itself ended with."""
    status, record = _call("GET", f"{api_url(port)}/flow_runs/{run.id}")
    if status != 200:
        raise RunError(f"cannot read {run.label()}: HTTP {status}: {record}")
    state = record["state_type"]
    if state == "COMPLETED":
        return None
    if state not in TERMINAL:
        return f"pipeline {run.label()} is {state} and no longer watched; follow it in the UI"
    child = failed_child(port, run.id)
    if child is None:
        return f"pipeline {run.label()} ended {state}: {reason(record)}"
    stage = (child.get("flow_name") or "").removeprefix(FLOW_PREFIX) or "?"
    return (f"stage {stage} {ENDED[child['state_type']]} in {_ref(port, child).label()}: {reason(child)} -- once fixed, retry that run, "
            f"then pipeline run {run.name!r}")
