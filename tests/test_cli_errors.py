"""Mistakes a user can make, run through the real console entry (flows.cli.app, and the
installed `.venv/bin/dspo` in subprocesses): each ends as exactly one `error:` line naming the
thing, a non-zero exit status and no traceback -- unless --debug / DSPO_DEBUG=1 asks for it.

The store these run against is built by the real ingest and degrade stages (test profile);
S3 mistakes run against moto's S3 server."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import load_config
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from storage import DatasetStore

ROOT = Path(__file__).resolve().parent.parent
DSPO = ROOT / ".venv" / "bin" / "dspo"
# Credentials typed where they do not belong; they must never be printed back.
KEY_ID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
MARKUP_NAME = "[yellow]y.png"   # rich would print this as "y.png" in yellow, were it read as markup


@dataclass(frozen=True)
class World:
    root: Path          # tmp folder holding the store and the user's files
    store: str          # file:// URI of a store with hr_images@v1 -> lq_pairs@v1 (+ tagged, fakes for labels)
    bucket: str         # an existing bucket on the S3 server
    s3_env: dict        # AWS environment pointing at the S3 server
    closed_port: int    # a local port nothing listens on


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory, s3_server) -> World:
    """The real ingest + degrade stages on two generated photos, and the files a user
    might point the commands at."""
    root = tmp_path_factory.mktemp("mistakes")
    rng = np.random.default_rng(0)
    photos = root / "photos"
    photos.mkdir()
    for index in range(2):
        Image.fromarray(rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)).save(photos / f"photo{index}.png")
    store = DatasetStore(str(root / "store"))
    config = load_config("test")
    config = config.model_copy(update={"ingest": config.ingest.model_copy(update={"source": str(photos)})})
    run_stage(STAGES["ingest"], store, config)
    lq = run_stage(STAGES["degrade"], store, config).ref
    # Just enough of the labelling inputs for `labels export` to reach its folder check.
    store.publish("sr_candidates", pa.table({"candidate_id": ["c1"], "sample_id": ["s1"]}), inputs=[lq])
    store.publish("instances", pa.table({"instance_id": ["i1"], "sample_id": ["s1"]}))
    store.close()

    (root / "marked").mkdir()
    (root / "marked" / MARKUP_NAME).write_bytes(b"not an image at all")
    (root / "tables").mkdir()
    pq.write_table(pa.table({"caption": ["no image column here"]}), root / "tables" / "part-0.parquet")
    (root / "cols.csv").write_text("sample_id,best\ns1,c1\n")
    (root / "broken.json").write_text("[{")
    (root / "busy").mkdir()
    (root / "busy" / "keep.txt").write_text("the user's file")

    bucket = s3_server.create_bucket(f"errors-{uuid.uuid4().hex[:12]}")
    yield World(root, f"file://{root}/store", bucket, s3_server.env(), _free_port())
    s3_server.delete_bucket(bucket)


@dataclass(frozen=True)
class Mistake:
    """One row: the command line (with {store}, {root}, {bucket} filled in), the fragments its
    error line must hold, its exit status, the environment ("local", "s3", "s3-no-credentials",
    "s3-closed-port", or "debug" = local + DSPO_DEBUG=1), whether a traceback is wanted, and
    paths (under {root}) that must still not exist afterwards."""

    id: str
    args: str
    fragments: tuple[str, ...]
    exit_code: int = 2
    env: str = "local"
    traceback: bool = False
    absent: tuple[str, ...] = field(default_factory=tuple)


NO_STORE = "{root}/no/such/store"
MISTAKES = [
    # A store that does not exist: read-only commands say so, name it, and create nothing.
    Mistake("ls-missing-store", f"datasets ls --store {NO_STORE}",
            ("no dataset store at file://{root}/no/such/store (the folder does not exist)", "dspo ingest"),
            absent=("no",)),
    Mistake("show-missing-store", f"datasets show hr_images --store {NO_STORE}", ("no dataset store at",),
            absent=("no",)),
    Mistake("versions-missing-store", f"datasets versions hr_images --store {NO_STORE}", ("no dataset store",),
            absent=("no",)),
    Mistake("pull-missing-store", f"datasets pull hr_images --to {{root}}/pulled --store {NO_STORE}",
            ("no/such/store",), absent=("no", "pulled")),
    Mistake("verify-missing-store", f"datasets verify hr_images@v1 --store {NO_STORE}", ("no/such/store",),
            absent=("no",)),
    Mistake("gc-missing-store", f"datasets gc --store {NO_STORE}", ("no dataset store",), absent=("no",)),
    Mistake("tag-missing-store", f"datasets tag hr_images@v1 best --store {NO_STORE}", ("no dataset store",),
            absent=("no",)),
    Mistake("stage-input-from-missing-store", f"stage degrade --profile test --store {NO_STORE}",
            ("no dataset store at file://{root}/no/such/store",), absent=("no",)),
    Mistake("labels-import-missing-store", f"labels import {{root}}/cols.csv --store {NO_STORE}",
            ("no dataset store",), absent=("no",)),
    Mistake("labels-export-missing-store", f"labels export --to {{root}}/tasks --store {NO_STORE}",
            ("no dataset store",), absent=("no", "tasks")),
    Mistake("label-serve-missing-store", f"label serve --port 0 --state-dir {{root}}/state --store {NO_STORE}",
            ("no dataset store",), absent=("no",)),
    Mistake("unsupported-store-scheme", "datasets ls --store ftp://host/x", ("unsupported store URI scheme 'ftp'",)),
    Mistake("credentials-in-store-uri", f"datasets ls --store s3://{KEY_ID}:{SECRET}@bucket/x",
            ("credentials do not belong in a store URI",)),
    # Refs and names.
    Mistake("version-that-does-not-exist", "datasets show hr_images@v99 --store {store}",
            ("hr_images@v99 does not exist", "latest is v1")),
    Mistake("ref-with-empty-tag", "datasets show hr_images@ --store {store}", ("invalid dataset ref 'hr_images@'",)),
    Mistake("ref-with-a-slash", "datasets show bad/ref --store {store}", ("'bad/ref'",)),
    Mistake("unknown-dataset", "datasets show nope --store {store}", ("dataset 'nope' has no published version",)),
    Mistake("unknown-tag", "datasets show hr_images@gone --store {store}", ("no tag 'gone'",)),
    Mistake("reserved-tag", "datasets tag hr_images@v1 v7 --store {store}", ("'v7'", "reserved")),
    Mistake("verify-unknown-version", "datasets verify lq_pairs@v5 --store {store}", ("lq_pairs@v5",)),
    # Stages and configuration.
    Mistake("unknown-stage", "stage nope --store {store}", ("unknown stage 'nope'", "degrade")),
    Mistake("unknown-profile", "stage degrade --profile nope --store {store}", ("no profile 'nope'",)),
    Mistake("unknown-profile-models", "models ls --profile nope", ("no profile 'nope'",)),
    Mistake("override-without-value", "stage degrade --set degrade.seed --store {store}",
            ("'degrade.seed'", "KEY=VALUE")),
    Mistake("unknown-config-key", "stage degrade --set degrade.sed=3 --store {store}", ("degrade.sed",)),
    Mistake("bad-config-value", "stage score --set score.iqa.metrics=[foo] --store {store}", ("'foo'",)),
    Mistake("bad-config-type", "stage degrade --set degrade.seed=abc --store {store}", ("degrade.seed", "abc")),
    Mistake("missing-weights", "stage segment --profile test --set segment.segmenter.name=sam "
                               "--set segment.fallback=none --store {store}",
            ("sam_vit_b_01ec64.pth", "$DSPO_MODELS")),
    Mistake("input-the-stage-does-not-take", "stage degrade --profile test --input lq_pairs@v1 --store {store}",
            ("stage 'degrade' takes inputs ['hr_images'], not ['lq_pairs']",)),
    # Ingest sources.
    Mistake("ingest-missing-folder", "ingest {root}/no/such/photos --profile test --store {store}",
            ("no/such/photos is not a folder",)),
    Mistake("ingest-tables-without-images", "ingest {root}/tables --profile test --store {store}",
            ("stage ingest failed (ValueError:", "{root}/tables", "no table file has an image column"), exit_code=1),
    Mistake("ingest-only-bad-files-named-like-markup", "ingest {root}/marked --profile test --store {root}/fresh",
            (f"first: {MARKUP_NAME}: not an image", "hr_images would be empty")),
    Mistake("ingest-source-with-credentials", f"ingest s3://{KEY_ID}:{SECRET}@bucket/photos --profile test "
                                              "--store {store}", ("bucket",), env="s3"),
    # Label files and output folders.
    Mistake("label-file-missing", "labels import {root}/missing.csv --store {store}", ("no such file", "missing.csv")),
    Mistake("label-file-without-columns", "labels import {root}/cols.csv --store {store}",
            ("cols.csv: missing column(s) worst",)),
    Mistake("label-file-not-json", "labels import {root}/broken.json --store {store}", ("broken.json is not JSON",)),
    Mistake("export-into-non-empty-folder", "labels export --to {root}/busy --store {store}",
            ("{root}/busy is not empty",)),
    Mistake("pull-into-non-empty-folder", "datasets pull hr_images --to {root}/busy --store {store}",
            ("cannot pull hr_images@v1 into {root}/busy: the folder is not empty",)),
    Mistake("pull-unknown-format", "datasets pull hr_images --to {root}/zipped --format zip --store {store}",
            ("unknown pull format 'zip'",), absent=("zipped",)),
    Mistake("pull-images-of-a-non-preferences-dataset",
            "datasets pull hr_images --with-images --to {root}/with-images --store {store}",
            ("hr_images@v1 has no lq_pairs / sr_candidates in its lineage", "needs a preferences dataset")),
    # S3.
    Mistake("s3-missing-bucket", "datasets ls --store s3://no-such-bucket-here/root",
            ("no dataset store at s3://no-such-bucket-here/root", "no bucket 'no-such-bucket-here'",
             "create the bucket"), env="s3"),
    Mistake("s3-missing-credentials", "datasets ls --store s3://{bucket}/root",
            ("s3://{bucket}/root", "Unable to locate credentials", "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
             "AWS_PROFILE", "AWS_ENDPOINT_URL"), env="s3-no-credentials"),
    Mistake("s3-unreachable-endpoint", "datasets show preferences --store s3://{bucket}/root",
            ("s3://{bucket}/root", "cannot reach the S3 endpoint http://127.0.0.1:{closed_port}", "AWS_ENDPOINT_URL"),
            env="s3-closed-port"),
    Mistake("ingest-into-unreachable-s3", "ingest {root}/photos --profile test --store s3://{bucket}/root",
            ("cannot reach the S3 endpoint http://127.0.0.1:{closed_port}",), env="s3-closed-port"),
    # The traceback, when asked for.
    Mistake("debug-flag", "--debug datasets show nope --store {store}",
            ("dataset 'nope' has no published version",), traceback=True),
    Mistake("debug-environment", "ingest {root}/tables --profile test --store {store}",
            ("stage ingest failed (ValueError:", "the traceback is above"), exit_code=1, env="debug", traceback=True),
    # A backbone's own config and the candidate settings it honours, refused before any model loads.
    Mistake("bad-backbone-config-value",
            'stage sample --profile test --set sample.sources=[{{"backbone":"realesrgan","config":{{"variant":'
            '"x4plux"}}}}] --store {store}',
            ("sample.sources[0].config.variant: invalid value 'x4plux' (did you mean x4plus?)",)),
    Mistake("mistyped-backbone-config-key", "stage train --profile test --set train.backbone_config.lora.rnak=8 "
                                            "--store {store}",
            ("train.backbone_config.lora.rnak: unknown key (did you mean rank?); accepted: rank, alpha",)),
    Mistake("setting-the-backbone-cannot-honour",
            'stage sample --profile test --set sample.sources=[{{"backbone":"bicubic","settings":[{{"steps":20}}]}}] '
            '--store {store}',
            ("sample.sources[0].settings[0].steps: backbone 'bicubic' cannot honour steps; accepted: seed",)),
]


def environment(world: World, kind: str, tmp_path: Path) -> dict:
    """The variables of one row's run; None unsets a variable."""
    base = {"COLUMNS": "200", "DSPO_STORE": None, "DSPO_DEBUG": None, "DSPO_MODELS": str(tmp_path / "models"),
            "DSPO_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "AWS_EC2_METADATA_DISABLED": "true"}
    if kind == "debug":
        return {**base, "DSPO_DEBUG": "1"}
    if kind == "local":
        return base
    s3 = {**base, **world.s3_env}
    if kind == "s3-no-credentials":
        return {**s3, "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
                "AWS_PROFILE": None, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                "AWS_CONFIG_FILE": str(tmp_path / "none")}
    if kind == "s3-closed-port":
        return {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{world.closed_port}"}
    return s3


def fill(text: str, world: World) -> str:
    return text.format(root=world.root, store=world.store, bucket=world.bucket, closed_port=world.closed_port)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_the_table_is_long_enough():
    assert len(MISTAKES) >= 25 and len({mistake.id for mistake in MISTAKES}) == len(MISTAKES)


@pytest.mark.parametrize("mistake", MISTAKES, ids=[mistake.id for mistake in MISTAKES])
def test_mistake_is_one_error_line(mistake: Mistake, world: World, tmp_path):
    result = CliRunner().invoke(app, fill(mistake.args, world).split(), env=environment(world, mistake.env, tmp_path))
    assert result.exit_code == mistake.exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and error_lines(result.output) == errors, result.output
    for fragment in mistake.fragments:
        assert fill(fragment, world) in errors[0], errors[0]
    assert ("Traceback (most recent call last)" in result.stderr) is mistake.traceback, result.output
    if mistake.traceback:
        assert result.stderr.rstrip().splitlines()[-1] == errors[0]
    for secret in (SECRET, KEY_ID, "testing"):  # "testing": the S3 server's credentials
        assert secret not in result.output
    for path in mistake.absent:
        assert not (world.root / path).exists(), path


def test_user_file_names_print_literally(world: World, tmp_path):
    """A quarantined file whose name looks like markup is printed as it is, in the warning and
    in the summary; the rest of the folder is ingested."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((96, 96, 3), 120, dtype=np.uint8)).save(folder / "grey.png")
    (folder / "[red]z.png").write_bytes(b"nope")
    result = CliRunner().invoke(app, ["ingest", str(folder), "--profile", "test", "--store", str(tmp_path / "s")],
                                env=environment(world, "local", tmp_path))
    assert result.exit_code == 0, result.output
    assert "warning: ingest: quarantined [red]z.png: not an image" in result.stderr
    assert "quarantined ingest: [red]z.png: not an image" in result.stderr
    assert error_lines(result.output) == []


def run_dspo(*args: str, cwd: Path, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
    """The installed console script in a subprocess, without $DSPO_STORE / $DSPO_DEBUG."""
    variables = {**os.environ, "COLUMNS": "200", **(env or {})}
    for name in ("DSPO_STORE", "DSPO_DEBUG"):
        variables.pop(name, None)
    return subprocess.run([str(DSPO), *args], cwd=cwd, env=variables, capture_output=True, text=True, timeout=180,
                          check=False, **popen)


def test_console_script_missing_store_is_one_line_and_creates_nothing(tmp_path):
    failed = run_dspo("datasets", "ls", "--store", "./no/such/store", cwd=tmp_path)
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith(
        f"error: no dataset store at file://{tmp_path}/no/such/store (the folder does not exist); check --store")
    assert not (tmp_path / "no").exists()


def test_console_script_unexpected_failure_is_one_line_unless_debug(world: World, tmp_path):
    """A failure inside a stage: one line naming it, exit 1; --debug adds the traceback above it."""
    args = ("ingest", str(world.root / "tables"), "--profile", "test", "--store", world.store)
    failed = run_dspo(*args, cwd=tmp_path)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.splitlines() == [
        (f"error: stage ingest failed (ValueError: ingest source {world.root / 'tables'}: no table file has an image "
         "column ({bytes, path} struct)); rerun with --debug for the traceback")]
    debugged = run_dspo("--debug", *args, cwd=tmp_path)
    assert debugged.returncode == 1
    lines = debugged.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):" and "pipeline/sources.py" in debugged.stderr
    assert len(error_lines(debugged.stderr)) == 1 and lines[-1].startswith("error: stage ingest failed (ValueError:")


def test_console_script_ctrl_c_exits_130_quietly(tmp_path):
    """Ctrl+C while a command waits on the network: exit 130, no traceback, no error line."""
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(120)
        env = {"AWS_ACCESS_KEY_ID": "k" * 20, "AWS_SECRET_ACCESS_KEY": "s" * 40, "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.getsockname()[1]}", "AWS_EC2_METADATA_DISABLED": "true"}
        variables = {**os.environ, "COLUMNS": "200", **env}
        variables.pop("DSPO_STORE", None)
        process = subprocess.Popen([str(DSPO), "datasets", "ls", "--store", "s3://bucket/x"], cwd=tmp_path,
                                   env=variables, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   # As a terminal starts it: a test run in the background (or a pytest
                                   # worker) has SIGINT ignored, and a child inherits that.
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            connection, _ = silent.accept()
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=60)
            connection.close()
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and error_lines(stderr) == []
