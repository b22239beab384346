"""The val seeds a verdict run keeps (``seeds_val.npz``: one uint8 label map per image id) and
their re-scoring against the dataset's masks: every figure of the verdict from files alone."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.voc12subset import SUPPORTED, _mean

RESULT = "verdict.json"
SEED_MAPS = "seeds_val.npz"


def save_seed_maps(run: Path, split: str = "val") -> Path:
    """``run/seeds_<split>.npz``: the run's seeds of ``split`` (``seeds/<split>/<id>.png``), one
    uint8 label map per image id."""
    import numpy as np

    from plda.utils.io import atomic_save_npz
    from plda.data.labels import load_label_png

    folder = run / "seeds" / split
    files = sorted(folder.glob("*.png"))
    if not files:
        raise SystemExit(f"{folder}: no seed maps to keep")
    maps = {f.stem: np.asarray(load_label_png(f), dtype=np.uint8) for f in files}
    path = run / f"seeds_{split}.npz"
    atomic_save_npz(path, **maps)
    return path


def rescore_seed_maps(npz: Path, data: Path, split: str = "val") -> dict:
    """``val_miou_13`` / ``val_miou_present`` / ``val_iou`` (keys named after ``split``)
    recomputed from a ``seeds_<split>.npz`` and the dataset's masks: the numbers a
    ``verdict.json`` holds, from files alone."""
    import numpy as np

    from plda.data.layout import DatasetLayout
    from plda.evaluation.metrics import confusion_matrix, scores
    from plda.data.labels import load_label_png

    layout = DatasetLayout(data)
    names = layout.class_names
    conf = np.zeros((len(names), len(names)), np.int64)
    with np.load(npz) as maps:
        for image_id in maps.files:
            gt = load_label_png(layout.mask_path(image_id))
            pred = maps[image_id]
            if pred.shape != gt.shape:
                raise SystemExit(f"{npz}: {image_id} is {pred.shape}, its mask {gt.shape}")
            conf += confusion_matrix(pred, gt, len(names))
    res = scores(conf, names)
    return {f"{split}_miou_present": res["miou"],
            f"{split}_miou_13": _mean(res["iou"].get(c) for c in SUPPORTED),
            f"{split}_iou": res["iou"]}


def rescore(out: Path, data: Path) -> list[tuple[Path, float, float]]:
    """(run, recorded val_miou_13, re-scored) of every run under ``out`` that kept its seeds;
    exits with an error naming the runs whose numbers differ."""
    rows, wrong = [], []
    for result in sorted(out.glob(f"*/seed*/*/{RESULT}")):
        npz = result.parent / SEED_MAPS
        if not npz.is_file():
            continue
        recorded = json.loads(result.read_text())["val_miou_13"]
        again = rescore_seed_maps(npz, data)["val_miou_13"]
        rows.append((result.parent, recorded, again))
        print(f"{result.parent.relative_to(out)}: recorded {recorded:.4f}, re-scored "
              f"{again:.4f}", flush=True)
        if abs(recorded - again) > 1e-6:
            wrong.append(str(result.parent))
    if wrong:
        raise SystemExit(f"re-scored val_miou_13 differs from verdict.json: {', '.join(wrong)}")
    return rows
