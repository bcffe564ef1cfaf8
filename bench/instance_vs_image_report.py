"""The printed tables of bench/instance_vs_image.py: per seed and over seeds, image-level DPO vs
DSPO (the masks), and DSPO's text modes against DSPO without text (the feedback text).

`rows` is {seed: run(...)}: {method: {test: {"acc", "margin", "z"}}} (instance_vs_image.run)."""

from __future__ import annotations

import statistics


def _spread(values: list[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def print_masks_report(rows: dict[int, dict], seeds: list[int], tests: tuple[str, ...]) -> None:
    """Held-out accuracy and margin of image-DPO vs DSPO (no text), per seed, then their means."""
    print("\nheld-out accuracy / margin per seed (image-DPO | DSPO)")
    print(f"{'seed':>4s}  " + "  ".join(f"{name:^27s}" for name in tests))
    for seed, res in rows.items():
        cells = [
            f"{res['image'][name]['acc']:.2f} {res['image'][name]['margin']:+6.1f} | "
            f"{res['dspo'][name]['acc']:.2f} {res['dspo'][name]['margin']:+6.1f}"
            for name in tests
        ]
        print(f"{seed:4d}  " + "  ".join(f"{cell:27s}" for cell in cells))
    print(f"\n{'test':8s} {'image-DPO acc':>15s} {'DSPO acc':>15s} {'image-DPO margin':>18s} {'DSPO margin':>15s}  DSPO better in")
    for name in tests:
        acc = {m: [rows[s][m][name]["acc"] for s in seeds] for m in ("image", "dspo")}
        margin = {m: [rows[s][m][name]["margin"] for s in seeds] for m in ("image", "dspo")}
        wins = sum(d > i for d, i in zip(acc["dspo"], acc["image"]))
        print(
            f"{name:8s} {statistics.mean(acc['image']):6.2f} +- {_spread(acc['image']):.2f} "
            f"{statistics.mean(acc['dspo']):6.2f} +- {_spread(acc['dspo']):.2f} "
            f"{statistics.mean(margin['image']):+9.1f} +- {_spread(margin['image']):4.1f} "
            f"{statistics.mean(margin['dspo']):+7.1f} +- {_spread(margin['dspo']):4.1f}  {wins}/{len(seeds)} seeds (acc)"
        )


def print_text_report(rows: dict[int, dict], seeds: list[int], tests: tuple[str, ...] = ("A", "A only", "B")) -> None:
    """Per DSPO text mode (measured with and without the texts): mean held-out accuracy and
    margin, the paired margin difference to DSPO without text, and in how many seeds it is higher."""
    methods = [name for name in rows[seeds[0]] if name.startswith("dspo")]
    print("\ntext feedback: DSPO per text mode, held-out accuracy and margin (mean +- sd over seeds); "
          "d margin = paired difference to DSPO text_mode none, higher in k/n seeds")
    print(f"{'method':30s} " + " ".join(f"{name + ' acc':>14s} {name + ' margin':>15s} {'d margin':>16s}"
                                          for name in tests))
    for method in methods:
        cells = []
        for name in tests:
            acc = [rows[s][method][name]["acc"] for s in seeds]
            margin = [rows[s][method][name]["margin"] for s in seeds]
            delta = [m - rows[s]["dspo"][name]["margin"] for m, s in zip(margin, seeds)]
            higher = sum(d > 0 for d in delta)
            cells.append(f"{statistics.mean(acc):6.2f} +- {_spread(acc):.2f} "
                         f"{statistics.mean(margin):+8.1f} +- {_spread(margin):4.1f} "
                         f"{statistics.mean(delta):+7.1f} ({higher}/{len(seeds)})")
        print(f"{method:30s} " + " ".join(cells))
