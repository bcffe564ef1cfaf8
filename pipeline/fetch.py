"""Model weights named by an s3:// URI: copied once into a local cache, then used offline.

    local = fetch_weights("s3://models/sam/sam_vit_b_01ec64.pth")   # a file
    local = fetch_weights("s3://models/sd-2-1-base/")               # a diffusers folder

The copy lives under $DSPO_MODELS/s3/<bucket>/<key>; a `.dspo-complete` marker beside it
is written last, so an interrupted download is redone and a finished one needs no network.
Local paths pass through unchanged. Credentials and endpoint come from the AWS environment.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("dspo.models")
COMPLETE_MARKER = ".dspo-complete"


def models_root() -> Path:
    return Path(os.path.expanduser(os.environ.get("DSPO_MODELS") or "~/.cache/dspo/models"))


def cache_path(uri: str) -> Path:
    return models_root() / "s3" / uri[len("s3://"):].strip("/")


def is_fetched(uri: str) -> bool:
    target = cache_path(uri)
    return (target.parent / f"{target.name}{COMPLETE_MARKER}").exists()


def fetch_weights(location: str | None, refresh: bool = False) -> str | None:
    """A local path for `location`: itself unless it is an s3:// URI, which is downloaded first."""
    if not location or not str(location).startswith("s3://"):
        return location
    import fsspec

    target = cache_path(location)
    marker = target.parent / f"{target.name}{COMPLETE_MARKER}"
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
