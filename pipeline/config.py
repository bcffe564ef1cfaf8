"""Pipeline configuration: one typed section per stage, loaded from a YAML profile in
`configs/` with dotted overrides (`degrade.seed=3`). Pydantic, so Prefect renders it as a form.

`load_config` checks every key and name of a profile before any model is built or any shard
runs (IQA metrics against pyiqa's registry, SR backbones and their own configs, the candidate
settings each backbone honours, segmenters, loss types, text modes, devices, split names) and
reports what is wrong as one ConfigError line naming the dotted key, the bad value and the
accepted ones (pipeline.config_errors)."""
from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from dspo_core.degradation import DegradationConfig
from dspo_core.feedback import CaptionerConfig, FeedbackConfig
from dspo_core.devices import TorchDevice
from dspo_core.iqa import IQAConfig
from dspo_core.iqa.protocol import protocol_metrics
from dspo_core.pairs import PairConfig
from dspo_core.segment import SegmenterConfig
from dspo_core.sr.base import SETTING_FIELDS, CandidateSettings
from dspo_core.sr.config import BACKBONE_CONFIGS, DIFFUSION_BACKBONES, SUPPORTED_SETTINGS, setting_problem
from dspo_core.train.config import TrainConfig
from pipeline.config_errors import ConfigError, close_matches, described, describe_errors, problems_error

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

# From dspo_core.sr.config, not dspo_core.sr.BACKBONES: importing that registry loads torch,
# diffusers and transformers (~19 s of CPU and 1.1 GB measured on our 2-core machines), and
# every profile names backbones; tests/test_config_validation.py checks that both agree.
SR_BACKBONES: tuple[str, ...] = tuple(BACKBONE_CONFIGS)
BackboneName = Literal[SR_BACKBONES]
DiffusionBackboneName = Literal[DIFFUSION_BACKBONES]
# Shares of ingest.split_fractions may miss 1 by float rounding.
_SHARE_TOLERANCE = 1e-6


def check_backbone_config(backbone: str | None, config: dict[str, Any]) -> dict[str, Any]:
    """`config` unchanged when it fits the config class of `backbone` (None: the name itself was
    refused, so nothing to check against); else a ValidationError worded against that class."""
    if backbone is None:
        return config
    try:
        BACKBONE_CONFIGS[backbone].model_validate(config)
    except ValidationError as exc:
        raise described(exc, BACKBONE_CONFIGS[backbone]) from None
    return config


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestConfig(Section):
    """How source images become `hr_images`."""

    source: str = Field("demo:", description="Folder, s3:// prefix, Parquet/HF dataset folder, or 'demo:' "
                                             "(photos shipped in installed packages).")
    max_pixels: int = Field(64_000_000, description="Larger images are quarantined as decompression bombs.")
    min_side: int = Field(64, description="Images with a shorter side are quarantined (too small to crop).")
    split_fractions: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1},
        description="Split shares; an image's split follows from its content hash, so it never changes.")
    shard_size: int = Field(16, description="Images per shard (the unit of crash recovery).")

    @field_validator("split_fractions")
    @classmethod
    def _shares(cls, value: dict[str, float]) -> dict[str, float]:
        # split_of walks the cumulative shares: a sum under 1 hands the rest to the last split, over 1
        # starves the last ones, both silently.
        if not value:
            raise ValueError("at least one split is needed, e.g. {train: 0.8, val: 0.1, test: 0.1}")
        outside = {name: share for name, share in value.items() if not 0 <= share <= 1}
        if outside:
            raise ValueError(f"shares must lie in [0, 1], got {outside}")
        total = sum(value.values())
        if abs(total - 1) > _SHARE_TOLERANCE:
            raise ValueError(f"shares must sum to 1, got {total:g} ({value})")
        return value


class DegradeConfig(Section):
    """How `hr_images` become (HR crop, LQ) pairs in `lq_pairs`."""

    degradation: DegradationConfig = Field(default_factory=DegradationConfig,
                                           description="Real-ESRGAN second-order degradation options.")
    seed: int = Field(0, description="Base seed; each crop's seed derives from it and the image id.")
    crops_per_image: int = Field(1, ge=1, description="Independent crops + degradations per HR image.")
    splits: list[str] = Field(default_factory=lambda: ["train", "val", "test"],
                              description="Which hr_images splits to degrade.")
    shard_size: int = Field(16, description="HR images per shard.")


class CandidateSource(Section):
    """One SR backbone and the settings of the candidates it contributes to each sample."""

    backbone: BackboneName = Field(description=f"A name in dspo_core.sr.BACKBONES ({', '.join(SR_BACKBONES)}).")
    config: dict[str, Any] = Field(default_factory=dict, description="The backbone's own config, checked against "
                                                                     "its class in dspo_core.sr.config.")
    settings: list[CandidateSettings] = Field(
        default_factory=lambda: [CandidateSettings()],
        description="One entry per candidate; `seed` is an offset mixed with the sample id and candidate index.")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Settings grid, e.g. {guidance_scale: [3, 7], steps: [20, 50]}: every settings entry is "
                    "expanded over the cartesian product (here 4 candidates per entry).")

    @field_validator("config")
    @classmethod
    def _backbone_config(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return check_backbone_config(info.data.get("backbone"), value)

    @model_validator(mode="after")
    def _grid_settings(self) -> CandidateSource:
        # candidate_settings() expands the grid with model_copy, which validates nothing: check here.
        accepted = list(CandidateSettings.model_fields)
        for name, values in self.grid.items():
            if name not in accepted:
                raise ValueError(f"grid.{name}: unknown candidate setting{close_matches(name, accepted)}; "
                                 f"accepted: {', '.join(accepted)}")
            if not values:
                raise ValueError(f"grid.{name}: an empty list leaves this source without candidates")
        names = sorted(self.grid)
        for index, base in enumerate(self.settings):
            for values in itertools.product(*(self.grid[name] for name in names)):
                combination = dict(zip(names, values))
                try:
                    CandidateSettings.model_validate({**base.model_dump(exclude_unset=True), **combination})
                except ValidationError as exc:
                    raise ValueError(f"grid {combination} on settings[{index}]: {describe_errors(exc)}") from None
        return self

    @model_validator(mode="after")
    def _honoured_settings(self) -> CandidateSource:
        # The backbone refuses these with UnsupportedSettingsError when the stage runs; refuse them here.
        problems = [(("settings", index, name), problem, getattr(base, name))
                    for index, base in enumerate(self.settings) for name in SETTING_FIELDS
                    if (problem := setting_problem(self.backbone, name, getattr(base, name)))]
        for name, values in self.grid.items():
            if name != "seed" and name not in SUPPORTED_SETTINGS[self.backbone]:
                problems.append((("grid", name), setting_problem(self.backbone, name, values[0]), values))
                continue
            problems += [(("grid", name, index), problem, value) for index, value in enumerate(values)
                         if name != "seed" and (problem := setting_problem(self.backbone, name, value))]
        if problems:
            raise problems_error("CandidateSource", problems)
        return self

    def candidate_settings(self) -> list[CandidateSettings]:
        """The settings of this source's candidates, grid expanded, in a fixed order."""
        if not self.grid:
            return list(self.settings)
        names = sorted(self.grid)
        return [base.model_copy(update=dict(zip(names, values)))
                for base in self.settings for values in itertools.product(*(self.grid[name] for name in names))]


class SampleConfig(Section):
    """How N SR candidates per LQ image are produced (`sr_candidates`)."""

    sources: list[CandidateSource] = Field(
        default_factory=lambda: [
            CandidateSource(backbone="realesrgan", config={"variant": "x4plus"}),
            CandidateSource(backbone="realesrgan", config={"variant": "animevideov3"}),
            CandidateSource(backbone="bicubic"),
            CandidateSource(backbone="tiny-sd", settings=[CandidateSettings(noise_strength=0.1)]),
        ],
        description="Candidate sources in candidate order; N = total number of settings.")
    seed: int = Field(0, description="Base seed of every candidate's seed.")
    splits: list[str] = Field(default_factory=lambda: ["train", "val", "test"],
                              description="Which lq_pairs splits get candidates.")
    shard_size: int = Field(8, description="Samples per shard.")


class SegmentConfig(Section):
    """How instances are found on each sample's anchor image (`instances`)."""

    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig,
                                       description="SAM (or felzenszwalb) and the post-filter.")
    anchor: Literal["hr", "lq_bicubic"] = Field(
        "hr", description="Image SAM runs on, once per sample; its masks serve all N pixel-aligned candidates: "
                          "'hr' (the ground-truth crop) or 'lq_bicubic' (the LQ upscaled, when no HR is trusted).")
    fallback: Literal["felzenszwalb", "none"] = Field(
        "felzenszwalb", description="When SAM is configured but its checkpoint is missing: use felzenszwalb "
                                    "superpixels (named in logs and the manifest), or fail.")
    shard_size: int = Field(16, description="Samples per shard.")


class ScoreConfig(Section):
    """How every (instance, candidate) is scored (`instance_scores`): raw pyiqa values, each metric
    normalised on its scale over the whole dataset (dspo_core.iqa.rewards), then the hybrid reward."""

    iqa: IQAConfig = Field(default_factory=IQAConfig, description="pyiqa metrics and how masks are applied.")
    fr_weight: float = Field(0.5, ge=0, description="Share of the mean normalised full-reference score in the reward.")
    nr_weight: float = Field(0.5, ge=0, description="Share of the mean normalised no-reference score in the reward.")
    shard_size: int = Field(8, description="Samples per shard.")


class RankConfig(Section):
    """How rewards and human labels become preference pairs (`pairs`)."""

    preferences: PairConfig = Field(default_factory=PairConfig,
                                          description="Best/Worst-of-N or top-k x bottom-k, gap, human override.")


class CaptionConfig(Section):
    """How each pair's loser instance gets its hallucination flag and text feedback (`preferences`)."""

    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig,
                                     description="Suspect thresholds, measured attributes, template writer.")
    captioner: CaptionerConfig | None = Field(
        None, description="A local image-to-text model (BLIP, GIT, Florence-2, a VLM); None: the template writer "
                          "alone (named as such in the manifest). Human descriptions always take precedence.")
    shard_size: int = Field(16, description="Samples per shard.")


class TrainStageConfig(Section):
    """How `preferences` fine-tune a diffusion SR backbone with DSPO (`checkpoints`, `train_metrics`)."""

    backbone: DiffusionBackboneName = Field("tiny-sd", description="A DiffusionSRBackbone in dspo_core.sr.BACKBONES "
                                                                   f"({', '.join(DIFFUSION_BACKBONES)}).")
    backbone_config: dict[str, Any] = Field(default_factory=dict,
                                            description="The backbone's own config, checked against its class in "
                                                        "dspo_core.sr.config; s3:// path/lora_path are fetched.")
    train: TrainConfig = Field(default_factory=TrainConfig,
                               description="dspo_core.train.TrainConfig: steps, batch, lr, beta, masks, text mode...")
    splits: list[str] = Field(default_factory=lambda: ["train"],
                              description="lq_pairs splits whose pairs train (evaluate uses the test split).")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of samples held out for the eval metrics: "
                                                              "every pair of a sample whose stable hash of "
                                                              "sample_id is under it (image-disjoint: no sample "
                                                              "has pairs on both sides).")
    resume: bool = Field(False, description="Continue from the latest checkpoint of the same run_id (same "
                                            "backbone, data and hyperparameters; max_steps may grow).")
    save_every: int = Field(0, ge=0, description="A checkpoints row every this many steps; 0 = only at the end.")

    @field_validator("backbone_config")
    @classmethod
    def _backbone_config(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return check_backbone_config(info.data.get("backbone"), value)

    @model_validator(mode="after")
    def _stage_owns_checkpoints(self) -> TrainStageConfig:
        # The stage writes checkpoints into the store; a local output_dir would be silently ignored.
        if self.train.output_dir is not None or self.train.save_every:
            raise ValueError("checkpoints go to the store: leave train.train.output_dir and train.train.save_every "
                             "unset and set train.save_every")
        if self.train.full_finetune:  # checkpoints rows carry a LoRA file
            raise ValueError("the train stage trains LoRA adapters: train.train.full_finetune must be false")
        return self


CHECKPOINT_SOURCE = re.compile(r"base|input|checkpoints@v[1-9][0-9]*")


class CompareMethod(Section):
    """One method `evaluate` scores: a name and where its weights come from."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$",
                      description="The method's row in the report (e.g. base, image-dpo, dspo): letters, digits, . _ + -.")
    checkpoint: str = Field("input", description="'base' (the checkpoints' backbone, no LoRA), 'input' (the "
                                                 "stage's checkpoints input: what this run trained) or a fixed "
                                                 "'checkpoints@vN' (e.g. an image-level DPO run).")
    step: int | None = Field(None, ge=0, description="Checkpoint step; None = the version's highest. Not for base.")

    @field_validator("checkpoint")
    @classmethod
    def _fixed_source(cls, value: str) -> str:
        if not CHECKPOINT_SOURCE.fullmatch(value):
            raise ValueError(f"invalid checkpoint {value!r}; accepted: base, input, checkpoints@vN (a fixed version: "
                             "a moving ref such as @latest or a tag would leave cached results stale)")
        return value

    @model_validator(mode="after")
    def _base_has_no_step(self) -> CompareMethod:
        if self.checkpoint == "base" and self.step is not None:
            raise ValueError(f"method {self.name!r}: base has no step (it is the backbone without a LoRA)")
        return self


class EvaluateConfig(Section):
    """How methods (base, checkpoints) are compared on held-out `lq_pairs` (`eval_results`, `eval_report`)."""

    splits: list[str] = Field(default_factory=lambda: ["test"],
                              description="lq_pairs splits to evaluate on; none there: 'val', then all rows "
                                          "(the fallback is named in the manifest notes and the log).")
    protocol: Literal["osediff", "weight-free"] = Field(
        "weight-free", description="Metric set (dspo_core.iqa.protocol): 'osediff' = the field's (PSNR/SSIM on "
                                   "YCbCr-Y, LPIPS, DISTS, FID, NIQE, MUSIQ, MANIQA-pipal, CLIPIQA; weights must be "
                                   "cached); 'weight-free' = offline metrics, not the paper's, labelled so.")
    metrics: list[str] | None = Field(None, description="A subset of the protocol's metrics (their keys); None = all.")
    device: TorchDevice = Field("cpu", description="torch device the metrics run on ('cpu', 'cuda', 'cuda:1', ...).")
    compare: list[CompareMethod] = Field(
        default_factory=lambda: [CompareMethod(name="base", checkpoint="base"), CompareMethod(name="tuned")],
        min_length=2, description="The methods, in report order: exactly one 'base' (the win-rates' reference) and "
                                  "checkpoints on the same backbone. Default: base vs the input checkpoint.")
    settings: CandidateSettings = Field(default_factory=CandidateSettings,
                                        description="Sampling settings of every method (unset fields: backbone "
                                                    "defaults); the seed is mixed with each sample id.")
    bootstrap_resamples: int = Field(1000, ge=100, description="Bootstrap resamples over images for the CIs.")
    bootstrap_seed: int = Field(0, description="Seed of the bootstrap draws (the same draws for every method).")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the percentile bootstrap CIs.")
    grid_samples: int = Field(4, ge=1, description="Samples shown in the side-by-side PNG grid.")

    @field_validator("metrics")
    @classmethod
    def _protocol_metrics(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None or "protocol" not in info.data:
            return value
        if not value or len(set(value)) != len(value):
            raise ValueError(f"metrics must be unique and not empty, got {value}")
        accepted = [metric.key for metric in protocol_metrics(info.data["protocol"])]
        for index, key in enumerate(value):
            if key not in accepted:
                raise ValueError(f"[{index}] {key!r} is not a metric of protocol {info.data['protocol']!r}"
                                 f"{close_matches(key, accepted)}; accepted: {', '.join(accepted)}")
        return value

    @model_validator(mode="after")
    def _unique_methods(self) -> EvaluateConfig:
        names = [method.name for method in self.compare]
        if len(set(names)) != len(names):
            raise ValueError(f"compare: method names must be unique, got {names}")
        bases = [method.name for method in self.compare if method.checkpoint == "base"]
        if len(bases) != 1 or len(bases) == len(names):
            raise ValueError(f"compare needs exactly one method with checkpoint 'base' and at least one checkpoint; "
                             f"got {len(bases)} base of {len(names)}")
        return self

    @property
    def base_method(self) -> str:
        return next(method.name for method in self.compare if method.checkpoint == "base")


class PipelineConfig(Section):
    """Every stage's configuration (one profile)."""

    profile: str = Field("demo", description="Name of the profile this came from.")
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    degrade: DegradeConfig = Field(default_factory=DegradeConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    rank: RankConfig = Field(default_factory=RankConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    train: TrainStageConfig = Field(default_factory=TrainStageConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @model_validator(mode="after")
    def _known_splits(self) -> PipelineConfig:
        # ingest assigns the splits; a stage's split that ingest never assigns selects nothing.
        accepted = list(self.ingest.split_fractions)
        problems = [f"{section}.splits[{index}]: unknown split {split!r}{close_matches(split, accepted)}; "
                    f"accepted: {', '.join(accepted)} (the keys of ingest.split_fractions)"
                    for section in ("degrade", "sample", "train", "evaluate")
                    for index, split in enumerate(getattr(self, section).splits) if split not in accepted]
        if problems:
            raise ValueError(" | ".join(problems))
        return self


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(part.strip() for part in parts):
        raise ConfigError(f"override {dotted!r}: a key part is empty (write section.key=value)")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:depth + 1])} is the value {node!r}, "
                              "not a section with keys")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'degrade.seed=3' -> ('degrade.seed', 3); values are YAML scalars (numbers, true/false, null)
    or flow collections ('[a, b]', '{k: v}'); anything else is a plain string (e.g. 'demo:')."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return key.strip(), raw
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("[", "{")):
        return key.strip(), raw
    return key.strip(), value


def takes_text(key: str) -> bool:
    """Whether the dotted `key` names a plain `str` field of PipelineConfig: an override of it is
    taken as typed, never read as YAML (YAML would make "photos #2" "photos" and "2024" an int)."""
    model: type[BaseModel] = PipelineConfig
    *path, last = key.split(".")
    for part in path:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return False
        model = field.annotation
    field = model.model_fields.get(last)
    return field is not None and field.annotation is str


def override_value(text: str) -> tuple[str, Any]:
    """`parse_override`, except that a plain string field gets the text after '=' exactly as typed."""
    key, value = parse_override(text)
    return (key, text.partition("=")[2]) if takes_text(key) else (key, value)


def profile_names() -> list[str]:
    """The profiles in configs/, by name."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def profile_path(profile: str) -> Path:
    """The YAML file of `profile`: configs/<profile>.yaml, or the path itself when it ends in .yaml/.yml."""
    if profile.endswith((".yaml", ".yml")):
        path = Path(profile)
        if not path.is_file():
            raise ConfigError(f"no profile file {profile!r}")
        return path
    path = CONFIG_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = profile_names()
        raise ConfigError(f"no profile {profile!r}{close_matches(profile, known)}; known: {', '.join(known)} "
                          "(configs/*.yaml), or give the path of a .yaml file")
    return path


def _read_profile(path: Path) -> dict:
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile {path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"profile {path}: expected a mapping of sections (ingest:, degrade:, ...), "
                          f"got {type(tree).__name__}")
    return tree


def load_config(profile: str = "demo", overrides: list[str] | dict[str, Any] | None = None) -> PipelineConfig:
    """Load `configs/<profile>.yaml` (or a YAML path), apply overrides and check every key and value.

    Raises:
        ConfigError: one line naming the unknown profile (and the nearest known ones), the
            unreadable file, the malformed override, or each dotted key whose key or value is
            not accepted, with the accepted keys or values.
    """
    path = profile_path(profile)
    tree = _read_profile(path)
    tree.setdefault("profile", path.stem)
    items = overrides.items() if isinstance(overrides, dict) else map(override_value, overrides or [])
    for key, value in items:
        _set_dotted(tree, key, value)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, PipelineConfig)) from None
