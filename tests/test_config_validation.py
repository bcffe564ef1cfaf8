"""Every key and name of a profile is checked when it is loaded (pipeline.config.load_config),
before any model is built or any shard runs, and a problem is ONE line naming the dotted key,
the bad value and what is accepted.

The accepted names are checked against the real registries they stand for (pyiqa, the SR
backbones, the segmenters, the loss types), and `dspo pipeline` with a bad profile is checked
to fail at once, before it imports Prefect or opens a connection."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dspo_core.iqa.config import UNSUPPORTED_METRICS, pyiqa_metric_names
from dspo_core.segment.config import SegmenterConfig
from dspo_core.train.config import TrainConfig
from dspo_core.sr.config import BACKBONE_CONFIGS, SETTING_CHOICES, SUPPORTED_SETTINGS
from pipeline.config import DIFFUSION_BACKBONES, SR_BACKBONES, ConfigError, load_config, profile_names

ROOT = Path(__file__).resolve().parent.parent
DSPO = ROOT / ".venv" / "bin" / "dspo"


def config_error(profile: str, overrides: list[str] | dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(profile, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- the registries
def test_iqa_names_are_pyiqas_own_list_read_without_torch():
    """pyiqa_metric_names() lists what pyiqa.list_models() lists, and reading it in a fresh
    process imports neither pyiqa nor torch."""
    probe = ("import sys, time; from dspo_core.iqa.config import pyiqa_metric_names; t = time.process_time(); "
             "names, version = pyiqa_metric_names(); import json; print(json.dumps({'names': names, "
             "'version': version, 'seconds': time.process_time() - t, 'torch': 'torch' in sys.modules, "
             "'pyiqa': 'pyiqa' in sys.modules}))")
    fresh = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                                      check=True).stdout)
    assert not fresh["torch"] and not fresh["pyiqa"]
    print(f"\npyiqa names read in {fresh['seconds'] * 1000:.1f} ms of CPU")
    import pyiqa

    assert fresh["names"] == pyiqa.list_models() and fresh["version"] == pyiqa.__version__
    assert pyiqa_metric_names() == (tuple(pyiqa.list_models()), pyiqa.__version__)


def test_backbone_segmenter_and_loss_names_match_their_registries():
    from dspo_core.loss import LOSS_TYPES
    from dspo_core.segment import SEGMENTERS
    from dspo_core.sr import BACKBONES, DiffusionSRBackbone

    assert SR_BACKBONES == tuple(BACKBONE_CONFIGS) == tuple(BACKBONES)
    assert set(DIFFUSION_BACKBONES) == {name for name, cls in BACKBONES.items() if issubclass(cls, DiffusionSRBackbone)}
    assert set(typing.get_args(SegmenterConfig.model_fields["name"].annotation)) == set(SEGMENTERS)
    assert set(typing.get_args(TrainConfig.model_fields["loss_type"].annotation)) == set(LOSS_TYPES)


def test_torch_free_backbone_table_is_what_the_backbones_enforce():
    """Each backbone class takes its Config, supported settings and setting choices from
    dspo_core.sr.config, so what load_config refuses is what the backbone would refuse."""
    from dspo_core.sr import BACKBONES
    from dspo_core.sr.config import DType
    from dspo_core.sr.diffusion import DTYPES
    from dspo_core.sr.realesrgan import VARIANTS

    for name, backbone in BACKBONES.items():
        assert backbone.Config is BACKBONE_CONFIGS[name], name
        assert backbone.supported_settings == SUPPORTED_SETTINGS[name], name
        assert set(SETTING_CHOICES[name]) <= SUPPORTED_SETTINGS[name], name
    variants = typing.get_args(BACKBONE_CONFIGS["realesrgan"].model_fields["variant"].annotation)
    assert set(variants) == set(VARIANTS)
    assert set(typing.get_args(DType)) == set(DTYPES)


def test_backbone_table_is_read_without_torch():
    probe = ("import sys; import pipeline.config; from dspo_core.sr.config import BACKBONE_CONFIGS; "
             "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'ncnn', 'peft') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout


@pytest.mark.parametrize("profile", profile_names())
def test_every_shipped_profile_is_valid(profile):
    assert load_config(profile).profile == profile


# --------------------------------------------------------------------------- bad values, one line each
@pytest.mark.parametrize("overrides, fragments", [
    (["score.iqa.metrics=[foo]"], ["score.iqa.metrics[0]: unknown IQA metric 'foo'; accepted: ", "psnr, psnry",
                                   "(pyiqa "]),
    (["evaluate.protocol=osediff", "evaluate.metrics=[psnr, lpipz]"], [
        "evaluate.metrics: [1] 'lpipz' is not a metric of protocol 'osediff' (did you mean lpips?); accepted: "
        "psnr, ssim, lpips, dists, fid, niqe, musiq, maniqa-pipal, clipiqa"]),
    (["evaluate.protocol=paper"], ["evaluate.protocol: invalid value 'paper'", "accepted: osediff, weight-free"]),
    (["evaluate.compare=[{name: base, checkpoint: base}, {name: dspo, checkpoint: checkpoints@latest}]"], [
        "evaluate.compare[1].checkpoint: invalid checkpoint 'checkpoints@latest'; accepted: base, input, "
        "checkpoints@vN"]),
    (["evaluate.compare=[{name: a, checkpoint: input}, {name: b, checkpoint: checkpoints@v2}]"], [
        "compare needs exactly one method with checkpoint 'base'"]),
    (["score.iqa.metrics=[psnr, fid]"], ["score.iqa.metrics[1]: IQA metric 'fid' does not give one score per image"]),
    (["score.iqa.min_sizes={psnr: 4, nqie: 96}"], ["score.iqa.min_sizes.nqie: unknown IQA metric 'nqie' (did you "
                                                   "mean niqe"]),
    (["sample.sources=[{backbone: realesrgn}]"], ["sample.sources[0].backbone: invalid value 'realesrgn' (did you "
                                                  "mean realesrgan?); accepted: bicubic, realesrgan, tiny-sd"]),
    (["train.backbone=realesrgan"], ["train.backbone: invalid value 'realesrgan'; accepted: tiny-sd, one-step-sd, "
                                     "sd-x4-upscaler"]),
    (["segment.segmenter.name=sma"], ["segment.segmenter.name: invalid value 'sma' (did you mean sam?); accepted: "
                                      "sam, felzenszwalb"]),
    (["segment.segmenter.device=gpu"], ["segment.segmenter.device: unknown device 'gpu'; accepted: auto, cpu"]),
    (["score.iqa.device=auto"], ["score.iqa.device: unknown device 'auto'; accepted: cpu, mps, cuda, cuda:N"]),
    (["caption.captioner={model: /models/blip, device: gpu0}"], ["caption.captioner.device: unknown device 'gpu0'"]),
    (["train.train.loss_type=dpo"], ["train.train.loss_type: invalid value 'dpo'", "accepted: sigmoid, hinge, ipo"]),
    (["train.train.text_mode=negative"], ["train.train.text_mode: invalid value 'negative' (did you mean "
                                          "prompt+negative?)"]),
    (["degrade.splits=[train, vla]"], ["degrade.splits[1]: unknown split 'vla' (did you mean val?); accepted: "
                                       "train, val, test (the keys of ingest.split_fractions)"]),
    (["evaluate.splits=[tst]"], ["evaluate.splits[0]: unknown split 'tst' (did you mean test?)"]),
    (["ingest.split_fractions={train: 0.5, val: 0.3, test: 0.1}"], ["ingest.split_fractions: shares must sum to 1, "
                                                                    "got 0.9"]),
    (["sample.sources=[{backbone: tiny-sd, grid: {stpes: [1, 2]}}]"], [
        "sample.sources[0]: grid.stpes: unknown candidate setting (did you mean steps?); accepted: seed, steps"]),
    (["sample.sources=[{backbone: tiny-sd, grid: {steps: [2, 0]}}]"], [
        "sample.sources[0]: grid {'steps': 0} on settings[0]: steps: Input should be greater than or equal to 1"]),
    # inside a backbone's own config, checked against its class in dspo_core.sr.config
    (["sample.sources=[{backbone: bicubic}, {backbone: bicubic}, {backbone: realesrgan, config: {scael: 3}}]"], [
        "sample.sources[2].config.scael: unknown key; accepted: variant, tile, tile_pad, num_threads"]),
    (["sample.sources=[{backbone: realesrgan, config: {variant: x4plux}}]"], [
        "sample.sources[0].config.variant: invalid value 'x4plux' (did you mean x4plus?); accepted: x4plus, "
        "x4plus-anime, animevideov3"]),
    (["sample.sources=[{backbone: tiny-sd, config: {timstep: 999}}]"], [
        "sample.sources[0].config.timstep: unknown key (did you mean timestep?); accepted: model_id, path"]),
    (["train.backbone_config={device: gpu}"], ["train.backbone_config.device: unknown device 'gpu'; accepted: cpu, "
                                               "mps, cuda, cuda:N"]),
    (["train.backbone_config.lora={rnak: 8}"], ["train.backbone_config.lora.rnak: unknown key (did you mean rank?); "
                                                "accepted: rank, alpha, target_modules"]),
    (["train.backbone=sd-x4-upscaler", "train.backbone_config={default_steps: 0}"], [
        "train.backbone_config.default_steps: Input should be greater than or equal to 1, got 0"]),
    (["train.backbone_config={dtype: fp16}"], ["train.backbone_config.dtype: invalid value 'fp16'; accepted: "
                                              "float32, float16, bfloat16"]),
    # candidate settings the backbone would refuse with UnsupportedSettingsError when the stage runs
    (["sample.sources=[{backbone: bicubic, settings: [{seed: 1}, {steps: 20}]}]"], [
        "sample.sources[0].settings[1].steps: backbone 'bicubic' cannot honour steps; accepted: seed"]),
    (["sample.sources=[{backbone: tiny-sd, settings: [{noise_level: 20}]}]"], [
        "sample.sources[0].settings[0].noise_level: backbone 'tiny-sd' cannot honour noise_level; accepted: seed, "
        "guidance_scale, negative_prompt, noise_strength, prompt, steps"]),
    (["sample.sources=[{backbone: one-step-sd, settings: [{steps: 4}]}]"], [
        "sample.sources[0].settings[0].steps: backbone 'one-step-sd' is one-step: steps must be 1, got 4"]),
    (["sample.sources=[{backbone: tiny-sd, grid: {steps: [1, 4]}}]"], [
        "sample.sources[0].grid.steps[1]: backbone 'tiny-sd' is one-step: steps must be 1, got 4"]),
    (["sample.sources=[{backbone: realesrgan, grid: {prompt: [a, b]}}]"], [
        "sample.sources[0].grid.prompt: backbone 'realesrgan' cannot honour prompt; accepted: seed"]),
])
def test_a_bad_value_is_one_line_naming_key_value_and_accepted(overrides, fragments):
    message = config_error("demo", overrides)
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("overrides, fragments", [
    (["score.iqa.metircs=[psnr]"], ["score.iqa.metircs: unknown key (did you mean metrics?); accepted: metrics, "
                                    "device, masked_maps"]),
    (["scroe.iqa.metrics=[psnr]"], ["scroe: unknown section (did you mean score?); accepted: profile, ingest, "
                                    "degrade"]),
    (["segment.segmenter.postfilter.max_instance=4"], ["segment.segmenter.postfilter.max_instance: unknown key (did "
                                                       "you mean max_instances?)"]),
    (["sample.sources=[{backbone: bicubic, setings: [{seed: 1}]}]"], ["sample.sources[0].setings: unknown key (did "
                                                                     "you mean settings?)"]),
    (["sample.sources=[{backbone: tiny-sd, settings: [{nosie_strength: 0.1}]}]"], [
        "sample.sources[0].settings[0].nosie_strength: unknown key (did you mean noise_strength?)"]),
    (["degrade.degradation.gt_size.x=1"], ["override 'degrade.degradation.gt_size.x': degrade.degradation.gt_size is "
                                           "the value 256, not a section"]),
])
def test_a_mistyped_key_names_the_nearest_accepted_keys(overrides, fragments):
    message = config_error("demo", overrides)
    for fragment in fragments:
        assert fragment in message, message


def test_an_unknown_profile_names_the_nearest_one(tmp_path):
    assert config_error("dmeo", []).startswith("no profile 'dmeo' (did you mean demo?); known: demo, full, test")
    assert config_error(str(tmp_path / "mine.yaml"), []).startswith("no profile file ")
    broken = tmp_path / "broken.yaml"
    broken.write_text("score:\n  iqa: [\n")
    assert "not valid YAML" in config_error(str(broken), [])


def test_several_problems_share_the_line():
    message = config_error("demo", ["score.iqa.metrics=[foo]", "segment.segmenter.name=sma"])
    assert "segment.segmenter.name: invalid value 'sma'" in message and " | " in message
    assert "score.iqa.metrics[0]: unknown IQA metric 'foo'" in message


def test_accepted_values_load():
    config = load_config("test", ["segment.segmenter.device=cuda:1", "score.iqa.device=mps",
                                  "caption.captioner={model: /models/blip, device: auto}",
                                  "sample.sources=[{backbone: sd-x4-upscaler, grid: {steps: [20, 50]}}, "
                                  "{backbone: realesrgan, config: {variant: x4plus-anime, tile: 0}}]",
                                  "train.backbone_config={device: cuda:0, dtype: bfloat16, lora: {rank: 16}}",
                                  "evaluate.protocol=osediff", "evaluate.metrics=[lpips, fid, musiq]",
                                  "evaluate.compare=[{name: base, checkpoint: base}, {name: image-dpo, "
                                  "checkpoint: checkpoints@v1, step: 4}, {name: dspo}]",
                                  "train.backbone=one-step-sd"])
    assert config.segment.segmenter.device == "cuda:1" and config.caption.captioner.device == "auto"
    assert len(config.sample.sources[0].candidate_settings()) == 2
    assert config.sample.sources[1].config == {"variant": "x4plus-anime", "tile": 0}
    assert config.train.backbone_config["lora"] == {"rank": 16}
    assert config.evaluate.metrics == ["lpips", "fid", "musiq"] and config.evaluate.base_method == "base"
    assert [m.checkpoint for m in config.evaluate.compare] == ["base", "checkpoints@v1", "input"]


# --------------------------------------------------------------------------- at the command line
def test_stage_with_a_bad_metric_is_one_error_line_before_any_shard(tmp_path):
    from flows.cli import app

    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["stage", "score", "--store", str(store), "--set", "score.iqa.metrics=[foo]"],
                                env={"COLUMNS": "200", "DSPO_STORE": None})
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: score.iqa.metrics[0]: unknown IQA metric 'foo'"), result.stderr
    assert "Traceback" not in result.output
    assert not store.exists(), "the stage opened the store before its config was checked"


# Run inside a fresh interpreter: no socket may connect and Prefect, torch and pyiqa must stay unimported.
_OFFLINE_PROBE = """
import atexit, json, socket, sys
def refuse(self, address):
    raise SystemExit(f"connected to {address!r}")
socket.socket.connect = refuse
atexit.register(lambda: print(json.dumps({m: m in sys.modules for m in ("prefect", "torch", "pyiqa")}),
                              file=sys.stderr))
from flows.cli import app
app(sys.argv[1:], prog_name="dspo")
"""


@pytest.mark.parametrize("args, message", [
    (["--profile", "dmeo"], "error: no profile 'dmeo' (did you mean demo?)"),
    (["--set", "score.iqa.metrics=[foo]"], "error: score.iqa.metrics[0]: unknown IQA metric 'foo'"),
])
def test_pipeline_with_a_bad_profile_fails_before_contacting_prefect(tmp_path, args, message):
    state = tmp_path / "stack"
    result = subprocess.run([sys.executable, "-c", _OFFLINE_PROBE, "pipeline", *args, "--state-dir", str(state)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    *lines, modules = result.stderr.strip().splitlines()
    assert result.returncode != 0 and result.stdout == ""
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert json.loads(modules) == {"prefect": False, "torch": False, "pyiqa": False}
    assert not state.exists()


def test_pipeline_with_a_bad_profile_fails_at_once(tmp_path):
    """The console script itself: one error line, in about the time `dspo --help` takes."""
    def timed(*args: str) -> tuple[float, subprocess.CompletedProcess]:
        started = time.monotonic()
        result = subprocess.run([str(DSPO), *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "COLUMNS": "200"})
        return time.monotonic() - started, result

    baseline, _ = timed("--help")
    seconds, result = timed("pipeline", "--profile", "dmeo", "--state-dir", str(tmp_path / "stack"))
    print(f"\ndspo pipeline --profile dmeo: {seconds:.2f}s (dspo --help: {baseline:.2f}s)")
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: no profile 'dmeo'"), result.stderr
    assert seconds < baseline + 3


@pytest.mark.parametrize("typed", ["/data/photos #2", "2024", "yes", "[a, b]", "a: b", "null"])
def test_a_string_override_is_taken_as_typed(typed):
    assert load_config("test", [f"ingest.source={typed}"]).ingest.source == typed
    assert load_config("test", ["degrade.seed=7"]).degrade.seed == 7  # typed fields still read YAML scalars
