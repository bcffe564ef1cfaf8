"""Tests of dspo_core.sr: registry, settings, bicubic, the CLIP tokenizer, the tiny diffusion
backbones (one-step SD and SD x4 upscaler), the LoRA denoiser interface and missing weights.

Real-ESRGAN has its own file (test_sr_realesrgan.py).
"""

import ast
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from dspo_core.sr import (
    BACKBONES,
    BicubicBackbone,
    CandidateSettings,
    MissingWeightsError,
    OneStepSDBackbone,
    OneStepSDConfig,
    SDUpscalerBackbone,
    SDUpscalerConfig,
    TinySDBackbone,
    TinySDConfig,
    UnsupportedSettingsError,
    build_backbone,
    build_tiny_sd,
    build_tiny_upscaler,
    load_clip_tokenizer,
)

torch.set_num_threads(1)

SR_PACKAGE = Path(__file__).resolve().parents[1] / "dspo_core" / "sr"


def _lq(seed, height=32, width=32):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _same(first, second):
    return len(first) == len(second) and all(np.array_equal(a, b) for a, b in zip(first, second))


def _mean_abs_diff(a, b):
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    return build_tiny_sd(str(tmp_path_factory.mktemp("tiny-sd")), seed=0)


@pytest.fixture(scope="module")
def tiny_sd(tiny_sd_dir):
    # Shared by the tests that never add an adapter; LoRA tests build their own.
    return build_backbone("tiny-sd", {"path": tiny_sd_dir})


@pytest.fixture(scope="module")
def tiny_upscaler(tmp_path_factory):
    folder = build_tiny_upscaler(str(tmp_path_factory.mktemp("tiny-upscaler")), seed=0)
    return build_backbone("sd-x4-upscaler", {"path": folder, "default_steps": 2})


# ----------------------------------------------------------------------------- registry and settings


def test_registry_lists_the_five_backbones_and_validates_configs():
    assert set(BACKBONES) == {"bicubic", "realesrgan", "tiny-sd", "one-step-sd", "sd-x4-upscaler"}
    assert all(cls.name == name for name, cls in BACKBONES.items())
    with pytest.raises(KeyError, match="known: bicubic"):
        build_backbone("esrgan")
    with pytest.raises(ValidationError):
        build_backbone("realesrgan", {"varient": "x4plus"})
    with pytest.raises(TypeError, match="RealESRGANConfig"):
        build_backbone("realesrgan", TinySDConfig())
    assert isinstance(build_backbone("bicubic"), BicubicBackbone)


def test_settings_a_backbone_cannot_honour_are_rejected(tiny_sd, tiny_upscaler):
    with pytest.raises(UnsupportedSettingsError, match="'bicubic' cannot honour steps, prompt"):
        BicubicBackbone().resolve_settings(CandidateSettings(steps=4, prompt="a cat"))
    with pytest.raises(UnsupportedSettingsError, match="one-step: steps must be 1"):
        tiny_sd.resolve_settings(CandidateSettings(steps=2))
    with pytest.raises(UnsupportedSettingsError, match="cannot honour noise_level"):
        tiny_sd.sample([_lq(0)], [CandidateSettings(noise_level=20)])
    with pytest.raises(UnsupportedSettingsError, match="cannot honour noise_strength"):
        tiny_upscaler.resolve_settings(CandidateSettings(noise_strength=0.5))
    with pytest.raises(UnsupportedSettingsError, match="max_noise_level 350"):
        tiny_upscaler.resolve_settings(CandidateSettings(noise_level=351))
    with pytest.raises(ValidationError):
        CandidateSettings(seed=-1)


def test_resolve_settings_fills_every_supported_field_from_the_config(tiny_sd, tiny_upscaler):
    resolved = tiny_sd.resolve_settings(CandidateSettings(seed=7, prompt="a cat"))
    assert resolved.model_dump() == {
        "seed": 7,
        "steps": 1,
        "guidance_scale": 1.0,
        "noise_strength": 0.1,
        "noise_level": None,
        "prompt": "a cat",
        "negative_prompt": "",
    }
    resolved = tiny_upscaler.resolve_settings(CandidateSettings(steps=3))
    assert (resolved.steps, resolved.guidance_scale, resolved.noise_level, resolved.noise_strength) == (
        3,
        9.0,
        20,
        None,
    )


def test_sample_checks_its_inputs():
    bicubic = BicubicBackbone()
    with pytest.raises(ValueError, match="2 LQ images but 1 settings"):
        bicubic.sample([_lq(0), _lq(1)], [CandidateSettings()])
    with pytest.raises(ValueError, match=r"lq\[1\] must be an \(H, W, 3\) uint8"):
        bicubic.sample([_lq(0), _lq(1).astype(np.float32)], [CandidateSettings()] * 2)
    with pytest.raises(ValueError, match=r"lq\[0\] must be"):
        bicubic.sample([_lq(0)[:, :, 0]], [CandidateSettings()])
    assert bicubic.sample([], []) == []


def test_describe_is_json_and_names_the_weights(tiny_sd, tiny_upscaler):
    for backbone in (BicubicBackbone(), tiny_sd, tiny_upscaler):
        record = json.loads(json.dumps(backbone.describe()))
        assert record["name"] == backbone.name and record["scale"] == 4
        assert record["weights_id"] == backbone.weights_id
        assert set(record["setting_defaults"]) == set(backbone.supported_settings)
    assert BicubicBackbone().weights_id == "builtin:pil-bicubic-x4"
    assert tiny_sd.weights_id.startswith(os.path.abspath(tiny_sd.folder) + "@sha256:")


def test_dspo_core_sr_imports_no_upper_layer():
    forbidden = {"prefect", "storage", "pipeline", "flows"}
    for path in SR_PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            assert not {name.split(".")[0] for name in names} & forbidden, path.name
        assert len(path.read_text().splitlines()) < 400, path.name


# ----------------------------------------------------------------------------- bicubic and tokenizer


def test_bicubic_is_pil_bicubic_x4_on_batches_and_odd_sizes():
    images = [_lq(0), _lq(1), _lq(2, 33, 35)]
    out = BicubicBackbone().sample(images, [CandidateSettings(seed=s) for s in range(3)])
    assert [image.shape for image in out] == [(128, 128, 3), (128, 128, 3), (132, 140, 3)]
    assert all(image.dtype == np.uint8 for image in out)
    expected = np.asarray(Image.fromarray(images[2]).resize((140, 132), Image.Resampling.BICUBIC))
    assert np.array_equal(out[2], expected)


def test_clip_tokenizer_rebuilt_offline_has_the_original_ids(tmp_path):
    tokenizer = load_clip_tokenizer(str(tmp_path))
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("a cat", padding="max_length", max_length=77).input_ids[:5] == [49406, 320, 2368, 49407, 49407]


def test_clip_tokenizer_matches_openai_simple_tokenizer(tmp_path):
    pytest.importorskip("ftfy")
    pytest.importorskip("regex")
    # clip/__init__ needs pkg_resources; its tokenizer module alone does not.
    folder = importlib.util.find_spec("clip").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location("clip_simple_tokenizer", os.path.join(folder, "simple_tokenizer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    original = module.SimpleTokenizer()
    tokenizer = load_clip_tokenizer(str(tmp_path))
    texts = ["A Photo of a CAT, isn't it? 123 héllo", "sharp 4k photo; no blur!! ?!", "émoji 😀 日本語 <b>x</b>"]
    for text in texts:
        assert tokenizer(text).input_ids == [49406, *original.encode(text), 49407], text


# ----------------------------------------------------------------------------- one-step SD (tiny)


def test_tiny_sd_sample_shapes_determinism_and_seed_dependence(tiny_sd):
    images = [_lq(0), _lq(1), _lq(2, 33, 35)]
    settings = [CandidateSettings(seed=1), CandidateSettings(seed=2), CandidateSettings(seed=3, prompt="a cat")]
    out = tiny_sd.sample(images, settings)
    assert [image.shape for image in out] == [(128, 128, 3), (128, 128, 3), (132, 140, 3)]
    assert all(image.dtype == np.uint8 for image in out)
    assert _same(out, tiny_sd.sample(images, settings))
    other_seed = tiny_sd.sample([images[0]], [CandidateSettings(seed=2)])[0]
    assert _mean_abs_diff(out[0], other_seed) > 1.0
    # An item's output depends on its own seed, not on the batch it is in.
    assert _mean_abs_diff(out[1], tiny_sd.sample([images[1]], [settings[1]])[0]) < 0.01
    # Without injected noise the seed has no effect (OSEDiff's deterministic output).
    quiet = [CandidateSettings(seed=s, noise_strength=0.0) for s in (1, 2)]
    first, second = tiny_sd.sample([images[0]] * 2, quiet)
    assert np.array_equal(first, second)


def test_tiny_sd_guidance_and_prompts_change_the_output(tiny_sd):
    image = _lq(0)
    plain, prompted, guided = tiny_sd.sample(
        [image] * 3,
        [
            CandidateSettings(seed=1),
            CandidateSettings(seed=1, prompt="a dog on grass"),
            CandidateSettings(seed=1, prompt="a dog on grass", guidance_scale=4.0, negative_prompt="blurry"),
        ],
    )
    assert _mean_abs_diff(plain, prompted) > 0 and _mean_abs_diff(prompted, guided) > 0


def test_tiny_sd_save_load_round_trip_is_bit_identical(tiny_sd, tiny_sd_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    images, settings = [_lq(0), _lq(1)], [CandidateSettings(seed=4), CandidateSettings(seed=5)]
    expected = tiny_sd.sample(images, settings)
    resaved = str(tmp_path / "resaved")
    StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True).save_pretrained(resaved)
    assert _same(expected, build_backbone("tiny-sd", {"path": resaved}).sample(images, settings))
    # Built in memory from the same seed: same weights id digest, same outputs.
    built = TinySDBackbone()
    assert built.weights_id.startswith("builtin:tiny-sd/seed=0/epsilon@sha256:")
    assert built.weights_id.split("@")[1] == tiny_sd.weights_id.split("@")[1]
    assert _same(expected, built.sample(images, settings))
    assert TinySDBackbone(TinySDConfig(build_seed=1)).weights_id.split("@")[1] != tiny_sd.weights_id.split("@")[1]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_targets_and_closed_form_x0_invert_the_forward_process(prediction_type):
    backbone = TinySDBackbone(TinySDConfig(prediction_type=prediction_type))
    assert backbone.prediction_type == prediction_type
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 500, 999])
    noisy = backbone.add_noise(latents, noise, timesteps)
    target = backbone.target(latents, noise, timesteps)
    assert torch.allclose(backbone.predict_x0(noisy, target, timesteps), latents, atol=1e-3)
    if prediction_type == "epsilon":
        assert torch.equal(target, noise)
    out = backbone.sample([_lq(0)], [CandidateSettings()])[0]
    assert out.shape == (128, 128, 3)


# ----------------------------------------------------------------------------- LoRA denoiser interface


def _loss_inputs(backbone):
    images = [_lq(0), _lq(1)]
    generator = torch.Generator().manual_seed(0)
    latents = backbone.encode(torch.rand(2, 3, 128, 128, generator=generator) * 2 - 1)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.tensor([100, 900])
    return {
        "noisy_latents": backbone.add_noise(latents, noise, timesteps),
        "timesteps": timesteps,
        "text_embeddings": backbone.encode_text(["a photo", ""]),
        "lq_latents": backbone.encode_lq(images),
    }


def _non_lora_state(backbone):
    state = {}
    for prefix, module in (("unet", backbone.unet), ("vae", backbone.vae), ("text", backbone.text_encoder)):
        for name, param in module.named_parameters():
            if "lora_" not in name:
                state[f"{prefix}.{name}"] = param.detach().clone()
    return state


def test_lora_training_step_reference_and_round_trip(tiny_sd_dir, tmp_path):
    config = {"path": tiny_sd_dir, "lora": {"rank": 2, "alpha": 4.0}}
    base = build_backbone("tiny-sd", {"path": tiny_sd_dir})
    policy = build_backbone("tiny-sd", config)
    inputs = _loss_inputs(policy)
    with torch.no_grad():
        base_output = base.predict(**inputs)

    params = policy.trainable_parameters()
    lora_names = {name for name, param in policy.unet.named_parameters() if param.requires_grad}
    assert params and all("lora_" in name and ".dspo." in name for name in lora_names)
    projections = [
        name for name, _ in policy.unet.named_modules() if name.endswith(("to_q", "to_k", "to_v", "to_out.0"))
    ]
    assert len(params) == len(lora_names) == 2 * len(projections) > 0  # lora_A and lora_B per projection
    assert not any(p.requires_grad for m in (policy.vae, policy.text_encoder) for p in m.parameters())
    with torch.no_grad():
        assert torch.equal(policy.predict(**inputs), base_output)  # zero-initialised up-projection
        with policy.reference():
            assert torch.equal(policy.predict(**inputs), base_output)

    frozen, lora_before = _non_lora_state(policy), [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=10.0)
    loss = policy.predict(**inputs).pow(2).mean()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(before, after) for before, after in zip(lora_before, params))
    after = _non_lora_state(policy)
    assert frozen.keys() == after.keys() and all(torch.equal(frozen[k], after[k]) for k in frozen)

    with torch.no_grad():
        trained = policy.predict(**inputs)
        with policy.reference():
            reference = policy.predict(**inputs)
    assert torch.equal(reference, base_output) and not torch.allclose(trained, base_output)
    assert policy.weights_id.startswith(base.weights_id + "+lora:dspo@sha256:")

    saved = policy.save_lora(str(tmp_path / "lora"))
    assert os.path.basename(saved) == "pytorch_lora_weights.safetensors"
    reloaded = build_backbone("tiny-sd", {"path": tiny_sd_dir})
    reloaded.load_lora(str(tmp_path / "lora"))
    with torch.no_grad():
        assert torch.equal(reloaded.predict(**inputs), trained)
    assert reloaded.weights_id == policy.weights_id
    settings = [CandidateSettings(seed=3)]
    assert _same(reloaded.sample([_lq(0)], settings), policy.sample([_lq(0)], settings))

    # The same file as a base LoRA is merged into the weights: the new reference is the trained policy.
    fused = build_backbone("tiny-sd", {"path": tiny_sd_dir, "lora_path": str(tmp_path / "lora")})
    with torch.no_grad():
        assert torch.allclose(fused.predict(**inputs), trained, atol=1e-5)
    assert "+" + str(tmp_path / "lora") + "@sha256:" in fused.weights_id and not fused.has_lora


def test_save_and_load_lora_errors(tiny_sd, tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapter to save"):
        tiny_sd.save_lora(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights.safetensors"):
        tiny_sd.load_lora(str(tmp_path))


# ----------------------------------------------------------------------------- missing weights


def test_missing_sd_weights_raise_a_clear_error(tmp_path):
    cache = str(tmp_path / "hf-cache")
    with pytest.raises(MissingWeightsError) as error:
        OneStepSDBackbone(OneStepSDConfig(cache_dir=cache))
    message = str(error.value)
    assert "stabilityai/stable-diffusion-2-1-base" in message
    assert os.path.join(cache, "models--stabilityai--stable-diffusion-2-1-base") in message
    assert "hf download stabilityai/stable-diffusion-2-1-base" in message
    with pytest.raises(MissingWeightsError, match="has no model_index.json"):
        build_backbone("one-step-sd", {"path": str(tmp_path)})
    with pytest.raises(MissingWeightsError, match="fetched by the pipeline layer"):
        build_backbone("one-step-sd", {"path": "s3://models/sd-2-1-base"})
    with pytest.raises(MissingWeightsError, match="models--stabilityai--stable-diffusion-x4-upscaler"):
        SDUpscalerBackbone(SDUpscalerConfig(cache_dir=cache))


# ----------------------------------------------------------------------------- SD x4 upscaler (tiny)


def test_tiny_upscaler_sample_shapes_determinism_and_settings(tiny_upscaler):
    images = [_lq(0), _lq(1), _lq(2, 33, 35)]
    settings = [CandidateSettings(seed=1), CandidateSettings(seed=2), CandidateSettings(seed=3, noise_level=50)]
    out = tiny_upscaler.sample(images, settings)
    assert [image.shape for image in out] == [(128, 128, 3), (128, 128, 3), (132, 140, 3)]
    assert all(image.dtype == np.uint8 for image in out)
    assert _same(out, tiny_upscaler.sample(images, settings))
    assert _mean_abs_diff(out[0], tiny_upscaler.sample([images[0]], [CandidateSettings(seed=2)])[0]) > 1.0
    variants = tiny_upscaler.sample(
        [images[0]] * 3,
        [
            CandidateSettings(seed=1, steps=3),
            CandidateSettings(seed=1, guidance_scale=1.0),
            CandidateSettings(seed=1, noise_level=100, prompt="a cat", negative_prompt="blur"),
        ],
    )
    assert all(_mean_abs_diff(out[0], variant) > 0 for variant in variants)


def test_tiny_upscaler_denoiser_interface(tiny_upscaler):
    assert tiny_upscaler.prediction_type == "v_prediction"
    lq = [_lq(0, 16, 16), _lq(1, 16, 16)]
    latents = tiny_upscaler.encode(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert latents.shape == (2, 4, 16, 16)  # the latent grid is the LQ grid
    conditioning = tiny_upscaler.encode_lq(lq, generator=torch.Generator().manual_seed(0))
    assert torch.equal(conditioning, tiny_upscaler.encode_lq(lq, generator=torch.Generator().manual_seed(0)))
    timesteps = torch.tensor([10, 990])
    noise = torch.randn(latents.shape)
    with torch.no_grad():
        output = tiny_upscaler.predict(
            tiny_upscaler.add_noise(latents, noise, timesteps),
            timesteps,
            tiny_upscaler.encode_text(["", "x"]),
            conditioning,
        )
    assert output.shape == latents.shape == tiny_upscaler.target(latents, noise, timesteps).shape
