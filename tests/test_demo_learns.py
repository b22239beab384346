"""The built-in job's stage-1 classifier learns: a shortened default run (SEAM + PLDA on the
synthetic set, the default preset's optimizer, images and losses; 150 steps on 200 images) must
bring its classification loss well below what the class frequencies alone give."""

from __future__ import annotations

import json
import math

from plda.cli.main import main


def _chance_loss(image_labels: dict[str, list[str]], ids: list[str]) -> float:
    """Multilabel soft-margin loss of the best constant prediction: the mean over classes of
    the binary entropy of each class's frequency on ``ids``."""
    classes = sorted({c for i in ids for c in image_labels[i]})
    total = 0.0
    for c in classes:
        p = sum(c in image_labels[i] for i in ids) / len(ids)
        total += -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0
    return total / len(classes)


def test_default_job_classifier_loss_falls_well_below_chance(tmp_path):
    run = tmp_path / "run"
    assert main(["run", f"run_dir={run}", "data.synth.n_train=200", "data.synth.n_val=8",
                 "train.epochs=6", "train.vis_every=0", "--until", "train"]) == 0
    config = (run / "config.yaml").read_text()
    assert "name: seam_plda" in config and "reference_optimizer: false" in config
    data = run / "data"
    ids = (data / "ImageSets/Segmentation/train.txt").read_text().split()
    chance = _chance_loss(json.loads((data / "image_labels.json").read_text()), ids)
    rows = [json.loads(line) for line in (run / "logs/train.jsonl").read_text().splitlines()]
    cls = [r["cls"] for r in rows if "cls" in r]
    assert rows[-1]["step"] == 150 and len(cls) >= 10
    first, last = cls[0], sum(cls[-3:]) / 3
    assert first > chance - 0.05, (first, chance)  # it starts near chance ...
    assert last < chance - 0.08, (cls, chance)     # ... and ends well below it
