"""Wall time of the demo `dspo/full-pipeline` run through deployments, and where each stage's seconds go.

What it measures
    For each source tree (this project, and with `--before DIR` a copy of an earlier commit, e.g.
    `git archive HEAD | tar -x -C DIR`), in that order, a child process started in the tree:

      1. `dspo up` on a free port in a temporary state folder (server, work pool, deployments, a
         process worker; not timed),
      2. creates a run of `dspo/full-pipeline` on the `--profile` (default demo) with a fresh
         file:// store, as `dspo pipeline` does, and waits for it: WALL (created -> terminal,
         seen from here) and the parent's own start -> end,
      3. reads from the API, per stage: the parent's `stage-run` task (launch -> return), the
         stage's flow run (Running -> end) and its task runs (`run-shard`, `publish`), and its
         result artifact (`seconds in run_shard`) and, in trees that record it, its timing artifact
         (the stage flow's own breakdown, flows/clock.py: process start, imports, set-up, model
         builds, publish, artifacts),
      4. `dspo down`.

    Per stage:
      launch   parent task start -> stage flow run Running: the run's creation, the worker's
               pick-up, process start, Prefect import, pull step, loading the flow module
      before   Running -> first shard (stage module import, config, store open, job set-up)
      shards   first shard start -> last shard end (wall; `compute` = summed run_shard)
      publish  the publish task
      after    the end of the last task -> flow run end (result artifact, preview)
      notice   flow run end -> the parent's task returns (polling, reading the ref)
      fixed    total - compute: what a stage run costs beyond its run_shard work
    A cache hit has no shards; its seconds all count as fixed.

    The machine is shared: run it when it is quiet, and compare only trees of the same run.

How to run
    .venv/bin/python bench/pipeline_deployments.py [--before /tmp/base_tree] [--parallel] [--profile demo] [--json out.json]

    --parallel runs both trees at once (each on its own stack): on a shared, busy machine both then
    see the same noise, at the price of competing with each other.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Not this folder (its pipeline.py would shadow the `pipeline` package): the tree on $PYTHONPATH.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def when(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


def api(port: int, method: str, path: str, body: dict | None = None):
    from flows.prefect_api import api_url, http

    status, payload = http(method, f"{api_url(port)}{path}", body, timeout=60)
    if status != 200:
        raise RuntimeError(f"{method} {path}: HTTP {status}: {payload}")
    return payload


def stage_breakdown(port: int, parent_id: str) -> dict[str, dict]:
    """Per stage, the seconds of the module docstring, from the API records of the parent run."""
    flows = {flow["id"]: flow["name"] for flow in api(port, "POST", "/flows/filter", {"limit": 200})}
    launches = {run["name"]: run for run in api(port, "POST", "/task_runs/filter", {
        "flow_runs": {"id": {"any_": [parent_id]}}, "limit": 200}) if run["task_key"].startswith("run_stage")}
    children = api(port, "POST", "/flow_runs/filter", {
        "flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}, "limit": 200})
    stages = {}
    for child in children:
        stage = flows[child["flow_id"]].removeprefix("dspo-")
        tasks = api(port, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [child["id"]]}}, "limit": 200})
        shards = [task for task in tasks if task["name"].startswith(f"{stage}-shard-") and task["start_time"]]
        publish = [task for task in tasks if task["name"] == f"publish-{stage}" and task["start_time"]]
        artifacts = api(port, "POST", "/artifacts/filter", {"artifacts": {
            "flow_run_id": {"any_": [child["id"]]}, "key": {"any_": [f"dspo-{stage}-result", f"dspo-{stage}-timing"]}}})
        row = {}
        for artifact in artifacts:
            data = artifact["data"]
            row.update((json.loads(data) if isinstance(data, str) else data)[0])
        launch = launches.get(stage)
        start, end = when(child["start_time"]), when(child["end_time"])
        item = {"state": child["state_type"], "compute": float(row.get("seconds in run_shard") or 0.0),
                "run": end - start, "cache_hit": bool(row.get("cache hit"))}
        if launch:
            item["launch"] = start - when(launch["start_time"])
            item["notice"] = when(launch["end_time"]) - end
            item["total"] = when(launch["end_time"]) - when(launch["start_time"])
        last = start
        if shards:
            first = min(when(task["start_time"]) for task in shards)
            last = max(when(task["end_time"]) for task in shards)
            item["before"], item["shards"] = first - start, last - first
        if publish:
            item["publish"] = when(publish[0]["end_time"]) - when(publish[0]["start_time"])
            last = when(publish[0]["end_time"])
        item["after"] = end - last
        item["fixed"] = item.get("total", item["run"]) - item["compute"]
        item["recorded"] = {key.removeprefix("s: "): value for key, value in row.items() if key.startswith("s: ")}
        stages[stage] = item
    return stages


def child(profile: str) -> dict:
    """In the tree this process was started in: up, one pipeline run, its breakdown, down."""
    from flows import pipeline_run, stack

    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as scratch:
        state = str(Path(scratch) / "stack")
        for attempt in range(3):  # on a busy machine the new server may not answer in time
            try:
                info = stack.up(state, port=0, say=lambda line: None)
                break
            except stack.StackError:
                if attempt == 2:
                    raise
                stack.down(state, say=lambda line: None)
                time.sleep(10)
        try:
            store = (Path(scratch) / "store").as_uri()
            started = time.time()
            for attempt in range(5):  # a busy 2-core machine's server may answer 503 for a while
                try:
                    run = pipeline_run.create_run(info.port, "dspo/full-pipeline", {"store": store, "profile": profile})
                    break
                except pipeline_run.RunError:
                    if attempt == 4:
                        raise
                    time.sleep(10)
            while True:
                record = api(info.port, "GET", f"/flow_runs/{run.id}")
                if record["state_type"] in TERMINAL:
                    break
                time.sleep(0.5)
            wall = time.time() - started
            print(f"{record['state_type']} in {wall:.1f}s", file=sys.stderr, flush=True)
            import flows

            return {"flows": flows.__file__, "state": record["state_type"], "message": record["state"].get("message"), "wall_s": wall,
                    "parent_s": when(record["end_time"]) - when(record["start_time"]),
                    "stages": stage_breakdown(info.port, run.id)}
        finally:
            stack.down(state, say=lambda line: None)


def start_tree(label: str, tree: Path, profile: str) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "DSPO_"))}
    # The tree first on the path of this child and of every process its stack starts (server,
    # worker, flow runs), ahead of the editable install's mapping to this project.
    env["PYTHONPATH"] = str(tree)
    print(f"{label}: {tree} ({profile} profile, through deployments)...", flush=True)
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", "--profile", profile],
                            cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_tree(label: str, tree: Path, process: subprocess.Popen) -> dict | None:
    """The tree's figures, or None (said on stderr) when its run failed; the other tree's run goes on."""
    stdout, stderr = process.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("BENCH-JSON ")]
    if process.returncode != 0 or not lines:
        print(f"{label}: the run failed (exit {process.returncode}):\n{stdout[-2000:]}\n{stderr[-4000:]}",
              file=sys.stderr)
        return None
    return {"label": label, "tree": str(tree), **json.loads(lines[-1].removeprefix("BENCH-JSON "))}


COLUMNS = ("launch", "before", "shards", "compute", "publish", "after", "notice", "total", "fixed")


def report(result: dict) -> None:
    print(f"\n{result['label']} ({result['flows']}): {result['state']} in {result['wall_s']:.1f}s (parent run {result['parent_s']:.1f}s)")
    if result["state"] != "COMPLETED":
        print(f"  {result['message']}")
    print(f"  {'stage':<9}" + "".join(f"{name:>9}" for name in COLUMNS))
    stages = result["stages"]
    for stage, item in sorted(stages.items(), key=lambda pair: pair[1]["run"] and pair[1].get("launch", 0)):
        print(f"  {stage:<9}" + "".join(f"{item[name]:>9.1f}" if name in item else f"{'-':>9}" for name in COLUMNS))
    fixed = [item["fixed"] for item in stages.values()]
    compute = sum(item["compute"] for item in stages.values())
    print(f"  run_shard summed {compute:.1f}s; fixed per stage run: mean {sum(fixed) / len(fixed):.1f}s, "
          f"max {max(fixed):.1f}s")
    recorded = {stage: item["recorded"] for stage, item in stages.items() if item["recorded"]}
    if recorded:
        names = list(next(iter(recorded.values())))
        print("  recorded by the stage flows (seconds):")
        print(f"  {'stage':<9}" + "".join(f"{name[:11]:>12}" for name in names))
        for stage, row in recorded.items():
            print(f"  {stage:<9}" + "".join(f"{float(row.get(name) or 0):>12.2f}" for name in names))


def sample_load(loads: list[float], stop: threading.Event) -> None:
    while True:
        loads.append(os.getloadavg()[0])
        if stop.wait(10):
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="DIR", help="Also run this source tree first (e.g. HEAD's).")
    parser.add_argument("--after", metavar="DIR", default=str(ROOT), help="The tree to measure (default: this one).")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--json", metavar="PATH", help="Also write the figures as JSON.")
    parser.add_argument("--parallel", action="store_true", help="Run the two trees at the same time.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("BENCH-JSON " + json.dumps(child(args.profile)), flush=True)
        return
    trees = ([("before", Path(args.before).resolve())] if args.before else []) + [("after", Path(args.after).resolve())]
    loads, stop = [], threading.Event()
    sampler = threading.Thread(target=sample_load, args=(loads, stop), daemon=True)
    sampler.start()
    if args.parallel:  # both at once: each sees the same noise of a shared machine (and the other run)
        started = [(label, tree, start_tree(label, tree, args.profile)) for label, tree in trees]
        results = [finish_tree(label, tree, process) for label, tree, process in started]
    else:
        results = [finish_tree(label, tree, start_tree(label, tree, args.profile)) for label, tree in trees]
    stop.set()
    if None in results:
        sys.exit("a run failed (above); no comparison")
    for result in results:
        report(result)
    print(f"\n1-minute load average during the runs (sampled every 10 s, {os.cpu_count()} cores): min "
          f"{min(loads):.1f}, mean {sum(loads) / len(loads):.1f}, max {max(loads):.1f}"
          f"{'; the trees ran at the same time' if args.parallel else ''}")
    if len(results) == 2:
        before, after = results
        print(f"demo full-pipeline through deployments: before {before['wall_s']:.1f}s, after {after['wall_s']:.1f}s "
              f"({after['wall_s'] / before['wall_s']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
