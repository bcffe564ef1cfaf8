"""A tiny random-init Qwen2.5-VL, built from config with the real classes and saved like the real one.

Tests and offline runs load it through ``VLMCaptioner``'s real path (``from_pretrained`` of
``Qwen2_5_VLForConditionalGeneration`` and ``Qwen2_5_VLProcessor``, the chat template, the
image-text-to-text ``generate``). Its weights are random, so its answers are random tokens
that the parser rejects (the named template fallback) unless they happen to spell a key.

Tokenizer, built offline: a byte-level BPE (``tokenizers``, as Qwen2's) trained here on the
template vocabulary and the two prompts, with Qwen's special tokens (``<|im_start|>``,
``<|im_end|>``, ``<|vision_start|>``, ``<|image_pad|>``, ...), wrapped in
``Qwen2TokenizerFast``. The chat template lays a conversation out as Qwen2.5-VL's does (a
default system turn, ``<|im_start|>role ... <|im_end|>``, each image as
``<|vision_start|><|image_pad|><|vision_end|>``); the processor expands ``<|image_pad|>``
to one token per merged 28x28 patch.
"""

from __future__ import annotations

import os

from .template import COLOUR_DIRECTIONS, VOCABULARY
from .vlm import NEGATIVE_PROMPT, POSITIVE_PROMPT

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: Image sizes the tiny processor resizes crops into (pixels): 2x2 to 4x4 merged patches.
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112


def _corpus() -> list[str]:
    phrases = [p for pair in VOCABULARY.values() for p in pair] + list(COLOUR_DIRECTIONS)
    return [NEGATIVE_PROMPT, POSITIVE_PROMPT, *(f"wrong: {p}" for p in phrases), *(f"correct: {p}" for p in phrases)]


def build_qwen_tokenizer(vocab_size: int = 512):
    """A ``Qwen2TokenizerFast`` over a byte-level BPE trained offline on `_corpus()`
    (deterministic), with Qwen's special tokens; eos ``<|im_end|>``, pad ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_corpus(), trainer)
    return Qwen2TokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None)


def build_tiny_qwen_vl(directory: str | os.PathLike[str], seed: int = 0) -> str:
    """Build a tiny random-init Qwen2.5-VL (text: hidden 32, 1 layer; vision: depth 1, patch 14,
    merge 2) with its processor and save both with ``save_pretrained`` into `directory`.

    Returns the folder (str), loadable with ``VLMCaptioner(CaptionerConfig(kind="vlm", model=path))``.
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = build_qwen_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    special = {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]}, "initializer_range": 0.5, **special}
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "out_hidden_size": 32,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
              "fullatt_block_indexes": [0], "initializer_range": 0.5}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"], **special)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
                                    tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                                    chat_template=CHAT_TEMPLATE)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    model.eval().save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
