"""`dspo models fetch` against a local HTTP server on 127.0.0.1 (tests/support/weights_server.py):
resumable URL downloads checked against their checksums, Hugging Face repos through
huggingface_hub with $HF_ENDPOINT, a wrong checksum and a dropped connection."""
from __future__ import annotations

import hashlib
import os

import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline import weights
from pipeline.config import load_config
from pipeline.weights.catalog import CATALOG, QWEN25_VL_7B_REVISION, SD21_BASE_REVISION
from pipeline.weights.download import (
    ChecksumMismatchError,
    DownloadError,
    download_file,
)
from pipeline.weights.usage import ModelUse
from tests.support.weights_server import WeightsServer

BLOB = bytes(range(256)) * 1200  # 300 KiB, several 64 KiB socket writes
SHA256 = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture
def server():
    with WeightsServer() as running:
        yield running


@pytest.fixture
def caches(tmp_path, monkeypatch):
    for name, folder in (("DSPO_MODELS", "models"), ("TORCH_HOME", "torch"), ("HF_HUB_CACHE", "hf")):
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.delenv("DSPO_WEIGHTS_MIRROR", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    return tmp_path


def test_dropped_connection_then_rerun_resumes_with_a_range_request(server, tmp_path):
    server.files["w.pth"] = BLOB
    server.drop_after["w.pth"] = [100_000]
    target = tmp_path / "cache" / "w.pth"
    with pytest.raises(DownloadError, match=r"after 100000 .*rerun to resume from"):
        download_file(server.url("w.pth"), target, f"sha256:{SHA256}", attempts=1, progress=False)
    assert not target.exists() and (tmp_path / "cache" / "w.pth.part").stat().st_size == 100_000

    result = download_file(server.url("w.pth"), target, f"sha256:{SHA256}", attempts=1, progress=False)
    assert (result.downloaded, result.resumed_from, result.size) == (True, 100_000, len(BLOB))
    assert target.read_bytes() == BLOB and not (tmp_path / "cache" / "w.pth.part").exists()
    first, second = server.gets("/files/w.pth")
    assert "Range" not in first and second["Range"] == "bytes=100000-"
    again = download_file(server.url("w.pth"), target, f"sha256:{SHA256}", progress=False)
    assert not again.downloaded and len(server.gets("/files/w.pth")) == 2  # present: no request


def test_one_call_retries_a_dropped_connection_and_checks_every_checksum_kind(server, tmp_path):
    server.files["w.pth"] = BLOB
    server.drop_after["w.pth"] = [70_000, 50_000]
    result = download_file(server.url("w.pth"), tmp_path / "w.pth", f"sha256-prefix:{SHA256[:8]}", progress=False)
    assert result.resumed_from == 120_000 and (tmp_path / "w.pth").read_bytes() == BLOB
    assert [h.get("Range") for h in server.gets("/files/w.pth")] == [None, "bytes=70000-", "bytes=120000-"]
    blob_id = hashlib.sha1(b"blob %d\0" % len(BLOB) + BLOB).hexdigest()
    assert download_file(server.url("w.pth"), tmp_path / "g.pth", f"git-blob-sha1:{blob_id}", progress=False).downloaded
    with pytest.raises(DownloadError, match=r"HTTP 404"):
        download_file(server.url("missing.pth"), tmp_path / "missing.pth", progress=False)
    assert not (tmp_path / "missing.pth.part").exists()


def test_wrong_checksum_names_file_url_expected_and_got_and_leaves_nothing(server, tmp_path):
    server.files["w.pth"] = BLOB
    server.drop_after["w.pth"] = [10_000]  # the mismatch is found over resumed bytes too
    target = tmp_path / "w.pth"
    with pytest.raises(ChecksumMismatchError) as caught:
        download_file(server.url("w.pth"), target, "sha256:" + "0" * 64, progress=False)
    message = str(caught.value)
    assert f"for w.pth from {server.url('w.pth')}: expected sha256 {'0' * 64}, got {SHA256}" in message
    assert os.listdir(tmp_path) == []


def _uses(*model_ids: str) -> list[ModelUse]:
    return [ModelUse(f"test: {model_id}", model_id, None, False, 0, "error") for model_id in model_ids]


def test_plan_lists_sources_checksums_and_pinned_revisions(caches):
    items = weights.plan_fetch(_uses("sam-vit-h", "pyiqa-maniqa", "sd-2-1-base", "realesrgan-x4plus", "sam-vit-h"),
                               mirror="http://mirror.test/w", urls={"ckpt_koniq10k.pt": "http://other.test/k.pt"})
    by_name = {item.name: item for item in items}
    sam = by_name["sam_vit_h_4b8939.pth"]
    assert sam.source == "http://mirror.test/w/sam_vit_h_4b8939.pth" and sam.used_by == ("test: sam-vit-h",) * 2
    assert sam.checksum == "sha256:a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"
    assert sam.target == str(caches / "models" / "sam_vit_h_4b8939.pth")
    koniq = by_name["ckpt_koniq10k.pt"]
    assert koniq.source == "http://other.test/k.pt" and koniq.checksum is None and "unverified" in koniq.note
    assert koniq.target == str(caches / "torch" / "hub" / "pyiqa" / "ckpt_koniq10k.pt")
    sd = by_name["stabilityai/stable-diffusion-2-1-base"]
    assert (sd.kind, sd.revision, sd.note) == ("hf", SD21_BASE_REVISION, "")
    assert by_name["timm/vit_base_patch8_224.augreg2_in21k_ft_in1k"].note.startswith("revision not pinned")
    assert by_name["REALESRGAN_X4PLUS_UP4X.bin"].kind == "none"
    assert [item.name for item in weights.plan_fetch(_uses("pyiqa-lpips"), only=["alexnet-owt-7be5be79.pth"])] == [
        "alexnet-owt-7be5be79.pth"]
    with pytest.raises(ValueError, match="--only nope: not a weight this profile uses; choose from"):
        weights.plan_fetch(_uses("pyiqa-lpips"), only=["nope"])
    for entry in CATALOG.values():
        for item in entry.files:
            assert item.checksum is None or item.checksum.split(":")[0] in weights.catalog.CHECKSUM_KINDS
            assert not item.repo_id or len(item.revision) == 40 or item.revision == "main"


def _hub_files() -> dict[str, bytes]:
    return {"model_index.json": b'{"_class_name": "StableDiffusionPipeline"}', "unet/config.json": b"{}",
            "unet/diffusion_pytorch_model.safetensors": BLOB, "unet/diffusion_pytorch_model.fp16.safetensors": b"x",
            "v2-1_512-ema-pruned.ckpt": b"not wanted"}


def test_fetch_cli_gets_the_full_profiles_weights_from_their_sources(server, caches, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    server.add_repo("stabilityai/stable-diffusion-2-1-base", SD21_BASE_REVISION, _hub_files())
    niqe = b"MATLAB 5.0 MAT-file" + bytes(500)
    server.files["niqe_modelparameters.mat"] = niqe
    server.drop_after["niqe_modelparameters.mat"] = [100]
    runner = CliRunner(env={"COLUMNS": "400"})

    listed = runner.invoke(app, ["models", "fetch", "--profile", "full", "--dry-run"])
    assert listed.exit_code == 0, listed.output
    for expected in ("sd-2-1-base", f"stabilityai/stable-diffusion-2-1-base@{SD21_BASE_REVISION}",
                     "qwen2.5-vl-7b-instruct", f"Qwen/Qwen2.5-VL-7B-Instruct@{QWEN25_VL_7B_REVISION}",
                     "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/DISTS_weights-f5e65c96.pth",
                     "sha256-prefix:f5e65c96"):
        assert expected in listed.output
    assert not (caches / "hf").exists()  # a dry run downloads nothing

    fetched = runner.invoke(app, ["models", "fetch", "--profile", "full", "--no-progress", "--mirror",
                                  f"{server.endpoint}/files", "--only", "sd-2-1-base", "--only",
                                  "niqe_modelparameters.mat"])
    assert fetched.exit_code == 0, fetched.output
    assert "sd-2-1-base: stabilityai/stable-diffusion-2-1-base" in fetched.output
    assert "niqe_modelparameters.mat" in fetched.output and "resumed at 100 bytes" in fetched.output
    assert (caches / "torch" / "hub" / "pyiqa" / "niqe_modelparameters.mat").read_bytes() == niqe
    snapshot = caches / "hf" / "models--stabilityai--stable-diffusion-2-1-base" / "snapshots" / SD21_BASE_REVISION
    assert (snapshot / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == BLOB
    assert not (snapshot / "v2-1_512-ema-pruned.ckpt").exists()  # only the files a diffusers load needs
    assert not (snapshot / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    uses = {use.model: use for use in weights.profile_models(load_config("full"))}
    assert uses["sd-2-1-base"].present and uses["sd-2-1-base"].size >= len(BLOB)

    # A served file that is not the published one: one error line, nothing under the final name.
    server.files["DISTS_weights-f5e65c96.pth"] = b"tampered" * 100
    bad = runner.invoke(app, ["models", "fetch", "--profile", "full", "--no-progress", "--only",
                              "DISTS_weights-f5e65c96.pth", "--url", f"DISTS_weights-f5e65c96.pth={server.url('DISTS_weights-f5e65c96.pth')}"])
    assert bad.exit_code == 2
    lines = bad.output.strip().splitlines()
    assert lines[-1].startswith("error: checksum mismatch for DISTS_weights-f5e65c96.pth from http://127.0.0.1:")
    assert "expected sha256-prefix f5e65c96, got " in lines[-1] and "Traceback" not in bad.output
    assert os.listdir(caches / "torch" / "hub" / "pyiqa") == ["niqe_modelparameters.mat"]


def test_fetch_cli_errors_are_one_line(server, caches, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)  # the repo is not served: the hub answers 404
    runner = CliRunner(env={"COLUMNS": "400"})
    for args, expected in (
        (["--only", "nope"], "error: --only nope: not a weight this profile uses; choose from"),
        (["--url", "no-equals"], "error: --url 'no-equals': expected FILE=URL"),
        (["--only", "sd-2-1-base"], "error: fetch Hugging Face repo stabilityai/stable-diffusion-2-1-base@"),
    ):
        result = runner.invoke(app, ["models", "fetch", "--profile", "full", "--no-progress", *args])
        assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith(expected), result.output


