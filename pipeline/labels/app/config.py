"""The labelling app's settings: one typed record, filled from `dspo label serve`'s options."""
from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

LOOPBACK_NAMES = ("localhost",)


class LabelAppConfig(BaseModel):
    """What `dspo label serve` serves and how it writes; every field has a CLI option."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to bind. Anything but loopback exposes the app to the "
                                                "network (tokens still guard it, but over plain HTTP).")
    port: int = Field(8765, ge=0, le=65535, description="Port to bind; 0 picks a free one (printed at start).")
    state_dir: Path = Field(description="Folder of annotators.json (token hashes), sessions.json (login "
                                        "sessions), session.key (the CSRF key) and labels.journal (accepted "
                                        "labels not yet published), all mode 0600; kept out of the store so that "
                                        "no dataset reader sees them. The CLI's default: <project>/.dspo/label.")
    candidates: str = Field("sr_candidates@latest", description="Candidates shown, pinned at start.")
    instances: str = Field("instances@latest", description="Instances to label, pinned at start.")
    lq_pairs: str | None = Field(None, description="LQ/HR crops shown for reference; default: the lq_pairs "
                                                   "version the candidates were made from.")
    scores: str | None = Field("instance_scores@latest",
                               description="IQA rewards that order the queue (smallest best-worst reward gap "
                                           "first); None, or a store without them: sample order.")
    min_instance_pixels: int = Field(16, ge=0, description="Instances whose bounding box is thinner than this "
                                     "many HR pixels (either side) are left out of the queue: too small to judge; "
                                     "0 keeps every instance.")
    show_hr: bool = Field(True, description="Show the HR crop for reference; False: annotators judge the "
                                             "candidates against the LQ input only.")
    batch_size: int = Field(20, ge=1, description="Publish a human_labels version once this many labels wait.")
    batch_seconds: float = Field(30.0, gt=0, description="... or once the oldest waiting label is this old. "
                                                         "Waiting labels are journalled: a killed server loses "
                                                         "none, its successor publishes them.")
    session_hours: float = Field(12.0, gt=0, description="Lifetime of a login cookie.")
    cache_samples: int = Field(8, ge=1, description="Decoded samples (HR, LQ, N candidates) kept in memory.")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("host is empty")
        return value

    @property
    def loopback(self) -> bool:
        """Whether the app is reachable from this machine only."""
        if self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
