"""Finding pretrained weights on local disk and naming them by content.

Two jobs, both offline:

- ``resolve_pretrained`` turns a configured local folder, or a Hugging Face model id
  present in the HF cache, into a folder ``from_pretrained`` can read; when neither is
  there it raises ``MissingWeightsError`` saying where the weights were looked for and
  how to fetch them. Downloading (including from ``s3://``) is the pipeline layer's job.
- ``weights_id`` names weights as ``<label>@sha256:<12 hex>``, the string recorded with
  every generated candidate, so two datasets made with different weights never share an id;
  ``folder_digest`` is the digest of a weights folder (``dspo_core.digest``).
"""

from __future__ import annotations

import os

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from ..digest import files_digest

SHORT_DIGEST = 12


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are not on local disk; the message says where they were expected."""


def folder_digest(folder: str) -> str:
    """``files_digest`` of every file under `folder`, by sorted relative path.

    Hidden entries (``.cache/`` left by ``hf download --local-dir``, ``.git``) are skipped.
    """
    files = {}
    for parent, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        for name in names:
            if not name.startswith("."):
                path = os.path.join(parent, name)
                files[os.path.relpath(path, folder).replace(os.sep, "/")] = path
    if not files:
        raise MissingWeightsError(f"{folder} contains no files")
    return files_digest(dict(sorted(files.items())))


def weights_id(label: str, digest: str) -> str:
    """The recorded identity of some weights: ``<label>@sha256:<first 12 hex digits>``."""
    return f"{label}@sha256:{digest[:SHORT_DIGEST]}"


def hf_cache_folder(model_id: str, cache_dir: str | None = None) -> str:
    """Where the Hugging Face cache keeps `model_id` (``<cache>/models--org--name``)."""
    return os.path.join(cache_dir or constants.HF_HUB_CACHE, "models--" + model_id.replace("/", "--"))


def resolve_pretrained(model_id: str, path: str | None = None, cache_dir: str | None = None) -> str:
    """The local folder holding `model_id`'s diffusers weights.

    Args:
        model_id: Hugging Face model id, e.g. ``stabilityai/stable-diffusion-2-1-base``.
        path: a local folder that overrides the cache lookup. An ``s3://`` URI is refused:
            the pipeline layer copies it to local disk first.
        cache_dir: Hugging Face hub cache to search; default ``$HF_HUB_CACHE`` (else
            ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``).

    Returns the folder (a snapshot inside the cache when found there).

    Raises:
        MissingWeightsError: nothing usable at `path` or in the cache; the message names
            the model id, every location tried and how to fetch the weights.
    """
    fetch = (
        f"Fetch them on a machine with network access: `hf download {model_id}` (fills the Hugging Face "
        f"cache; copy it over or point HF_HUB_CACHE at it), or `hf download {model_id} --local-dir DIR` "
        f"and set the backbone's `path` to DIR."
    )
    if path is not None:
        if "://" in path:
            raise MissingWeightsError(
                f"weights of {model_id} configured as {path!r}: remote URIs are fetched by the pipeline layer "
                f"(`dspo models`), dspo_core reads local folders only. Pass the local copy as `path`."
            )
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise MissingWeightsError(
                f"weights of {model_id} not found: the configured path {path} has no model_index.json "
                f"(a diffusers pipeline folder is expected). {fetch}"
            )
        return path
    try:
        return snapshot_download(model_id, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError:
        raise MissingWeightsError(
            f"weights of {model_id} not found offline: no snapshot in the Hugging Face cache at "
            f"{hf_cache_folder(model_id, cache_dir)} and no `path` configured. {fetch}"
        ) from None
