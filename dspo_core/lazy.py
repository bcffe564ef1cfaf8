"""Lazy package exports (PEP 562).

A package lists its public names by the submodule that defines them; each is imported on first
use, so importing a light name (a config class) does not import torch, diffusers or pyiqa.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str],
                 submodules: tuple[str, ...] = ()) -> tuple[Callable, Callable, list[str]]:
    """`(__getattr__, __dir__, __all__)` for `package`.

    Arguments:
        package:    the package's `__name__`.
        exports:    public name -> relative submodule defining it, e.g. {"degrade": ".pipeline"}.
        submodules: public submodules reachable as attributes, e.g. ("rle",).
    """
    names = sorted([*exports, *submodules])

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name], package), name)
        if name in submodules:
            return importlib.import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return list(names)

    return __getattr__, __dir__, names
