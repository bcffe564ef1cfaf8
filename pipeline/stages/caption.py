"""Stage `caption`: `pairs` (+ scores, candidates, crops, masks) -> `preferences`
(schema: pipeline.schemas.PREFERENCES): the user-description feedback of DSPO.

A loser instance is a hallucination suspect when its fidelity to HR is low while its
realism is high, or when a human flagged it. Its negative text describes the loser region,
its positive text the HR region: human words first, then a captioner model if configured,
else the template writer over measured attributes (named in the manifest).
"""
from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import pyarrow as pa

from dspo_core.feedback import HFCaptioner, TemplateWriter, describe_feedback, suspect
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
        return self.model("captioner", section.captioner, lambda: HFCaptioner(section.captioner))

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
        rows = []
        with self._captioner(section) as captioner:
            for sample_id in shard.items:
                hr = rgb_array(hr_crops[sample_id][0]["hr"])
                rows += [self._preference(pair, hr, masks, images, family, writer, captioner, section)
                         for pair in pairs.get(sample_id, [])]
        return ShardOutput(pa.Table.from_pylist(rows, schema=PREFERENCES))

    @staticmethod
    def _preference(pair: dict, hr: np.ndarray, masks: dict, images: dict, family: dict, writer: TemplateWriter,
                    captioner: HFCaptioner | None, section: CaptionConfig) -> dict:
        """One preferences row: the pair, its mask, the hallucination verdict and the two texts."""
        mask = rle.decode(masks[pair["instance_id"]])
        box = crop_box(mask)
        loser = rgb_array(images[pair["loser_id"]])
        if pair["human_hallucination"]:
            flag, reason = True, "Flagged as a hallucination by a human annotator."
        else:
            flag, reason = suspect(family.get((pair["instance_id"], pair["loser_id"], "fr_mean")),
                                   family.get((pair["instance_id"], pair["loser_id"], "nr_mean")),
                                   section.feedback.suspect)
        feedback = describe_feedback(loser[box], hr[box], mask[box], hallucination=flag, reason=reason,
                                     human_negative=pair["human_description"], writer=writer,
                                     captioner=captioner, config=section.feedback)
        return {
            **{name: pair[name] for name in PREFERENCES.names[:8]}, "mask": masks[pair["instance_id"]],
            "hallucination": feedback.hallucination, "hallucination_reason": feedback.reason,
            "positive_text": feedback.positive_text, "negative_text": feedback.negative_text,
            "feedback_source": feedback.source, "attributes": json.dumps(feedback.attributes),
        }
