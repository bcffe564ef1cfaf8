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

A stage may publish several datasets (`StageSpec.outputs`, the main one first): a shard
returns one table per output, and the publish commits the side outputs first, each with its
own fingerprint and the run's lineage, then the main one, whose manifest names them
(`metadata.outputs`). A `StageJob` is safe to share between threads: `run_shard` keeps no
state on the stage, whose models come from the per-process cache (`Stage.model`).
"""
from __future__ import annotations

import abc
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import pyarrow as pa
from pydantic import BaseModel

import pipeline
from pipeline.config import PipelineConfig, Section
from pipeline.stage_models import MODELS
from storage import DatasetStore
from storage.manifest import content_fingerprint

log = logging.getLogger("dspo.stage")
QUARANTINE_KEY = b"dspo_quarantine"
NOTES_KEY = b"dspo_notes"
STATS_KEY = b"dspo_stats"
Model = TypeVar("Model")
#: Seconds spent building models in this process, by stage (what a stage run's breakdown reports).
MODEL_BUILD_SECONDS: dict[str, float] = {}
_BUILD_LOCK = threading.Lock()


class StageRefusal(ValueError):
    """A stage run refused before it could do harm; the message says what to change."""


class EmptyOutputError(StageRefusal):
    """A stage's main output would have no rows: refused, so an empty version never becomes @latest."""


@dataclass(frozen=True)
class StageSpec:
    """One stage's declaration (the registry in pipeline/stages/__init__.py holds them all).

    Args:
        name: the stage ("degrade"); its Prefect flow is `dspo-<name>`.
        outputs: the datasets it publishes, the main one first (the one its cache and the
            next stages look for); the others are published beside it, each with its own
            fingerprint and lineage.
        inputs: the datasets it needs, pinned to one version for the whole run.
        target: "module:Class" of the Stage subclass.
        optional_inputs: datasets used when the store has them (e.g. human labels), which no
            stage of the DAG produces.
        gpu: its models run on a GPU when one is visible: its deployment goes to the GPU work
            pool (flows/gpu_pools.py) and its shards on a Dask cluster get one GPU per worker.
    """

    name: str
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    target: str
    optional_inputs: tuple[str, ...] = ()
    gpu: bool = False

    @property
    def output(self) -> str:
        return self.outputs[0]

    @property
    def summary(self) -> str:
        """One line for people: "Stage rank: instance_scores, instances (+ human_labels) -> pairs."."""
        reads = ", ".join(self.inputs) or "source images"
        if self.optional_inputs:
            reads += f" (+ {', '.join(self.optional_inputs)})"
        writes = self.output + (f" (+ {', '.join(self.outputs[1:])})" if self.outputs[1:] else "")
        return f"Stage {self.name}: {reads} -> {writes}."


@dataclass(frozen=True)
class Shard:
    """A unit of work: `key` names it in scratch ("shard-00003"); `items` are stage-specific."""

    key: str
    items: tuple


@dataclass
class ShardOutput:
    """What `run_shard` returns: rows for the main output, rows for each side output (by
    dataset name; every side output of the stage, possibly empty), items refused (each a dict
    with at least `item` and `reason`), notes (e.g. fallbacks used) for the manifest, and
    stats that the stage's `summarize` merges over all shards into the manifest metadata."""

    table: pa.Table
    quarantine: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    side_tables: dict[str, pa.Table] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardReport:
    """What `StageJob.run_shard` did: the shard, its main-output rows, items quarantined, and
    the seconds spent in the stage's `run_shard` (model compute and its input reads)."""

    shard: str
    rows: int
    quarantined: int
    seconds: float


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
    side_outputs: dict[str, str] = field(default_factory=dict)
    #: A forced rerun whose output equals the version it recomputed: that version's ref.
    identical_to: str | None = None
    #: The fallback the stage used instead of the configured model (manifest `metadata.fallback`).
    fallback: str | None = None


class Stage(abc.ABC):
    """One pipeline stage, built from its `StageSpec`. Subclasses implement `section`, `schemas`,
    `plan` and `run_shard`, keep no state between calls, and get their models from `model`.

    Args:
        spec: the stage's declaration: name, inputs, optional inputs, outputs.
    """

    #: Bump when the stage's output changes for the same config and inputs (part of the fingerprint).
    version: ClassVar[int] = 1

    def __init__(self, spec: StageSpec):
        self.spec = spec
        self.name, self.inputs, self.optional_inputs = spec.name, spec.inputs, spec.optional_inputs
        self.outputs, self.output = spec.outputs, spec.output

    def model(self, kind: str, config: BaseModel | str, build: Callable[[], Model]) -> AbstractContextManager[Model]:
        """A model this shard alone uses until the block ends, from the per-process cache
        (pipeline.stage_models), keyed by this stage, `kind` and `config`."""
        key = config if isinstance(config, str) else config.model_dump_json()

        def timed_build() -> Model:
            started = time.perf_counter()
            try:
                return build()
            finally:
                with _BUILD_LOCK:
                    MODEL_BUILD_SECONDS[self.name] = MODEL_BUILD_SECONDS.get(self.name, 0.0) + time.perf_counter() - started

        return MODELS.borrow((self.name, kind, key), timed_build)

    @abc.abstractmethod
    def section(self, config: PipelineConfig) -> Section:
        """This stage's part of the pipeline config."""

    @abc.abstractmethod
    def schemas(self, section: Section) -> dict[str, pa.Schema]:
        """Arrow schema of each output dataset, by name, in `outputs` order."""

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

    def finalize(self, tables: Iterator[pa.Table], side_outputs: dict[str, str]) -> Iterator[pa.Table]:
        """Last pass over the main output's shard tables in order before publishing (e.g.
        de-duplication); `side_outputs` are the refs of the side outputs just published."""
        return tables


def make_shards(ids: list, size: int) -> list[Shard]:
    """Consecutive chunks of `size` ids, keyed "shard-00000", "shard-00001", ..."""
    return [Shard(f"shard-{i // size:05d}", tuple(ids[i:i + size])) for i in range(0, len(ids), size)]


def side_key(shard_key: str, dataset: str) -> str:
    """Scratch name of a shard's side-output table ("shard-00000.train_metrics")."""
    return f"{shard_key}.{dataset}"


def fingerprint_of(stage: Stage, section: Section, inputs: dict[str, str]) -> str:
    """The stage's cache key. `inputs` maps each input dataset to its content fingerprint (not
    its version number), so republishing identical data keeps every downstream cache valid."""
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
                 inputs: dict[str, str] | None = None, force: bool = False, run_id: str | None = None,
                 allow_empty: bool = False):
        self.stage, self.store, self.force, self.run_id = stage, store, force, run_id
        self.allow_empty = allow_empty
        self.section = stage.section(config)
        given = dict(inputs or {})
        accepted = (*stage.inputs, *stage.optional_inputs)
        unknown = set(given) - set(accepted)
        if unknown:
            raise StageRefusal(f"stage {stage.name!r} takes inputs {list(accepted)}, not {sorted(unknown)}")
        wanted = [*stage.inputs, *(name for name in stage.optional_inputs if name in given or store.versions(name))]
        self.inputs = {name: store.resolve(given.get(name, f"{name}@latest")) for name in wanted}
        self.fingerprint = fingerprint_of(
            stage, self.section, {name: content_fingerprint(store.manifest(ref)) for name, ref in self.inputs.items()})
        self.started = time.perf_counter()
        found = store.find(self.fingerprint, name=stage.output)
        self.cached_ref = None if force else found
        #: With `force`: the version a cache hit would have returned, to tell whether the rerun changed anything.
        self.replaced_ref = found if force else None
        self.identical_to: str | None = None
        self.scratch = store.scratch(f"{stage.name}-{self.fingerprint[:32]}")
        self.shards: list[Shard] = []
        self.computed = 0
        self._lock = threading.Lock()
        self.ref: str | None = self.cached_ref
        if self.cached_ref:
            log.info("%s: cache hit, %s has fingerprint %s", stage.name, self.cached_ref, self.fingerprint[:12])
            return
        store.check_conditional_writes()  # before any shard is computed, not at the publish after them all
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

    def run_shard(self, shard: Shard) -> ShardReport:
        """Compute one shard and stage its tables in scratch (side outputs first: the main
        table's presence is what marks the shard done). Safe to call from several threads."""
        started = time.perf_counter()
        output = self.stage.run_shard(self.store, self.inputs, self.section, shard)
        seconds = time.perf_counter() - started
        sides = set(self.stage.outputs[1:])
        if set(output.side_tables) != sides:
            raise RuntimeError(f"{self.stage.name}: shard {shard.key} returned side outputs "
                               f"{sorted(output.side_tables)}, the stage declares {sorted(sides)}")
        for record in output.quarantine:
            log.warning("%s: quarantined %s: %s", self.stage.name, record["item"], record["reason"])
        for dataset, side in output.side_tables.items():
            self.scratch.put(side_key(shard.key, dataset), side)
        extra = {QUARANTINE_KEY: json.dumps(output.quarantine).encode(), NOTES_KEY: json.dumps(output.notes).encode(),
                 STATS_KEY: json.dumps(output.stats).encode()}
        table = output.table.replace_schema_metadata({**(output.table.schema.metadata or {}), **extra})
        self.scratch.put(shard.key, table)
        with self._lock:
            self.computed += 1
        return ShardReport(shard.key, output.table.num_rows, len(output.quarantine), seconds)

    def _staged(self, name: str) -> pa.Table:
        table = self.scratch.get(name)
        if table is None:
            raise RuntimeError(f"{self.stage.name}: {name} is missing from scratch; rerun the stage")
        return table

    def _staged_tables(self, collected: dict) -> Iterator[pa.Table]:
        for shard in self.shards:
            table = self._staged(shard.key)
            metadata = table.schema.metadata or {}
            collected["quarantine"].extend(json.loads(metadata.get(QUARANTINE_KEY, b"[]")))
            collected["stats"].append(json.loads(metadata.get(STATS_KEY, b"{}")))
            for note in json.loads(metadata.get(NOTES_KEY, b"[]")):
                if note not in collected["notes"]:
                    collected["notes"].append(note)
            yield table

    def _publish_side(self, dataset: str, schema: pa.Schema) -> str:
        """Publish side output `dataset` from every shard's staged table (or find the version an
        interrupted earlier publish of this fingerprint already committed)."""
        fingerprint = hashlib.sha256(f"{self.fingerprint}:{dataset}".encode()).hexdigest()
        found = None if self.force else self.store.find(fingerprint, name=dataset)
        if found:
            return found
        batches = (batch for shard in self.shards
                   for batch in self._staged(side_key(shard.key, dataset)).select(schema.names).cast(schema).to_batches())
        return self.store.publish(
            dataset, batches, inputs=list(self.inputs.values()), fingerprint=fingerprint,
            metadata={"stage": self.stage.name, "side_output_of": self.stage.output,
                      "config": self.section.model_dump(mode="json")},
            run_id=self.run_id, schema=schema)

    def _refusing_empty(self, batches: Iterator[pa.RecordBatch], collected: dict) -> Iterator[pa.RecordBatch]:
        """`batches`, raising EmptyOutputError at their end when there were no rows (before the
        store commits anything) unless the job allows empty output."""
        rows = 0
        for batch in batches:
            rows += batch.num_rows
            yield batch
        if rows == 0 and not self.allow_empty:
            quarantined = collected["quarantine"]
            why = (f"all {len(quarantined)} items were quarantined (first: {quarantined[0]['item']}: "
                   f"{quarantined[0]['reason']})" if quarantined else
                   f"its {len(self.shards)} shards produced no rows" if self.shards else "there was nothing to do")
            inputs = ", ".join(self.inputs.values()) or "its source"
            raise EmptyOutputError(f"{self.stage.name}: {self.stage.output} would be empty ({why}; read {inputs}); "
                                   "nothing was published. Fix the input, or pass --allow-empty to publish it anyway")

    def publish(self) -> str:
        """Publish the staged shards: each side output, then the main output as the next version
        of its dataset (naming the side outputs in its metadata); clears scratch."""
        schemas = self.stage.schemas(self.section)
        if list(schemas) != list(self.stage.outputs):
            raise RuntimeError(f"{self.stage.name}: schemas for {list(schemas)}, outputs are {list(self.stage.outputs)}")
        side_outputs = {dataset: self._publish_side(dataset, schemas[dataset]) for dataset in self.stage.outputs[1:]}
        schema = schemas[self.stage.output]
        collected: dict[str, list] = {"quarantine": [], "notes": [], "stats": []}
        batches = self._refusing_empty((batch for table in self.stage.finalize(self._staged_tables(collected),
                                                                             side_outputs)
                                        for batch in table.select(schema.names).cast(schema).to_batches()),
                                       collected)
        metadata = {"stage": self.stage.name, "config": self.section.model_dump(mode="json"),
                    "shards": len(self.shards), **self.stage.metadata(self.section)}
        if side_outputs:
            metadata["side_outputs"] = side_outputs
        self.ref = self.store.publish(
            self.stage.output, batches, inputs=list(self.inputs.values()), fingerprint=self.fingerprint,
            metadata=lambda: {**metadata, **self.stage.summarize(collected["stats"]),
                              "quarantine": collected["quarantine"], "notes": collected["notes"]},
            run_id=self.run_id, schema=schema,
        )
        self.scratch.clear()
        log.info("%s: published %s%s (%d shards computed, %d reused, %d quarantined)", self.stage.name, self.ref,
                 "".join(f", {ref}" for ref in side_outputs.values()), self.computed,
                 len(self.shards) - self.computed, len(collected["quarantine"]))
        if self.replaced_ref and (content_fingerprint(self.store.manifest(self.ref))
                                  == content_fingerprint(self.store.manifest(self.replaced_ref))):
            self.identical_to = self.replaced_ref
            log.info("%s: forced rerun: %s is byte-identical to %s; downstream caches stay valid",
                     self.stage.name, self.ref, self.replaced_ref)
        return self.ref

    def result(self) -> StageResult:
        manifest = self.store.manifest(self.ref)
        return StageResult(
            stage=self.stage.name, ref=self.ref, cache_hit=self.cached, rows=manifest["rows"],
            shards_total=len(self.shards), shards_computed=self.computed,
            quarantined=manifest["metadata"].get("quarantine", []),
            seconds=round(time.perf_counter() - self.started, 3),
            side_outputs=dict(manifest["metadata"].get("side_outputs", {})), identical_to=self.identical_to,
            fallback=manifest["metadata"].get("fallback"),
        )


def run_stage(stage: Stage, store: DatasetStore, config: PipelineConfig, inputs: dict[str, str] | None = None,
              force: bool = False, run_id: str | None = None, allow_empty: bool = False) -> StageResult:
    """Run a stage in-process: cache check, missing shards in order, publish (an empty main
    output is refused with EmptyOutputError unless `allow_empty`)."""
    job = StageJob(stage, store, config, inputs=inputs, force=force, run_id=run_id, allow_empty=allow_empty)
    if not job.cached:
        for shard in job.pending_shards():
            job.run_shard(shard)
        job.publish()
    return job.result()
