"""The chat-VLM feedback path (dspo_core.feedback.vlm): answers parsed into negative / positive
text, and a tiny Qwen2.5-VL built from config with the real model, processor and tokenizer
classes (the caption stage runs the full profile's `caption:` section on it in
tests/test_stages_preferences.py, beside the store those tests build)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dspo_core.feedback import (
    NEGATIVE_PROMPT,
    CaptionerConfig,
    VLMCaptioner,
    build_tiny_qwen_vl,
    parse_answer,
    to_pil,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("answer, negative, positive", [
    ("wrong: over-sharpened bricks, fake texture.", "over-sharpened bricks, fake texture", None),
    ("Sure! **Wrong:** blurry leaves\ncorrect: sharp green leaves", "blurry leaves", "sharp green leaves"),
    ("wrong: smeared fur correct: fine cat fur", "smeared fur", "fine cat fur"),
    ('{"wrong": "ringing halos", "correct": "clean edges"}', "ringing halos", "clean edges"),
    ("\x1a\ufffd\ufffdWha\ufffd\x0c wrong: \ufffd\x0f", None, None),
    ("wrong: ??!", None, None),
    ("The region looks fine to me.", None, None),
])
def test_parse_answer_takes_the_asked_line_and_rejects_garbage(answer, negative, positive):
    assert parse_answer(answer, "negative") == negative
    assert parse_answer(answer, "positive") == positive


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_qwen_vl(tmp_path_factory.mktemp("vlm") / "tiny-qwen2.5-vl")


def _crops():
    return [np.zeros((40, 50, 3), np.uint8), np.full((70, 30, 3), 255, np.uint8)]


def test_tiny_qwen_vl_runs_the_chat_template_and_counts_fallbacks(tiny_vlm):
    captioner = VLMCaptioner(CaptionerConfig(kind="vlm", model=tiny_vlm, name="tiny-vlm", max_new_tokens=8, num_beams=1))
    assert type(captioner.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(captioner.processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(captioner.processor.tokenizer).__name__.startswith("Qwen2Tokenizer")
    inputs, prefix = captioner._inputs([to_pil(crop) for crop in _crops()], captioner.prompt_for("negative"))
    tokenizer = captioner.processor.tokenizer
    text = tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=False)
    assert "<|im_start|>user\n<|vision_start|><|image_pad|>" in text and text.endswith("<|im_start|>assistant\n")
    assert NEGATIVE_PROMPT in text and prefix == inputs["input_ids"].shape[1]
    image_tokens = (inputs["input_ids"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum(dim=1)
    assert image_tokens.tolist() == (inputs["image_grid_thw"].prod(dim=1) // 4).tolist()  # one per merged patch

    negative = captioner.caption(_crops(), "negative")
    assert negative == captioner.caption(_crops(), "negative")  # greedy: deterministic
    assert captioner.answers["negative"] == 4
    assert captioner.fallbacks["negative"] == 2 * sum(text == "" for text in negative)
    record = captioner.describe()
    assert record["kind"] == "vlm" and record["answer_keys"] == {"negative": "wrong", "positive": "correct"}
