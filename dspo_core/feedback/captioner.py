"""Captioners: transformers image-to-text models that describe a crop in words.

``Captioner`` is the protocol ``describe_feedback`` uses: a ``name`` and
``caption(images, role)`` -> one string per image, ``role`` choosing the negative
(loser crop) or positive (HR crop) prompt. ``HFCaptioner`` implements it over any
transformers image-to-text model - BLIP, GIT, Florence-2, chat VLMs (Qwen2.5-VL, LLaVA,
...) - and its processor, loaded from a local folder or the Hugging Face cache with
``local_files_only=True``: nothing is ever downloaded; a missing model raises
``MissingCaptionerError`` naming where it was looked for.

torch and transformers are imported when a captioner is built, not with this module.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from .attributes import to_float_rgb
from .config import CaptionerConfig

Role = Literal["negative", "positive"]
WEIGHT_PATTERNS = (r".*\.safetensors$", r"^pytorch_model.*\.bin$", r".*\.safetensors\.index\.json$", r"^pytorch_model\.bin\.index\.json$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class MissingCaptionerError(FileNotFoundError):
    """The captioner model is neither a local folder nor in the Hugging Face cache (or
    lacks config / weights). The message names the path or model id and where it was
    expected; nothing is downloaded at run time."""


@runtime_checkable
class Captioner(Protocol):
    """Anything that describes image crops in words.

    name: short model name, written into ``Feedback.source`` as ``captioner:<name>``.
    caption(images, role): one caption per image (PIL images or (H, W, 3) arrays), using
    the prompt for ``role`` ("negative": the loser crop, "positive": the HR crop).
    """

    name: str

    def caption(self, images: Sequence[Any], role: Role = "negative") -> list[str]: ...


def to_pil(image: Any) -> Image.Image:
    """An RGB PIL image from a PIL image or an (H, W, 3) uint8 / float [0, 1] array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(np.round(to_float_rgb(image) * 255.0).astype(np.uint8))


def _has_weights(folder: str) -> bool:
    return any(re.match(p, f) for f in os.listdir(folder) for p in WEIGHT_PATTERNS)


def resolve_model_dir(model: str, cache_dir: str | None = None, revision: str | None = None) -> str:
    """The local folder holding `model`: the path itself when it is a folder, else the
    cached snapshot of the Hub model id `model`.

    Raises:
        MissingCaptionerError: not a folder and not cached, or no config.json / weights.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    path = os.path.abspath(os.path.expanduser(model))
    if os.path.isdir(path):
        folder = path
    else:
        cache = cache_dir or constants.HF_HUB_CACHE
        expected = os.path.join(cache, "models--" + model.replace("/", "--"), "snapshots", revision or "<main>", "config.json")
        cached = try_to_load_from_cache(model, "config.json", cache_dir=cache, revision=revision) if _REPO_ID.match(model) else None
        if not isinstance(cached, str):
            raise MissingCaptionerError(
                f"captioner model {model!r} not found: no folder at {path}"
                + (f" and not in the Hugging Face cache (expected {expected})" if _REPO_ID.match(model) else "")
                + ". Nothing is downloaded at run time: save the model there with save_pretrained, or fetch it"
                " into the cache on a connected machine (huggingface-cli download <id>)."
            )
        folder = os.path.dirname(cached)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise MissingCaptionerError(f"captioner model {model!r}: {folder} has no config.json (expected a save_pretrained folder)")
    if not _has_weights(folder):
        raise MissingCaptionerError(
            f"captioner model {model!r}: {folder} has no weights (model*.safetensors or pytorch_model*.bin); "
            "the folder is incomplete or the cache holds only its config"
        )
    return folder


class HFCaptioner:
    """A transformers image-to-text model + processor as a ``Captioner``.

    Attributes: config, folder (resolved local folder), name, model, processor,
    prompt_style ("blip" | "git" | "processor"), device, dtype.
    """

    def __init__(self, config: CaptionerConfig) -> None:
        import torch
        from transformers import AutoConfig, AutoProcessor

        self.config = config
        self.folder = resolve_model_dir(config.model, config.cache_dir, config.revision)
        self.name = config.name or os.path.basename(config.model.rstrip("/\\")) or config.model
        common = {"local_files_only": True, "trust_remote_code": config.trust_remote_code}
        model_config = AutoConfig.from_pretrained(self.folder, **common)
        dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
        self.device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else "cpu" if config.device == "auto" else config.device)
        self.model = self._load(model_config, dtype, common).to(self.device).eval()
        self.dtype = self.model.dtype
        self.processor = AutoProcessor.from_pretrained(self.folder, **common)
        model_type = getattr(model_config, "model_type", "")
        auto_style = model_type if model_type in ("blip", "git") else "processor"
        self.prompt_style = auto_style if config.prompt_style == "auto" else config.prompt_style
        self._encoder_decoder = bool(getattr(self.model.config, "is_encoder_decoder", False))
        tokenizer = getattr(self.processor, "tokenizer", None)
        if self.prompt_style == "processor" and tokenizer is not None and not self._encoder_decoder:
            tokenizer.padding_side = "left"  # decoder-only generation continues the right end

    def _load(self, model_config: Any, dtype: Any, common: dict) -> Any:
        import transformers

        kind = self.config.model_class
        kwargs = {**common, "dtype": dtype}
        if kind == "auto":
            arch = (getattr(model_config, "architectures", None) or [None])[0]
            cls = getattr(transformers, arch, None) if arch else None
            if cls is not None and hasattr(cls, "from_pretrained"):
                return cls.from_pretrained(self.folder, **kwargs)
        if kind == "causal-lm":
            return transformers.AutoModelForCausalLM.from_pretrained(self.folder, **kwargs)
        if kind == "vision2seq" and hasattr(transformers, "AutoModelForVision2Seq"):
            return transformers.AutoModelForVision2Seq.from_pretrained(self.folder, **kwargs)
        try:  # transformers 5 folded AutoModelForVision2Seq into this
            return transformers.AutoModelForImageTextToText.from_pretrained(self.folder, **kwargs)
        except ValueError:
            if kind != "auto":
                raise
            return transformers.AutoModelForCausalLM.from_pretrained(self.folder, **kwargs)

    def prompt_for(self, role: Role) -> str | None:
        """The configured prompt for `role` (None: unconditional)."""
        return self.config.negative_prompt if role == "negative" else self.config.positive_prompt

    def caption(self, images: Sequence[Any], role: Role = "negative") -> list[str]:
        """One caption per image with the prompt for `role` (see ``generate``)."""
        return self.generate(images, self.prompt_for(role))

    def generate(self, images: Sequence[Any], prompt: str | None = None) -> list[str]:
        """Run ``model.generate`` on `images` (batches of ``batch_size``), deterministic
        (beam search or greedy, no sampling), with an optional text `prompt` shared by all.

        Returns:
            One whitespace-normalised string per image, special tokens removed; without
            the prompt tokens when ``strip_prompt`` (may be empty).
        """
        import torch

        out: list[str] = []
        for start in range(0, len(images), self.config.batch_size):
            chunk = [to_pil(image) for image in images[start : start + self.config.batch_size]]
            inputs, prefix = self._inputs(chunk, prompt or None)
            inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)) for k, v in inputs.items()}
            with torch.inference_mode():
                ids = self.model.generate(
                    **inputs,
                    max_new_tokens=self.config.max_new_tokens,
                    num_beams=self.config.num_beams,
                    do_sample=False,
                    repetition_penalty=self.config.repetition_penalty,
                )
            ids = ids[:, prefix if self.config.strip_prompt else 0 :]
            out += [" ".join(text.split()) for text in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return out

    def _inputs(self, images: list[Image.Image], prompt: str | None) -> tuple[dict, int]:
        """Model inputs for one batch and the number of leading output tokens that
        repeat the prompt."""
        import torch

        n, proc = len(images), self.processor
        if self.prompt_style == "blip":
            # BLIP's generate swaps [CLS] for its bos and drops the trailing [SEP]
            enc = proc(images=images, text=[prompt] * n, return_tensors="pt") if prompt else proc(images=images, return_tensors="pt")
            return dict(enc), (enc["input_ids"].shape[1] - 1 if prompt else 0)
        if self.prompt_style == "git":
            enc = {"pixel_values": proc(images=images, return_tensors="pt")["pixel_values"]}
            if prompt:
                tok = proc.tokenizer
                ids = tok([prompt] * n, add_special_tokens=False, return_tensors="pt")["input_ids"]
                start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
                enc["input_ids"] = torch.cat([torch.full((n, 1), start, dtype=ids.dtype), ids], dim=1)
                enc["attention_mask"] = torch.ones_like(enc["input_ids"])
            return enc, (enc["input_ids"].shape[1] if prompt else 0)
        text = prompt
        if self.config.use_chat_template and getattr(proc, "chat_template", None):
            content = [{"type": "image"}] + ([{"type": "text", "text": prompt}] if prompt else [])
            messages = [{"role": "user", "content": content}]
            text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if text is None:
            enc = proc(images=images, return_tensors="pt")
        else:
            enc = proc(images=images, text=[text] * n, return_tensors="pt", padding=True)
        enc = dict(enc)
        if "token_type_ids" in enc and "token_type_ids" not in inspect.signature(self.model.forward).parameters:
            del enc["token_type_ids"]  # BERT tokenizers add them; most generative models reject them
        prefix = 0 if self._encoder_decoder or "input_ids" not in enc else enc["input_ids"].shape[1]
        return enc, prefix

    def describe(self) -> dict:
        """JSON-able record for the manifest: name, model, resolved folder, class,
        prompt style, config."""
        return {
            "name": self.name,
            "model": self.config.model,
            "folder": self.folder,
            "class": type(self.model).__name__,
            "prompt_style": self.prompt_style,
            "config": self.config.model_dump(),
        }
