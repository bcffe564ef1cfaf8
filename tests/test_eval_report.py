"""The evaluation's statistics and report (pipeline.evaluation): bootstrap CIs and paired win-rates
against direct numpy computations, and the paper's table as Markdown and CSV."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from dspo_core.iqa.protocol import protocol_metrics
from pipeline.evaluation.report import ReportContext, csv_report, markdown_report
from pipeline.evaluation.stats import (
    bootstrap_ci,
    bootstrap_indices,
    method_table,
    paired_outcomes,
)

VALUES = {"base": {"psnr": [20.0, 22.0, 21.0, 25.0, 19.0], "ssim": [0.5, 0.6, 0.7, 0.8, 0.9]},
          "dspo": {"psnr": [21.0, 22.0, 20.0, 26.5, 19.5], "ssim": [0.55, 0.6, 0.75, 0.8, 0.95]}}


def test_bootstrap_ci_is_the_percentile_interval_of_resampled_means():
    values = np.array(VALUES["base"]["psnr"])
    indices = bootstrap_indices(values.size, 2000, seed=7)
    rng = np.random.default_rng(7)  # the same draws, one resample at a time
    means = [values[rng.integers(0, values.size, values.size)].mean() for _ in range(2000)]
    assert bootstrap_ci(values, indices, 0.95) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert bootstrap_ci(values, indices, 0.8) == pytest.approx(tuple(np.percentile(means, [10, 90])))
    low, high = bootstrap_ci(values, indices, 0.95)
    assert values.min() <= low < values.mean() < high <= values.max()
    assert np.array_equal(bootstrap_indices(5, 100, 3), bootstrap_indices(5, 100, 3))  # fixed seed, same CI


def test_paired_win_rate_counts_ties_half():
    method, base = np.array(VALUES["dspo"]["psnr"]), np.array(VALUES["base"]["psnr"])
    assert paired_outcomes(method, base, lower_better=False) == (3, 1, 1)
    assert paired_outcomes(method, base, lower_better=True) == (1, 1, 3)
    table = method_table(VALUES, {}, [("psnr", False), ("ssim", False)], "base", 5, 1000, 0, 0.95)
    for metric in ("psnr", "ssim"):
        sign = np.sign(np.array(VALUES["dspo"][metric]) - np.array(VALUES["base"][metric]))
        assert table["dspo"][metric]["win_rate"] == pytest.approx(np.mean(0.5 + 0.5 * sign))
        assert table["dspo"][metric]["mean"] == pytest.approx(np.mean(VALUES["dspo"][metric]))
        assert table["base"][metric]["win_rate"] is None and table["base"][metric]["n"] == 5
    with pytest.raises(ValueError, match="differ in length"):
        paired_outcomes(method[:3], base, False)


def test_every_method_uses_the_same_resamples():
    """A method identical to base gets base's CI exactly (the draws are shared), and a win-rate of 0.5."""
    values = {"base": VALUES["base"], "copy": VALUES["base"]}
    table = method_table(values, {}, [("psnr", False)], "base", 5, 500, 1, 0.95)
    assert (table["copy"]["psnr"]["ci_low"], table["copy"]["psnr"]["ci_high"]) == (
        table["base"]["psnr"]["ci_low"], table["base"]["psnr"]["ci_high"])
    assert table["copy"]["psnr"]["win_rate"] == 0.5 and table["copy"]["psnr"]["ties"] == 5


def test_table_markdown_and_csv_one_row_per_method_fid_without_ci():
    metrics = protocol_metrics("osediff", ["psnr", "ssim", "fid"])
    table = method_table(VALUES, {"base": {"fid": 130.5}, "dspo": {"fid": 120.25}},
                         [(m.key, m.lower_better) for m in metrics], "base", 5, 1000, 0, 0.95)
    assert table["dspo"]["fid"] == {"level": "set", "mean": 120.25, "ci_low": None, "ci_high": None, "n": 5,
                                    "wins": None, "ties": None, "losses": None, "win_rate": None}
    context = ReportContext("osediff", "test", 5, "", "", 1000, 0, 0.95,
                            {"base": "no LoRA", "dspo": "checkpoints@v2 step 4 (DSPO)"})
    markdown = markdown_report(table, metrics, "base", context)
    assert "| method | checkpoint | PSNR (Y) ↑ | SSIM (Y) ↑ | FID ↓ |" in markdown
    psnr = table["dspo"]["psnr"]
    assert (f"| dspo | checkpoints@v2 step 4 (DSPO) | {psnr['mean']:.2f} [{psnr['ci_low']:.2f}, {psnr['ci_high']:.2f}]"
            in markdown)
    assert "| 120.25 |" in markdown and "FID is one number per method" in markdown
    assert "| dspo | 70 % (3/1/1) | 80 % (3/2/0) |" in markdown  # win-rates: image-level metrics only
    methods = {"base": {"checkpoint_ref": None, "step": None}, "dspo": {"checkpoint_ref": "checkpoints@v2", "step": 4}}
    rows = list(csv.DictReader(io.StringIO(csv_report(table, metrics, methods))))
    assert [row["method"] for row in rows] == ["base", "dspo"]
    assert rows[1]["checkpoint"] == "checkpoints@v2" and rows[1]["step"] == "4" and rows[0]["step"] == ""
    assert float(rows[1]["psnr"]) == psnr["mean"] and float(rows[1]["psnr_ci_low"]) == psnr["ci_low"]
    assert float(rows[1]["psnr_win_rate"]) == 0.7 and rows[0]["psnr_win_rate"] == ""
    assert float(rows[1]["fid"]) == 120.25 and rows[1]["fid_ci_low"] == "" and rows[1]["fid_win_rate"] == ""
