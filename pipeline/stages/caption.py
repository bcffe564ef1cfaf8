"""Stage `caption`: `pairs` (+ scores, candidates, crops, masks) -> `preferences`
(schema: pipeline.schemas.PREFERENCES): the user-description feedback of DSPO.

A loser instance is a hallucination suspect when its fidelity to HR is low while its
realism is high, or when a human flagged it. Its negative text describes the loser region,
its positive text the HR region: human words first, then a captioner model if configured
(an image-to-text captioner, or with `kind: vlm` a chat VLM asked what is wrong in the region),
else the template writer over measured attributes. The manifest names the writer of every
text: `feedback_sources` counts them per role, and `fallback` says how many texts the
template wrote because the configured captioner gave none (or no parsable answer).
"""
from __future__ import annotations

import json
from collections import Counter
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import pyarrow as pa

from dspo_core.feedback import (
    FeedbackInput,
    HFCaptioner,
    TemplateWriter,
    VLMCaptioner,
    describe_feedback_batch,
    suspect,
)
from dspo_core.segment import rle
from pipeline.config import CaptionConfig, PipelineConfig
from pipeline.datasets import rgb_array, rows_by_sample
from pipeline.schemas import PREFERENCES
from pipeline.stage import Shard, ShardOutput, Stage, make_shards
from storage import DatasetStore


def crop_box(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


class CaptionStage(Stage):
    def section(self, config: PipelineConfig) -> CaptionConfig:
        return config.caption

    def schemas(self, section: CaptionConfig) -> dict[str, pa.Schema]:
        return {"preferences": PREFERENCES}

    def _captioner(self, section: CaptionConfig) -> AbstractContextManager[HFCaptioner | None]:
        """The configured captioner for this shard alone, or None (the template writer is used)."""
        if section.captioner is None:
            return nullcontext(None)
        build = VLMCaptioner if section.captioner.kind == "vlm" else HFCaptioner
        return self.model("captioner", section.captioner, lambda: build(section.captioner))

    def metadata(self, section: CaptionConfig) -> dict:
        with self._captioner(section) as captioner:
            return {"feedback_writer": TemplateWriter(section.feedback.template).describe(),
                    "captioner": captioner.describe() if captioner else None,
                    "fallback": None if captioner else "template writer (no captioner configured)"}

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: CaptionConfig) -> list[Shard]:
        ids = store.read_arrow(inputs["pairs"], columns=["sample_id"]).column(0).unique().to_pylist()
        return make_shards(ids, section.shard_size)

    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: CaptionConfig,
                  shard: Shard) -> ShardOutput:
        pairs = rows_by_sample(store, inputs["pairs"], PREFERENCES.names[:8] + [
            "human_hallucination", "human_description"], shard.items)
        hr_crops = rows_by_sample(store, inputs["lq_pairs"], ["sample_id", "hr"], shard.items)
        masks = {row["instance_id"]: row["mask"] for rows in rows_by_sample(
            store, inputs["instances"], ["sample_id", "instance_id", "mask"], shard.items).values() for row in rows}
        images = {row["candidate_id"]: row["image"] for rows in rows_by_sample(
            store, inputs["sr_candidates"], ["sample_id", "candidate_id", "image"], shard.items).values()
            for row in rows}
        family = {}
        for rows in rows_by_sample(store, inputs["instance_scores"],
                                   ["sample_id", "instance_id", "candidate_id", "metric", "normalised"],
                                   shard.items).values():
            for row in rows:
                if row["metric"] in ("fr_mean", "nr_mean"):
                    family[(row["instance_id"], row["candidate_id"], row["metric"])] = row["normalised"]
        writer = TemplateWriter(section.feedback.template)
        shard_pairs, items = [], []
        for sample_id in shard.items:
            hr = rgb_array(hr_crops[sample_id][0]["hr"])
            for pair in pairs.get(sample_id, []):
                shard_pairs.append(pair)
                items.append(self._feedback_input(pair, hr, masks, images, family, section))
        with self._captioner(section) as captioner:
            # One batch for the shard: the captioner sees `batch_size` crops per generate call.
            feedbacks = describe_feedback_batch(items, writer, captioner, section.feedback)
        rows, sources = [], {"negative": Counter(), "positive": Counter()}
        for pair, feedback in zip(shard_pairs, feedbacks, strict=True):
            rows.append({
                **{name: pair[name] for name in PREFERENCES.names[:8]}, "mask": masks[pair["instance_id"]],
                "hallucination": feedback.hallucination, "hallucination_reason": feedback.reason,
                "positive_text": feedback.positive_text, "negative_text": feedback.negative_text,
                "feedback_source": feedback.source, "attributes": json.dumps(feedback.attributes),
            })
            sources["negative"][feedback.source] += 1
            sources["positive"][feedback.positive_source] += 1
        return ShardOutput(pa.Table.from_pylist(rows, schema=PREFERENCES),
                           stats={"feedback_sources": {role: dict(count) for role, count in sources.items()},
                                  "captioner": section.captioner is not None})

    def summarize(self, stats: list[dict]) -> dict:
        """`feedback_sources` (role -> writer -> texts) over all shards; with a captioner
        configured, `fallback` names how many texts the template wrote in its place."""
        totals: dict[str, Counter] = {"negative": Counter(), "positive": Counter()}
        for shard in stats:
            for role, counts in shard.get("feedback_sources", {}).items():
                totals[role].update(counts)
        summary: dict = {"feedback_sources": {role: dict(sorted(count.items())) for role, count in totals.items()}}
        if any(shard.get("captioner") for shard in stats):
            missed = {role: count.get("template", 0) for role, count in totals.items()}
            if any(missed.values()):
                summary["fallback"] = (f"template writer for {missed['negative']} of {sum(totals['negative'].values())} "
                                       f"negative and {missed['positive']} of {sum(totals['positive'].values())} "
                                       "positive texts: the captioner gave no usable text for them")
        return summary

    @staticmethod
    def _feedback_input(pair: dict, hr: np.ndarray, masks: dict, images: dict, family: dict,
                        section: CaptionConfig) -> FeedbackInput:
        """What describe_feedback needs for one pair: the loser and HR crops of the instance's
        box, its mask there, the hallucination verdict and any human description."""
        mask = rle.decode(masks[pair["instance_id"]])
        box = crop_box(mask)
        loser = rgb_array(images[pair["loser_id"]])
        if pair["human_hallucination"]:
            flag, reason = True, "Flagged as a hallucination by a human annotator."
        else:
            flag, reason = suspect(family.get((pair["instance_id"], pair["loser_id"], "fr_mean")),
                                   family.get((pair["instance_id"], pair["loser_id"], "nr_mean")),
                                   section.feedback.suspect)
        return FeedbackInput(loser[box], hr[box], mask[box], hallucination=flag, reason=reason,
                             human_negative=pair["human_description"])
