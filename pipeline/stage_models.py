"""The models stages run with, cached per process and safe for concurrent shards.

    with self.model("scorer", section.iqa, lambda: IQAScorer(section.iqa)) as scorer:
        ...                                  # this shard's own instance until the block ends

A stage asks for a model by (stage, kind, config); the cache hands each concurrent shard an
instance no other shard holds, reusing a free one and building a new one only when all are
busy (a torch module or a tokenizer is not safe to share between threads mid-call). Builds
run one at a time per process: loading weights is the memory peak of a stage, and several
libraries' lazy initialisation (first CUDA call, tokenizer caches) is not thread-safe.
Instances live as long as the process, so later shards and later runs of the same config in
a worker process reuse them.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

Model = TypeVar("Model")


class ModelCache:
    """Free instances by key; see the module docstring."""

    def __init__(self) -> None:
        self._free: dict[tuple, list[Any]] = {}
        self._count: dict[tuple, int] = {}
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()

    @contextmanager
    def borrow(self, key: tuple, build: Callable[[], Model]) -> Iterator[Model]:
        """An instance for `key` that nobody else holds until the block ends (built by `build`
        when none is free)."""
        with self._lock:
            free = self._free.setdefault(key, [])
            instance = free.pop() if free else None
        if instance is None:
            with self._build_lock:
                instance = build()
            with self._lock:
                self._count[key] = self._count.get(key, 0) + 1
        try:
            yield instance
        finally:
            with self._lock:
                self._free.setdefault(key, []).append(instance)

    def keys(self) -> list[tuple]:
        """The keys that have had an instance built in this process."""
        with self._lock:
            return list(self._count)

    def instances(self, key: tuple) -> int:
        """How many instances were built for `key` in this process."""
        with self._lock:
            return self._count.get(key, 0)

    def clear(self) -> None:
        """Drop every free instance (held ones are dropped when given back)."""
        with self._lock:
            self._free.clear()
            self._count.clear()


#: The process's cache, shared by every stage object and every thread.
MODELS = ModelCache()
