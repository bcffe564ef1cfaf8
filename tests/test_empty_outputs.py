"""An empty stage output is refused, not published as the latest version (unless --allow-empty):
an empty folder, an s3:// prefix with no objects, a folder of only bad files."""
from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import load_config
from pipeline.stage import EmptyOutputError, run_stage
from pipeline.stages import STAGES
from storage import DatasetStore


def ingest_config(source: str):
    config = load_config("test")
    return config.model_copy(update={"ingest": config.ingest.model_copy(update={"source": source})})


def good_folder(path):
    path.mkdir()
    Image.new("RGB", (96, 80), (30, 120, 200)).save(path / "blue.png")
    return path


def test_a_folder_of_only_bad_files_publishes_nothing_over_a_good_version(tmp_path):
    store = DatasetStore((tmp_path / "store").as_uri())
    assert run_stage(STAGES["ingest"], store, ingest_config(str(good_folder(tmp_path / "good")))).ref == "hr_images@v1"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (bad / "empty.jpg").write_bytes(b"")
    with pytest.raises(EmptyOutputError, match=r"ingest: hr_images would be empty \(all 2 items were quarantined "
                                                r"\(first: .*\); .*nothing was published.*--allow-empty"):
        run_stage(STAGES["ingest"], store, ingest_config(str(bad)))
    assert store.versions("hr_images") == [1] and store.resolve("hr_images@latest") == "hr_images@v1"
    allowed = run_stage(STAGES["ingest"], store, ingest_config(str(bad)), allow_empty=True)
    assert allowed.ref == "hr_images@v2" and allowed.rows == 0 and len(allowed.quarantined) == 2


def test_an_s3_prefix_with_no_objects_is_refused(s3_server, s3_bucket, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    store = DatasetStore(f"s3://{s3_bucket}/store")
    with pytest.raises(EmptyOutputError, match="ingest: hr_images would be empty"):
        run_stage(STAGES["ingest"], store, ingest_config(f"s3://{s3_bucket}/no-photos-here/"))
    assert store.versions("hr_images") == []


def test_the_cli_says_why_in_one_line_and_exits_non_zero(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    store = (tmp_path / "store").as_uri()
    result = CliRunner().invoke(app, ["ingest", str(empty), "--profile", "test", "--store", store])
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "hr_images would be empty" in errors[0] and "--allow-empty" in errors[0]
    assert "Traceback" not in result.output
    allowed = CliRunner().invoke(app, ["ingest", str(empty), "--profile", "test", "--store", store, "--allow-empty"])
    assert allowed.exit_code == 0, allowed.output
    assert DatasetStore(store).manifest("hr_images@v1")["rows"] == 0


@pytest.mark.parametrize("name", ["photos #2", "2024", "yes", "[a]"])
def test_an_ingest_path_is_taken_as_typed(tmp_path, monkeypatch, name):
    folder = good_folder(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    store = (tmp_path / "store").as_uri()
    result = CliRunner().invoke(app, ["ingest", name, "--profile", "test", "--store", store])
    assert result.exit_code == 0, result.output
    manifest = DatasetStore(store).manifest("hr_images@v1")
    assert manifest["rows"] == 1 and manifest["metadata"]["config"]["source"] == name
    assert folder.is_dir()
