"""Which fine CAM grid? Candidates for the fine-grid presets, measured on the training split.

    python -m benchmarks.fine_grid_choice --start runs/verdict_coarse/scratch/seed0/cam \\
        --out runs/fine_grid_choice --keep benchmarks/results/fine_grid_choice

Every candidate gives a CAM grid of 28 x 28 at the training crop. Each continues the same
coarse scratch baseline (``--start``, a finished ``plda run`` folder of the verdict) for
``--epochs`` more epochs with its own losses, as the fine verdict's continue arm does, then
makes CAMs of the training split only and seeds with the threshold chosen on it: nothing is
computed on val, so the choice cannot be tuned on it.

- ``stride8_dilated``: crop 224, output stride 8, the later stages dilated (DeepLab);
- ``stride8_undilated``: crop 224, output stride 8, strides dropped without dilating
  (``model.dilate=false``);
- ``crop448_stride16``: crop 448 (long side 448-768), output stride 16 (dilation 2 in the last
  stage only, as the SEAM family's coarse preset).

Per candidate (``OUT/<name>/<method>/choice.json``, copied under ``--keep``): train seed mIoU
over the 13 supported classes and over the classes present, the threshold, seconds per
training step, minutes per stage, the CAM grid and the *high-frequency share* of its CAMs: of
each class map's spectral power (mean removed, at image size), the share at periods under 32
pixels, averaged over the maps of ``--images`` training images. A coarse map upsampled from
32-pixel cells has almost none; detail a fine grid resolves adds some; the lattice of dots that
dilated pretrained depthwise kernels leave adds much more. The start run's share is the
reference. ``OUT/cams.jpg``: the same
training images' CAMs of the start run and of every candidate, side by side.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA, commit
from benchmarks.table import print_table

# name -> (grid of voc12subset's presets, overrides): each spelt out from the coarse presets,
# so a candidate stays what it was when the fine presets change.
CANDIDATES = {
    "stride8_dilated": ("coarse", ["model.output_stride=8"]),
    "stride8_undilated": ("coarse", ["model.output_stride=8", "model.dilate=false"]),
    "crop448_stride16": ("coarse", ["model.output_stride=16", "data.crop=448",
                                    "data.resize_long=[448,768]"]),
}
RESULT = "choice.json"


def hf_share(cam: np.ndarray, period: float = 32.0) -> float:
    """The share of ``cam``'s (H, W) spectral power, mean removed, at periods under ``period``
    pixels (NaN for a constant map)."""
    centred = cam - cam.mean()
    power = np.abs(np.fft.rfft2(centred)) ** 2
    fy = np.fft.fftfreq(cam.shape[0])[:, None]
    fx = np.fft.rfftfreq(cam.shape[1])[None, :]
    total = power.sum()
    if total <= 0:
        return float("nan")
    return float(power[np.hypot(fy, fx) > 1.0 / period].sum() / total)


def run_hf_share(run: Path, split: str, images: int) -> float:
    """The mean high-frequency share of the class maps of the first ``images`` CAM files of
    ``run``'s ``split``."""
    from plda.data.camfile import load_cams

    files = sorted((run / "cams" / split).glob("*.npz"))[:images]
    if not files:
        raise SystemExit(f"{run}: no CAM files of split {split!r}")
    shares = [hf_share(cam) for f in files
              for cam in np.asarray(load_cams(f).cams, np.float32)]
    return float(np.nanmean(shares))


def _seconds_per_step(run: Path) -> float | None:
    path = run / "logs" / "train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = [r for r in records if "step" in r and "wall_time_s" in r and "loss" in r]
    if len(steps) < 2:
        return None
    return (steps[-1]["wall_time_s"] - steps[0]["wall_time_s"]) / (steps[-1]["step"]
                                                                   - steps[0]["step"])


def _start_overrides(start: Path) -> tuple[str, list[str]]:
    """(method, seed/amp overrides) of the start run, from its verdict.json (else defaults)."""
    from plda.config import load_run_folder_config

    result = start / "verdict.json"
    if result.is_file():
        row = json.loads(result.read_text())
        return row["method"], [o for o in row["overrides"] if not o.startswith("train.epochs=")]
    return load_run_folder_config(start).method.name, []


def run_candidate(name: str, start: Path, out: Path, data: Path, epochs: int, images: int,
                  extra: list[str]) -> dict:
    """One candidate continued from ``start``, scored on train (skipped once written)."""
    from benchmarks import voc12subset
    from benchmarks.verdict.jobs import _stage1, cam_grid
    from plda.utils.io import atomic_write_json

    if name not in CANDIDATES:
        raise SystemExit(f"candidate {name!r}: expected one of {', '.join(CANDIDATES)}")
    method, seeded = _start_overrides(start)
    folder = out / name
    run = folder / method
    result = run / RESULT
    if result.is_file():
        return json.loads(result.read_text())
    grid, own = CANDIDATES[name]
    overrides = [f"train.epochs={epochs}", *seeded, f"model.init_from={start}",
                 "data.eval_splits=[train]", *own, *extra]
    print(f"== {name} ({time.strftime('%Y-%m-%d %H:%M:%S')})", flush=True)
    began, t0 = commit(), time.perf_counter()
    row = voc12subset.run_method(method, folder, data, overrides, refine="none", seg=False,
                                 label_free=False, grid=grid)
    cfg, _, model = _stage1(run)
    row = {k: v for k, v in row.items() if not k.startswith("val_")}
    row.update(candidate=name, overrides=overrides, start=str(start),
               cam_grid=cam_grid(model, cfg.data.crop), output_stride=cfg.model.output_stride,
               crop=cfg.data.crop, seconds_per_step=_seconds_per_step(run),
               minutes=(time.perf_counter() - t0) / 60.0, commit=began,
               finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_json(result, row)
    return row


def cam_panel(runs: dict[str, Path], data: Path, out: Path, count: int = 6,
              height: int = 200) -> Path:
    """``out``: for ``count`` training images with CAMs in every run, the image and, per run,
    its CAM (the maximum over the image's classes) over it, one row per image."""
    from PIL import Image, ImageDraw

    from plda.data.camfile import load_cams
    from plda.data.layout import DatasetLayout
    from plda.vis.overlay import cam_overlay

    layout = DatasetLayout(data)
    ids = sorted(set.intersection(*({f.stem for f in (r / "cams" / "train").glob("*.npz")}
                                    for r in runs.values())))[:count]
    rows = []
    for image_id in ids:
        image = np.asarray(layout.load_image(image_id))
        tiles = [image]
        for run in runs.values():
            cams = np.asarray(load_cams(run / "cams" / "train" / f"{image_id}.npz").cams,
                              np.float32)
            cam = cams.max(0) if len(cams) else np.zeros(image.shape[:2], np.float32)
            if cam.shape != image.shape[:2]:
                cam = np.asarray(Image.fromarray(cam).resize(image.shape[1::-1]))
            tiles.append(cam_overlay(image, cam))
        scale = height / image.shape[0]
        size = (round(image.shape[1] * scale), height)
        rows.append(np.concatenate([np.asarray(Image.fromarray(t).resize(size)) for t in tiles],
                                   1))
    width = max(r.shape[1] for r in rows)
    sheet = np.zeros((18 + sum(r.shape[0] for r in rows), width, 3), np.uint8)
    y = 18
    for r in rows:
        sheet[y:y + r.shape[0], :r.shape[1]] = r
        y += r.shape[0]
    picture = Image.fromarray(sheet)
    draw = ImageDraw.Draw(picture)
    tile_w = rows[0].shape[1] // (len(runs) + 1)
    for k, label in enumerate(["image", *runs]):
        draw.text((k * tile_w + 4, 3), label, fill=(255, 255, 255))
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out, quality=85)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--start", type=Path, required=True, help="a finished coarse scratch run")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--images", type=int, default=200, help="training images the "
                   "high-frequency share reads")
    p.add_argument("--keep", type=Path, default=None, help="copy each choice.json (and "
                   "cams.jpg) here, the results kept in the repository")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every candidate")
    args = p.parse_args(argv)
    from plda.utils.io import atomic_write_bytes, atomic_write_json

    start = args.start.resolve()
    if not (start / "stage1.safetensors").is_file():
        raise SystemExit(f"{start}: not a finished run (no stage1.safetensors)")
    rows = [run_candidate(name, start, args.out.resolve(), args.data.resolve(), args.epochs,
                          args.images, args.overrides)
            for name in filter(None, args.candidates.split(","))]
    method, _ = _start_overrides(start)
    for row in rows:  # measured here, so every run is read the same way
        run = args.out.resolve() / row["candidate"] / method
        row.pop("lattice", None)
        row.pop("lattice_images", None)
        row.update(hf_share=run_hf_share(run, "train", args.images), hf_images=args.images)
        atomic_write_json(run / RESULT, row)
    reference = {"candidate": "start (coarse)", "hf_share": run_hf_share(start, "train",
                                                                        args.images),
                 "train_miou_13": None, "train_miou_present": None}
    start_row = start / "verdict.json"
    if start_row.is_file():
        verdict = json.loads(start_row.read_text())
        reference.update(train_miou_13=verdict["train_miou_13"],
                         train_miou_present=verdict["train_miou_present"],
                         bg_threshold=verdict["bg_threshold"], cam_grid=verdict.get("cam_grid"))
    table = [reference, *rows]
    print_table(["candidate", "grid", "train 13", "train", "thr", "HF %", "s/step", "min"],
                [(r["candidate"], "x".join(map(str, r.get("cam_grid") or [])) or None,
                  r.get("train_miou_13"), r.get("train_miou_present"), r.get("bg_threshold"),
                  100 * r["hf_share"], r.get("seconds_per_step"), r.get("minutes"))
                 for r in table],
                {"train 13": ".1f", "train": ".1f", "thr": ".2f", "HF %": ".2f",
                 "s/step": ".2f", "min": ".1f"})
    print("Training split only (CAMs, threshold and scores): seed mIoU over the 13 supported "
          "classes / the classes present; HF %: the share of the CAMs' power at periods under "
          "32 pixels.")
    runs = {"start (coarse)": start, **{r["candidate"]: args.out.resolve() / r["candidate"]
                                        / method for r in rows}}
    panel = cam_panel(runs, args.data.resolve(), args.out / "cams.jpg")
    atomic_write_json(args.out / "summary.json", {"rows": table})
    if args.keep is not None:
        for r in rows:
            src = args.out / r["candidate"] / method / RESULT
            atomic_write_bytes(args.keep / r["candidate"] / RESULT, src.read_bytes())
        atomic_write_bytes(args.keep / "cams.jpg", panel.read_bytes())
        atomic_write_json(args.keep / "summary.json", {"rows": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
