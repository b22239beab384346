"""The own-data walkthrough, timed: photos + tags (masks for the val photos only) -> a model.

Builds what a practitioner has from the VOC sample: the photos whose tags are all among
cat / dog / horse / person, renamed ``IMG_<n>.JPG`` in one folder, a ``tags.csv`` (file,tags;
tags joined by ';'), hand-made-style masks (values = line of the class list) for the val photos
only, and a few more photos kept out for ``plda predict``. Then runs, timing each command:

    plda prepare folder PHOTOS --tags tags.csv --masks MASKS --val-from-masks --out DATA
    plda run own_cam_effnetlite0 data.root=DATA run_dir=RUN
    plda predict RUN NEW_PHOTOS --out PRED --areas PRED/areas.json
    plda export RUN --onnx RUN/model.onnx --check NEW_PHOTOS

and prints a table: the commands' seconds, the stages' seconds, the scores (on the val photos
that did not tune the threshold), and where the label-free threshold would have put the seeds.

    python -m benchmarks.own_data_walkthrough --out runs/walkthrough
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.table import print_table

CLASSES = ["cat", "dog", "horse", "person"]


def build_photos(sample: Path, out: Path, n_train: int, n_val: int, n_new: int) -> dict:
    import numpy as np

    from plda.data.layout import DatasetLayout
    from plda.data.labels import save_label_png

    layout = DatasetLayout(sample)
    wanted = set(CLASSES)

    def pick(split: str) -> list[str]:
        ids = []
        for image_id in layout.ids(split):
            names = {layout.classes[k] for k in np.flatnonzero(layout.labels(image_id))}
            if names and names <= wanted:
                ids.append(image_id)
        return ids

    train, val = pick("train"), pick("val")
    chosen = {"train": train[:n_train], "val": val[:n_val], "new": val[n_val:n_val + n_new]}
    photos, masks, new = out / "photos", out / "masks", out / "new_photos"
    for folder in (photos, masks, new):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    remap = np.arange(256, dtype=np.uint8)
    remap[1:21] = 255  # classes outside the list: none occur in the chosen photos' masks
    for k, name in enumerate(CLASSES, start=1):
        remap[layout.classes.index(name) + 1] = k
    rows, number = ["file,tags"], 4009
    for split in ("train", "val", "new"):
        for image_id in chosen[split]:
            name = f"IMG_{number}.JPG"
            number += 1
            target = (new if split == "new" else photos) / name
            shutil.copyfile(layout.image_path(image_id), target)
            if split == "new":
                continue
            tags = [layout.classes[k] for k in np.flatnonzero(layout.labels(image_id))]
            rows.append(f"{name},{';'.join(tags)}")
            if split == "val":
                save_label_png(masks / f"IMG_{number - 1}.png",
                               remap[layout.load_mask(image_id)])
    (out / "tags.csv").write_text("\n".join(rows) + "\n")
    return {k: len(v) for k, v in chosen.items()}


def timed(command: list[str], log: Path) -> float:
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(command) + "\n")
        fh.flush()
        subprocess.run(command, check=True, stdout=fh, stderr=subprocess.STDOUT)
    return round(time.perf_counter() - start, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sample", type=Path, default=Path("../shared/data/voc12-subset"))
    p.add_argument("--out", type=Path, default=Path("runs/walkthrough"))
    p.add_argument("--train", type=int, default=305)
    p.add_argument("--val", type=int, default=60)
    p.add_argument("--new", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("overrides", nargs="*", help="key=value overrides for plda run")
    args = p.parse_args(argv)
    from plda.utils.provenance import git_commit

    commit = git_commit()  # the code this run starts from (a commit may land while it runs)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    counts = build_photos(args.sample, out, args.train, args.val, args.new)
    plda = [sys.executable, "-m", "plda"]
    log = out / "walkthrough.log"
    data, run, pred = out / "data", out / "run", out / "pred"
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(pred, ignore_errors=True)
    seconds = {
        "prepare": timed([*plda, "prepare", "folder", str(out / "photos"), "--tags",
                          str(out / "tags.csv"), "--masks", str(out / "masks"),
                          "--val-from-masks", "--out", str(data)], log),
        "run": timed([*plda, "run", "own_cam_effnetlite0", f"data.root={data}",
                      f"run_dir={run}", *args.overrides], log),
        "predict": timed([*plda, "predict", str(run), str(out / "new_photos"), "--out",
                          str(pred), "--areas", str(pred / "areas.json")], log),
        "export": timed([*plda, "export", str(run), "--onnx", str(run / "model.onnx"),
                         "--check", str(out / "new_photos")], log),
    }
    metrics = json.loads((run / "metrics.json").read_text())
    # Where the label-free rule would have put the threshold on this run, and what the val
    # photos that did not tune it score there.
    from plda.data.layout import DatasetLayout
    from plda.evaluation.evaluate import evaluate_cams
    from plda.inference.thresholds import cam_histogram, rule_threshold

    from plda.config import load_run_folder_config

    layout = DatasetLayout(data)
    rule = load_run_folder_config(run).cam.label_free
    free_t = rule_threshold(cam_histogram(run / "cams" / "train", layout.ids("train")), rule)
    scored = metrics["seeds"]["tuning"]["scored_ids"]
    at_free = evaluate_cams(run / "cams" / "val", layout.mask_dir, scored, layout.class_names,
                            [free_t])["miou"]
    result = {
        "commit": commit, "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores", "photos": counts, "seconds": seconds,
        "stages": metrics.get("pipeline", {}),
        "classification_val": metrics.get("classification", {}).get("val"),
        "threshold": {"tuned": metrics["seeds"]["bg_threshold"],
                      "tuned_on": len(metrics["seeds"]["tuning"]["tuned_ids"]),
                      "label_free_rule": rule, "label_free": free_t,
                      "seeds_val_at_label_free": at_free},
        "val_scored_images": len(scored),
        "miou_val": {s: metrics[s]["val"].get("miou") for s in ("seeds", "seg")
                     if isinstance(metrics.get(s), dict) and "val" in metrics[s]},
    }
    print(json.dumps(result, indent=1))
    print()
    print_table(["step", "seconds"], [*seconds.items(),
                                      *((f"run: {k}", round(v)) for k, v in
                                        result["stages"].items())], markdown=True)
    if args.json:
        from plda.utils.io import atomic_write_json

        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
