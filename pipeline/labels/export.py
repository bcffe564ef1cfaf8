"""Export labelling tasks: one per instance, with crops of every candidate, the LQ and the HR.

For each instance (ordered by sample_id, then instance index) the instance's bounding box,
padded, is cut from each of the sample's N candidates, from the LQ image (bicubic-upscaled
to the HR size first) and from the HR crop; small crops are enlarged by an integer factor
(nearest neighbour, so pixels stay pixels) and the mask outline is drawn on each. Files:

    DIR/images/<sample_id>/<instance_id>/<A..>-<candidate_id>.png, lq.png, hr.png
    DIR/tasks.json         (label-studio) Label Studio import: one task per instance
    DIR/label_config.xml   (label-studio) the labelling interface for those tasks
    DIR/tasks.csv          (folder) the CSV importer's template, one row per instance

Images in tasks.json are, by default, the PNGs themselves as `data:image/png;base64,...` URIs:
Label Studio shows them with no storage or server to set up (about 0.13 MB per task, median of
the test profile's; README "Label Studio round trip"). With `url_prefix` they are references instead, `url_prefix` + the path
relative to DIR: for Label Studio's local file serving `/data/local-files/?d=<DIR relative to
LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT>/` (with a Local Storage on the project), or the URL
where DIR is served (`http://host:port/`). `data.files` keeps the relative paths either way.

Each task's data: sample_id, instance_id, instance_index, candidate_ids, items (the Ranker's
List: id = candidate id, title = letter; with `url_prefix` also `html`, a thumbnail),
candidate_<i> / lq / hr / image (the images; `image`, the HR crop, is the brush canvas),
crop_box ([x, y, w, h] in HR pixels), zoom, frame_size ([h, w]). Export the labelled tasks
from Label Studio (JSON, JSON_MIN or CSV) and import the file with `dspo labels import`.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import math
import string
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image

from dspo_core.segment import rle
from pipeline.datasets import lineage_ref, rgb_array, rows_by_sample
from pipeline.labels.readers import TEMPLATE_COLUMNS
from storage import DatasetStore, StoreError

EXPORT_FORMATS = ("label-studio", "folder")
DISPLAY_SIDE = 256      # crops are enlarged until their longer side reaches this (integer zoom)
MAX_ZOOM = 8
OUTLINE = (255, 0, 255)
MAX_ASPECT = 2          # exported crops are at most twice as long as they are high (or wide)
SAMPLES_PER_READ = 16
# The PNGs are embedded in tasks.json by default: level 6 is 13% smaller than level 1; 9 is 13x slower for 2% more.
PNG_LEVEL = 6
# Views in Label Studio: a row of flex items that share its width (never below MIN_VIEW px, where
# the row wraps), each image filling its view: in an auto-sized (inline-block) view Label Studio
# 1.23 shrinks an image to a few pixels. The references (LQ, HR) are capped smaller, so the
# ranker below stays near the first screen.
MIN_VIEW = 180
MAX_CANDIDATE = 400
MAX_REFERENCE = 320
# Without them a candidate's view has no zoom tools beside it taking room from the image (the HR
# crop keeps them: it is where regions are painted).
NO_TOOLS = 'zoom="false" zoomControl="false" selectionControl="false"'


@dataclass
class ExportReport:
    folder: Path
    format: str
    tasks: int = 0
    images: int = 0
    embedded: bool = False                           # images in tasks.json as data URIs (else references)
    task_bytes: int = 0                              # size of tasks.json
    files: list[str] = field(default_factory=list)   # the task files written (relative to folder)
    inputs: list[str] = field(default_factory=list)


def crop_geometry(bbox, frame: tuple[int, int]) -> tuple[list[int], int]:
    """([x, y, w, h] of the padded crop, zoom factor) for an instance bbox in a (h, w) frame."""
    x, y, w, h = (int(v) for v in bbox)
    pad = max(4, round(max(w, h) * 0.15))
    x0, y0 = max(0, x - pad), max(0, y - pad)
    x1, y1 = min(frame[1], x + w + pad), min(frame[0], y + h + pad)
    side = max(x1 - x0, y1 - y0, 1)
    return [x0, y0, x1 - x0, y1 - y0], min(MAX_ZOOM, max(1, math.ceil(DISPLAY_SIDE / side)))


def balanced(box: list[int], frame: tuple[int, int]) -> list[int]:
    """`box` ([x, y, w, h]) with its shorter side widened, about its centre and within the (h, w)
    frame, to at least 1/MAX_ASPECT of the longer: in a row of candidates sharing the page's
    width a long thin crop would be shown a few pixels high."""
    _, _, w, h = box
    for start, size, limit, other in ((0, w, frame[1], h), (1, h, frame[0], w)):
        wanted = min(limit, max(size, math.ceil(other / MAX_ASPECT)))
        if wanted > size:
            low = min(max(0, box[start] - (wanted - size) // 2), limit - wanted)
            box = [*box[:start], low, *box[start + 1:]]
            box[start + 2] = wanted
    return box


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels: set pixels with an unset 4-neighbour (outside counts as unset)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def crop(image: np.ndarray, box: list[int], zoom: int, edge: np.ndarray) -> Image.Image:
    """`box` of `image` enlarged `zoom` times, with the `edge` pixels (at the enlarged size) outlined."""
    x, y, w, h = box
    enlarged = image[y:y + h, x:x + w].repeat(zoom, axis=0).repeat(zoom, axis=1).copy()
    enlarged[edge] = OUTLINE
    return Image.fromarray(enlarged)


def _image_view(title: str, name: str, widest: int = MAX_CANDIDATE, tools: str = NO_TOOLS) -> str:
    """A titled <Image> filling a flex item that shares its row's width, `widest` px at most."""
    style = f"flex: 1 1 0; min-width: {MIN_VIEW}px; max-width: {widest}px"
    return (f'    <View style="{style}"><Header value={quoteattr(title)} size="5"/>'
            f'<Image name="{name}" value="${name}" width="100%" maxWidth="100%" {tools}/></View>').replace(" />", "/>")


def label_config(candidates: int) -> str:
    """Label Studio labelling config for the exported tasks (N = `candidates` images): the
    candidates side by side (wrapping), then the LQ and the HR crop (the brush canvas)."""
    images = "\n".join(_image_view(letter, f"candidate_{index}")
                       for index, letter in zip(range(candidates), _letters()))
    row = '<View style="display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start">'
    return f"""<View>
  <Header value="Rank the candidates on the outlined instance: best first, worst last"/>
  {row}
{images}
  </View>
  {row}
{_image_view("LQ (upscaled)", "lq", MAX_REFERENCE)}
{_image_view("HR (reference; draw the hallucinated region here)", "image", MAX_REFERENCE, "")}
  </View>
  <List name="candidates" value="$items" title="Candidates"/>
  <Ranker name="rank" toName="candidates"/>
  <Choices name="hallucination" toName="image" choice="single" showInline="true">
    <Choice value="hallucination"/>
    <Choice value="no hallucination"/>
  </Choices>
  <TextArea name="description" toName="image" placeholder="What is hallucinated in the worst candidate?"
            rows="2" maxSubmissions="1"/>
  <BrushLabels name="region" toName="image">
    <Label value="hallucination" background="#ff00ff"/>
  </BrushLabels>
</View>
"""


def rgb_at(cell: dict, frame: tuple[int, int]) -> np.ndarray:
    """An image cell as a uint8 RGB array of `frame` (h, w): bicubic-resized when its size
    differs (the LQ input, a candidate of another size), so every view of a sample aligns."""
    image = rgb_array(cell)
    if image.shape[:2] == tuple(frame):
        return image
    return np.asarray(Image.fromarray(image).resize((frame[1], frame[0]), Image.BICUBIC))


def lq_pairs_of(store: DatasetStore, candidates_ref: str) -> str:
    """The lq_pairs version `candidates_ref` was made from; StoreError naming it when none is."""
    ref = lineage_ref(store, candidates_ref, "lq_pairs")
    if ref is None:
        raise StoreError(f"{candidates_ref} has no lq_pairs in its lineage, so its LQ and HR images are unknown")
    return ref


def _prepare(folder: Path, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise FileExistsError(f"{folder} is not empty; choose an absent or empty folder")
    folder.mkdir(parents=True, exist_ok=True)


def export_tasks(store: DatasetStore, to, format: str = "label-studio", limit: int | None = None, *,
                 candidates: str = "sr_candidates@latest", instances: str = "instances@latest",
                 url_prefix: str | None = None, force: bool = False) -> ExportReport:
    """Write labelling tasks for the first `limit` instances (all if None) to folder `to`;
    images embedded as data URIs unless `url_prefix` is given (module doc)."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; one of {', '.join(EXPORT_FORMATS)}")
    candidates_ref, instances_ref = store.resolve(candidates), store.resolve(instances)
    lq_ref = lq_pairs_of(store, candidates_ref)
    folder = Path(to)
    _prepare(folder, force)
    report = ExportReport(folder, format, inputs=[candidates_ref, instances_ref, lq_ref],
                          embedded=format == "label-studio" and url_prefix is None)
    table = store.read_arrow(instances_ref, columns=["instance_id", "sample_id", "index", "mask", "bbox"])
    table = table.sort_by([("sample_id", "ascending"), ("index", "ascending")])
    if limit is not None:
        table = table.slice(0, limit)
    rows = table.to_pylist()
    order = list(dict.fromkeys(row["sample_id"] for row in rows))
    tasks, most = [], 0
    # The folder format's CSV names only the image folders: nothing to embed.
    reference = "" if format == "folder" and url_prefix is None else url_prefix
    for start in range(0, len(order), SAMPLES_PER_READ):
        group = order[start:start + SAMPLES_PER_READ]
        samples = _read_samples(store, lq_ref, candidates_ref, group)
        for row in rows:
            if row["sample_id"] in samples:
                task = _write_instance(folder, row, samples[row["sample_id"]], reference, report)
                if task is not None:
                    tasks.append(task)
                    most = max(most, len(task["candidate_ids"]))
    if format == "label-studio":
        content = json.dumps([{"data": task} for task in tasks], indent=1)
        (folder / "tasks.json").write_text(content)
        report.task_bytes = len(content)
        (folder / "label_config.xml").write_text(label_config(most))
        report.files = ["tasks.json", "label_config.xml"]
    else:
        with open(folder / "tasks.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([*TEMPLATE_COLUMNS, "candidates", "images"])
            for task in tasks:
                letters = " ".join(f"{item['title']}={item['id']}" for item in task["items"])
                folder_of = str(Path(task["files"]["hr"]).parent)
                writer.writerow([task["sample_id"], task["instance_id"], "", "", "", "", "", letters, folder_of])
        report.files = ["tasks.csv"]
    report.tasks = len(tasks)
    return report


def _read_samples(store: DatasetStore, lq_ref: str, candidates_ref: str, group: list[str]) -> dict[str, dict]:
    """{sample_id: {"hr": array, "lq_up": array, "candidates": [(id, array), ...]}} for `group`."""
    found: dict[str, dict] = {}
    for sample_id, (row, *_) in rows_by_sample(store, lq_ref, ["sample_id", "hr", "lq"], group).items():
        hr = rgb_array(row["hr"])
        found[sample_id] = {"hr": hr, "lq_up": rgb_at(row["lq"], hr.shape[:2]), "candidates": []}
    candidates = rows_by_sample(store, candidates_ref, ["candidate_id", "sample_id", "candidate_index", "image"],
                                group)
    for sample_id, rows in candidates.items():
        sample = found.get(sample_id)
        if sample is None:
            continue
        for row in sorted(rows, key=lambda item: item["candidate_index"]):
            sample["candidates"].append((row["candidate_id"], rgb_at(row["image"], sample["hr"].shape[:2])))
    return found


def _write_instance(folder: Path, row: dict, sample: dict, url_prefix: str | None,
                    report: ExportReport) -> dict | None:
    """Write the crops of one instance; its task data (module doc), or None if it has no
    candidates or area. `url_prefix` None: the images are embedded as data URIs."""
    if not sample["candidates"] or not row["bbox"] or min(row["bbox"][2:]) <= 0:
        return None
    frame = sample["hr"].shape[:2]
    box, zoom = crop_geometry(row["bbox"], frame)
    box = balanced(box, frame)
    x, y, w, h = box
    mask = rle.decode(row["mask"])[y:y + h, x:x + w]
    edge = outline(mask.repeat(zoom, axis=0).repeat(zoom, axis=1))
    relative = Path("images") / row["sample_id"] / row["instance_id"]
    (folder / relative).mkdir(parents=True, exist_ok=True)
    files, shown = {"candidates": []}, {}

    def save(image: np.ndarray, name: str) -> str:
        """Write one crop; its relative path (in `files`) and its task value (in `shown`)."""
        path = (relative / f"{name}.png").as_posix()
        buffer = io.BytesIO()
        crop(image, box, zoom, edge).save(buffer, format="PNG", compress_level=PNG_LEVEL)
        (folder / path).write_bytes(buffer.getvalue())
        report.images += 1
        shown[path] = (url_prefix + path if url_prefix is not None
                       else "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
        return path

    files["lq"], files["hr"] = save(sample["lq_up"], "lq"), save(sample["hr"], "hr")
    items = []
    for (candidate_id, image), letter in zip(sample["candidates"], _letters()):
        path = save(image, f"{letter}-{candidate_id}")
        files["candidates"].append(path)
        item = {"id": candidate_id, "title": letter, "body": f"candidate {letter}"}
        if url_prefix is not None:
            # A thumbnail in the Ranker's list costs nothing by reference; embedded it would double the task.
            item["html"] = f"<img src={quoteattr(shown[path])} alt={quoteattr(letter)} width=\"96\"/>"
        items.append(item)
    data = {"sample_id": row["sample_id"], "instance_id": row["instance_id"], "instance_index": row["index"],
            "candidate_ids": [item["id"] for item in items], "items": items}
    data.update({f"candidate_{index}": shown[path] for index, path in enumerate(files["candidates"])})
    data.update({"lq": shown[files["lq"]], "hr": shown[files["hr"]], "image": shown[files["hr"]],
                 "crop_box": box, "zoom": zoom, "frame_size": [int(frame[0]), int(frame[1])], "files": files})
    return data


def _letters():
    """A, B, ..., Z, AA, AB, ...: names of the candidates in a task."""
    for size in range(1, 4):
        for index in range(len(string.ascii_uppercase) ** size):
            name, rest = "", index
            for _ in range(size):
                rest, digit = divmod(rest, 26)
                name = string.ascii_uppercase[digit] + name
            yield name
