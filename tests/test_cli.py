"""The `dspo` command line against real stores (a tmp file:// folder, moto's S3 server), run
through typer's CliRunner and, for the console script itself, through real subprocesses."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline.cli.doctor import PACKAGES
from storage import DatasetStore, image_array

ROOT = Path(__file__).resolve().parent.parent
DSPO = ROOT / ".venv" / "bin" / "dspo"
IMAGE_SHAPE = (3, 24, 32, 3)  # 3 images, 24 high, 32 wide


def images() -> pa.Array:
    """Three random 32x24 RGB images as an image column."""
    return image_array(np.random.default_rng(0).integers(0, 255, IMAGE_SHAPE, dtype=np.uint8))


def publish_chain(store: DatasetStore) -> dict[str, str]:
    """hr_images v1 (tagged) and v2 -> lq_pairs -> sr_candidates, the last also reading hr_images."""
    hr_table = pa.table({"image_id": ["a", "b", "c"], "image": images(), "split": ["train", "train", "test"]})
    refs = {"hr1": store.publish("hr_images", hr_table, run_id="run-ingest", fingerprint="f" * 64)}
    store.tag(refs["hr1"], "paper")
    refs["hr2"] = store.publish("hr_images", hr_table.slice(0, 2), run_id="run-ingest-2")
    refs["lq"] = store.publish("lq_pairs", pa.table({"sample_id": ["s1", "s2"], "scale": [4, 4]}),
                               inputs=[refs["hr2"]], fingerprint="0123456789abcdef" * 4)
    refs["sr"] = store.publish("sr_candidates", pa.table({"candidate_id": ["c1"]}),
                               inputs=[refs["lq"], refs["hr2"]], metadata={"stage": "sample"})
    return refs


@pytest.fixture
def runner() -> CliRunner:
    """Typer's runner; stdout and stderr are captured apart (result.stdout / result.stderr)."""
    return CliRunner()


@pytest.fixture
def env(tmp_path) -> dict[str, str | None]:
    """An environment that keeps every cache and default inside tmp_path."""
    return {
        "COLUMNS": "200", "DSPO_STORE": None, "DSPO_CACHE": str(tmp_path / "cache"),
        "DSPO_MODELS": str(tmp_path / "models"), "TORCH_HOME": str(tmp_path / "torch"),
        "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    }


@pytest.fixture
def local(tmp_path) -> tuple[str, DatasetStore, dict[str, str]]:
    """(uri, store, refs) of a file:// store holding publish_chain."""
    uri = f"file://{tmp_path}/store"
    store = DatasetStore(uri)
    refs = publish_chain(store)
    yield uri, store, refs
    store.close()


def invoke(runner: CliRunner, env: dict, *args: str):
    """Run `dspo ARGS` in this process, as the console script would (flows.cli.app)."""
    return runner.invoke(app, list(args), env=env)


def assert_error_line(result, *fragments: str) -> None:
    """Exit 2 and exactly one stderr line, `error: ...`, naming every fragment; no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


def test_ls_lists_every_dataset(runner, env, local):
    """One table row per dataset, with its latest version, rows, version count and tags."""
    uri, _, _ = local
    result = invoke(runner, env, "datasets", "ls", "--store", uri)
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if re.match(r"^│ \w", line)}
    assert set(rows) == {"hr_images", "lq_pairs", "sr_candidates"}
    hr = rows["hr_images"].split("│")
    assert [cell.strip() for cell in hr[2:4]] == ["v2", "2"] and hr[6].strip() == "2" and "paper->v1" in hr[7]


def test_versions_table(runner, env, local):
    """Each version with size, a 12-character fingerprint, inputs, run id and tags."""
    uri, store, refs = local
    result = invoke(runner, env, "datasets", "versions", "hr_images", "--store", uri)
    assert result.exit_code == 0, result.output
    v1 = next(line for line in result.stdout.splitlines() if line.startswith("│ v1"))
    v2 = next(line for line in result.stdout.splitlines() if line.startswith("│ v2"))
    assert "f" * 12 in v1 and "f" * 13 not in v1 and "run-ingest" in v1 and "paper" in v1
    assert str(store.manifest(refs["hr1"])["bytes"]) in v1 and "run-ingest-2" in v2
    result = invoke(runner, env, "datasets", "versions", "lq_pairs", "--store", uri)
    assert "hr_images@v2" in result.stdout and "0123456789ab" in result.stdout


def test_show_lineage_schema_and_image_rows(runner, env, local, tmp_path):
    """The lineage tree down to inputs-free datasets, schema, image cells summarised, --json."""
    uri, store, refs = local
    result = invoke(runner, env, "datasets", "show", "sr_candidates", "--store", uri)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    tree = lines[lines.index("lineage") + 1:lines.index("lineage") + 5]
    assert tree[0].startswith("sr_candidates@v1")
    assert re.match(r"^├── lq_pairs@v1 ", tree[1]) and re.match(r"^│   └── hr_images@v2 ", tree[2])
    assert re.match(r"^└── hr_images@v2\s+\(shown above\)", tree[3])
    assert '{"stage": "sample"}' in result.stdout and "candidate_id" in result.stdout

    result = invoke(runner, env, "datasets", "show", "hr_images@paper", "--rows", "2", "--store", uri)
    assert result.exit_code == 0, result.output
    assert "hr_images@v1  (from hr_images@paper)" in result.stdout and "struct<bytes: binary" in result.stdout
    sizes = [len(cell["bytes"]) for cell in store.read_arrow(refs["hr1"]).column("image").to_pylist()]
    cells = re.findall(r"image\s+(<image [^>]*>)", result.stdout)
    assert cells == [f"<image 32x24 png, {size} bytes>" for size in sizes[:2]]
    assert "PNG" not in result.stdout and "row 2" not in result.stdout

    result = invoke(runner, env, "datasets", "show", "hr_images@v1", "--json", "--store", uri)
    assert json.loads(result.stdout) == store.manifest(refs["hr1"])

    (tmp_path / "store" / "lq_pairs" / "_manifests" / "v=0001.json").unlink()
    result = invoke(runner, env, "datasets", "show", "sr_candidates", "--rows", "0", "--store", uri)
    assert result.exit_code == 0 and "first 0 rows" not in result.stdout
    missing = r"^├── lq_pairs@v1\s+missing: dataset 'lq_pairs' has no published version"
    assert re.search(missing, result.stdout, re.MULTILINE)


def test_pull_both_formats(runner, env, local, tmp_path):
    """Parquet files + manifest.json, or a saved HF dataset; bad format and busy folder fail cleanly."""
    import datasets

    uri, store, refs = local
    result = invoke(runner, env, "datasets", "pull", "hr_images@v1", "--to", str(tmp_path / "pq"), "--store", uri)
    assert result.exit_code == 0, result.output
    assert f"pulled hr_images@v1 to {tmp_path / 'pq'} (parquet)" in result.stdout
    assert json.loads((tmp_path / "pq" / "manifest.json").read_text())["version"] == 1
    assert len(list((tmp_path / "pq").glob("*.parquet"))) == len(store.manifest(refs["hr1"])["files"])

    result = invoke(runner, env, "datasets", "pull", "hr_images@paper", "--to", str(tmp_path / "hf"),
                    "--format", "hf", "--store", uri)
    assert result.exit_code == 0, result.output
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert loaded[2]["image_id"] == "c" and loaded[2]["image"].size == (32, 24)

    result = invoke(runner, env, "datasets", "pull", "hr_images", "--to", str(tmp_path / "x"),
                    "--format", "zip", "--store", uri)
    assert_error_line(result, "unknown pull format 'zip'")
    result = invoke(runner, env, "datasets", "pull", "hr_images", "--to", str(tmp_path / "pq"), "--store", uri)
    assert_error_line(result, "not empty")


def test_tag_refuses_to_move_without_force(runner, env, local):
    """A tag stays put unless --force; reserved names are refused."""
    uri, store, _ = local
    result = invoke(runner, env, "datasets", "tag", "hr_images@v2", "best", "--store", uri)
    assert result.exit_code == 0 and "tagged hr_images@v2 as hr_images@best" in result.stdout
    assert_error_line(invoke(runner, env, "datasets", "tag", "hr_images@v1", "best", "--store", uri),
                      "already points at v2")
    assert invoke(runner, env, "datasets", "tag", "hr_images@v1", "best", "--force", "--store", uri).exit_code == 0
    assert store.resolve("hr_images@best") == "hr_images@v1"
    assert_error_line(invoke(runner, env, "datasets", "tag", "hr_images@v1", "v7", "--store", uri), "reserved")


def test_gc_dry_run_lists_orphans_and_keeps_them(runner, env, local, tmp_path):
    """--dry-run lists an old orphaned part and keeps it; a real run deletes it."""
    uri, _, _ = local
    orphan = tmp_path / "store" / "hr_images" / "v=0009" / "part-00000-crashed.parquet"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a crashed publish")
    os.utime(orphan, (1e9, 1e9))
    result = invoke(runner, env, "datasets", "gc", "--dry-run", "--older-than", "60", "--store", uri)
    assert result.exit_code == 0, result.output
    assert "hr_images/v=0009/part-00000-crashed.parquet" in result.stdout
    assert "would delete 1 unreferenced objects" in result.stdout and orphan.exists()
    result = invoke(runner, env, "datasets", "gc", "--store", uri)
    assert "deleted 1 unreferenced objects" in result.stdout and not orphan.exists()
    # The store's own warnings reach the user as formatted lines, not through logging's fallback.
    (tmp_path / "store" / "lq_pairs" / "_manifests" / "v=0001.json").write_text("{truncated")
    result = invoke(runner, env, "datasets", "gc", "--dry-run", "--store", uri)
    assert result.exit_code == 0 and result.stderr.startswith("warning: gc: skipping dataset lq_pairs: manifest")


def test_verify_passes_then_reports_corruption(runner, env, local, tmp_path):
    """verify succeeds on intact files and names the mismatch after a file is altered."""
    uri, store, refs = local
    result = invoke(runner, env, "datasets", "verify", "lq_pairs", "--store", uri)
    assert result.exit_code == 0 and "ok: lq_pairs@v1" in result.stdout
    part = tmp_path / "store" / "lq_pairs" / store.manifest(refs["lq"])["files"][0]["path"]
    part.write_bytes(part.read_bytes()[:-4] + b"XXXX")
    assert_error_line(invoke(runner, env, "datasets", "verify", "lq_pairs@v1", "--store", uri),
                      "does not match its manifest")


def test_errors_are_one_line(runner, env, local, tmp_path):
    """Bad refs, unknown datasets, versions and tags, bad store URIs, unusable paths: one line, exit 2."""
    uri, _, _ = local
    assert_error_line(invoke(runner, env, "datasets", "show", "bad/ref", "--store", uri), "invalid dataset name")
    assert_error_line(invoke(runner, env, "datasets", "show", "hr_images@v9", "--store", uri), "hr_images@v9")
    assert_error_line(invoke(runner, env, "datasets", "show", "nope", "--store", uri), "'nope'")
    assert_error_line(invoke(runner, env, "datasets", "versions", "nope", "--store", uri), "'nope'")
    assert_error_line(invoke(runner, env, "datasets", "show", "hr_images@gone", "--store", uri), "no tag 'gone'")
    assert_error_line(invoke(runner, env, "datasets", "ls", "--store", "ftp://host/x"), "unsupported store URI")
    assert_error_line(invoke(runner, env, "datasets", "ls", "--store", "s3://key:secret@bucket/x"),
                      "credentials do not belong")
    (tmp_path / "file").write_text("not a folder")
    assert_error_line(invoke(runner, env, "datasets", "ls", "--store", str(tmp_path / "file" / "store")))


def test_existing_empty_store_lists_nothing_and_missing_one_is_an_error(runner, env, tmp_path):
    """An existing folder nothing was published to is an empty store (exit 0); a missing one is an
    error for every read, and a warning for doctor (the first publish creates it); none creates it."""
    (tmp_path / "empty").mkdir()
    result = invoke(runner, env, "datasets", "ls", "--store", str(tmp_path / "empty"))
    assert result.exit_code == 0 and result.stdout == f"no datasets in file://{tmp_path}/empty\n"
    assert list((tmp_path / "empty").iterdir()) == []
    assert_error_line(invoke(runner, env, "datasets", "ls", "--store", str(tmp_path / "missing")),
                      f"no dataset store at file://{tmp_path}/missing (the folder does not exist)",
                      f"dspo ingest SOURCE --store file://{tmp_path}/missing")
    result = invoke(runner, env, "doctor", "--store", str(tmp_path / "missing"))
    assert result.exit_code == 0, result.output
    assert re.search(r"^warn +store +no dataset store at file://\S+/missing yet: the first publish creates it",
                     result.stdout, re.MULTILINE)
    assert re.search(r"^warn +conditional writes +not checked: the store does not exist yet", result.stdout, re.MULTILINE)
    assert not (tmp_path / "missing").exists()


def test_labels_import_reports_duplicates(runner, env, tmp_path):
    """The same labels again: `duplicate` lines, counted, exit 0 with "nothing new"; duplicates
    beside a rejection and nothing accepted: exit 1; beside a new label: imported, counted."""
    store = DatasetStore(str(tmp_path / "store"))
    mask = pa.array([{"size": [4, 4], "counts": "0"}] * 2, pa.struct([("size", pa.list_(pa.int64())),
                                                                      ("counts", pa.string())]))
    store.publish("sr_candidates", pa.table({"candidate_id": ["c1", "c2", "c3"], "sample_id": ["s1"] * 3}))
    store.publish("instances", pa.table({"instance_id": ["i1", "i2"], "sample_id": ["s1", "s1"], "mask": mask}))
    header = "sample_id,instance_id,best,worst,hallucination,description,annotator\n"
    first = tmp_path / "labels.csv"
    first.write_text(header + "s1,i1,c1,c2,no,,alice\n")

    def import_file(path: Path):
        return invoke(runner, env, "labels", "import", str(path), "--store", store.uri)

    result = import_file(first)
    assert result.exit_code == 0 and "into human_labels@v1: 1 read, 1 accepted, 0 rejected;" in result.stdout
    again = import_file(first)
    assert again.exit_code == 0, again.output
    assert again.stdout == ("nothing new in labels.csv (1 read, 0 accepted, 0 rejected, 1 duplicate(s)): every label "
                            "is already in human_labels@v1; nothing published\n")
    assert again.stderr.startswith("duplicate line 2: i1: duplicate of the label by alice in human_labels@v1")
    assert store.versions("human_labels") == [1]
    conflicting = tmp_path / "conflicting.csv"
    conflicting.write_text(header + "s1,i1,c1,c2,no,,alice\ns1,i1,c3,c2,no,,alice\n")
    result = import_file(conflicting)
    assert result.exit_code == 1 and "no label accepted from conflicting.csv" in result.stderr
    assert [line.split(":")[0] for line in result.stderr.splitlines()[:2]] == ["rejected line 3", "duplicate line 2"]
    mixed = tmp_path / "mixed.csv"
    mixed.write_text(header + "s1,i1,c1,c2,no,,alice\ns1,i2,c3,c1,no,,alice\n")
    result = import_file(mixed)
    assert result.exit_code == 0, result.output
    assert "into human_labels@v2: 2 read, 1 accepted, 0 rejected, 1 duplicate(s);" in result.stdout
    assert result.stderr.startswith("duplicate line 2: i1") and "error:" not in result.output


def test_store_from_environment_then_project_folder(runner, env, local, tmp_path, monkeypatch):
    """Without --store: $DSPO_STORE, else .dspo/store of the nearest folder with a pyproject.toml."""
    uri, _, _ = local
    result = invoke(runner, {**env, "DSPO_STORE": uri}, "datasets", "ls")
    assert result.exit_code == 0 and "sr_candidates" in result.stdout
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    DatasetStore(str(project / ".dspo" / "store")).publish("mine", pa.table({"x": [1]}))
    monkeypatch.chdir(project / "notebooks")
    result = invoke(runner, env, "datasets", "ls")
    assert result.exit_code == 0 and "mine" in result.stdout
    assert f"file://{project}/.dspo/store" in result.stdout


def test_doctor_on_a_good_local_store(runner, env, local, tmp_path):
    """Exit 0 with warnings only (no GPU, absent weights); shipped and placed weights are found."""
    uri, _, _ = local
    Path(env["DSPO_MODELS"]).mkdir()
    (Path(env["DSPO_MODELS"]) / "sam_vit_b_01ec64.pth").write_bytes(b"\0" * 3000)
    result = invoke(runner, env, "doctor", "--store", uri)
    assert result.exit_code == 0, result.output
    status = {name: state for state, name in re.findall(r"^(ok|warn|fail) +(\S.*?) {2,}", result.stdout, re.MULTILINE)}
    assert status["store"] == status["conditional writes"] == status["python"] == status["pyarrow"] == "ok"
    assert set(PACKAGES) | {"cuda"} <= set(status) and "fail" not in status.values()
    assert result.stdout.splitlines()[-1] == f"{len(status) - list(status.values()).count('warn')} ok, " \
        f"{list(status.values()).count('warn')} warn, 0 fail"
    assert status["weights realesrgan-x4plus"] == status["weights sam-vit-b"] == "ok"
    assert status["weights sam-vit-h"] == status["weights pyiqa-niqe"] == "warn"
    assert "2.9 KiB at " + str(Path(env["DSPO_MODELS"]) / "sam_vit_b_01ec64.pth") in result.stdout


def test_s3_store(runner, env, s3_server, s3_bucket, tmp_path):
    """The commands on s3:// with credentials from the AWS environment; a missing bucket is one line."""
    store = DatasetStore(f"s3://{s3_bucket}/root", {"endpoint_url": s3_server.endpoint_url, "region": "us-east-1",
                                                    "key": s3_server.ACCESS_KEY, "secret": s3_server.SECRET_KEY})
    publish_chain(store)
    s3_env = {**env, **s3_server.env()}
    uri = f"s3://{s3_bucket}/root"
    result = invoke(runner, s3_env, "datasets", "ls", "--store", uri)
    assert result.exit_code == 0 and "lq_pairs" in result.stdout and f"datasets in {uri}" in result.stdout
    result = invoke(runner, s3_env, "datasets", "show", "sr_candidates", "--store", uri)
    assert result.exit_code == 0 and "│   └── hr_images@v2" in result.stdout
    result = invoke(runner, s3_env, "datasets", "pull", "hr_images@paper", "--to", str(tmp_path / "out"),
                    "--store", uri)
    assert result.exit_code == 0 and (tmp_path / "out" / "manifest.json").exists()
    assert invoke(runner, s3_env, "datasets", "verify", "hr_images@v1", "--store", uri).exit_code == 0
    assert "testing" not in result.output  # the test credentials

    missing = "s3://no-such-bucket-here/root"
    assert_error_line(invoke(runner, s3_env, "datasets", "ls", "--store", missing),
                      "no dataset store at s3://no-such-bucket-here/root (no bucket 'no-such-bucket-here'")
    result = invoke(runner, s3_env, "doctor", "--store", missing)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    failures = [line for line in result.output.splitlines() if line.startswith("fail")]
    assert len(failures) == 1 and "no bucket 'no-such-bucket-here'" in failures[0]
    assert "Traceback" not in result.output and "testing" not in result.output


def run_dspo(*args: str, cwd: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script in a subprocess, with no $DSPO_STORE."""
    environment = {**os.environ, "COLUMNS": "200", **(extra_env or {})}
    environment.pop("DSPO_STORE", None)
    return subprocess.run([str(DSPO), *args], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=120, check=False)


def test_console_script(local, tmp_path, s3_server):
    """The installed `dspo` works, and its errors are one stderr line with exit 2, no traceback."""
    uri, _, _ = local
    listed = run_dspo("datasets", "ls", "--store", uri, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "hr_images" in listed.stdout and "sr_candidates" in listed.stdout
    for args, extra_env, fragment in [
        (("datasets", "show", "nope@v1", "--store", uri), None, "'nope'"),
        (("datasets", "ls", "--store", "s3://no-such-bucket-here"), s3_server.env(), "no bucket 'no-such-bucket-here'"),
    ]:
        failed = run_dspo(*args, cwd=tmp_path, extra_env=extra_env)
        assert failed.returncode == 2 and failed.stdout == ""
        assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("error: ") and fragment in failed.stderr


def test_pipeline_never_imports_prefect_or_flows():
    """The layering rule, by grep and by what importing the CLI actually loads."""
    pattern = re.compile(r"^\s*(from|import)\s+(prefect|flows)\b", re.MULTILINE)
    offenders = [str(path) for path in (ROOT / "pipeline").rglob("*.py") if pattern.search(path.read_text())]
    assert offenders == []
    probe = "import sys, flows.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_flows_use_the_pipeline_below_its_command_line():
    """Only the console entry, flows/cli.py, mounts pipeline.cli; the flows and the stack manager
    take what they share with it (project folder, default store) from pipeline.paths."""
    pattern = re.compile(r"^\s*(from\s+pipeline\.cli\b|import\s+pipeline\.cli\b|from\s+pipeline\s+import\s.*\bcli\b)",
                         re.MULTILINE)
    offenders = [path.name for path in (ROOT / "flows").glob("*.py")
                 if path.name != "cli.py" and pattern.search(path.read_text())]
    assert offenders == []
