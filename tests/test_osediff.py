"""OSEDiff's checkpoint format on the one-step SD backbone (dspo_core.sr.osediff), on a tiny model
with SD-2.1-base's folder layout (4-channel UNet, x8 VAE, CLIP text encoder, DDPM scheduler).

The reference every test compares with is computed here by hand from the raw checkpoint dict:
W + (alpha / r) * B @ A per adapted module (alpha = peft's default 8, which OSEDiff relies on),
conv_in's stored base weights, then OSEDiff's test forward (bicubic x4, VAE encode, one UNet call
at t=999, DDPMScheduler.step, VAE decode).
"""

import functools

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from dspo_core.sr import (
    CandidateSettings,
    InvalidOSEDiffCheckpointError,
    apply_osediff,
    build_backbone,
    build_tiny_sd,
    read_osediff_checkpoint,
    save_osediff_checkpoint,
)
from dspo_core.sr.color_fix import adain_color_fix, wavelet_color_fix
from dspo_core.train import DSPOTrainer, PairExample, TrainConfig

torch.set_num_threads(1)

RANK = 2
PROMPT = "building, sky, tree"
ADAPTER_KEYS = {
    "default_encoder": "unet_lora_encoder_modules",
    "default_decoder": "unet_lora_decoder_modules",
    "default_others": "unet_lora_others_modules",
}


def _lq(seed, side=32):
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return build_tiny_sd(str(tmp_path_factory.mktemp("tiny-sd21")), seed=0, concat_lq=False)


@pytest.fixture(scope="module")
def checkpoint(sd_folder, tmp_path_factory):
    unet = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(sd_folder, subfolder="vae")
    path = str(tmp_path_factory.mktemp("osediff") / "osediff.pkl")
    return save_osediff_checkpoint(path, unet, vae, rank=RANK, seed=1, std=0.1)


def _merge(model, name, state, adapter, scale):
    module = model.get_submodule(name)
    base_weight = state.get(f"{name}.base_layer.weight", module.weight)
    down, up = state[f"{name}.lora_A.{adapter}.weight"], state[f"{name}.lora_B.{adapter}.weight"]
    module.weight.copy_(base_weight + (up.flatten(1) @ down.flatten(1)).view_as(module.weight) * scale)
    if f"{name}.base_layer.bias" in state:
        module.bias.copy_(state[f"{name}.base_layer.bias"])


@torch.no_grad()
def _hand_merged(folder, path):
    raw = torch.load(path, map_location="cpu", weights_only=True)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    for adapter, key in ADAPTER_KEYS.items():
        for name in set(raw[key]):
            _merge(unet, name, raw["state_dict_unet"], adapter, 8.0 / raw["rank_unet"])
    for name in set(raw["vae_lora_encoder_modules"]):
        _merge(vae, name, raw["state_dict_vae"], "default_encoder", 8.0 / raw["rank_vae"])
    return unet, vae


@functools.cache
@torch.no_grad()
def _text_embeddings(folder, prompt):
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")  # ~4 s: load it once
    ids = tokenizer(prompt, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids
    return CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")(ids)[0]


@torch.no_grad()
def _osediff_forward(folder, unet, vae, lq, prompt):
    """OSEDiff's test on one LQ image: latents, the UNet's prediction and the output uint8 image."""
    upscaled = np.asarray(Image.fromarray(lq).resize((lq.shape[1] * 4, lq.shape[0] * 4), Image.Resampling.BICUBIC))
    image = torch.from_numpy(upscaled.copy()).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    latent = vae.encode(image).latent_dist.mode() * vae.config.scaling_factor
    text = _text_embeddings(folder, prompt)
    prediction = unet(latent, torch.tensor([999]), encoder_hidden_states=text).sample
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    scheduler.set_timesteps(1)
    x0 = scheduler.step(prediction, 999, latent, generator=torch.Generator().manual_seed(0)).prev_sample
    decoded = vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)
    output = ((decoded[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return {"latent": latent, "text": text, "prediction": prediction, "decoded": decoded,
            "upscaled": upscaled, "output": output}


def test_checkpoint_is_in_osediffs_format(checkpoint):
    raw = torch.load(checkpoint, weights_only=True)
    assert set(raw) == {*ADAPTER_KEYS.values(), "vae_lora_encoder_modules", "rank_unet", "rank_vae",
                        "state_dict_unet", "state_dict_vae"}
    assert raw["rank_unet"] == raw["rank_vae"] == RANK
    assert all("down_blocks" in name or name == "conv_in" for name in raw["unet_lora_encoder_modules"])
    assert all("up_blocks" in name or name == "conv_out" for name in raw["unet_lora_decoder_modules"])
    assert all(name.startswith("mid_block.") for name in raw["unet_lora_others_modules"])
    assert "conv_in" in raw["unet_lora_encoder_modules"] and "quant_conv" in raw["vae_lora_encoder_modules"]
    unet_keys = set(raw["state_dict_unet"])
    assert {"conv_in.base_layer.weight", "conv_in.base_layer.bias", "conv_in.lora_A.default_encoder.weight",
            "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.default_others.weight"} <= unet_keys
    assert all("lora" in key or "conv_in" in key for key in unet_keys)
    assert all(".default_encoder." in key and key.startswith(("encoder.", "quant_conv.")) for key in raw["state_dict_vae"])
    read = read_osediff_checkpoint(checkpoint)
    assert read.describe()["lora_alpha"] == 8.0 and read.describe()["unet_modules"]["default_decoder"] > 0


def test_loaded_backbone_equals_the_hand_merged_osediff_forward(sd_folder, checkpoint):
    unet, vae = _hand_merged(sd_folder, checkpoint)
    lq = _lq(0)
    expected = _osediff_forward(sd_folder, unet, vae, lq, PROMPT)
    config = {"path": sd_folder, "osediff_path": checkpoint, "default_noise_strength": 0.0, "color_fix": "adain"}
    backbone = build_backbone("one-step-sd", config)
    with torch.no_grad():
        latent = backbone.encode_lq([lq])
        prediction = backbone.predict(latent, torch.tensor([999]), backbone.encode_text([PROMPT]), latent)
        plain = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet")
        plain_prediction = plain(latent, torch.tensor([999]), encoder_hidden_states=expected["text"]).sample
    # float32 rounding of fused vs hand-merged weights, grown through the random network: ~3e-5 of 3.8
    assert torch.allclose(latent, expected["latent"], rtol=1e-4, atol=1e-4)
    assert torch.allclose(prediction, expected["prediction"], rtol=1e-4, atol=1e-4)
    assert (plain_prediction - expected["prediction"]).abs().mean() > 0.05  # the checkpoint matters

    # OSEDiff's default --align_method adain, against the bicubic upscale
    upscaled = torch.from_numpy(expected["upscaled"].copy()).permute(2, 0, 1)[None].float() / 255
    want = adain_color_fix((expected["decoded"] + 1) / 2, upscaled)
    want = (want[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    output = backbone.sample([lq], [CandidateSettings(prompt=PROMPT)])[0]
    assert np.abs(output.astype(int) - want).max() <= 1
    assert backbone.describe()["osediff"]["rank_unet"] == RANK
    assert "+osediff:" in backbone.weights_id and not backbone.has_lora


def test_color_fixes_take_the_lq_colours():
    generator = torch.Generator().manual_seed(0)
    output, lq = torch.rand(1, 3, 64, 64, generator=generator), torch.rand(1, 3, 64, 64, generator=generator) * 0.5
    fixed = adain_color_fix(output, lq)
    assert torch.allclose(fixed.mean(dim=(2, 3)), lq.mean(dim=(2, 3)), atol=1e-4)
    assert torch.allclose(fixed.std(dim=(2, 3)), lq.std(dim=(2, 3)), atol=1e-3)
    assert torch.allclose(wavelet_color_fix(lq, lq), lq, atol=1e-6)  # high + low frequencies = the image
    assert not torch.allclose(wavelet_color_fix(output, lq), output, atol=1e-2)


def test_dspo_trains_its_adapter_on_top_and_the_reference_is_osediff(sd_folder, checkpoint):
    unet, vae = _hand_merged(sd_folder, checkpoint)
    backbone = build_backbone("one-step-sd", {"path": sd_folder, "osediff_path": checkpoint})
    rng = np.random.default_rng(0)
    pairs = [PairExample(lq=_lq(index, 16), winner=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                         loser=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), mask=np.ones((64, 64), bool),
                         weight=1.0, positive_text=PROMPT, negative_text="", pair_id=f"p{index}")
             for index in range(2)]
    trainer = DSPOTrainer(backbone, TrainConfig(max_steps=1, batch_size=2, learning_rate=1e-2, seed=0), pairs)
    dspo = {name: param.detach().clone() for name, param in trainer.named_params.items()}
    assert dspo and all(".dspo." in name for name in dspo)
    trainer.train()

    assert all(not torch.equal(trainer.named_params[name], before) for name, before in dspo.items())
    merged = dict(unet.named_parameters())
    base = {name.replace(".base_layer", ""): param for name, param in backbone.unet.named_parameters()
            if "lora_" not in name}
    assert base.keys() == merged.keys()
    assert all(torch.allclose(param, merged[name], atol=1e-6) for name, param in base.items())
    assert all(torch.allclose(param, dict(vae.named_parameters())[name], atol=1e-6)
               for name, param in backbone.vae.named_parameters())

    reference = _osediff_forward(sd_folder, unet, vae, _lq(5), PROMPT)
    inputs = (reference["latent"], torch.tensor([999]), reference["text"], reference["latent"])
    with torch.no_grad():
        with backbone.reference():
            assert torch.allclose(backbone.predict(*inputs), reference["prediction"], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(backbone.predict(*inputs), reference["prediction"], rtol=1e-3, atol=1e-3)


def test_files_that_are_not_osediff_checkpoints_are_refused(sd_folder, checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="osediff_path"):
        read_osediff_checkpoint(str(tmp_path / "absent.pkl"))
    (tmp_path / "text.pkl").write_text("not a checkpoint")
    with pytest.raises(InvalidOSEDiffCheckpointError, match="not a readable torch checkpoint"):
        read_osediff_checkpoint(str(tmp_path / "text.pkl"))
    raw = torch.load(checkpoint, weights_only=True)
    torch.save({key: value for key, value in raw.items() if key != "rank_vae"}, tmp_path / "partial.pkl")
    with pytest.raises(InvalidOSEDiffCheckpointError, match="missing rank_vae"):
        read_osediff_checkpoint(str(tmp_path / "partial.pkl"))
    state = dict(raw["state_dict_unet"])
    state["conv_in.base_layer.weight"] = torch.zeros(32, 8, 3, 3)  # a UNet taking 8 input channels
    torch.save({**raw, "state_dict_unet": state}, tmp_path / "other.pkl")
    unet = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(sd_folder, subfolder="vae")
    with pytest.raises(InvalidOSEDiffCheckpointError, match=r"conv_in.base_layer.weight has shape \(32, 8, 3, 3\)"):
        apply_osediff(unet, vae, read_osediff_checkpoint(str(tmp_path / "other.pkl")))
