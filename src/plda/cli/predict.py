"""``plda predict CHECKPOINT IMAGE_OR_FOLDER... --out DIR``: label maps of any images.

No dataset, labels or config are needed: the weights file describes its network and classes
(:func:`plda.segmentation.models.load_segmentation_net`). Each input ``<stem>.<ext>`` gives
``<out>/<stem>.png`` (label map of the input's size: value k is class k of the weights' class
list, coloured by :func:`plda.data.labels.palette_for` — VOC's colours for VOC's classes) and
``<out>/<stem>_overlay.jpg`` (the mask over the photo, with a legend of the classes present).
``<out>/classes.txt`` names the values (line k: value k, as a dataset's ``classes.txt``). The overlay is written before the mask, so an existing
mask means a finished image and a re-run skips it. ``--areas FILE`` writes each image's class
areas (pixels and share of the image) as JSON. Photos are read turned upright by their EXIF
orientation, as viewers show them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from plda.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEVICES = ("auto", "cpu", "cuda")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="segment images with a trained segmentation network",
        description="Write <out>/<stem>.png (VOC palette label map of the input's size) and "
        "<out>/<stem>_overlay.jpg for every image given or found in a folder given "
        "(non-recursive; .jpg .jpeg .png .bmp .webp). Any image mode (grayscale, RGBA, palette, "
        "16-bit) is read as RGB. Images whose mask exists are skipped, so an interrupted run "
        "continues where it stopped.")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="segmentation weights (.safetensors from 'plda segment train') or a run "
                   "folder holding deeplab/segmentation.safetensors")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="images and/or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--scales", default="1.0", metavar="S1,S2,...",
                   help="comma-separated inference scales (default %(default)s; the evaluation "
                   "protocol is 0.5,0.75,1.0,1.25,1.5,1.75)")
    p.add_argument("--no-flip", action="store_true", help="skip the mirrored pass")
    p.add_argument("--crf", action="store_true", help="refine with the dense CRF (pydensecrf)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the network runs (default: CUDA when available)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="autocast precision of the network (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="stack up to N consecutive images of equal size per forward")
    p.add_argument("--max-side", type=_max_side, default=DEFAULT_MAX_SIDE, metavar="PIXELS",
                   help="an image whose longer side exceeds this is segmented at that size and "
                   f"its mask upsampled, which bounds memory (default {DEFAULT_MAX_SIDE}; 0 = "
                   "no limit)")
    p.add_argument("--no-overlay", action="store_true", help="write the masks only")
    p.add_argument("--areas", metavar="FILE", default=None,
                   help="also write a JSON of every image's class areas (pixels and share)")
    p.add_argument("--overwrite", action="store_true", help="redo images whose mask exists")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images (listed at the end) instead of stopping")
    p.set_defaults(func=run)


# Longest side segmented at full resolution. On a 6000 x 4000 photo the process peaks at
# 2.4 GB with 2048 and 1.2 GB with 1024; without a limit it passed 8 GB before running out
# (benchmarks/predict_memory.py, 2026-12-03).
DEFAULT_MAX_SIDE = 2048


def _max_side(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if value != 0 and value < 32:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 (no limit) or at least 32")
    return value or None


def parse_scales(spec: str) -> tuple[float, ...]:
    """``"1.0,0.75"`` to ``(1.0, 0.75)``; a ``ConfigError`` for anything else."""
    try:
        scales = tuple(float(s) for s in spec.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--scales {spec!r}: expected comma-separated numbers, "
                          "e.g. 1.0,0.75,1.25") from None
    if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
        raise ConfigError(f"--scales {spec!r}: expected one or more positive finite numbers")
    return scales


def resolve_device(device: str):
    """``auto``: CUDA when available, else the CPU; asking for CUDA without it is an error."""
    import torch

    if device not in DEVICES:
        raise ConfigError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files to segment, in the order given (a folder's images sorted by name).

    Folders contribute their files with an image suffix (case-insensitive, non-recursive);
    files given by name are taken whatever their suffix. The same file given twice counts once.
    Two different files with one stem would write the same mask: a ``DataError`` naming both.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {path} holds no images; expected files ending in "
                                f"{', '.join(IMAGE_SUFFIXES)}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"input {path} not found: expected an image file or a folder")
    unique: list[Path] = []
    seen: set[Path] = set()
    by_stem: dict[str, Path] = {}
    for path in files:
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        if path.stem in by_stem:
            raise DataError(f"inputs {by_stem[path.stem]} and {path} share the name "
                            f"{path.stem!r}: their masks would both be {path.stem}.png; rename "
                            "one or predict them into different --out folders")
        by_stem[path.stem] = path
        unique.append(path)
    if not unique:
        raise DataError("no input images given")
    return unique


def read_image(path: Path):
    """The image at ``path``, fully decoded (so a truncated file fails here, not later) and
    turned upright by its EXIF orientation, as viewers and ``plda prepare folder`` show it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); expected a JPEG, PNG, BMP or "
                        "WebP image") from exc


def predict_images(checkpoint: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                   out_dir: str | os.PathLike, *, scales: Sequence[float] = (1.0,),
                   flip: bool = True, crf: bool = False, device: str = "auto",
                   amp: str = "none", batch_size: int = 1, overlay: bool = True,
                   overwrite: bool = False, skip_bad: bool = False,
                   max_side: int | None = DEFAULT_MAX_SIDE,
                   areas: str | os.PathLike | None = None) -> dict[str, Any]:
    """Segment ``inputs`` (files and/or folders) with the network of ``checkpoint`` into
    ``out_dir`` (module docstring); see ``plda predict --help`` for the options.

    An unreadable image is a ``DataError`` naming it, unless ``skip_bad``: then it is warned
    about, skipped and listed in the result.

    Returns:
        ``{"written", "skipped_existing", "bad": [{"path", "error"}], "total", "seconds",
        "seconds_per_image", "device", "out_dir", "class_names"}`` and, with ``areas``,
        ``"areas"``: the path of the JSON written.
    """
    from plda.segmentation.inference import iter_label_maps
    from plda.segmentation.models import load_segmentation_net
    from plda.utils.io import atomic_save_image, clean_stale_temporaries
    from plda.utils.progress import progress_bar
    from plda.utils.io import atomic_write_text, check_output_file
    from plda.vis.overlay import label_overlay, with_legend
    from plda.data.labels import palette_for, save_label_png

    files = collect_inputs(inputs)
    if areas is not None:
        check_output_file(areas, "--areas")
    if crf:  # fail before any work, not at the first image
        from plda.inference.crf import require_pydensecrf

        require_pydensecrf()
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ConfigError(f"scales={list(scales)}: expected one or more positive numbers")
    dev = resolve_device(device)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a folder")
    net, meta = load_segmentation_net(checkpoint, device=dev)
    class_names = list(meta["class_names"])
    palette = palette_for(class_names)
    out.mkdir(parents=True, exist_ok=True)
    # The dataset's format: foreground classes, value k = line k (background is 0).
    atomic_write_text(out / "classes.txt", "".join(f"{n}\n" for n in class_names[1:]))
    names = [n for f in files for n in (f"{f.stem}.png", f"{f.stem}_overlay.jpg")]
    clean_stale_temporaries(out, names)
    inputs_real = {f.resolve() for f in files}
    for f in files:
        if (out / f"{f.stem}.png").resolve() in inputs_real:
            raise DataError(f"the mask of {f} would overwrite input {out / (f.stem + '.png')}; "
                            "choose an --out folder that holds no input images")
    todo = [f for f in files if overwrite or not (out / f"{f.stem}.png").is_file()]
    bad: list[dict[str, str]] = []
    bar = progress_bar(len(todo), desc="predict", unit="img")

    reading: list[Path] = []  # the image read last: the one the network works on

    def readable() -> Iterator[tuple[Path, Any]]:
        for path in todo:
            try:
                reading[:] = [path]
                yield path, read_image(path)
            except DataError as exc:
                if not skip_bad:
                    raise
                warnings.warn(f"skipping {path}: {exc}", stacklevel=2)
                bad.append({"path": str(path), "error": str(exc)})
                bar.update(1)

    written = 0
    start = time.perf_counter()
    try:
        for path, rgb, labels in _out_of_memory_named(
                iter_label_maps(net, readable(), scales, flip, amp, crf=crf,
                                batch_size=batch_size, max_side=max_side), reading, max_side):
            if overlay:
                from PIL import Image

                picture = with_legend(label_overlay(rgb, labels, palette=palette),
                                      legend_entries(labels, class_names, palette))
                atomic_save_image(out / f"{path.stem}_overlay.jpg", Image.fromarray(picture),
                                  format="JPEG")
            save_label_png(out / f"{path.stem}.png", labels, palette=palette)
            written += 1
            bar.update(1)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    result = {"written": written, "skipped_existing": len(files) - len(todo), "bad": bad,
              "total": len(files), "seconds": seconds,
              "seconds_per_image": seconds / written if written else 0.0, "device": str(dev),
              "out_dir": str(out), "class_names": class_names}
    if areas is not None:
        from plda.utils.io import atomic_write_json

        bad_paths = {b["path"] for b in bad}
        table = {f.name: class_areas(out / f"{f.stem}.png", class_names) for f in files
                 if str(f) not in bad_paths and (out / f"{f.stem}.png").is_file()}
        atomic_write_json(areas, {"classes": class_names, "images": table})
        result["areas"] = str(areas)
    return result


def legend_entries(labels, class_names: list[str], palette) -> list[tuple[str, tuple]]:
    """``(name, colour)`` of the classes present in ``labels`` (background left out)."""
    import numpy as np

    present = np.flatnonzero(np.bincount(np.asarray(labels, np.uint8).ravel(), minlength=256))
    return [(class_names[v] if v < len(class_names) else str(v), tuple(int(c) for c in palette[v]))
            for v in present if 0 < v < 255]


def class_areas(mask_path: Path, class_names: list[str]) -> dict[str, Any]:
    """``{"size": [h, w], "classes": {name: {"pixels", "share"}}}`` of a written mask (the
    classes present, background included)."""
    import numpy as np

    from plda.data.labels import load_label_png

    mask = load_label_png(mask_path)
    counts = np.bincount(mask.ravel(), minlength=256)
    total = int(mask.size)
    return {"size": list(mask.shape),
            "classes": {(class_names[v] if v < len(class_names) else str(int(v))):
                        {"pixels": int(counts[v]), "share": round(int(counts[v]) / total, 6)}
                        for v in np.flatnonzero(counts)}}


def _out_of_memory_named(results: Iterator, reading: list[Path], max_side: int | None
                         ) -> Iterator:
    """Pass ``results`` through; an allocation failure becomes a message naming the image being
    segmented (the last one read) and the setting that bounds the memory."""
    while True:
        try:
            item = next(results)
        except StopIteration:
            return
        except (MemoryError, RuntimeError) as exc:
            from plda.engine.memory import is_allocation_failure

            if not is_allocation_failure(exc):
                raise
            where = reading[0] if reading else "an image"
            raise DataError(f"out of memory segmenting {where}: lower --max-side (now "
                            f"{max_side or 'no limit'}), --scales or --batch-size") from None
        yield item


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: expected a positive integer")
    with warnings.catch_warnings():
        if args.skip_bad:  # the skipped files are listed once at the end instead
            warnings.simplefilter("ignore")
        res = predict_images(args.checkpoint, args.inputs, args.out,
                             scales=parse_scales(args.scales), flip=not args.no_flip,
                             crf=args.crf, device=args.device, amp=args.amp,
                             batch_size=args.batch_size, overlay=not args.no_overlay,
                             overwrite=args.overwrite, skip_bad=args.skip_bad,
                             max_side=args.max_side, areas=args.areas)
    print(f"{res['written']} written, {res['skipped_existing']} already done, "
          f"{len(res['bad'])} unreadable of {res['total']} images -> {res['out_dir']} "
          f"({res['seconds_per_image']:.2f} s/image on {res['device']})")
    print("classes: " + ", ".join(f"{k} {n}" for k, n in enumerate(res["class_names"]))
          + f" (also in {Path(res['out_dir']) / 'classes.txt'})")
    if res.get("areas"):
        print(f"class areas: {res['areas']}")
    if res["bad"]:
        print(f"skipped {len(res['bad'])} unreadable image(s):", file=sys.stderr)
        for item in res["bad"]:
            print(f"  {item['error']}", file=sys.stderr)
    return 0
