"""The segmenter interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib import metadata
from typing import Any, ClassVar

import numpy as np

from .config import SegmenterConfig
from .instances import InstanceRecord, Proposal, check_image, postfilter, to_records

#: Version of the record format and post-filter semantics; bump when either changes.
RECORD_VERSION = 1


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


class Segmenter(ABC):
    """Turns an RGB image into DSPO instances.

    Subclasses implement ``propose`` (raw masks) and ``describe_params``; the
    base class validates the input, applies the configured post-filter and
    encodes the records, so every segmenter emits the same record format.
    """

    name: ClassVar[str]
    #: Distribution whose code produces the masks, recorded with its version by ``describe()``.
    library: ClassVar[str]

    def __init__(self, config: SegmenterConfig) -> None:
        if config.name != self.name:
            raise ValueError(f"{type(self).__name__} needs config.name == {self.name!r}, got {config.name!r}")
        self.config = config

    @abstractmethod
    def propose(self, image: np.ndarray) -> list[Proposal]:
        """Raw masks of a validated (H, W, 3) uint8 image, before the post-filter."""

    @abstractmethod
    def describe_params(self) -> dict[str, Any]:
        """JSON-serialisable parameters of the segmenter itself (without the post-filter)."""

    def segment(self, image: np.ndarray) -> list[InstanceRecord]:
        """Segment ``image`` (an (H, W, 3) uint8 RGB array) into instances.

        Returns InstanceRecords (see its docstring for the fields) ranked by the
        post-filter's priority, the remainder instance (if enabled) last. Their
        ``weight`` fields sum to 1; the list is empty when no mask survives the
        post-filter and ``remainder`` is off. Output is deterministic for
        identical input and configuration on the same device.

        Raises InvalidImageError for anything but an (H, W, 3) uint8 array.
        """
        image = check_image(image)
        h, w = image.shape[:2]
        kept = postfilter(self.propose(image), h, w, self.config.postfilter)
        return to_records(kept)

    def describe(self) -> dict[str, Any]:
        """Parameters to record in the dataset manifest (JSON-serialisable).

        ``{"segmenter", "record_version", <name>: {...all parameters...},
        "postfilter": {...}, "library": {"name", "version"}}``; the SAM entry also
        holds the checkpoint file name and the first 16 hex digits of its sha256.
        """
        return {
            "segmenter": self.name,
            "record_version": RECORD_VERSION,
            self.name: self.describe_params(),
            "postfilter": self.config.postfilter.model_dump(mode="json"),
            "library": {"name": self.library, "version": package_version(self.library)},
        }
