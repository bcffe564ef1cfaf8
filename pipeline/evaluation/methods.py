"""The methods an evaluation compares (`evaluate.compare`), resolved to checkpoints rows.

    methods = resolve_methods(store, section.compare, inputs["checkpoints"])

Each entry names a method and where its weights come from: `base` (the checkpoints' backbone
without any LoRA), `input` (the stage's `checkpoints` input: the version this pipeline run
trained) or a fixed `checkpoints@vN` (e.g. an image-level Diffusion-DPO run, `instance_masks:
false`), each at its `step` (default: its highest). All methods must sit on the same base:
checkpoints whose backbone or backbone_config (apart from `lora`, which each file carries)
differ are refused, naming both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.checkpoints import checkpoint_row
from storage import DatasetStore


@dataclass(frozen=True)
class Method:
    """One compared method: name; source ("base" | "input" | "checkpoints@vN" as configured);
    checkpoint_ref (the resolved checkpoints version; None for base); row (its checkpoints row;
    None for base); config (that row's train stage config, parsed; None for base)."""

    name: str
    source: str
    checkpoint_ref: str | None
    row: dict | None
    config: dict | None

    @property
    def instance_masks(self) -> bool | None:
        """True: DSPO (instance-masked); False: image-level Diffusion-DPO; None: base."""
        return None if self.config is None else bool(self.config["train"].get("instance_masks", True))

    def describe(self) -> str:
        """The report's checkpoint cell: `checkpoints@v2 step 4 (DSPO)`, or `base: <weights>`."""
        if self.row is None:
            return "no LoRA"
        kind = "DSPO" if self.instance_masks else "image-level DPO"
        return f"{self.checkpoint_ref} step {self.row['step']} ({kind})"

    def record(self) -> dict:
        """JSON-able lineage record (manifest metadata `methods`)."""
        return {"name": self.name, "source": self.source, "checkpoint_ref": self.checkpoint_ref,
                "checkpoint_id": None if self.row is None else self.row["checkpoint_id"],
                "step": None if self.row is None else self.row["step"],
                "lora_sha256": None if self.row is None else self.row["lora_sha256"],
                "instance_masks": self.instance_masks}


def _base_key(config: dict) -> tuple[str, str]:
    backbone_config = {k: v for k, v in (config.get("backbone_config") or {}).items() if k != "lora"}
    return config["backbone"], json.dumps(backbone_config, sort_keys=True)


def resolve_methods(store: DatasetStore, compare, input_ref: str) -> list[Method]:
    """`compare` (evaluate.compare entries: name, checkpoint, step) as Methods, in order; refuses a
    checkpoint that is missing or sits on another base than the first checkpoint's."""
    methods = []
    for spec in compare:
        if spec.checkpoint == "base":
            methods.append(Method(spec.name, "base", None, None, None))
            continue
        ref = store.resolve(input_ref if spec.checkpoint == "input" else spec.checkpoint)
        row = checkpoint_row(store, ref, spec.step)
        methods.append(Method(spec.name, spec.checkpoint, ref, row, json.loads(row["config"])))
    trained = [method for method in methods if method.row is not None]
    first = trained[0]
    for method in trained[1:]:
        if _base_key(method.config) != _base_key(first.config):
            mine, theirs = _base_key(method.config), _base_key(first.config)
            raise ValueError(
                f"evaluate.compare: method {method.name!r} ({method.checkpoint_ref}) was trained on backbone "
                f"{mine[0]} {mine[1]}, method {first.name!r} ({first.checkpoint_ref}) on {theirs[0]} {theirs[1]}; "
                "methods are compared on one base model: name checkpoints trained on the same backbone")
    return methods
