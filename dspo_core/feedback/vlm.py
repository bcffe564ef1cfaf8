"""Feedback text as DSPO makes it: a chat VLM (Qwen2.5-VL) says what is wrong in a region.

``VLMCaptioner`` is a ``Captioner`` (``CaptionerConfig(kind="vlm")``): it runs a chat VLM
through transformers' image-text-to-text path (the class in config.json's architectures,
e.g. ``Qwen2_5_VLForConditionalGeneration``, and its processor's chat template), one user
turn holding the crop and the question, and parses the answer:

- the loser crop (role "negative") with ``NEGATIVE_PROMPT``, which asks what is wrong in the
  region and for one line ``wrong: <phrase>``; the phrase becomes ``negative_text``;
- the HR crop (role "positive") with ``POSITIVE_PROMPT``, which asks what the region shows
  and for one line ``correct: <phrase>``; the phrase becomes ``positive_text``.

``parse_answer`` takes the phrase after the first ``wrong:`` / ``correct:`` (up to the other
key or the line's end; markdown emphasis and quotes stripped), or that key of a JSON object answer. An answer without it, or
whose phrase is not text (control characters, mostly symbols: what a random-weight model
emits), gives an empty caption, so ``describe_feedback`` uses the template writer for that
item; every such fallback is counted in ``fallbacks`` and logged with the answer's start,
and the caption stage names the counts in the manifest.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from .captioner import HFCaptioner, Role
from .config import CaptionerConfig

log = logging.getLogger("dspo.feedback")

NEGATIVE_PROMPT = (
    "This image is one region of a super-resolved photo. Super-resolution can invent details that "
    "were not in the original: wrong textures, fake patterns, distorted shapes, over-sharpened edges, "
    "blur, noise or colour shifts. What is wrong in this region? Answer with exactly one line in the "
    "form 'wrong: <a short phrase naming the visible artifacts>'."
)
POSITIVE_PROMPT = (
    "This image is one region of a high-quality photo. Describe what this region shows and how its "
    "texture and detail look. Answer with exactly one line in the form 'correct: <a short phrase>'."
)
#: The key each role's answer line starts with.
ANSWER_KEYS: dict[str, str] = {"negative": "wrong", "positive": "correct"}
#: A parsed phrase must be at least this long and at least this share letters, digits or spaces.
MIN_PHRASE_CHARS = 3
MIN_TEXT_SHARE = 0.7
_EMPHASIS = re.compile(r"[*_`#>\"']+")


def _plain_text(phrase: str) -> bool:
    """True when `phrase` reads as words: no control characters, mostly letters / digits / spaces."""
    if len(phrase) < MIN_PHRASE_CHARS or any(unicodedata.category(c).startswith("C") for c in phrase):
        return False
    wordy = sum(c.isalnum() or c.isspace() for c in phrase)
    return wordy / len(phrase) >= MIN_TEXT_SHARE and any(c.isalpha() for c in phrase)


def _json_value(text: str, key: str) -> str | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        return None
    found = value.get(key) if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def parse_answer(text: str, role: Role) -> str | None:
    """The phrase a VLM answer gives for `role` ("negative": after ``wrong:``, "positive": after
    ``correct:``), whitespace-normalised and without trailing punctuation; None when the answer
    has no such line (nor JSON key) or its phrase is not plain text."""
    key = ANSWER_KEYS[role]
    phrase = _json_value(text, key)
    if phrase is None:
        # Captioners normalise whitespace, so the answer's lines may arrive joined by spaces.
        cleaned = _EMPHASIS.sub("", text)
        found = re.search(rf"(?<![A-Za-z]){key}\s*:", cleaned, flags=re.IGNORECASE)
        if found is not None:
            rest = cleaned[found.end():]
            others = "|".join(other for other in ANSWER_KEYS.values() if other != key)
            phrase = re.split(rf"(?<![A-Za-z])(?:{others})\s*:|\n", rest, flags=re.IGNORECASE)[0]
    if phrase is None:
        return None
    phrase = " ".join(_EMPHASIS.sub("", phrase).split()).strip(" .;,")
    return phrase if _plain_text(phrase) else None


class VLMCaptioner(HFCaptioner):
    """A chat VLM as ``Captioner``: ``caption(images, role)`` returns the parsed phrase per crop,
    "" where the answer could not be parsed (the template writer then writes that text).

    Attributes (besides HFCaptioner's): fallbacks (role -> answers that could not be parsed,
    since construction), answers (role -> answers generated).
    """

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__(config.model_copy(update={"prompt_style": "processor", "use_chat_template": True}))
        if not getattr(self.processor, "chat_template", None):
            raise ValueError(f"VLM captioner {config.model!r}: its processor has no chat template "
                             "(a chat VLM such as Qwen2.5-VL ships one in chat_template.jinja / .json)")
        self.fallbacks: dict[str, int] = {"negative": 0, "positive": 0}
        self.answers: dict[str, int] = {"negative": 0, "positive": 0}

    def prompt_for(self, role: Role) -> str:
        """The configured prompt for `role`, else NEGATIVE_PROMPT / POSITIVE_PROMPT."""
        configured = super().prompt_for(role)
        return configured or (NEGATIVE_PROMPT if role == "negative" else POSITIVE_PROMPT)

    def caption(self, images: Sequence[Any], role: Role = "negative") -> list[str]:
        """One parsed phrase per image ("" where the answer had no usable ``wrong:`` / ``correct:`` line)."""
        answers = self.generate(images, self.prompt_for(role))
        phrases = [parse_answer(answer, role) for answer in answers]
        failed = [answer for answer, phrase in zip(answers, phrases, strict=True) if phrase is None]
        self.answers[role] += len(answers)
        if failed:
            self.fallbacks[role] += len(failed)
            log.warning("VLM %s: %d of %d %s answers had no usable '%s:' line; the template writer writes those "
                        "(first answer: %r)", self.name, len(failed), len(answers), role, ANSWER_KEYS[role],
                        failed[0][:80])
        return [phrase or "" for phrase in phrases]

    def describe(self) -> dict:
        """HFCaptioner's record plus kind 'vlm', the two prompts and the answer keys."""
        return {**super().describe(), "kind": "vlm", "negative_prompt": self.prompt_for("negative"),
                "positive_prompt": self.prompt_for("positive"), "answer_keys": dict(ANSWER_KEYS)}
