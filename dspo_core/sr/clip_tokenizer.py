"""The real CLIP BPE tokenizer, rebuilt offline from the vocabulary that ships in the `openai-clip` wheel.

OpenAI's CLIP tokenizer (the one Stable Diffusion's text encoders were trained with) is
defined by one file, ``clip/bpe_simple_vocab_16e6.txt.gz``: a header line and BPE merges.
Its vocabulary is derived from the merges (CLIP's ``SimpleTokenizer``): the 256 byte
symbols, the same with the end-of-word marker ``</w>``, one token per merge, then
``<|startoftext|>`` and ``<|endoftext|>`` — 49408 ids. Writing that out as ``vocab.json``
and ``merges.txt`` gives ``transformers.CLIPTokenizer`` the same ids as the original
(``"a photo of a cat"`` -> ``[49406, 320, 1125, 539, 320, 2368, 49407]``), with no download.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os

from transformers import CLIPTokenizer

VOCAB_RESOURCE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merges, so that bytes + merges + 2 specials = 49408 ids.
_NUM_MERGES = 49152 - 256 - 2
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-level BPE: every byte gets a printable unicode stand-in; the order
    # of this table fixes the first 256 token ids.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes)))


def clip_vocab_path() -> str:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed `openai-clip` package.

    Located with ``importlib.util.find_spec`` so that ``clip`` is never imported (its
    ``__init__`` needs ``pkg_resources``, absent from setuptools >= 81).
    """
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the CLIP BPE vocabulary ships in the `openai-clip` package, which is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], VOCAB_RESOURCE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the `openai-clip` package has no {VOCAB_RESOURCE} (looked for {path})")
    return path


def write_clip_vocab(directory: str) -> str:
    """Write ``vocab.json`` and ``merges.txt`` (Hugging Face CLIP format) into `directory`.

    Returns `directory`. The merges file keeps a ``#version: 0.2`` header, which
    ``CLIPTokenizer`` skips like the original CLIP code skips the first line.
    """
    with gzip.open(clip_vocab_path(), "rt", encoding="utf-8") as handle:
        merges = handle.read().split("\n")[1 : _NUM_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(merge.split()) for merge in merges] + [BOS_TOKEN, EOS_TOKEN]
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as handle:
        json.dump({token: index for index, token in enumerate(tokens)}, handle, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as handle:
        handle.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory


def load_clip_tokenizer(directory: str, model_max_length: int = 77) -> CLIPTokenizer:
    """Write the vocabulary into `directory` and load it as a ``CLIPTokenizer``.

    Padding uses the end-of-text token (SD 1.x's choice). SD 2.x's tokenizer config pads
    with ``"!"`` instead, which makes Hugging Face split every ``"!"`` into its own special
    token (``"!!"`` becomes two ids 0 instead of CLIP's 748); we keep CLIP's ids exact.

    Args:
        directory: where ``vocab.json`` and ``merges.txt`` are written (a scratch folder;
            ``save_pretrained`` of a pipeline later copies the tokenizer next to the model).
        model_max_length: prompt length in tokens; 77 for every Stable Diffusion model.
    """
    write_clip_vocab(directory)
    return CLIPTokenizer.from_pretrained(directory, model_max_length=model_max_length)
