"""Building pyiqa metrics strictly offline, and knowing whether their weights are cached.

pyiqa fetches weights while a metric is constructed, through four doors (read from
pyiqa 0.1.16's source):

- its own files: ``pyiqa.utils.download_util.load_file_from_url(url)`` ->
  ``$TORCH_HOME/hub/pyiqa/<basename of url>`` (``default_model_urls`` in each arch);
- torchvision backbones: ``torch.hub.load_state_dict_from_url`` ->
  ``$TORCH_HOME/hub/checkpoints/<basename of url>``;
- timm / transformers backbones: ``huggingface_hub`` -> the HF cache
  (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub/models--<org>--<name>``);
- CLIP: ``pyiqa.archs.clip_model._download`` -> ``$TORCH_HOME/hub/clip/<name>.pt``
  (pyiqa's CLIP copy) and openai ``clip.clip._download`` -> ``~/.cache/clip``.

``offline_guard()`` patches each door for the time a metric is built (and run): a file
already there is used as usual; a missing one raises ``MissingWeightsError`` naming the
metric and the exact path pyiqa would have written, before any connection. As a last
net, DNS look-ups and socket connects raise too, so no code path reaches the network
(offline, pyiqa otherwise dies with a DNS error after a delay). ``HF_HUB_OFFLINE=1``
alone is not enough: pyiqa's own downloads ignore it (FIELD-NOTES).

The patches are process-global while active (a metric build holds a lock), and the
cache roots are read at call time, so ``TORCH_HOME`` changed after ``import pyiqa``
is honoured (pyiqa itself freezes ``$TORCH_HOME/hub/pyiqa`` at import).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

from ..digest import sha256_file
from .config import WEIGHT_FREE_METRICS

_LOCK = threading.RLock()
_METRICS: dict[tuple, object] = {}


class MissingWeightsError(FileNotFoundError):
    """A configured pyiqa metric needs weights that are not on local disk.

    Attributes: ``metric`` (pyiqa name), ``path`` (the file pyiqa would download to),
    ``url`` (where pyiqa would fetch it from; None when unknown).
    """

    def __init__(self, metric: str | None, path: str, url: str | None = None, detail: str = "") -> None:
        self.metric = metric
        self.path = path
        self.url = url
        where = f" (pyiqa would download it from {url})" if url else ""
        super().__init__(
            f"pyiqa metric {metric!r} needs weights that are not cached: expected file {path}{where}. "
            f"Nothing is downloaded; place the file there (or point TORCH_HOME / HF_HUB_CACHE at a cache "
            f"holding it), or drop {metric!r} from the configured metrics.{(' ' + detail) if detail else ''}"
        )


class _NetworkBlocked(BaseException):
    # A BaseException, so that library code catching Exception (to fall back, retry or
    # log) cannot swallow it: it runs straight up to offline_guard.
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def torch_hub_dir() -> str:
    """``torch.hub.get_dir()`` now: ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``)."""
    import torch.hub

    return torch.hub.get_dir()


def hf_hub_cache() -> str:
    """The Hugging Face hub cache huggingface_hub uses (``$HF_HUB_CACHE`` / ``$HF_HOME/hub`` as
    read when huggingface_hub was imported; default ``~/.cache/huggingface/hub``)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _missing_download(metric: str):
    def download_url_to_file(url, dst, *args, **kwargs):
        raise MissingWeightsError(metric, os.path.abspath(dst), url)

    return download_url_to_file


def _checked_clip_download(metric: str, original):
    def _download(url: str, root: str):
        target = os.path.join(root, os.path.basename(url))
        expected = url.split("/")[-2]
        if os.path.isfile(target):
            if sha256_file(target) == expected:
                return original(url, root)
            raise MissingWeightsError(metric, target, url, detail="(the file there has the wrong sha256)")
        raise MissingWeightsError(metric, target, url)

    return _download


def _local_only_hf(metric: str, original):
    def _hf_hub_download_to_cache_dir(**kwargs):
        kwargs["local_files_only"] = True
        from huggingface_hub.errors import LocalEntryNotFoundError
        from huggingface_hub.file_download import repo_folder_name

        try:
            return original(**kwargs)
        except LocalEntryNotFoundError as error:  # not in the cache (local_files_only)
            folder = repo_folder_name(repo_id=kwargs["repo_id"], repo_type=kwargs.get("repo_type") or "model")
            path = os.path.join(kwargs["cache_dir"], folder, "snapshots", "<revision>", kwargs["filename"])
            raise MissingWeightsError(
                metric, path, f"hf://{kwargs['repo_id']}/{kwargs['filename']}", detail=f"({type(error).__name__})"
            ) from None

    return _hf_hub_download_to_cache_dir


def _blocked(what: str):
    def refuse(*args, **kwargs):
        raise _NetworkBlocked(f"{what}{args[:2]!r}")

    return refuse


def _blocked_connect(original):
    # socket.socket.connect / connect_ex: refuse internet sockets, let local (AF_UNIX) ones through.
    def connect(sock, address, *args):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise _NetworkBlocked(f"connect{address!r}")
        return original(sock, address, *args)

    return connect


@contextlib.contextmanager
def offline_guard(metric: str | None = None) -> Iterator[None]:
    """While active: pyiqa, torchvision, huggingface_hub and CLIP never download and
    the process makes no network connection; a missing weight file raises
    ``MissingWeightsError(metric, path)``."""
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.file_download as hf_download
    import pyiqa.archs.clip_model as pyiqa_clip
    import pyiqa.utils.download_util as pyiqa_download
    import torch.hub

    patches: list[tuple[object, str, object]] = [
        (pyiqa_download, "download_url_to_file", _missing_download(metric)),
        (pyiqa_download, "DEFAULT_CACHE_DIR", os.path.join(torch_hub_dir(), "pyiqa")),
        (torch.hub, "download_url_to_file", _missing_download(metric)),
        (pyiqa_clip, "_download", _checked_clip_download(metric, pyiqa_clip._download)),
        (hf_constants, "HF_HUB_OFFLINE", True),
        (hf_download, "_hf_hub_download_to_cache_dir", _local_only_hf(metric, hf_download._hf_hub_download_to_cache_dir)),
        (socket, "getaddrinfo", _blocked("DNS look-up")),
        (socket, "create_connection", _blocked("connection")),
        (socket.socket, "connect", _blocked_connect(socket.socket.connect)),
        (socket.socket, "connect_ex", _blocked_connect(socket.socket.connect_ex)),
    ]
    try:
        import clip.clip as openai_clip  # openai-clip; its import needs setuptools<81 (pkg_resources)
    except ImportError:  # pragma: no cover - then pyiqa's openai-CLIP metrics cannot be built anyway
        openai_clip = None
    if openai_clip is not None:
        patches.append((openai_clip, "_download", _checked_clip_download(metric, openai_clip._download)))
    with _LOCK:
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        try:
            for owner, name, value in patches:
                setattr(owner, name, value)
            yield
        except _NetworkBlocked as blocked:
            raise MissingWeightsError(
                metric, "<unknown>", detail=f"It tried to reach the network ({blocked.what}); blocked."
            ) from None
        finally:
            for owner, name, value in reversed(saved):
                setattr(owner, name, value)


def _cache_key(metric: str, device: str) -> tuple:
    return (metric, str(device), torch_hub_dir(), hf_hub_cache())


def load_metric(metric: str, device: str = "cpu"):
    """The pyiqa metric `metric` (``pyiqa.create_metric``), built under ``offline_guard``.

    Cached per (metric, device, torch hub dir, HF cache). Raises ``MissingWeightsError``
    (naming the metric and the expected file) when its weights are not cached, and
    ``KeyError`` for a name pyiqa does not know.
    """
    key = _cache_key(metric, device)
    with _LOCK:
        if key in _METRICS:
            return _METRICS[key]
        import pyiqa

        if metric not in pyiqa.list_models():
            raise KeyError(f"unknown pyiqa metric {metric!r}; see pyiqa.list_models()")
        with offline_guard(metric):
            built = pyiqa.create_metric(metric, device=device)
        _METRICS[key] = built
        return built


def weights_present(metric: str) -> bool:
    """True when `metric` can be built from local files alone, False when a weight file
    is missing; never downloads or touches the network.

    Weight-free metrics are True at once. Others are built once under
    ``offline_guard`` (on CPU; the built metric is cached for ``load_metric``): every
    download pyiqa, torchvision, timm/transformers or CLIP would make is checked against
    the cache path it would write to.
    """
    if metric in WEIGHT_FREE_METRICS:
        return True
    try:
        load_metric(metric, "cpu")
    except MissingWeightsError:
        return False
    return True


def missing_weights(metric: str) -> MissingWeightsError | None:
    """The ``MissingWeightsError`` building `metric` offline would raise, or None."""
    try:
        load_metric(metric, "cpu")
    except MissingWeightsError as error:
        return error
    return None


def clear_metric_cache() -> None:
    """Forget the built metrics (frees their memory)."""
    with _LOCK:
        _METRICS.clear()
