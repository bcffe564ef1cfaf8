"""Stage `ingest`: source images -> `hr_images` (schema: pipeline.schemas.HR_IMAGES)."""
from __future__ import annotations

import hashlib
import logging
from typing import Iterator

import pyarrow as pa

from pipeline.schemas import HR_IMAGES
from pipeline.config import IngestConfig, PipelineConfig
from pipeline.decode import BadImageError, decode_rgb
from pipeline.sources import list_source
from pipeline.stage import Shard, ShardOutput, Stage, make_shards
from storage import DatasetStore, image_cell

log = logging.getLogger("dspo.stage")


def split_of(image_id: str, fractions: dict[str, float]) -> str:
    """Deterministic split from the content hash, so re-ingesting never moves an image."""
    position = int(image_id[:8], 16) / 0xFFFFFFFF
    cumulative = 0.0
    for split, share in fractions.items():
        cumulative += share
        if position <= cumulative:
            return split
    return list(fractions)[-1]


class IngestStage(Stage):
    def section(self, config: PipelineConfig) -> IngestConfig:
        return config.ingest

    def schemas(self, section: IngestConfig) -> dict[str, pa.Schema]:
        return {"hr_images": HR_IMAGES}

    def identity(self, section: IngestConfig) -> list[tuple[str, str]]:
        return [(item.name, item.identity) for item in list_source(section.source)]

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: IngestConfig) -> list[Shard]:
        return make_shards([item.name for item in list_source(section.source)], section.shard_size)

    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: IngestConfig,
                  shard: Shard) -> ShardOutput:
        wanted = set(shard.items)
        rows, quarantine = [], []
        for item in list_source(section.source):
            if item.name not in wanted:
                continue
            try:
                data = item.read()
                pixels, notes = decode_rgb(data, section.max_pixels)
                if min(pixels.shape[:2]) < section.min_side:
                    raise BadImageError(f"{pixels.shape[1]}x{pixels.shape[0]} is under the minimum side "
                                        f"{section.min_side}")
            except BadImageError as exc:
                quarantine.append({"item": item.name, "reason": str(exc)})
                continue
            except OSError as exc:
                quarantine.append({"item": item.name, "reason": f"unreadable: {exc}"})
                continue
            image_id = hashlib.sha256(data).hexdigest()[:20]
            rows.append({
                "image_id": image_id, "source": item.name, "width": pixels.shape[1], "height": pixels.shape[0],
                "split": split_of(image_id, section.split_fractions), "image": image_cell(pixels),
                "notes": "; ".join(notes),
            })
        return ShardOutput(pa.Table.from_pylist(rows, schema=HR_IMAGES), quarantine)

    def finalize(self, tables: Iterator[pa.Table], side_outputs: dict[str, str]) -> Iterator[pa.Table]:
        """Drop repeated content across shards: the first file with given bytes wins."""
        seen: set[str] = set()
        for table in tables:
            keep = []
            for index, image_id in enumerate(table.column("image_id").to_pylist()):
                if image_id in seen:
                    log.info("ingest: %s repeats the content of an earlier file; stored once",
                             table.column("source")[index].as_py())
                    continue
                seen.add(image_id)
                keep.append(index)
            yield table.take(pa.array(keep, type=pa.int64()))
