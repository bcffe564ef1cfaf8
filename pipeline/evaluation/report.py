"""The evaluation report: the paper's table (Markdown and CSV) and the image grid.

Table: one row per method, one column per metric (its direction in the heading), each cell
the mean over images and its bootstrap 95 % CI; a second table holds the paired win-rate of
each method against base per metric. Set-level metrics (FID) have one number per method and
no CI or win-rate. The CSV is the same table, one row per method:
`method, checkpoint, step, <metric>, <metric>_ci_low, <metric>_ci_high, <metric>_win_rate, ...`
(empty where a value does not apply).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from dspo_core.iqa.protocol import PROTOCOL_NOTES, ProtocolMetric


@dataclass(frozen=True)
class ReportContext:
    """What the report says above its table: protocol, split, samples, fallback note, random-init
    banner (Markdown or ""), the bootstrap settings, and each method's checkpoint description."""

    protocol: str
    split: str
    samples: int
    note: str
    banner: str
    resamples: int
    seed: int
    confidence: float
    checkpoints: dict[str, str]


def _number(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _cell(cell: dict) -> str:
    if cell["level"] == "set":
        return _number(cell["mean"])
    return f"{_number(cell['mean'])} [{_number(cell['ci_low'])}, {_number(cell['ci_high'])}]"


def _win(cell: dict) -> str:
    if cell["win_rate"] is None:
        return "—"
    return f"{100 * cell['win_rate']:.0f} % ({cell['wins']}/{cell['ties']}/{cell['losses']})"


def markdown_report(table: dict[str, dict[str, dict]], metrics: tuple[ProtocolMetric, ...], base: str,
                    context: ReportContext) -> str:
    """The report: heading, banner, what was evaluated, any fallback, the method table, the
    win-rate table and how to read them."""
    level = f"{round(100 * context.confidence)} %"
    lines = [f"## DSPO evaluation: {', '.join(table)} ({context.protocol} protocol)", ""]
    if context.banner:
        lines += [context.banner, ""]
    lines += [(f"{context.samples} samples of split `{context.split}`; whole-image scores against the HR image; "
               "every method on the same samples, seeds and settings."), "",
              PROTOCOL_NOTES[context.protocol], ""]
    if context.note:
        lines += [f"**Fallback:** {context.note}", ""]
    lines += ["| method | checkpoint | " + " | ".join(f"{m.label} {m.arrow}" for m in metrics) + " |",
              "|---|---|" + "---:|" * len(metrics)]
    for method, cells in table.items():
        lines.append(f"| {method} | {context.checkpoints[method]} | "
                     + " | ".join(_cell(cells[m.key]) for m in metrics) + " |")
    image_metrics = [m for m in metrics if m.level == "image"]
    lines += ["", (f"Win-rate vs `{base}` (share of images where the method is better; ties count half; "
                   "wins/ties/losses in brackets):"), "",
              "| method | " + " | ".join(f"{m.label} {m.arrow}" for m in image_metrics) + " |",
              "|---|" + "---:|" * len(image_metrics)]
    for method, cells in table.items():
        if method != base:
            lines.append(f"| {method} | " + " | ".join(_win(cells[m.key]) for m in image_metrics) + " |")
    lines += ["", (f"Cells: mean over images [{level} CI: percentile bootstrap over images, {context.resamples} "
                   f"resamples, seed {context.seed}]. ↑ higher is better, ↓ lower is better.")]
    if any(m.level == "set" for m in metrics):
        lines.append("FID is one number per method over the whole set (the SR folder vs the HR folder): no CI, "
                     "no win-rate; over a few images it is dominated by its small-sample bias.")
    return "\n".join(lines) + "\n"


def csv_report(table: dict[str, dict[str, dict]], metrics: tuple[ProtocolMetric, ...],
               methods: dict[str, dict]) -> str:
    """The table as CSV, one row per method (see the module doc for the columns)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["method", "checkpoint", "step"]
    for metric in metrics:
        header += [metric.key, f"{metric.key}_ci_low", f"{metric.key}_ci_high", f"{metric.key}_win_rate"]
    writer.writerow(header)
    for method, cells in table.items():
        row = [method, methods[method]["checkpoint_ref"] or "base",
               "" if methods[method]["step"] is None else methods[method]["step"]]
        for metric in metrics:
            cell = cells[metric.key]
            row += [repr(cell["mean"])] + ["" if cell[name] is None else repr(cell[name])
                                           for name in ("ci_low", "ci_high", "win_rate")]
        writer.writerow(row)
    return buffer.getvalue()


def grid_png(rows: list[list[np.ndarray]], labels: list[str]) -> Image.Image:
    """One column per label (LQ nearest-upscaled, each method, HR), one row per sample, under a
    header naming the columns; every tile is the first row's HR size."""
    height, width = rows[0][-1].shape[:2]
    header = 14
    grid = Image.new("RGB", (width * len(labels), header + height * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for column, label in enumerate(labels):
        draw.text((column * width + 4, 1), label, fill="black")
    for index, images in enumerate(rows):
        for column, image in enumerate(images):
            tile = Image.fromarray(image).resize((width, height), Image.NEAREST)
            grid.paste(tile, (column * width, header + index * height))
    return grid
