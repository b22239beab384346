"""benchmarks/paired_compare.py: two arms of voc12subset.py --seeds compared seed by seed."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from benchmarks import paired_compare


def _arm(out: Path, scores: dict[int, tuple[float, float]], method: str = "seam_plda") -> Path:
    """``seed<k>/results.json`` with the given (train 13, val 13) per seed."""
    for seed, (train, val) in scores.items():
        folder = out / f"seed{seed}"
        folder.mkdir(parents=True)
        row = {"method": method, "bg_threshold": 0.2, "train_miou_present": train - 5,
               "train_miou_13": train, "val_miou_present": val - 5, "val_miou_13": val}
        other = {**row, "method": "cam", "val_miou_13": 99.0}
        (folder / "results.json").write_text(json.dumps({"rows": [other, row]}))
    return out


def test_paired_differences_over_the_seeds_both_arms_finished(tmp_path, capsys):
    a = _arm(tmp_path / "a", {0: (20.0, 25.0), 1: (22.0, 24.0), 2: (21.0, 26.0)})
    b = _arm(tmp_path / "b", {0: (23.0, 24.0), 1: (22.5, 27.0), 3: (30.0, 30.0)})
    res = paired_compare.compare(a, b, "seam_plda")
    assert res["seeds"] == [0, 1]  # seed 2 and 3 finished in one arm only
    val = res["summary"]["val_miou_13"]
    assert val["diff"] == [-1.0, 3.0] and val["b_higher"] == 1
    assert res["summary"]["train_miou_13"]["diff"] == [3.0, 0.5]
    paired_compare.print_comparison(res)
    out = capsys.readouterr().out
    sd = statistics.stdev([-1.0, 3.0])
    assert f"{1.0:.2f} ± {sd:.2f}" in out and "1 of 2" in out


def test_no_common_seed_is_an_error(tmp_path):
    a = _arm(tmp_path / "a", {0: (20.0, 25.0)})
    b = _arm(tmp_path / "b", {1: (20.0, 25.0)})
    with pytest.raises(SystemExit, match="no seed finished in both"):
        paired_compare.compare(a, b, "seam_plda")
