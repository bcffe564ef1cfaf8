"""Stage `ingest`: source images -> `hr_images` (schema: pipeline.schemas.HR_IMAGES).

Every entry the source lists (pipeline.sources) ends in exactly one outcome, counted in the
manifest's `metadata.files`:

- kept: stored as decoded;
- converted: stored with its conversions in `notes` (ICC profile, bit depth, frames dropped,
  alpha, ...; pipeline.decode has the rules);
- quarantined: an image that cannot be stored faithfully, listed in `metadata.quarantine`
  with the reason;
- skipped: not read (not an image extension, hidden, symlink loop, unreadable, ...) or the
  duplicate content of an earlier file, listed in `metadata.files.skipped_items` with the reason.
"""
from __future__ import annotations

import collections
import hashlib
import logging
from collections.abc import Iterator

import pyarrow as pa

from pipeline.config import IngestConfig, PipelineConfig
from pipeline.decode import BadImageError, decode_rgb
from pipeline.schemas import HR_IMAGES
from pipeline.sources import Skipped, SourceItem, list_source
from pipeline.stage import Shard, ShardOutput, Stage, make_shards
from storage import DatasetStore, image_cell

log = logging.getLogger("dspo.stage")
OUTCOMES = ("kept", "converted", "quarantined", "skipped")


def split_of(image_id: str, fractions: dict[str, float]) -> str:
    """Deterministic split from the content hash, so re-ingesting never moves an image."""
    position = int(image_id[:8], 16) / 0xFFFFFFFF
    cumulative = 0.0
    for split, share in fractions.items():
        cumulative += share
        if position <= cumulative:
            return split
    return list(fractions)[-1]


def earlier_source(first_sources: dict[str, str], image_id: str, source: str) -> str | None:
    """The source that first had this content, or None when `source` is the first (then remembered).
    Rows visited in shard order, then row order: the first file with given bytes wins."""
    first = first_sources.setdefault(image_id, source)
    return None if first == source else first


def _decoded_row(item: SourceItem, section: IngestConfig) -> dict:
    """The hr_images row of `item`; BadImageError (quarantine) or OSError (unreadable) if none."""
    data = item.read()
    pixels, notes = decode_rgb(data, section.max_pixels)
    if min(pixels.shape[:2]) < section.min_side:
        raise BadImageError(f"{pixels.shape[1]}x{pixels.shape[0]} is under the minimum side {section.min_side}")
    image_id = hashlib.sha256(data).hexdigest()[:20]
    return {"image_id": image_id, "source": item.name, "width": pixels.shape[1], "height": pixels.shape[0],
            "split": split_of(image_id, section.split_fractions), "image": image_cell(pixels),
            "notes": "; ".join(notes)}


class IngestStage(Stage):
    version = 2  # ICC profiles applied, float rule, integer/NaN quarantine, the files account

    def section(self, config: PipelineConfig) -> IngestConfig:
        return config.ingest

    def schemas(self, section: IngestConfig) -> dict[str, pa.Schema]:
        return {"hr_images": HR_IMAGES}

    def identity(self, section: IngestConfig) -> list[tuple[str, str]]:
        return [(entry.name, entry.identity if isinstance(entry, SourceItem) else f"skipped: {entry.reason}")
                for entry in list_source(section.source).entries]

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: IngestConfig) -> list[Shard]:
        """Shards of every entry the source lists, skipped ones included (each shard accounts for its own)."""
        return make_shards([entry.name for entry in list_source(section.source).entries], section.shard_size)

    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: IngestConfig,
                  shard: Shard) -> ShardOutput:
        """Rows of the shard's images; stats: `rows` ([source, image_id, converted] in row order,
        for the duplicate account), `quarantined` (count) and `skipped` ({item, reason} records)."""
        entries = {entry.name: entry for entry in list_source(section.source).entries}
        rows, quarantine, skipped = [], [], []
        for name in shard.items:
            entry = entries.get(name)
            if entry is None:
                quarantine.append({"item": name, "reason": "gone from the source since the stage was planned: "
                                                           "rerun ingest"})
                continue
            if isinstance(entry, Skipped):
                skipped.append({"item": name, "reason": entry.reason})
                continue
            try:
                rows.append(_decoded_row(entry, section))
            except BadImageError as exc:
                quarantine.append({"item": name, "reason": str(exc)})
            except OSError as exc:  # the strerror alone: the message would name a local path
                skipped.append({"item": name, "reason": f"unreadable: {exc.strerror or exc}"})
        for record in skipped:
            log.info("ingest: skipped %s: %s", record["item"], record["reason"])
        stats = {"rows": [[row["source"], row["image_id"], bool(row["notes"])] for row in rows],
                 "quarantined": len(quarantine), "skipped": skipped}
        return ShardOutput(pa.Table.from_pylist(rows, schema=HR_IMAGES), quarantine, stats=stats)

    def summarize(self, stats: list[dict]) -> dict:
        """`files`: how many entries the source held (`found`), the count of each outcome, and
        `skipped_items` ({item, reason}, duplicates named by the file they repeat)."""
        counts: collections.Counter[str] = collections.Counter()
        skipped: list[dict] = []
        first_sources: dict[str, str] = {}
        for shard in stats:
            counts["quarantined"] += shard["quarantined"]
            skipped.extend(shard["skipped"])
            for source, image_id, converted in shard["rows"]:
                first = earlier_source(first_sources, image_id, source)
                if first:
                    skipped.append({"item": source, "reason": f"duplicate content of {first}"})
                else:
                    counts["converted" if converted else "kept"] += 1
        counts["skipped"] = len(skipped)
        return {"files": {"found": sum(counts.values()), **{outcome: counts[outcome] for outcome in OUTCOMES},
                          "skipped_items": skipped}}

    def finalize(self, tables: Iterator[pa.Table], side_outputs: dict[str, str]) -> Iterator[pa.Table]:
        """Drop repeated content across shards: the first file with given bytes wins."""
        first_sources: dict[str, str] = {}
        for table in tables:
            keep = []
            for index, (image_id, source) in enumerate(zip(table.column("image_id").to_pylist(),
                                                           table.column("source").to_pylist())):
                first = earlier_source(first_sources, image_id, source)
                if first:
                    log.info("ingest: %s repeats the content of %s; stored once", source, first)
                    continue
                keep.append(index)
            yield table.take(pa.array(keep, type=pa.int64()))
