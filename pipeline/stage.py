"""The stage framework: fingerprint cache, crash-resumable shards, one publish at the end.

    job = prepare(STAGES["degrade"], store, config)        # pins inputs, computes the fingerprint
    if not job.cached:
        for shard in job.pending_shards(): job.run_shard(shard)   # flows map this over a task runner
        job.publish()
    job.result()

A stage's fingerprint hashes its name, code version, config section and pinned input refs.
If a version with that fingerprint exists it is returned (a cache hit) unless `force`.
Each finished shard is staged in the store's scratch area under the fingerprint, so a
rerun after a crash computes only the missing shards.
"""
from __future__ import annotations

import abc
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import pyarrow as pa
import pyarrow.compute as pc

import pipeline
from pipeline.config import PipelineConfig, Section
from storage import DatasetStore

log = logging.getLogger("dspo.stage")
QUARANTINE_KEY = b"dspo_quarantine"
NOTES_KEY = b"dspo_notes"
STATS_KEY = b"dspo_stats"


@dataclass(frozen=True)
class Shard:
    """A unit of work: `key` names it in scratch ("shard-00003"); `items` are stage-specific."""

    key: str
    items: tuple


@dataclass
class ShardOutput:
    """What `run_shard` returns: rows for the output dataset, items refused (each a dict with
    at least `item` and `reason`), notes (e.g. fallbacks used) for the manifest, and stats
    that the stage's `summarize` merges over all shards into the manifest metadata."""

    table: pa.Table
    quarantine: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


@dataclass
class StageResult:
    """The record of one stage run (what the CLI prints and flows publish as an artifact)."""

    stage: str
    ref: str
    cache_hit: bool
    rows: int
    shards_total: int = 0
    shards_computed: int = 0
    quarantined: list[dict] = field(default_factory=list)
    seconds: float = 0.0


class Stage(abc.ABC):
    """One pipeline stage. Subclasses set the class attributes and implement `plan` and `run_shard`."""

    name: ClassVar[str]
    output: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]] = ()
    #: Inputs used at their latest version when the store has them (e.g. human labels).
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    #: Bump when the stage's output changes for the same config and inputs (part of the fingerprint).
    version: ClassVar[int] = 1

    @abc.abstractmethod
    def section(self, config: PipelineConfig) -> Section:
        """This stage's part of the pipeline config."""

    @abc.abstractmethod
    def schema(self, section: Section) -> pa.Schema:
        """Arrow schema of the output dataset."""

    @abc.abstractmethod
    def plan(self, store: DatasetStore, inputs: dict[str, str], section: Section) -> list[Shard]:
        """Split the work into shards (deterministically: a rerun must plan the same keys)."""

    @abc.abstractmethod
    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: Section, shard: Shard) -> ShardOutput:
        """Compute one shard."""

    def identity(self, section: Section) -> Any:
        """Extra fingerprint material for inputs that are not datasets (e.g. a source folder listing)."""
        return None

    def metadata(self, section: Section) -> dict:
        """Extra manifest metadata (models used, fallbacks)."""
        return {}

    def summarize(self, stats: list[dict]) -> dict:
        """Manifest metadata merged from every shard's `ShardOutput.stats` (in shard order)."""
        return {}

    def finalize(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        """Last pass over the shard tables in order before publishing (e.g. de-duplication)."""
        return tables


def make_shards(ids: list, size: int) -> list[Shard]:
    """Consecutive chunks of `size` ids, keyed "shard-00000", "shard-00001", ..."""
    return [Shard(f"shard-{i // size:05d}", tuple(ids[i:i + size])) for i in range(0, len(ids), size)]


def ids_in_splits(store: DatasetStore, ref: str, id_column: str, splits: list[str]) -> list[str]:
    """The `id_column` values of `ref`'s rows whose `split` is one of `splits`, in stored order."""
    table = store.read_arrow(ref, columns=[id_column], filter=pc.field("split").isin(splits))
    return table.column(id_column).to_pylist()


def fingerprint_of(stage: Stage, section: Section, inputs: dict[str, str]) -> str:
    material = {
        "stage": stage.name,
        "stage_version": stage.version,
        "code_version": pipeline.__version__,
        "config": section.model_dump(mode="json"),
        "inputs": inputs,
        "identity": stage.identity(section),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


class StageJob:
    """One run of a stage against a store; see the module docstring for the sequence."""

    def __init__(self, stage: Stage, store: DatasetStore, config: PipelineConfig,
                 inputs: dict[str, str] | None = None, force: bool = False, run_id: str | None = None):
        self.stage, self.store, self.force, self.run_id = stage, store, force, run_id
        self.section = stage.section(config)
        given = dict(inputs or {})
        accepted = (*stage.inputs, *stage.optional_inputs)
        unknown = set(given) - set(accepted)
        if unknown:
            raise ValueError(f"stage {stage.name!r} takes inputs {list(accepted)}, not {sorted(unknown)}")
        wanted = [*stage.inputs, *(name for name in stage.optional_inputs if name in given or store.versions(name))]
        self.inputs = {name: store.resolve(given.get(name, f"{name}@latest")) for name in wanted}
        self.fingerprint = fingerprint_of(stage, self.section, self.inputs)
        self.started = time.perf_counter()
        self.cached_ref = None if force else store.find(self.fingerprint, name=stage.output)
        self.scratch = store.scratch(f"{stage.name}-{self.fingerprint[:32]}")
        self.shards: list[Shard] = []
        self.computed = 0
        self.ref: str | None = self.cached_ref
        if self.cached_ref:
            log.info("%s: cache hit, %s has fingerprint %s", stage.name, self.cached_ref, self.fingerprint[:12])
            return
        if force:
            self.scratch.clear()
        self.shards = stage.plan(store, self.inputs, self.section)

    @property
    def cached(self) -> bool:
        return self.cached_ref is not None

    def pending_shards(self) -> list[Shard]:
        done = set(self.scratch.names())
        pending = [shard for shard in self.shards if shard.key not in done]
        if len(pending) < len(self.shards):
            log.info("%s: %d of %d shards already staged by an earlier run; computing %d",
                     self.stage.name, len(self.shards) - len(pending), len(self.shards), len(pending))
        return pending

    def run_shard(self, shard: Shard) -> None:
        output = self.stage.run_shard(self.store, self.inputs, self.section, shard)
        for record in output.quarantine:
            log.warning("%s: quarantined %s: %s", self.stage.name, record["item"], record["reason"])
        extra = {QUARANTINE_KEY: json.dumps(output.quarantine).encode(), NOTES_KEY: json.dumps(output.notes).encode(),
                 STATS_KEY: json.dumps(output.stats).encode()}
        table = output.table.replace_schema_metadata({**(output.table.schema.metadata or {}), **extra})
        self.scratch.put(shard.key, table)
        self.computed += 1

    def _staged_tables(self, collected: dict) -> Iterator[pa.Table]:
        for shard in self.shards:
            table = self.scratch.get(shard.key)
            if table is None:
                raise RuntimeError(f"{self.stage.name}: shard {shard.key} is missing from scratch; rerun the stage")
            metadata = table.schema.metadata or {}
            collected["quarantine"].extend(json.loads(metadata.get(QUARANTINE_KEY, b"[]")))
            collected["stats"].append(json.loads(metadata.get(STATS_KEY, b"{}")))
            for note in json.loads(metadata.get(NOTES_KEY, b"[]")):
                if note not in collected["notes"]:
                    collected["notes"].append(note)
            yield table

    def publish(self) -> str:
        """Publish the staged shards as the next version of the output dataset; clears scratch."""
        schema = self.stage.schema(self.section)
        collected: dict[str, list] = {"quarantine": [], "notes": [], "stats": []}
        batches = (batch for table in self.stage.finalize(self._staged_tables(collected))
                   for batch in table.select(schema.names).cast(schema).to_batches())
        metadata = {"stage": self.stage.name, "config": self.section.model_dump(mode="json"),
                    "shards": len(self.shards), **self.stage.metadata(self.section)}
        self.ref = self.store.publish(
            self.stage.output, batches, inputs=list(self.inputs.values()), fingerprint=self.fingerprint,
            metadata=lambda: {**metadata, **self.stage.summarize(collected["stats"]),
                              "quarantine": collected["quarantine"], "notes": collected["notes"]},
            run_id=self.run_id, schema=schema,
        )
        self.scratch.clear()
        log.info("%s: published %s (%d shards computed, %d reused, %d quarantined)", self.stage.name, self.ref,
                 self.computed, len(self.shards) - self.computed, len(collected["quarantine"]))
        return self.ref

    def result(self) -> StageResult:
        manifest = self.store.manifest(self.ref)
        return StageResult(
            stage=self.stage.name, ref=self.ref, cache_hit=self.cached, rows=manifest["rows"],
            shards_total=len(self.shards), shards_computed=self.computed,
            quarantined=manifest["metadata"].get("quarantine", []),
            seconds=round(time.perf_counter() - self.started, 3),
        )


def run_stage(stage: Stage, store: DatasetStore, config: PipelineConfig, inputs: dict[str, str] | None = None,
              force: bool = False, run_id: str | None = None) -> StageResult:
    """Run a stage in-process: cache check, missing shards in order, publish."""
    job = StageJob(stage, store, config, inputs=inputs, force=force, run_id=run_id)
    if not job.cached:
        for shard in job.pending_shards():
            job.run_shard(shard)
        job.publish()
    return job.result()
