"""Label Studio JSON exports -> RawLabel records.

The export is a list of tasks (a single task object is accepted too), each with `data` and
`annotations` (`completions` in Label Studio < 1.0). Every annotation that is not cancelled
(`was_cancelled`) is one label; tasks without annotations and cancelled annotations are
counted as skipped. From the task `data`: `sample_id`, `instance_id` (absent: an image-level
label), and, for brush regions drawn on an exported crop, `crop_box` ([x, y, w, h] in HR
pixels). The annotator is the annotation's `completed_by` (an email, a user id, or an object
with `email` / `id`), else --annotator; the time is its `updated_at` / `created_at`.

Accepted `result` items:

- `ranker` (List + Ranker): `value.ranker` is either a list of ids, first = best, last =
  worst; or a dict. A dict with one key (Label Studio >= 1.9 writes `{"<ranker name>": [ids]}`)
  is that list. With Bucket tags it is `{"<bucket>": [ids], ...}` (plus `"_"` for items left
  in the list, ignored): it must then have buckets named `best` and `worst` (any case) holding
  one id each.
- `pairwise`: `value.selected` names the chosen object tag (one of the comma-separated
  `to_name`, conventionally `left` / `right`); candidate ids come from
  `data.<name>_candidate_id`, else `data.left_candidate_id` / `data.right_candidate_id`
  (or `left_id` / `right_id`). best = the selected side, worst = the other.
- `choices`: from a control whose `from_name` contains "hallucination": `hallucination`,
  `hallucinated`, `yes`, `true`, `1` -> true; `no hallucination`, `not hallucinated`, `none`,
  `no`, `false`, `0` -> false. From any other control only the choices that mention
  hallucination count. Absent: false.
- `textarea`: `value.text` lines, joined with newlines, are the description.
- `brushlabels` with `value.format == "rle"`: Label Studio's RLE of the RGBA image of
  `original_width` x `original_height` (pipeline.labels.lsrle); the alpha channel is the
  region. Several brush results are merged. The region is resized to `data.crop_box` and
  placed in the sample's frame when the task has one.

Other result types (labels, rectangles, ratings, ...) are ignored.
"""
from __future__ import annotations

from pipeline.labels.lsrle import brush_mask
from pipeline.labels.records import DrawnMask, LabelFileError, Problem, RawLabel, text, timestamp

HALLUCINATION_YES = frozenset({"hallucination", "hallucinated", "hallucinates", "yes", "true", "1"})
HALLUCINATION_NO = frozenset({"no hallucination", "not hallucinated", "none", "no", "false", "0"})
BRUSH_TYPES = ("brushlabels", "brush")


def read_tasks(tasks, annotator: str | None = None, name: str = "export") -> tuple[list[RawLabel], int]:
    """(labels, skipped annotations and unannotated tasks) of parsed Label Studio JSON."""
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise LabelFileError(f"{name}: expected a Label Studio export (a list of tasks)")
    labels, skipped = [], 0
    for number, task in enumerate(tasks, start=1):
        where = f"task {number}" + (f" (id {task['id']})" if isinstance(task, dict) and "id" in task else "")
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            labels.append(RawLabel(where, problem=Problem("not a Label Studio task (no 'data' object)", "task")))
            continue
        annotations = task.get("annotations", task.get("completions")) or []
        live = [item for item in annotations if isinstance(item, dict) and not item.get("was_cancelled")]
        skipped += len(annotations) - len(live) + (0 if annotations else 1)
        for index, annotation in enumerate(live, start=1):
            suffix = f" annotation {index}" if len(live) > 1 else ""
            labels.append(parse_annotation(where + suffix, task["data"], annotation, annotator))
    return labels, skipped


def annotator_of(completed_by) -> str | None:
    """An annotator name from `completed_by`: an email/id, or an object with email/id."""
    if isinstance(completed_by, dict):
        return text(completed_by.get("email")) or text(completed_by.get("id"))
    return text(completed_by)


def parse_annotation(where: str, data: dict, annotation: dict, annotator: str | None = None) -> RawLabel:
    """One annotation of a task as a RawLabel (with `problem` set if it cannot be used)."""
    label = RawLabel(where, sample_id=text(data.get("sample_id")), instance_id=text(data.get("instance_id")),
                     annotator=annotator_of(annotation.get("completed_by")) or annotator)
    try:
        label.labelled_at = timestamp(annotation.get("updated_at") or annotation.get("created_at"))
        rankings, texts, masks = [], [], []
        for result in annotation.get("result") or []:
            if not isinstance(result, dict):
                continue
            kind, value = result.get("type"), result.get("value") or {}
            if kind == "ranker":
                rankings.append(_ranker(value.get("ranker")))
            elif kind == "pairwise":
                rankings.append(_pairwise(value, result, data))
            elif kind == "choices":
                found = _hallucination(value, result)
                if found is not None:
                    label.hallucination = found
            elif kind == "textarea":
                texts.extend(str(line) for line in value.get("text") or [] if str(line).strip())
            elif kind in BRUSH_TYPES:
                masks.append(_brush(value, result))
        if not rankings:
            raise Problem("no ranker or pairwise result: nothing says which candidate is best")
        if len(rankings) > 1:
            raise Problem(f"{len(rankings)} ranker/pairwise results in one annotation; expected one")
        label.best, label.worst = rankings[0]
        label.description = "\n".join(texts).strip()
        if masks:
            label.drawn = DrawnMask(_union(masks), _crop_box(data.get("crop_box")))
    except Problem as problem:
        label.problem = problem
    return label


def _ranker(ranker) -> tuple[str | None, str | None]:
    """(best, worst) of a ranker value (see the module docstring for the accepted shapes)."""
    if isinstance(ranker, dict):
        buckets = {key: value for key, value in ranker.items() if key != "_"}
        lowered = {str(key).lower(): value for key, value in buckets.items()}
        if "best" in lowered and "worst" in lowered:
            best, worst = list(lowered["best"] or []), list(lowered["worst"] or [])
            if len(best) != 1 or len(worst) != 1:
                raise Problem(f"ranker buckets 'best' and 'worst' must hold one candidate each, "
                              f"got {len(best)} and {len(worst)}")
            return text(best[0]), text(worst[0])
        if len(buckets) != 1:
            raise Problem(f"ranker buckets {sorted(map(str, buckets))} do not name 'best' and 'worst'")
        ranker = next(iter(buckets.values()))
    if not isinstance(ranker, list):
        raise Problem(f"ranker value is not a list of candidate ids: {str(ranker)[:60]!r}")
    if len(ranker) < 2:
        raise Problem(f"ranker ranks {len(ranker)} candidate(s); needs at least 2")
    return text(ranker[0]), text(ranker[-1])


def _pairwise(value: dict, result: dict, data: dict) -> tuple[str | None, str | None]:
    """(best, worst) of a pairwise result: the selected side, then the other."""
    names = [name.strip() for name in str(result.get("to_name") or "left,right").split(",")]
    if len(names) != 2:
        names = ["left", "right"]
    selected = text(value.get("selected"))
    if selected in names:
        chosen = names.index(selected)
    elif selected in ("left", "right"):
        chosen = ("left", "right").index(selected)
    else:
        raise Problem(f"pairwise selection {selected!r} is neither of {names}")
    ids = []
    for side, name in zip(("left", "right"), names):
        found = next((text(data.get(key)) for key in (f"{name}_candidate_id", f"{side}_candidate_id", f"{side}_id")
                      if text(data.get(key))), None)
        if found is None:
            raise Problem(f"pairwise task data names no {side} candidate (data.{side}_candidate_id)")
        ids.append(found)
    return ids[chosen], ids[1 - chosen]


def _hallucination(value: dict, result: dict) -> bool | None:
    """The hallucination flag a choices result states, None if it is about something else.

    Plain yes/no/true/false/1/0 count only from a control named like "hallucination"; the
    words "hallucination" / "no hallucination" (and the like) count from any control."""
    about = "hallucinat" in str(result.get("from_name") or "").lower()
    found = None
    for choice in value.get("choices") or []:
        word = " ".join(str(choice).lower().replace("_", " ").replace("-", " ").split())
        if "hallucinat" not in word and not about:
            continue
        if word in HALLUCINATION_YES:
            found = True
        elif word in HALLUCINATION_NO:
            found = bool(found)
        else:
            raise Problem(f"unknown hallucination choice {str(choice)[:40]!r}")
    return found


def _brush(value: dict, result: dict):
    """The bool mask of one brush result."""
    if value.get("format", "rle") != "rle" or "rle" not in value:
        raise Problem(f"brush result in format {value.get('format')!r}; only Label Studio's 'rle' is supported")
    width, height = result.get("original_width"), result.get("original_height")
    if width is None or height is None:
        raise Problem("brush result has no original_width / original_height")
    try:
        return brush_mask(value["rle"], width, height)
    except (ValueError, TypeError) as exc:
        raise Problem(f"brush mask: {exc}") from None


def _union(masks):
    shapes = {mask.shape for mask in masks}
    if len(shapes) != 1:
        raise Problem(f"brush results drawn on images of different sizes: {sorted(shapes)}")
    merged = masks[0].copy()
    for mask in masks[1:]:
        merged |= mask
    return merged


def _crop_box(box) -> list[int] | None:
    if box is None:
        return None
    try:
        values = [int(v) for v in box]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or values[2] <= 0 or values[3] <= 0 or min(values[:2]) < 0:
        raise Problem(f"task data crop_box must be [x, y, w, h] with w, h > 0, got {str(box)[:60]!r}")
    return values
