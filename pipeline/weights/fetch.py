"""Model weights named by an s3:// URI: copied once into a local cache, then used offline.

    local = fetch_weights("s3://models/sam/sam_vit_b_01ec64.pth")   # a file
    local = fetch_weights("s3://models/sd-2-1-base/")               # a diffusers folder

The copy lives under models_root()/s3/<bucket>/<key>; a `.dspo-complete` marker beside it
is written last, so an interrupted download is redone and a finished one needs no network.
Local paths pass through unchanged. Credentials and endpoint come from the AWS environment.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.weights.roots import models_root

if TYPE_CHECKING:
    from dspo_core.sr import SRBackbone

log = logging.getLogger("dspo.models")
COMPLETE_MARKER = ".dspo-complete"
#: Backbone config keys that name weights: an s3:// value is fetched into the local cache.
WEIGHT_KEYS = ("path", "lora_path")


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
