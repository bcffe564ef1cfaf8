"""The offline, deterministic feedback writer: measured attributes -> (negative, positive) text.

The negative text says what the loser region shows, the positive text what the HR region
shows; both are training-time prompt / negative-prompt text (DSPO step 7). The writer is
a fixed vocabulary, so the same attributes always give the same texts; its ``name`` is
``"template"`` (``Feedback.source``) and ``describe()`` goes into the manifest.

Vocabulary (flag -> negative phrase / positive phrase), in output order:

========================  =====================================  ======================================
flag                      negative                               positive
========================  =====================================  ======================================
hallucination             hallucinated details                   clean texture faithful to the input
over_sharpened            over-sharpened                         natural sharpness
over_smoothed             over-smoothed, blurry                  crisp fine detail
invented_texture          invented high-frequency texture        clean texture faithful to the input
ringing                   ringing halos along edges              clean edges
colour                    colour shifted <directions>            accurate colour
higher_contrast           exaggerated contrast                   natural contrast
lower_contrast            washed-out, low contrast               natural contrast
========================  =====================================  ======================================

<directions> lists ``Attributes.colour_shift`` as "a", "a and b", "a, b and c" (warmer|cooler, more
magenta|greener, brighter|darker, more saturated|desaturated). Every positive text starts
with ``TemplateConfig.base_positive`` ("natural"); repeated phrases are written once.
With no flag: ``fallback_negative`` / base + ``fallback_positive``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .attributes import Attributes
from .config import TemplateConfig

#: Version of the vocabulary below; bump it when a phrase changes (it is in the manifest).
VOCABULARY_VERSION = 1

#: flag -> (negative phrase, positive phrase); the dict order is the output order.
VOCABULARY: dict[str, tuple[str, str]] = {
    "hallucination": ("hallucinated details", "clean texture faithful to the input"),
    "over_sharpened": ("over-sharpened", "natural sharpness"),
    "over_smoothed": ("over-smoothed, blurry", "crisp fine detail"),
    "invented_texture": ("invented high-frequency texture", "clean texture faithful to the input"),
    "ringing": ("ringing halos along edges", "clean edges"),
    "colour": ("colour shifted {directions}", "accurate colour"),
    "higher_contrast": ("exaggerated contrast", "natural contrast"),
    "lower_contrast": ("washed-out, low contrast", "natural contrast"),
}

#: Every word the colour phrase may use for a direction.
COLOUR_DIRECTIONS: tuple[str, ...] = ("warmer", "cooler", "more magenta", "greener", "brighter", "darker", "more saturated", "desaturated")


class RegionContext(BaseModel):
    """What is known about the region besides its pixels (all optional).

    label: a noun phrase naming the region ("foliage", "a face"), e.g. from a human or an
    open-vocabulary segmenter; written before the phrases when ``include_label``.
    instance: the instance index, for the caller's bookkeeping (not written).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str | None = Field(None, description="noun phrase naming the region")
    instance: int | None = Field(None, description="instance index (not written)")


def join_words(words: list[str]) -> str:
    """["a"] -> "a", ["a", "b"] -> "a and b", ["a", "b", "c"] -> "a, b and c"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def bound_text(phrases: list[str], max_phrases: int, max_chars: int) -> str:
    """Join `phrases` with ", " keeping the first `max_phrases` and at most `max_chars`
    characters: whole phrases are dropped from the end; a first phrase that is too long
    alone is cut at a word boundary."""
    kept: list[str] = []
    for phrase in phrases[:max_phrases]:
        if len(", ".join(kept + [phrase])) > max_chars:
            break
        kept.append(phrase)
    if kept:
        return ", ".join(kept)
    return cut_words(phrases[0], max_chars) if phrases else ""


def cut_words(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` characters at a word boundary (trailing
    punctuation dropped); a single over-long word is cut hard."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1].rsplit(" ", 1)[0] if " " in text[: max_chars + 1] else text[:max_chars]
    return cut[:max_chars].rstrip(" ,;:")


class TemplateWriter:
    """Deterministic attributes -> text writer (no model, no randomness).

    ``write(attributes, hallucination, context)`` returns ``(negative_text,
    positive_text)``, each a comma-separated phrase list from ``VOCABULARY``, at most
    ``max_phrases`` phrases and ``max_chars`` characters.
    """

    name = "template"

    def __init__(self, config: TemplateConfig | None = None) -> None:
        self.config = config or TemplateConfig()

    def phrases(self, attributes: Attributes | None, hallucination: bool) -> tuple[list[str], list[str]]:
        """The negative and positive phrase lists before bounding (deduplicated, in
        vocabulary order, positive starting with ``base_positive``)."""
        flags = (["hallucination"] if hallucination else []) + (attributes.flags() if attributes is not None else [])
        negative: list[str] = []
        positive: list[str] = [self.config.base_positive]
        for flag in VOCABULARY:
            if flag not in flags:
                continue
            neg, pos = VOCABULARY[flag]
            if flag == "colour":
                neg = neg.format(directions=join_words(attributes.colour_shift))  # type: ignore[union-attr]
            for out, phrase in ((negative, neg), (positive, pos)):
                if phrase not in out:
                    out.append(phrase)
        if not negative:
            negative = [self.config.fallback_negative]
        if len(positive) == 1 and self.config.fallback_positive not in positive:
            positive.append(self.config.fallback_positive)
        return negative, positive

    def write(
        self, attributes: Attributes | None, hallucination: bool = False, context: RegionContext | None = None
    ) -> tuple[str, str]:
        """Write the feedback texts for one loser region.

        Args:
            attributes: ``measure(loser_crop, hr_crop, mask)`` (None: only the
                hallucination flag / fallbacks are used).
            hallucination: the instance is a hallucination suspect (or human-flagged).
            context: optional region label to prefix.

        Returns:
            ``(negative_text, positive_text)``, e.g. ``("over-sharpened, invented
            high-frequency texture, colour shifted warmer", "natural, natural sharpness,
            clean texture faithful to the input, accurate colour")``; each at most
            ``max_chars`` characters (label included).
        """
        negative, positive = self.phrases(attributes, hallucination)
        label = (context.label or "").strip() if context is not None and self.config.include_label else ""
        texts = []
        for phrases in (negative, positive):
            if label:
                phrases = [label] + phrases
            texts.append(bound_text(phrases, self.config.max_phrases + bool(label), self.config.max_chars))
        return texts[0], texts[1]

    def describe(self) -> dict:
        """JSON-able record of the writer for the manifest: name, vocabulary version and
        phrases, config."""
        return {
            "name": self.name,
            "vocabulary_version": VOCABULARY_VERSION,
            "vocabulary": {flag: list(pair) for flag, pair in VOCABULARY.items()},
            "config": self.config.model_dump(),
        }
