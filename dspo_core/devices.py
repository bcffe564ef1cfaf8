"""Device names a config may give, checked when the config is built (before any model loads).

    device: AnyDevice = "auto"      # a model that picks CUDA when it is there
    device: TorchDevice = "cpu"     # handed to torch as it is, so no "auto"
"""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_TORCH = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def _torch_device(value: str) -> str:
    if not _TORCH.match(value):
        raise ValueError(f"unknown device {value!r}; accepted: cpu, mps, cuda, cuda:N")
    return value


def _any_device(value: str) -> str:
    if value != "auto" and not _TORCH.match(value):
        raise ValueError(f"unknown device {value!r}; accepted: auto, cpu, mps, cuda, cuda:N")
    return value


TorchDevice = Annotated[str, AfterValidator(_torch_device)]
AnyDevice = Annotated[str, AfterValidator(_any_device)]
