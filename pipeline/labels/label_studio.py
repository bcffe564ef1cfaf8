"""Label Studio JSON exports -> RawLabel records.

The export is a list of tasks (a single task object is accepted too), each with `data` and
`annotations` (`completions` in Label Studio < 1.0). Every annotation that is not cancelled
(`was_cancelled`) is one label; tasks without annotations and cancelled annotations are
counted as skipped. From the task `data`: `sample_id`, `instance_id` (absent: an image-level
label), and, for brush regions drawn on an exported crop, `crop_box` ([x, y, w, h] in HR
pixels). The annotator is the annotation's `completed_by`: Label Studio 1.23 writes the numeric
user id (`1`), kept as its text ("1"), the same id its JSON_MIN / CSV exports carry; an email, or
an object with `email` / `id` (other versions), gives the email, else the id; none: --annotator.
The time is its `updated_at` (a later one on re-export: an edit, pipeline.labels.importer), else
`created_at`.

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
- `textarea`: `value.text`, a list of lines (Label Studio's shape) or one string, is the
  description; its non-blank lines are joined with newlines. Over DESCRIPTION_LIMIT
  (pipeline.labels.records) characters the label is rejected.
- `brushlabels` with `value.format == "rle"`: Label Studio's RLE of the RGBA image of
  `original_width` x `original_height` (pipeline.labels.lsrle); the alpha channel is the
  region. Several brush results are merged. The region is resized to `data.crop_box` and
  placed in the sample's frame when the task has one.

Other result types (labels, rectangles, ratings, ...) are ignored. A task, annotation or
result of the wrong shape (`"annotations": 5`, `"value": "oops"`, a time outside the years
1-9999) is a rejected label whose reason names the field; the rest of the file is read.
"""
from __future__ import annotations

from pipeline.labels.lsrle import brush_mask
from pipeline.labels.records import (
    DrawnMask,
    LabelFileError,
    Problem,
    RawLabel,
    boolean,
    description,
    quoted,
    text,
    timestamp,
)

HALLUCINATION_YES = frozenset({"hallucination", "hallucinated", "hallucinates", "yes", "true", "1"})
HALLUCINATION_NO = frozenset({"no hallucination", "not hallucinated", "none", "no", "false", "0"})
BRUSH_TYPES = ("brushlabels", "brush")


def read_tasks(tasks, annotator: str | None = None, name: str = "export") -> tuple[list[RawLabel], int]:
    """(labels, skipped annotations and unannotated tasks) of parsed Label Studio JSON. A task or
    annotation of the wrong shape is a label with `problem` set, naming what is wrong."""
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise LabelFileError(f"{name}: expected a Label Studio export (a list of tasks)")
    labels, skipped = [], 0
    for number, task in enumerate(tasks, start=1):
        where = f"task {number}" + (f" (id {str(task['id'])[:40]})" if isinstance(task, dict) and "id" in task else "")
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            labels.append(RawLabel(where, problem=Problem("not a Label Studio task (no 'data' object)", "task")))
            continue
        annotations = task.get("annotations", task.get("completions")) or []
        if not isinstance(annotations, list):
            labels.append(RawLabel(where, problem=Problem(
                f"annotations must be a list, got {type(annotations).__name__} {quoted(annotations)}", "task")))
            continue
        if not annotations:
            skipped += 1
        for index, annotation in enumerate(annotations, start=1):
            label_where = where + (f" annotation {index}" if len(annotations) > 1 else "")
            try:
                if not isinstance(annotation, dict):
                    raise Problem(f"annotation {index} is not an object: {quoted(annotation)}", "task")
                if boolean(annotation.get("was_cancelled"), "was_cancelled"):
                    skipped += 1
                    continue
            except Problem as problem:
                labels.append(RawLabel(label_where, problem=problem))
                continue
            labels.append(parse_annotation(label_where, task["data"], annotation, annotator))
    return labels, skipped


def annotator_of(completed_by) -> str | None:
    """An annotator name from `completed_by`: an email/id, or an object with email/id."""
    if isinstance(completed_by, dict):
        return text(completed_by.get("email"), "completed_by.email") or text(completed_by.get("id"), "completed_by.id")
    return text(completed_by, "completed_by")


def parse_annotation(where: str, data: dict, annotation: dict, annotator: str | None = None) -> RawLabel:
    """One annotation of a task as a RawLabel (with `problem` set if it cannot be used: the
    reason names the field, e.g. "result 2 (ranker): value must be an object")."""
    label = RawLabel(where)
    try:
        label.sample_id = text(data.get("sample_id"), "data.sample_id")
        label.instance_id = text(data.get("instance_id"), "data.instance_id")
        label.annotator = annotator_of(annotation.get("completed_by")) or annotator
        stamp_field = "updated_at" if annotation.get("updated_at") else "created_at"
        label.labelled_at = timestamp(annotation.get(stamp_field), stamp_field)
        results = annotation.get("result") or []
        if not isinstance(results, list):
            raise Problem(f"result must be a list, got {type(results).__name__} {quoted(results)}")
        rankings, texts, masks = [], [], []
        for number, result in enumerate(results, start=1):
            if not isinstance(result, dict):
                raise Problem(f"result {number} is not an object: {quoted(result)}")
            kind, value = result.get("type"), result.get("value")
            try:
                if not isinstance(kind, str):
                    raise Problem(f"type must be text, got {quoted(kind)}")
                if value is None:
                    value = {}
                if not isinstance(value, dict):
                    raise Problem(f"value must be an object, got {type(value).__name__} {quoted(value)}")
                if kind == "ranker":
                    rankings.append(_ranker(value.get("ranker")))
                elif kind == "pairwise":
                    rankings.append(_pairwise(value, result, data))
                elif kind == "choices":
                    found = _hallucination(value, result)
                    if found is not None:
                        label.hallucination = found
                elif kind == "textarea":
                    texts.extend(_lines(value.get("text")))
                elif kind in BRUSH_TYPES:
                    masks.append(_brush(value, result))
            except Problem as problem:
                raise Problem(f"result {number} ({quoted(kind)}): {problem.reason}", problem.item) from None
        if not rankings:
            raise Problem("no ranker or pairwise result: nothing says which candidate is best")
        if len(rankings) > 1:
            raise Problem(f"{len(rankings)} ranker/pairwise results in one annotation; expected one")
        label.best, label.worst = rankings[0]
        label.description = description("\n".join(texts), "textarea text")
        if masks:
            label.drawn = DrawnMask(_union(masks), _crop_box(data.get("crop_box")))
    except Problem as problem:
        label.problem = problem
    return label


def _lines(value) -> list[str]:
    """The non-blank lines of a textarea's `text`: a list of strings, or one string."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise Problem(f"text must be a string or a list of strings, got {type(value).__name__} {quoted(value)}")
    lines = [text(line, "text line") for line in value]
    return [line for line in lines if line]


def _ranker(ranker) -> tuple[str | None, str | None]:
    """(best, worst) of a ranker value (see the module docstring for the accepted shapes)."""
    if isinstance(ranker, dict):
        buckets = {key: value for key, value in ranker.items() if key != "_"}
        lowered = {str(key).lower(): value for key, value in buckets.items()}
        if "best" in lowered and "worst" in lowered:
            best, worst = lowered["best"] or [], lowered["worst"] or []
            if not isinstance(best, list) or not isinstance(worst, list):
                raise Problem(f"ranker buckets 'best' and 'worst' must be lists, got {quoted(best)} and "
                              f"{quoted(worst)}")
            if len(best) != 1 or len(worst) != 1:
                raise Problem(f"ranker buckets 'best' and 'worst' must hold one candidate each, "
                              f"got {len(best)} and {len(worst)}")
            return text(best[0], "ranker best"), text(worst[0], "ranker worst")
        if len(buckets) != 1:
            raise Problem(f"ranker buckets {quoted(sorted(map(str, buckets)))} do not name 'best' and 'worst'")
        ranker = next(iter(buckets.values()))
    if not isinstance(ranker, list):
        raise Problem(f"ranker value is not a list of candidate ids: {quoted(ranker)}")
    if len(ranker) < 2:
        raise Problem(f"ranker ranks {len(ranker)} candidate(s); needs at least 2")
    return text(ranker[0], "ranker item"), text(ranker[-1], "ranker item")


def _pairwise(value: dict, result: dict, data: dict) -> tuple[str | None, str | None]:
    """(best, worst) of a pairwise result: the selected side, then the other."""
    names = [name.strip() for name in str(result.get("to_name") or "left,right").split(",")]
    if len(names) != 2:
        names = ["left", "right"]
    selected = text(value.get("selected"), "selected")
    if selected in names:
        chosen = names.index(selected)
    elif selected in ("left", "right"):
        chosen = ("left", "right").index(selected)
    else:
        raise Problem(f"pairwise selection {quoted(selected)} is neither of {names}")
    ids = []
    for side, name in zip(("left", "right"), names):
        keys = (f"{name}_candidate_id", f"{side}_candidate_id", f"{side}_id")
        found = next((found for found in (text(data.get(key), f"data.{key}") for key in keys) if found), None)
        if found is None:
            raise Problem(f"pairwise task data names no {side} candidate (data.{side}_candidate_id)")
        ids.append(found)
    return ids[chosen], ids[1 - chosen]


def _hallucination(value: dict, result: dict) -> bool | None:
    """The hallucination flag a choices result states, None if it is about something else.

    Plain yes/no/true/false/1/0 count only from a control named like "hallucination"; the
    words "hallucination" / "no hallucination" (and the like) count from any control."""
    about = "hallucinat" in str(result.get("from_name") or "").lower()
    choices = value.get("choices") or []
    if isinstance(choices, str):
        choices = [choices]
    if not isinstance(choices, list):
        raise Problem(f"choices must be a list, got {type(choices).__name__} {quoted(choices)}")
    found = None
    for choice in choices:
        word = " ".join((text(choice, "choice") or "").lower().replace("_", " ").replace("-", " ").split())
        if "hallucinat" not in word and not about:
            continue
        if word in HALLUCINATION_YES:
            found = True
        elif word in HALLUCINATION_NO:
            found = bool(found)
        else:
            raise Problem(f"unknown hallucination choice {quoted(choice)}")
    return found


def _brush(value: dict, result: dict):
    """The bool mask of one brush result."""
    if value.get("format", "rle") != "rle" or "rle" not in value:
        raise Problem(f"brush result in format {quoted(value.get('format'))}; only Label Studio's 'rle' is supported")
    width, height = result.get("original_width"), result.get("original_height")
    if width is None or height is None:
        raise Problem("brush result has no original_width / original_height")
    try:
        return brush_mask(value["rle"], width, height)
    except (ValueError, TypeError, OverflowError) as exc:
        raise Problem(f"brush mask: {str(exc)[:120]}") from None


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
        values = [int(v) for v in box] if isinstance(box, list) else []
    except (TypeError, ValueError, OverflowError):
        values = []
    if len(values) != 4 or values[2] <= 0 or values[3] <= 0 or min(values[:2]) < 0:
        raise Problem(f"task data crop_box must be [x, y, w, h] with w, h > 0, got {quoted(box)}")
    return values
