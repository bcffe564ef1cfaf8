"""From one loser instance to its feedback text (DSPO step 7): the ``Feedback`` record.

Precedence, for each of the negative (loser crop) and positive (HR crop) texts:

1. a human description, used as written (``source="human"``);
2. a captioner's caption of the crop, with the template phrases appended when
   ``FeedbackConfig.append_template`` (``source="captioner:<name>"``); an empty caption
   falls through to 3;
3. the template writer on the measured attributes (``source="template"``).

The attributes are always measured (numpy, inside the mask) and kept in the record.
``describe_feedback_batch`` captions all crops of a batch in two ``generate`` calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .attributes import measure, to_float_rgb
from .captioner import Captioner
from .config import FeedbackConfig
from .template import RegionContext, TemplateWriter, cut_words


class Feedback(BaseModel):
    """The text feedback for one loser instance.

    Sources are "human", "captioner:<name>" or "template" (the writer's name).
    """

    model_config = ConfigDict(frozen=True)

    negative_text: str = Field(description="what the loser region shows: negative-prompt text for training")
    positive_text: str = Field(description="what the HR region shows: prompt text for training")
    source: str = Field(description="origin of negative_text: 'human' | 'captioner:<name>' | 'template'")
    positive_source: str = Field(description="origin of positive_text, same vocabulary")
    attributes: dict[str, Any] = Field(description="the measured Attributes of the region (Attributes.model_dump())")
    flags: list[str] = Field(description="flagged attributes (template vocabulary keys), 'hallucination' first when set")
    hallucination: bool = Field(description="hallucination suspect (automatic test or human flag)")
    reason: str = Field(description="why it is (not) a suspect, from suspect() or the human flag")


@dataclass(frozen=True)
class FeedbackInput:
    """One loser instance to describe.

    loser_crop, hr_crop: pixel-aligned (H, W, 3) crops (uint8 / float [0, 1] / PIL);
    mask: (H, W) bool instance mask; hallucination, reason: from ``suspect`` or a human
    flag; human_negative / human_positive: human descriptions (take precedence);
    context: optional region label for the template.
    """

    loser_crop: Any
    hr_crop: Any
    mask: Any
    hallucination: bool = False
    reason: str = ""
    human_negative: str | None = None
    human_positive: str | None = None
    context: RegionContext | None = None


def _caption_image(crop: Any, mask: Any, fill: bool) -> Any:
    if not fill:
        return crop
    image = to_float_rgb(crop).copy()
    image[~np.asarray(mask).astype(bool)] = 0.5
    return image


def _pick(human: str | None, caption: str | None, template: str, captioner_name: str | None, config: FeedbackConfig) -> tuple[str, str]:
    if human is not None and human.strip():
        return human.strip(), "human"
    if caption:
        text = f"{caption}, {template}" if config.append_template else caption
        return cut_words(text, config.max_chars), f"captioner:{captioner_name}"
    return template, "template"


def describe_feedback_batch(
    items: Sequence[FeedbackInput],
    writer: TemplateWriter | None = None,
    captioner: Captioner | None = None,
    config: FeedbackConfig | None = None,
) -> list[Feedback]:
    """``describe_feedback`` for many instances; the captioner (if any) is called once for
    the loser crops and once for the HR crops that no human text covers.

    Returns:
        One ``Feedback`` per item, in order.
    """
    config = config or FeedbackConfig()
    writer = writer or TemplateWriter(config.template)
    attributes = [measure(it.loser_crop, it.hr_crop, it.mask, config.measure) for it in items]
    templates = [writer.write(attrs, it.hallucination, it.context) for attrs, it in zip(attributes, items, strict=True)]
    captions: dict[str, list[str | None]] = {"negative": [None] * len(items), "positive": [None] * len(items)}
    if captioner is not None:
        for role, crop_of, human_of in (
            ("negative", lambda it: it.loser_crop, lambda it: it.human_negative),
            ("positive", lambda it: it.hr_crop, lambda it: it.human_positive),
        ):
            todo = [i for i, it in enumerate(items) if not (human_of(it) or "").strip()]
            if todo:
                images = [_caption_image(crop_of(items[i]), items[i].mask, config.fill_outside_mask) for i in todo]
                texts = captioner.caption(images, role)
                if len(texts) != len(todo):
                    raise ValueError(f"captioner {getattr(captioner, 'name', '?')!r} returned {len(texts)} captions for {len(todo)} images")
                for i, text in zip(todo, texts, strict=True):
                    captions[role][i] = text.strip()
    name = getattr(captioner, "name", None)
    out = []
    for i, (it, attrs, (tmpl_neg, tmpl_pos)) in enumerate(zip(items, attributes, templates, strict=True)):
        negative, source = _pick(it.human_negative, captions["negative"][i], tmpl_neg, name, config)
        positive, positive_source = _pick(it.human_positive, captions["positive"][i], tmpl_pos, name, config)
        out.append(
            Feedback(
                negative_text=negative,
                positive_text=positive,
                source=source,
                positive_source=positive_source,
                attributes=attrs.model_dump(),
                flags=(["hallucination"] if it.hallucination else []) + attrs.flags(),
                hallucination=it.hallucination,
                reason=it.reason,
            )
        )
    return out


def describe_feedback(
    loser_crop: Any,
    hr_crop: Any,
    mask: Any,
    hallucination: bool = False,
    reason: str = "",
    human_negative: str | None = None,
    human_positive: str | None = None,
    writer: TemplateWriter | None = None,
    captioner: Captioner | None = None,
    context: RegionContext | None = None,
    config: FeedbackConfig | None = None,
) -> Feedback:
    """The feedback for one loser instance.

    Args:
        loser_crop, hr_crop: pixel-aligned (H, W, 3) crops of the instance's bounding
            box from the loser candidate and the HR (uint8, float [0, 1] or PIL).
        mask: (H, W) bool instance mask within the crops.
        hallucination, reason: the suspect flag and its reason (``suspect(...)``, or a
            human flag decided by the caller).
        human_negative, human_positive: human descriptions; when present they are used
            as written (source "human").
        writer: template writer (default ``TemplateWriter(config.template)``).
        captioner: optional ``Captioner`` (e.g. ``HFCaptioner``) for crops without
            human text.
        context: optional region label for the template.
        config: ``FeedbackConfig`` (default values when None).

    Returns:
        A ``Feedback`` record (negative_text, positive_text, source, positive_source,
        attributes, flags, hallucination, reason).
    """
    item = FeedbackInput(loser_crop, hr_crop, mask, hallucination, reason, human_negative, human_positive, context)
    return describe_feedback_batch([item], writer, captioner, config)[0]
