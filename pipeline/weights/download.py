"""One weight file from a URL into its cache folder: resumable, checked, never half-placed.

    result = download_file(url, target, checksum="sha256:a7bf3b02...", progress=True)

The bytes go to `<target>.part`; a rerun after a dropped connection asks for the rest with an
HTTP `Range: bytes=<part size>-` request (a server that ignores it answers 200 and the part
starts over). The whole part is checked against `checksum` before it is renamed to `target`,
so the final name only ever holds a complete, verified file. A mismatch deletes the part and
raises ChecksumMismatchError naming the file, the URL, the expected and the computed value.

Checksums are "<algorithm>:<hex>": `sha256` (the full digest), `sha256-prefix` (the start of
it, as torch-hub style names carry) and `git-blob-sha1` (the git object id of a file that is
published only inside a git repository). Progress bars go to stderr.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("dspo.models")
CHUNK = 1 << 20
PART_SUFFIX = ".part"
#: Seconds without a byte before a connection counts as dropped.
TIMEOUT_S = 60.0
USER_AGENT = "dspo-models-fetch"


class DownloadError(OSError):
    """A download that did not complete (HTTP error, dropped connection); the message names the
    URL and the file, and says whether a rerun resumes."""


class ChecksumMismatchError(DownloadError):
    """The downloaded bytes do not match the published checksum; nothing is left behind."""


@dataclass(frozen=True)
class DownloadResult:
    """What `download_file` did: the final path, its size, whether bytes were transferred
    (False: the file was already there), the byte offset the transfer resumed from (0: from
    the start), and the checksum it was verified against (None: none is published)."""

    path: str
    size: int
    downloaded: bool
    resumed_from: int
    checksum: str | None


class _Digest:
    """A running checksum of one of the CHECKSUM_KINDS over the bytes fed to it."""

    def __init__(self, checksum: str, size: int | None) -> None:
        self.algorithm, _, self.expected = checksum.partition(":")
        if self.algorithm not in ("sha256", "sha256-prefix", "git-blob-sha1") or not self.expected:
            raise ValueError(f"unknown checksum {checksum!r}: expected sha256:, sha256-prefix: or git-blob-sha1:<hex>")
        if self.algorithm == "git-blob-sha1":
            if size is None:
                raise DownloadError("a git-blob-sha1 checksum needs the file size, and the server sent none")
            self.hash = hashlib.sha1(f"blob {size}\0".encode())
        else:
            self.hash = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self.hash.update(data)

    def problem(self) -> str | None:
        """None when the digest matches, else 'expected X, got Y'."""
        got = self.hash.hexdigest()
        ok = got.startswith(self.expected) if self.algorithm == "sha256-prefix" else got == self.expected
        return None if ok else f"expected {self.algorithm} {self.expected}, got {got}"


def checksum_problem(path: str | os.PathLike[str], checksum: str) -> str | None:
    """None when the file at `path` matches `checksum` ("<algorithm>:<hex>"), else
    'expected <algorithm> <hex>, got <digest>'."""
    digest = _Digest(checksum, os.path.getsize(path))
    _hash_existing(Path(path), digest)
    return digest.problem()


def _open(url: str, offset: int) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    """The full file size from Content-Range (a 206) or Content-Length (a 200)."""
    content_range = response.headers.get("Content-Range", "")
    if response.status == 206 and "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return int(length) + (offset if response.status == 206 else 0) if length is not None else None


def _progress(name: str, total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=not enabled, leave=False)


def _hash_existing(part: Path, digest: _Digest) -> None:
    with part.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)


def _transfer(url: str, part: Path, checksum: str | None, progress: bool) -> int:
    """Append the rest of `url` to `part`, checking `checksum` over the whole file; returns the
    offset it resumed from. Raises DownloadError / ChecksumMismatchError."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the part already holds every byte
            response, total = None, offset
        else:
            raise DownloadError(f"download {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"download {url} failed: {reason}; check the address or --mirror / --url") from None
    if response is not None:
        if offset and response.status != 206:
            log.warning("%s ignored the Range request: downloading %s from the start", url, part.name)
            offset = 0
        total = _total_size(response, offset)
    digest = _Digest(checksum, total) if checksum else None
    if digest is not None and offset:
        _hash_existing(part, digest)
    written = offset
    if response is not None:
        with response, part.open("ab" if offset else "wb") as handle, \
                _progress(part.name[:-len(PART_SUFFIX)], total, offset, progress) as bar:
            try:
                while chunk := response.read(CHUNK):
                    handle.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
                    if digest is not None:
                        digest.update(chunk)
            except (http.client.HTTPException, OSError) as exc:
                raise DownloadError(f"download {url} interrupted after {written} bytes ({type(exc).__name__}: "
                                    f"{exc}); rerun to resume from {part}") from None
    if total is not None and written != total:
        raise DownloadError(f"download {url} ended after {written} of {total} bytes; rerun to resume from {part}")
    if digest is not None and (problem := digest.problem()):
        part.unlink()
        raise ChecksumMismatchError(f"checksum mismatch for {part.name[:-len(PART_SUFFIX)]} from {url}: {problem}; "
                                    "the partial file was deleted (a changed upstream file or a corrupted transfer)")
    return offset


def download_file(url: str, target: str | os.PathLike[str], checksum: str | None = None, *,
                  refresh: bool = False, attempts: int = 3, progress: bool = True) -> DownloadResult:
    """Download `url` to `target` unless it is there (or `refresh`), resuming a `.part` left by
    an earlier try and retrying a dropped connection up to `attempts` times in all.

    Returns a DownloadResult. Raises ChecksumMismatchError (part deleted), DownloadError (the
    part is kept, so the next call resumes).
    """
    target = Path(target)
    if target.is_file() and not refresh:
        return DownloadResult(str(target), target.stat().st_size, False, 0, checksum)
    part = target.with_name(target.name + PART_SUFFIX)
    target.parent.mkdir(parents=True, exist_ok=True)
    if refresh:
        part.unlink(missing_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            resumed_from = _transfer(url, part, checksum, progress)
            break
        except ChecksumMismatchError:
            raise
        except DownloadError as exc:
            if attempt == attempts or not part.exists():
                raise
            log.warning("%s (try %d of %d); resuming", exc, attempt, attempts)
    if checksum is None:
        log.warning("%s has no published checksum: downloaded unverified (size %d)", target.name, part.stat().st_size)
    os.replace(part, target)
    return DownloadResult(str(target), target.stat().st_size, True, resumed_from, checksum)
