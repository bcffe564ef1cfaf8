"""Dataset names, tags and refs (`name@vN`, `name@latest`, `name@<tag>`)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from storage.errors import InvalidNameError

# Names become path segments on every backend: keep them to a portable alphabet.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_VERSION_RE = re.compile(r"^v(\d+)$")
LATEST = "latest"


def validate_name(name: object, kind: str = "dataset name") -> str:
    """Return `name` if it is a valid dataset name or tag, else raise InvalidNameError naming it."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"invalid {kind} {name!r}: must be a non-empty string")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InvalidNameError(f"invalid {kind} {name!r}: contains control characters")
    if "/" in name or "\\" in name or ".." in name:
        raise InvalidNameError(f"invalid {kind} {name!r}: '/', '\\' and '..' are not allowed")
    if not _NAME_RE.match(name):
        raise InvalidNameError(
            f"invalid {kind} {name!r}: use letters, digits, '_', '-', '.' "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return name


def validate_tag(tag: object) -> str:
    """Return `tag` if usable as a tag: a valid name that is neither "latest" nor shaped like "vN"."""
    validate_name(tag, kind="tag")
    if tag == LATEST or _VERSION_RE.match(tag):
        raise InvalidNameError(f"invalid tag {tag!r}: 'latest' and 'vN' are reserved")
    return tag


@dataclass(frozen=True)
class DatasetRef:
    """A parsed reference. Exactly one of `version` and `selector` is set.

    name:     the dataset name.
    version:  the version number for `name@vN`.
    selector: "latest" or a tag name for `name@latest` / `name@<tag>`.
    """

    name: str
    version: int | None = None
    selector: str | None = None

    @classmethod
    def parse(cls, ref: "str | DatasetRef") -> "DatasetRef":
        """Parse `name`, `name@vN`, `name@latest` or `name@<tag>`; a bare name means latest."""
        if isinstance(ref, DatasetRef):
            return ref
        if not isinstance(ref, str):
            raise InvalidNameError(f"invalid dataset ref {ref!r}: expected 'name@vN', 'name@latest' or 'name@tag'")
        name, sep, rest = ref.partition("@")
        validate_name(name)
        if not sep:
            return cls(name, selector=LATEST)
        match = _VERSION_RE.match(rest)
        if match:
            version = int(match.group(1))
            if version < 1:
                raise InvalidNameError(f"invalid dataset ref {ref!r}: versions start at v1")
            return cls(name, version=version)
        validate_name(rest, kind="tag")
        return cls(name, selector=rest)

    @property
    def is_pinned(self) -> bool:
        return self.version is not None

    def __str__(self) -> str:
        if self.version is not None:
            return format_ref(self.name, self.version)
        return f"{self.name}@{self.selector}"


def format_ref(name: str, version: int) -> str:
    return f"{name}@v{version}"
