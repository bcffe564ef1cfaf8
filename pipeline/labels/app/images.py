"""PNG crops of a task's instance, rendered from the store on request.

A request names an instance id and a view (`lq`, `hr` or one of the instance's candidate ids);
both are looked up in the pinned task list, so no request text ever becomes a path. The crop
geometry, zoom and mask outline are the Label Studio export's (pipeline.labels.export).
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict

import numpy as np

from dspo_core.segment import rle
from pipeline.datasets import rgb_array, rows_by_sample
from pipeline.labels.app.tasks import Task, TaskList
from pipeline.labels.export import crop, crop_geometry, outline, rgb_at
from storage import DatasetStore

# Rendered crops kept per cached sample: N candidates + LQ + HR of a few instances.
CROPS_PER_SAMPLE = 16


class Crops:
    """Renders and caches crops.

    Args:
        store: the dataset store.
        tasks: the pinned task list (its refs say where the pixels are).
        cache_samples: decoded samples kept in memory (the rendered PNGs kept scale with it).
        show_hr: whether the HR crop is a view (else it is never served).
    """

    def __init__(self, store: DatasetStore, tasks: TaskList, cache_samples: int, show_hr: bool = True):
        self._store = store
        self._tasks = tasks
        self._samples: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._pngs: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._cache_samples = cache_samples
        self._references = ("lq", "hr") if show_hr else ("lq",)
        # One lock: the browser asks for a task's N + 2 crops at once, and they should share one
        # read of the sample rather than race to make N + 2.
        self._lock = threading.Lock()

    def views(self, task: Task) -> tuple[str, ...]:
        """The view names a task has."""
        return (*self._references, *task.candidates)

    def png(self, task: Task, view: str) -> bytes:
        """The PNG of `view` of `task`; KeyError for a view the task does not have."""
        if view not in self.views(task):
            raise KeyError(view)
        key = (task.instance_id, view)
        with self._lock:
            if key in self._pngs:
                self._pngs.move_to_end(key)
                return self._pngs[key]
            image = self._sample(task.sample_id)[view]
            box, zoom = crop_geometry(task.bbox, image.shape[:2])
            x, y, w, h = box
            mask = rle.decode(task.mask)[y:y + h, x:x + w]
            edge = outline(mask.repeat(zoom, axis=0).repeat(zoom, axis=1))
            buffer = io.BytesIO()
            crop(image, box, zoom, edge).save(buffer, format="PNG", compress_level=1)
            self._pngs[key] = buffer.getvalue()
            while len(self._pngs) > self._cache_samples * CROPS_PER_SAMPLE:
                self._pngs.popitem(last=False)
            return self._pngs[key]

    def _sample(self, sample_id: str) -> dict[str, np.ndarray]:
        """{"hr", "lq" (bicubic to the HR size), candidate id: RGB array}; called under the lock."""
        if sample_id in self._samples:
            self._samples.move_to_end(sample_id)
            return self._samples[sample_id]
        rows = rows_by_sample(self._store, self._tasks.lq_ref, ["sample_id", "hr", "lq"], [sample_id])
        if not rows:
            raise LookupError(f"sample {sample_id} is not in {self._tasks.lq_ref}")
        hr = rgb_array(rows[sample_id][0]["hr"])
        views = {"hr": hr, "lq": rgb_at(rows[sample_id][0]["lq"], hr.shape[:2])}
        candidates = rows_by_sample(self._store, self._tasks.candidates_ref, ["sample_id", "candidate_id", "image"],
                                    [sample_id])
        for candidate in candidates.get(sample_id, []):
            views[candidate["candidate_id"]] = rgb_at(candidate["image"], hr.shape[:2])
        self._samples[sample_id] = views
        while len(self._samples) > self._cache_samples:
            self._samples.popitem(last=False)
        return views
