"""Tests of dspo_core.feedback: suspects, measured attributes, the template writer, tiny
BLIP / GIT captioners through the real from_pretrained + generate path, describe_feedback."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dspo_core.feedback import (
    COLOUR_DIRECTIONS,
    VOCABULARY,
    Captioner,
    CaptionerConfig,
    FeedbackConfig,
    FeedbackInput,
    HFCaptioner,
    MeasureConfig,
    MissingCaptionerError,
    RegionContext,
    SuspectConfig,
    TemplateConfig,
    TemplateWriter,
    build_tiny_captioner,
    build_tokenizer,
    describe_feedback,
    describe_feedback_batch,
    generated_vocab,
    measure,
    suspect,
    to_pil,
)
from dspo_core.feedback.attributes import box_filter

torch.set_num_threads(1)

PACKAGE = Path(__file__).resolve().parents[1] / "dspo_core" / "feedback"
H = 64


def _blur(image, k=5):
    return np.stack([box_filter(image[..., c], k) for c in range(3)], axis=-1)


def _hr():
    """Left half: a smooth, flat gradient; right half: colour texture; a step between."""
    rng = np.random.default_rng(0)
    yy = np.mgrid[0:H, 0:H][0] / H
    hr = (0.3 + 0.2 * yy)[..., None] * np.array([1.0, 0.9, 0.8])
    texture = _blur(rng.random((H, H, 3)), 3)
    hr[:, H // 2 :] = 0.55 + 0.6 * (texture[:, H // 2 :] - 0.5)
    return np.clip(hr, 0, 1)


HR = _hr()
MASK = np.zeros((H, H), bool)
MASK[4:60, 4:60] = True


def _u8(image):
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- suspects


def test_suspect_needs_low_fidelity_and_high_realism():
    config = SuspectConfig(fr_max=0.3, nr_min=0.6)
    assert suspect(0.3, 0.6, config)[0]  # both thresholds inclusive
    assert not suspect(0.31, 0.9, config)[0]
    assert not suspect(0.1, 0.59, config)[0]
    assert suspect(0.2, 0.9)[0] and not suspect(0.5, 0.9)[0]  # defaults fr_max 0.35, nr_min 0.6
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="normalised score"):
            suspect(bad, 0.5)
    with pytest.raises(ValueError):
        SuspectConfig(fr_max=2.0)


def test_suspect_reasons_are_sentences_with_the_values_and_thresholds():
    config = SuspectConfig(fr_max=0.3, nr_min=0.6)
    assert suspect(0.1, 0.9, config) == (True, ("Suspected hallucination: low fidelity to the HR (0.10, at most "
                                                "0.30) while it looks realistic (0.90, at least 0.60)."))
    assert suspect(0.0, 0.0, config)[1] == "Not a suspect: its realism (0.00) is below the 0.60 a hallucination needs."
    assert suspect(0.9, 0.9, config)[1] == ("Not a suspect: its fidelity to the HR (0.90) is too high for a "
                                            "hallucination (at most 0.30).")
    assert suspect(0.9, 0.1, config)[1] == ("Not a suspect: its fidelity to the HR (0.90) is too high for a "
                                            "hallucination (at most 0.30), and its realism (0.10) is below the "
                                            "0.60 a hallucination needs.")
    assert suspect(None, 0.9, config) == (False, ("Not a suspect: no fidelity (full-reference) score was measured, "
                                                  "so fidelity cannot be weighed against realism."))
    assert "no fidelity (full-reference) or realism (no-reference) score" in suspect(None, None, config)[1]
    for fr, nr in ((0.1, 0.9), (0.9, 0.1), (None, 0.5), (0.31, 0.9)):
        reason = suspect(fr, nr, config)[1]
        assert reason[0].isupper() and reason.endswith(".") and ":" in reason and "<" not in reason


# ----------------------------------------------------------------------------- measured attributes


def test_identical_crops_are_matched_and_get_the_fallback_text():
    attrs = measure(_u8(HR), _u8(HR), MASK)
    assert attrs.area == int(MASK.sum()) and attrs.flags() == [] and attrs.colour_shift == []
    assert attrs.sharpness_ratio == pytest.approx(1.0) and attrs.delta_e == pytest.approx(0.0)
    assert TemplateWriter().write(attrs) == ("unnatural artifacts, unfaithful details", "natural, clean texture faithful to the input")


def test_sharpened_crop_is_over_sharpened_with_ringing():
    sharp = np.clip(HR + 1.5 * (HR - _blur(HR)), 0, 1)
    attrs = measure(sharp, HR, MASK)
    assert attrs.sharpness_ratio > 1.5 and attrs.sharpness == "over_sharpened"
    assert attrs.has_ringing and attrs.edge_ringing > 2.0
    negative, positive = TemplateWriter().write(attrs)
    assert negative.startswith("over-sharpened") and "ringing" in negative
    assert positive.startswith("natural") and "clean edges" in positive


def test_blurred_crop_is_over_smoothed():
    attrs = measure(_blur(HR), HR, MASK)
    assert attrs.sharpness_ratio < 1 / 1.5 and attrs.sharpness == "over_smoothed"
    assert not attrs.has_ringing and not attrs.has_invented_texture
    negative, positive = TemplateWriter().write(attrs)
    assert "over-smoothed" in negative and "blurry" in negative
    assert "crisp fine detail" in positive


@pytest.mark.parametrize(
    "shift, word",
    [
        ((0.06, 0.0, -0.06), "warmer"),
        ((-0.06, 0.0, 0.06), "cooler"),
        ((0.08, 0.08, 0.08), "brighter"),
        ((-0.08, -0.08, -0.08), "darker"),
        ((0.0, 0.08, 0.0), "greener"),
    ],
)
def test_colour_shift_direction(shift, word):
    attrs = measure(np.clip(HR + np.array(shift), 0, 1), HR, MASK)
    assert word in attrs.colour_shift and attrs.delta_e > 3
    opposite = {"warmer": "cooler", "cooler": "warmer", "brighter": "darker", "darker": "brighter", "greener": "more magenta"}
    assert opposite[word] not in attrs.colour_shift
    assert attrs.sharpness == "matched"
    negative, positive = TemplateWriter().write(attrs)
    assert negative.startswith("colour shifted ") and word in negative
    assert "accurate colour" in positive


def test_flat_hr_and_noisy_candidate_is_invented_texture():
    flat = np.full((H, H, 3), 0.5)
    noisy = np.clip(flat + np.random.default_rng(1).normal(0, 0.05, (H, H, 1)), 0, 1)
    attrs = measure(_u8(noisy), _u8(flat), MASK)
    assert attrs.flat_fraction == pytest.approx(1.0)
    assert attrs.has_invented_texture and attrs.invented_texture > 0.02
    assert attrs.edge_ringing is None  # no HR edges to measure next to
    negative, _ = TemplateWriter().write(attrs)
    assert "invented high-frequency texture" in negative
    # noise only where the HR is textured is not "invented"
    textured_noise = np.clip(HR + np.where(np.arange(H) >= H // 2, 1, 0)[None, :, None] * np.random.default_rng(2).normal(0, 0.02, (H, H, 1)), 0, 1)
    assert not measure(textured_noise, HR, MASK).has_invented_texture


def test_contrast_ratio_and_only_the_mask_counts():
    mean = HR[MASK].mean(axis=0)
    stretched = np.clip(mean + 1.6 * (HR - mean), 0, 1)
    attrs = measure(stretched, HR, MASK)
    assert attrs.contrast_ratio > 1.25 and attrs.contrast == "higher"
    assert "exaggerated contrast" in TemplateWriter().write(attrs)[0]
    washed = mean + 0.5 * (HR - mean)
    assert measure(washed, HR, MASK).contrast == "lower"
    # a colour shift outside the mask is invisible
    outside = HR.copy()
    outside[~MASK] = np.clip(outside[~MASK] + 0.3, 0, 1)
    left = np.zeros((H, H), bool)
    left[8:56, 8:24] = True
    assert measure(outside, HR, left).colour_shift == []


def test_measure_input_checks_and_config():
    with pytest.raises(ValueError, match="empty mask"):
        measure(HR, HR, np.zeros((H, H), bool))
    with pytest.raises(ValueError, match="shape mismatch"):
        measure(HR[:32], HR, MASK)
    no_ring = measure(np.clip(HR + 1.5 * (HR - _blur(HR)), 0, 1), HR, MASK, MeasureConfig(measure_ringing=False))
    assert no_ring.edge_ringing is None and not no_ring.has_ringing
    with pytest.raises(ValueError):
        MeasureConfig(sharpness_factor=0.5)
    for name, field in MeasureConfig.model_fields.items():
        assert field.description, name


# ----------------------------------------------------------------------------- template writer


def test_template_is_deterministic_bounded_and_labelled():
    sharp = measure(np.clip(HR + 1.5 * (HR - _blur(HR)) + np.array([0.06, 0, -0.06]), 0, 1), HR, MASK)
    writer = TemplateWriter()
    first = writer.write(sharp, hallucination=True)
    assert first == TemplateWriter().write(sharp, hallucination=True) == writer.write(sharp, True)
    negative, positive = first
    assert negative.startswith("hallucinated details, over-sharpened")
    assert "warmer" in negative and "faithful to the input" in positive
    assert len(negative) <= 160 and len(positive) <= 160
    short = TemplateWriter(TemplateConfig(max_phrases=2, max_chars=40))
    negative, positive = short.write(sharp, True)
    assert negative == "hallucinated details, over-sharpened" and len(positive) <= 40
    assert len(negative.split(", ")) <= 2
    labelled = writer.write(sharp, False, RegionContext(label="foliage"))
    assert labelled[0].startswith("foliage, over-sharpened") and labelled[1].startswith("foliage, natural")
    assert writer.write(None, True) == ("hallucinated details", "natural, clean texture faithful to the input")
    record = json.loads(json.dumps(writer.describe()))
    assert record["name"] == "template" == writer.name and record["vocabulary"].keys() == VOCABULARY.keys()


def test_vocabulary_is_documented():
    doc = (PACKAGE / "template.py").read_text()
    for negative, positive in VOCABULARY.values():
        assert negative.split("{")[0].strip() in doc and positive in doc
    assert set(COLOUR_DIRECTIONS) >= {"warmer", "cooler", "brighter", "darker"}


# ----------------------------------------------------------------------------- captioners


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioners")
    return {kind: build_tiny_captioner(root / kind, kind) for kind in ("blip", "git")}


def _crops():
    return [np.zeros((40, 50, 3), np.uint8), np.full((40, 50, 3), 255, np.uint8)]


@pytest.mark.parametrize("kind", ["blip", "git"])
def test_tiny_captioner_reloads_and_generates(tiny_models, kind):
    folder = tiny_models[kind]
    assert {"config.json", "model.safetensors"} <= set(os.listdir(folder))
    config = CaptionerConfig(model=folder, negative_prompt="a photo of", positive_prompt="describe this region", max_new_tokens=8, num_beams=2)
    captioner = HFCaptioner(config)
    assert isinstance(captioner, Captioner) and captioner.name == kind and captioner.prompt_style == kind
    assert type(captioner.model).__name__ == {"blip": "BlipForConditionalGeneration", "git": "GitForCausalLM"}[kind]
    negative = captioner.caption(_crops(), "negative")
    assert len(negative) == 2 and all(isinstance(text, str) and text for text in negative)
    assert negative[0] != negative[1]  # the image reaches the decoder
    assert negative == captioner.caption(_crops(), "negative")  # deterministic
    assert not any(text.startswith("a photo of") for text in negative)  # strip_prompt
    assert len(captioner.generate(_crops() * 2)) == 4  # unconditional, larger batch
    kept = HFCaptioner(config.model_copy(update={"strip_prompt": False, "batch_size": 1}))
    assert all(text.startswith("a photo of") for text in kept.caption(_crops()))
    generic = HFCaptioner(config.model_copy(update={"prompt_style": "processor", "model_class": "image-text-to-text"}))
    assert [type(t) for t in generic.caption(_crops())] == [str, str]
    assert json.loads(json.dumps(captioner.describe()))["class"] == type(captioner.model).__name__


def test_vlm_style_question_goes_through_the_chat_template(tiny_models):
    config = CaptionerConfig(model=tiny_models["git"], prompt_style="processor", negative_prompt="Describe the artifacts in this region", max_new_tokens=5, num_beams=1)
    captioner = HFCaptioner(config)
    template = "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    captioner.processor.chat_template = template
    inputs, prefix = captioner._inputs([to_pil(crop) for crop in _crops()], config.negative_prompt)
    text = captioner.processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True)
    assert text == "user : describe the artifacts in this region assistant :" and prefix == inputs["input_ids"].shape[1]
    assert "token_type_ids" not in inputs
    assert [type(t) for t in captioner.caption(_crops())] == [str, str]


def test_generated_tokenizer_is_deterministic_and_covers_text():
    assert generated_vocab() == generated_vocab()
    tokenizer, used = build_tokenizer("generated")
    assert used == "generated" and tokenizer.bos_token == "[DEC]"
    ids = tokenizer("Over-sharpened, invented high-frequency texture; zebra 42!")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "over - sharpened, invented high - frequency texture ; zebra 42!"


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(MissingCaptionerError, match=r"no folder at /nonexistent/blip"):
        HFCaptioner(CaptionerConfig(model="/nonexistent/blip"))
    with pytest.raises(MissingCaptionerError, match=r"not in the Hugging Face cache \(expected .*models--no-such-org--no-such-model"):
        HFCaptioner(CaptionerConfig(model="no-such-org/no-such-model", cache_dir=str(tmp_path / "hub")))
    with pytest.raises(MissingCaptionerError, match="has no config.json"):
        HFCaptioner(CaptionerConfig(model=str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MissingCaptionerError, match="has no weights"):
        HFCaptioner(CaptionerConfig(model=str(tmp_path)))


# ----------------------------------------------------------------------------- describe_feedback


def test_describe_feedback_template_human_and_captioner(tiny_models):
    sharp = _u8(HR + 1.5 * (HR - _blur(HR)))
    flag, reason = suspect(0.1, 0.9)
    fb = describe_feedback(sharp, _u8(HR), MASK, hallucination=flag, reason=reason)
    assert fb.source == fb.positive_source == "template" and fb.hallucination and fb.reason == reason
    assert fb.negative_text.startswith("hallucinated details, over-sharpened")
    assert fb.flags[:2] == ["hallucination", "over_sharpened"] and fb.attributes["sharpness"] == "over_sharpened"
    json.dumps(fb.model_dump())

    human = describe_feedback(sharp, _u8(HR), MASK, human_negative="  fake brick pattern on the wall ")
    assert human.negative_text == "fake brick pattern on the wall" and human.source == "human"
    assert human.positive_source == "template" and human.attributes == fb.attributes

    captioner = HFCaptioner(CaptionerConfig(model=tiny_models["git"], max_new_tokens=6, num_beams=1))
    items = [
        FeedbackInput(sharp, _u8(HR), MASK, True, reason),
        FeedbackInput(_u8(_blur(HR)), _u8(HR), MASK, human_negative="smeared leaves", human_positive="sharp leaves"),
    ]
    out = describe_feedback_batch(items, captioner=captioner, config=FeedbackConfig(fill_outside_mask=True))
    assert out[0].source == out[0].positive_source == "captioner:git"
    assert out[0].negative_text.endswith(fb.negative_text)  # caption + template phrases
    assert (out[1].negative_text, out[1].positive_text, out[1].source) == ("smeared leaves", "sharp leaves", "human")
    plain = describe_feedback(sharp, _u8(HR), MASK, captioner=captioner, config=FeedbackConfig(append_template=False))
    assert "over-sharpened" not in plain.negative_text and len(plain.negative_text) <= 240


# ----------------------------------------------------------------------------- layering


def test_package_layering_size_and_light_import():
    forbidden = {"prefect", "storage", "pipeline", "flows"}
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            assert not {name.split(".")[0] for name in names} & forbidden, path.name
        assert len(path.read_text().splitlines()) < 400, path.name
    code = "import sys, dspo_core.feedback; print(sorted(m for m in ('torch', 'transformers', 'prefect') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parents[1])
    assert result.stdout.strip() == "[]"
