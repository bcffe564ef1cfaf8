"""A Hugging Face model repo into the HF cache at a pinned revision, with `huggingface_hub`.

    snapshot = fetch_hf_repo("stabilityai/stable-diffusion-2-1-base", "5ede9e4b...", ("*.json",))

The files land in `roots.hf_hub_root()` (the cache `dspo models ls` and every
`from_pretrained(..., local_files_only=True)` read), under the snapshot of the resolved commit.
The endpoint is $HF_ENDPOINT when set (a mirror, or a test server), else huggingface.co; it is
read at each call, since huggingface_hub reads it only once at import. huggingface_hub
resumes its own `.incomplete` blobs and checks LFS files against their sha256.
"""
from __future__ import annotations

import os

from pipeline.weights.roots import hf_hub_root


class HubDownloadError(OSError):
    """The repo, revision or one of its files could not be fetched; the message names them,
    the endpoint, and what to check."""


def hub_endpoint() -> str:
    """$HF_ENDPOINT without a trailing slash, else the public hub."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _quiet_tqdm():
    """A tqdm class that shows nothing (huggingface_hub's bars when --no-progress)."""
    from tqdm.auto import tqdm

    class Quiet(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})

    return Quiet


def fetch_hf_repo(repo_id: str, revision: str, allow_patterns: tuple[str, ...] = (), *,
                  refresh: bool = False, progress: bool = True) -> str:
    """Download the files of `repo_id` at `revision` matching `allow_patterns` (all when empty)
    into the HF cache, with huggingface_hub's progress bars on stderr unless not `progress`;
    returns the local snapshot folder. Raises HubDownloadError."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    endpoint = hub_endpoint()
    try:
        return snapshot_download(repo_id, revision=revision, cache_dir=hf_hub_root(), endpoint=endpoint,
                                 allow_patterns=list(allow_patterns) or None, force_download=refresh,
                                 max_workers=4, tqdm_class=None if progress else _quiet_tqdm())
    except (HfHubHTTPError, LocalEntryNotFoundError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split())[:400]
        raise HubDownloadError(f"fetch Hugging Face repo {repo_id}@{revision} from {endpoint} failed "
                               f"({type(exc).__name__}: {message}); check the repo id and revision in "
                               "pipeline/weights/catalog.py, $HF_ENDPOINT and $HF_TOKEN for gated repos") from None
