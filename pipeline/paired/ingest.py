"""Real-world paired benchmarks (RealSR, DRealSR, the StableSR / OSEDiff crops) -> `lq_pairs`.

`ingest_paired(store, folder)` pairs each LR file with its HR file by name, as the benchmark
names them (pipeline.paired.layouts), and publishes one `lq_pairs` version (schema:
pipeline.schemas.LQ_PAIRS): split `test`, no synthetic degradation (`seed` and
`degradation_params` null), the manifest saying `degradation: real` and the benchmark's name.

Every entry of the folder ends in one outcome, counted in the manifest's `metadata.files`
(`found`, `paired`, `quarantined`, `skipped`), as the ingest stage counts its own:
- paired: an HR file and its LR file, decoded by the ingest rules (pipeline.decode), became
  one row (the two files count two);
- quarantined (`metadata.quarantine`, each with its reason): a file whose name fits the layout
  but has no partner (a mismatched name, a missing LR or HR), a file of the layout that fits
  no role (`Canon_001.png`), an LR named for another scale, a pair whose sizes are not x`scale`,
  and files pipeline.decode cannot read faithfully;
- skipped (`metadata.files.skipped_items`): what the source listing skips (not an image
  extension, hidden, ...; pipeline.sources), folders of another scale (`2/`, `Test_x2/`),
  unreadable files, and a pair repeating the content of an earlier one.

Sizes: LR x `scale` must equal the HR size. An HR up to `scale - 1` pixels larger on a side
is cropped at the bottom/right to LR x scale, as BasicSR's paired test datasets crop the GT;
the row's notes say so. An LR file the size of its HR (an LR registered at the HR size) is
quarantined as the wrong scale unless `lr_upsampled`, which bicubic-downsamples it by
`scale` (PIL, antialiased), noted in the row and in the manifest (`lr_upsampled: true`).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.decode import BadImageError, decode_rgb
from pipeline.paired.layouts import LAYOUTS, Layout, Role, detect_layout, other_scale_folder
from pipeline.schemas import LQ_PAIRS, stable_id
from pipeline.sources import Skipped, SourceItem, list_source
from pipeline.stage import StageRefusal
from storage import DatasetStore, image_cell
from storage.redact import redact_url

log = logging.getLogger("dspo.ingest")
#: Bumped when the rows made from the same files change (the fingerprint includes it).
VERSION = 1
SPLIT = "test"
DEFAULT_MAX_PIXELS = 64_000_000  # pipeline.config.IngestConfig.max_pixels' default


class PairedIngestError(StageRefusal):
    """A paired benchmark that yields no pairs, or a layout this module does not know."""


@dataclass
class PairedIngestResult:
    """What `ingest_paired` did: the `lq_pairs` `ref`, whether an earlier version with the same
    fingerprint was returned (`cache_hit`), the `benchmark` and `layout`, the `pairs` published,
    and the quarantined / skipped records ({item, reason}) of the manifest."""

    ref: str
    cache_hit: bool
    benchmark: str
    layout: str
    pairs: int
    quarantined: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


@dataclass
class _Candidate:
    """An HR item and its LR item under one key."""

    key: str
    hr: SourceItem
    lr: SourceItem


def _default_benchmark(source: str) -> str:
    return PurePosixPath(source.rstrip("/")).name or source


def _fit_scale(hr: np.ndarray, lr: np.ndarray, scale: int, lr_upsampled: bool, lr_name: str
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(HR, LR, notes) with HR = LR x scale exactly, by the size rules of the module docstring;
    BadImageError naming the sizes when the pair is not x`scale`."""
    (hr_h, hr_w), (lr_h, lr_w) = hr.shape[:2], lr.shape[:2]
    notes = []
    if (lr_h, lr_w) == (hr_h, hr_w) and scale > 1:
        if not lr_upsampled:
            raise BadImageError(f"wrong scale: LR {lr_name} is {lr_w}x{lr_h}, the HR's own size, not 1/{scale} of it "
                                f"(an LR registered at the HR size?): pass --lr-upsampled to bicubic-downsample it "
                                f"x{scale}, or use the benchmark's x{scale} crops")
        lr_h, lr_w = hr_h // scale, hr_w // scale
        lr = np.asarray(Image.fromarray(lr).resize((lr_w, lr_h), Image.BICUBIC))
        notes.append(f"LR at the HR size ({hr_w}x{hr_h}) bicubic-downsampled x{scale} to {lr_w}x{lr_h} "
                     "(--lr-upsampled)")
    if (hr_h // scale, hr_w // scale) != (lr_h, lr_w) or lr_h == 0 or lr_w == 0:
        raise BadImageError(f"wrong scale: LR {lr_name} is {lr_w}x{lr_h}, x{scale} = {lr_w * scale}x{lr_h * scale}, "
                            f"but the HR is {hr_w}x{hr_h}")
    if (hr_h, hr_w) != (lr_h * scale, lr_w * scale):
        notes.append(f"HR cropped at the bottom/right from {hr_w}x{hr_h} to {lr_w * scale}x{lr_h * scale} = LR "
                     f"x{scale} (as BasicSR's paired test datasets crop the GT)")
        hr = hr[:lr_h * scale, :lr_w * scale]
    return np.ascontiguousarray(hr), lr, notes


def _match(layout: Layout, items: list[SourceItem], scale: int, quarantine: list[dict], skipped: list[dict]
           ) -> list[_Candidate]:
    """Candidates with one HR and one LR per key, in source order; every other item recorded."""
    sides: dict[str, dict[str, list[tuple[SourceItem, Role]]]] = {}
    for item in items:
        if reason := other_scale_folder(item.name, scale):
            skipped.append({"item": item.name, "reason": reason})
            continue
        role = layout.role(item.name)
        if isinstance(role, str):
            quarantine.append({"item": item.name, "reason": f"{role}: not paired ({layout.name} layout)"})
        elif role.scale is not None and role.scale != scale:
            quarantine.append({"item": item.name, "reason": f"wrong scale: named for x{role.scale}, not x{scale} "
                                                            f"(--scale to change)"})
        else:
            sides.setdefault(role.key, {"hr": [], "lr": []})[role.side].append((item, role))
    candidates = []
    for key, found in sides.items():
        hr, lr = found["hr"], found["lr"]
        if len(hr) == 1 and len(lr) == 1:
            candidates.append(_Candidate(key, hr[0][0], lr[0][0]))
        elif not hr or not lr:
            other = "LR" if hr else "HR"
            for item, role in hr or lr:
                quarantine.append({"item": item.name,
                                   "reason": f"missing {other}: no {layout.partner(role, scale)} for it"})
        else:
            names = ", ".join(item.name for item, _ in hr + lr)
            for item, _ in hr + lr:
                quarantine.append({"item": item.name, "reason": f"ambiguous: {len(hr)} HR and {len(lr)} LR files "
                                                                f"share the name {key} ({names})"})
    return candidates


def _pair_row(candidate: _Candidate, scale: int, lr_upsampled: bool, max_pixels: int) -> dict:
    """The lq_pairs row of a candidate; BadImageError (quarantine) or OSError (unreadable)."""
    hr_bytes, lr_bytes = candidate.hr.read(), candidate.lr.read()
    decoded = {}
    for side, item, data in (("HR", candidate.hr, hr_bytes), ("LR", candidate.lr, lr_bytes)):
        try:
            decoded[side] = decode_rgb(data, max_pixels)
        except BadImageError as exc:
            raise BadImageError(f"{side} {item.name}: {exc}") from None
    hr, lr, notes = _fit_scale(decoded["HR"][0], decoded["LR"][0], scale, lr_upsampled, candidate.lr.name)
    conversions = [f"{side}: {'; '.join(decoded[side][1])}" for side in ("HR", "LR") if decoded[side][1]]
    image_id = hashlib.sha256(hr_bytes).hexdigest()[:20]
    lq_id = hashlib.sha256(lr_bytes).hexdigest()[:20]
    return {
        "sample_id": stable_id("sample", image_id, "real", lq_id), "image_id": image_id, "split": SPLIT,
        "crop_top": 0, "crop_left": 0, "crop_height": hr.shape[0], "crop_width": hr.shape[1],
        "pad_bottom": 0, "pad_right": 0, "scale": scale, "hr": image_cell(hr), "lq": image_cell(lr),
        "seed": None, "degradation_params": None,
        "notes": "; ".join([f"real pair: HR {candidate.hr.name}, LR {candidate.lr.name}", *notes, *conversions]),
    }


def _fingerprint(entries: list, layout: str, scale: int, benchmark: str, lr_upsampled: bool, max_pixels: int) -> str:
    material = {"kind": "paired-ingest", "version": VERSION, "layout": layout, "scale": scale, "benchmark": benchmark,
                "lr_upsampled": lr_upsampled, "max_pixels": max_pixels,
                "entries": [(entry.name, entry.identity if isinstance(entry, SourceItem) else entry.reason)
                            for entry in entries]}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def ingest_paired(store: DatasetStore, source: str, *, layout: str | None = None, scale: int = 4,
                  benchmark: str | None = None, lr_upsampled: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                  force: bool = False) -> PairedIngestResult:
    """Publish the HR/LR pairs of the benchmark folder `source` (a local folder or an s3://
    prefix) as an `lq_pairs` version of `store`, and return its record (PairedIngestResult).

    `layout` is a name in LAYOUTS (default: the one under which most files pair up); `scale`
    the SR factor (4); `benchmark` the name recorded in the manifest (default: the folder's
    name); `lr_upsampled` downsamples LR files stored at the HR size (module docstring).
    The same files with the same options return the version already published (`cache_hit`)
    unless `force`. Raises PairedIngestError when no pair survives or `layout` is unknown,
    FileNotFoundError for a missing folder.
    """
    if layout is not None and layout not in LAYOUTS:
        raise PairedIngestError(f"unknown paired layout {layout!r}; layouts: {', '.join(LAYOUTS)}")
    if scale < 1:
        raise PairedIngestError(f"scale must be a positive integer, got {scale}")
    where = redact_url(source)
    listing = list_source(source)
    items = listing.items
    try:
        chosen = LAYOUTS[layout] if layout else detect_layout([item.name for item in items], scale, where)
    except ValueError as exc:
        raise PairedIngestError(str(exc)) from None
    benchmark = benchmark or _default_benchmark(where)
    fingerprint = _fingerprint(listing.entries, chosen.name, scale, benchmark, lr_upsampled, max_pixels)
    existing = None if force else store.find(fingerprint, "lq_pairs") if store.exists() else None
    if existing:
        metadata = store.manifest(existing)["metadata"]
        log.info("ingest --paired %s: unchanged since %s (cache hit)", where, existing)
        return PairedIngestResult(existing, True, benchmark, chosen.name, store.manifest(existing)["rows"],
                                  metadata["quarantine"], metadata["files"]["skipped_items"])
    quarantine: list[dict] = []
    skipped = [{"item": entry.name, "reason": entry.reason} for entry in listing.entries if isinstance(entry, Skipped)]
    rows, first_of, notes = [], {}, []
    for candidate in _match(chosen, items, scale, quarantine, skipped):
        try:
            row = _pair_row(candidate, scale, lr_upsampled, max_pixels)
        except BadImageError as exc:
            for item in (candidate.hr, candidate.lr):
                quarantine.append({"item": item.name, "reason": f"pair {candidate.key}: {exc}"})
            continue
        except OSError as exc:  # the strerror alone: the message would name a local path
            for item in (candidate.hr, candidate.lr):
                skipped.append({"item": item.name, "reason": f"unreadable: {exc.strerror or exc}"})
            continue
        if row["sample_id"] in first_of:
            for item in (candidate.hr, candidate.lr):
                skipped.append({"item": item.name, "reason": f"duplicate content of pair {first_of[row['sample_id']]}"})
            continue
        first_of[row["sample_id"]] = candidate.key
        rows.append(row)
    for record in quarantine:
        log.warning("ingest --paired: quarantined %s: %s", record["item"], record["reason"])
    if not rows:
        first = f" (first: {quarantine[0]['item']}: {quarantine[0]['reason']})" if quarantine else ""
        raise PairedIngestError(f"paired benchmark {where}: no HR/LR pair of x{scale} in the {chosen.name} layout "
                                f"({chosen.summary}); {len(quarantine)} files quarantined{first}")
    if lr_upsampled:
        notes.append(f"LR files at the HR size were bicubic-downsampled x{scale} (--lr-upsampled): see the rows' notes")
    metadata = {
        "stage": "ingest", "paired": True, "degradation": "real", "benchmark": benchmark, "layout": chosen.name,
        "layout_summary": chosen.summary, "source": where, "scale": scale, "split": SPLIT,
        "lr_upsampled": lr_upsampled, "max_pixels": max_pixels, "pairs": len(rows),
        "files": {"found": len(listing.entries), "paired": 2 * len(rows), "quarantined": len(quarantine),
                  "skipped": len(skipped), "skipped_items": skipped},
        "quarantine": quarantine, "notes": notes,
    }
    ref = store.publish("lq_pairs", pa.Table.from_pylist(rows, schema=LQ_PAIRS), fingerprint=fingerprint,
                        metadata=metadata)
    log.info("ingest --paired %s: %s, %d pairs of %s (%s layout), %d quarantined, %d skipped", where, ref, len(rows),
             benchmark, chosen.name, len(quarantine), len(skipped))
    return PairedIngestResult(ref, False, benchmark, chosen.name, len(rows), quarantine, skipped)
