"""The built-in synthetic WSSS dataset ("synth"): small images where the core WSSS problem is real.

Each class is an object made of a large *body* and a small *part*:

* the part is a disc whose colour pair and pattern (stripes, checks, rings, ...) belong to that
  class alone, so it is the cue a classifier finds first (the "discriminative region");
* the body is a wobbly ellipse whose colour, texture and shape come from one distribution shared
  by all classes, with only a faint class bias (a preferred hue for a minority of bodies, a
  slightly different aspect ratio), so a body alone is a weak cue;
* backgrounds are smooth colour fields plus stripes and noise drawn from the same colour
  distribution as the bodies, so colour does not separate bodies from background globally;
  each body still differs from the background right around it, so it is a coherent region that
  affinity / propagation methods (SEAM, PLDA, PAMR, AffinityNet) can recover.

A CAM classifier trained on it lights up the parts much more than the bodies, while the masks
cover whole objects (body + part): the gap that WSSS methods try to close.

Layout written (VOC style)::

    JPEGImages/<id>.jpg              RGB image (JPEG quality 95)
    SegmentationClassAug/<id>.png    palette label PNG, 0 = background, 1..K = classes
    SegmentationParts/<id>.png       label map of the discriminative parts only (0 elsewhere)
    ImageSets/Segmentation/train.txt, val.txt
    classes.txt                      one class name per line (index 1..K)
    image_labels.json                {id: [class names]}
    synth.json                       generation parameters

Every image is drawn from its own random stream, seeded by (seed, split, index), so the output
is byte-identical for a seed, and train images do not change when ``n_val`` changes.
"""

from __future__ import annotations

import colorsys
import io
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from plda.errors import ConfigError, DataError
from plda.utils.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    clean_stale_temporaries,
)
from plda.utils.progress import progress
from plda.data.labels import label_to_image

GENERATOR_VERSION = 2
JPEG_QUALITY = 95
SPLITS = ("train", "val")
SUBDIRS = ("JPEGImages", "SegmentationClassAug", "SegmentationParts")
_ID_RE = re.compile(r"^(train|val)_\d{5,}$")

_COLOURS = {
    "red": (0.90, 0.10, 0.10), "yellow": (0.98, 0.88, 0.10), "blue": (0.10, 0.25, 0.95),
    "white": (0.97, 0.97, 0.97), "green": (0.10, 0.75, 0.20), "magenta": (0.90, 0.10, 0.85),
    "cyan": (0.10, 0.90, 0.95), "black": (0.05, 0.05, 0.05), "orange": (1.00, 0.50, 0.00),
    "purple": (0.45, 0.10, 0.70), "lime": (0.65, 1.00, 0.10), "navy": (0.05, 0.05, 0.40),
}

# (name, pattern, colour a, colour b): both the pattern and the colour pair are unique per class,
# and no pattern is a rotation of another (parts are drawn at random angles). Part colours are
# saturated, unlike the muted colours of bodies and backgrounds.
_CLASS_TABLE = (
    ("striped", "stripes", "red", "yellow"),
    ("checkered", "checks", "blue", "white"),
    ("ringed", "rings", "green", "magenta"),
    ("pinwheel", "sectors", "cyan", "black"),
    ("bullseye", "bullseye", "orange", "purple"),
    ("crossed", "cross", "yellow", "navy"),
    ("chevron", "chevrons", "magenta", "white"),
    ("spiral", "spiral", "red", "cyan"),
    ("dotted", "dots", "black", "yellow"),
    ("split", "halves", "green", "orange"),
    ("diamond", "diamond", "purple", "lime"),
    ("latticed", "grid", "white", "red"),
)
MAX_CLASSES = len(_CLASS_TABLE)


@dataclass(frozen=True)
class SynthParams:
    """Generation parameters (also written to ``synth.json``)."""

    seed: int = 0
    n_train: int = 400
    n_val: int = 100
    size: int = 112
    num_classes: int = 5
    # Object and part sizes relative to the base geometry (object semi-major axis 0.17-0.27 of
    # the image side, part radius 0.38-0.5 of the object's semi-minor axis; both 1.0 draw the
    # images of generator version 1). At 1.6 a part covers about a third of its object.
    object_scale: float = 1.4
    part_scale: float = 1.6

    def validate(self) -> None:
        checks = (
            ("n_train", self.n_train, 1, None),
            ("n_val", self.n_val, 0, None),
            ("size", self.size, 32, 2048),
            ("num_classes", self.num_classes, 1, MAX_CLASSES),
            ("seed", self.seed, 0, 2**63 - 1),
        )
        for name, value, lo, hi in checks:
            is_int = isinstance(value, int) and not isinstance(value, bool)
            if not is_int or value < lo or (hi is not None and value > hi):
                allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                raise ConfigError(
                    f"synthetic dataset: {name}={value!r} is invalid; expected an integer {allowed}")
        # The part must stay inside the body (its radius at most 0.85 of the semi-minor axis);
        # objects must leave room on the canvas for up to three of them.
        for name, value, lo, hi in (("object_scale", self.object_scale, 0.25, 1.6),
                                    ("part_scale", self.part_scale, 0.25, 1.7)):
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not lo <= float(value) <= hi):
                raise ConfigError(
                    f"synthetic dataset: {name}={value!r} is invalid; expected a number in "
                    f"{lo}..{hi}")


def class_names(num_classes: int) -> list[str]:
    """Names of the first ``num_classes`` synthetic classes (index 1..K in the label maps)."""
    return [row[0] for row in _CLASS_TABLE[:num_classes]]


# --------------------------------------------------------------------------------------------
# drawing: numpy over the whole frame (background) or over each object's bounding box


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` linear-interpolation weights, so that ``W @ coarse`` upsamples a grid."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = np.zeros((n_out, n_in), np.float32)
    w[np.arange(n_out), lo] = 1.0 - (pos - lo)
    w[np.arange(n_out), lo + 1] += pos - lo
    return w


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell_px: float,
                  channels: int) -> np.ndarray:
    """Smooth random field ``(H, W, channels)`` in [-1, 1]: uniform noise on a grid of about
    ``cell_px`` pixels per cell, upsampled bilinearly."""
    h, w = shape
    ch, cw = max(2, round(h / cell_px) + 1), max(2, round(w / cell_px) + 1)
    coarse = rng.uniform(-1.0, 1.0, (channels, ch, cw)).astype(np.float32)
    return (_interp_matrix(h, ch) @ coarse @ _interp_matrix(w, cw).T).transpose(1, 2, 0)


def _random_colour(rng: np.random.Generator, hue: float | None = None) -> np.ndarray:
    """A muted colour from the distribution shared by bodies and backgrounds."""
    h = rng.uniform() if hue is None else hue % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.15, 0.6), rng.uniform(0.3, 0.85)), np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Colour blobs (a few palette colours mixed by a smooth field) + stripes + mottling."""
    n_col = int(rng.integers(2, 4))
    palette = np.stack([_random_colour(rng) for _ in range(n_col)])
    logits = _smooth_field(rng, (size, size), size / rng.uniform(2.0, 6.0), n_col) * rng.uniform(3.0, 6.0)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    img = (weights / weights.sum(-1, keepdims=True)) @ palette
    yy, xx = np.ogrid[0:size, 0:size]
    theta, period = rng.uniform(0, math.pi), rng.uniform(4.0, 14.0)
    phase = rng.uniform(0, 2 * math.pi)
    stripes = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi / period) + phase)
    tint = rng.uniform(0.0, 0.1) * rng.choice([-1.0, 1.0], 3)
    img += (stripes[..., None] * tint).astype(np.float32)
    img += _smooth_field(rng, (size, size), 6.0, 3) * np.float32(rng.uniform(0.02, 0.08))
    return img


@dataclass
class _Object:
    """One object; arrays other than the full-frame masks cover only its bounding box."""

    cls: int  # 1..K
    box: tuple[slice, slice]
    mask: np.ndarray  # (S, S) bool: body + part
    part: np.ndarray  # (S, S) bool
    alpha: np.ndarray  # soft coverage of the object (anti-aliased edge), for blending
    part_alpha: np.ndarray
    rn: np.ndarray  # normalised elliptic radius (1 on the un-wobbled rim)
    u: np.ndarray  # px along the major axis from the centre
    part_uv: tuple[np.ndarray, np.ndarray]  # rotated part coordinates, part radius = 1


def _shape(rng: np.random.Generator, cls: int, size: int, scale: float, centred: bool = False,
           object_scale: float = 1.0, part_scale: float = 1.0) -> _Object:
    """Geometry of one object of class ``cls``: a wobbly rotated ellipse with a disc inside."""
    # Faint class cue in the shape: per-class shift of the aspect-ratio range (ranges overlap).
    aspect = rng.uniform(0.5, 0.85) + 0.06 * ((cls - 1) % 3 - 1)
    major = rng.uniform(0.17, 0.27) * size * scale * object_scale
    minor = major * aspect
    harmonics = [(k, rng.uniform(0.0, 0.06), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5)]
    # The centre keeps the whole object (wobble included) off the image border, so that masks
    # are never truncated and parts are always fully visible.
    reach = major * (1.0 + sum(h[1] for h in harmonics)) + 1.0
    if centred or reach >= (size - 1) / 2:
        cy = cx = (size - 1) / 2
    else:
        cy, cx = rng.uniform(reach, size - 1 - reach, 2)
    y0, y1 = max(0, math.floor(cy - reach)), min(size, math.ceil(cy + reach) + 1)
    x0, x1 = max(0, math.floor(cx - reach)), min(size, math.ceil(cx + reach) + 1)
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    theta = rng.uniform(0, 2 * math.pi)
    c, s = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    u, v = xx * c + yy * s, yy * c - xx * s
    rn = np.sqrt((u / major) ** 2 + (v / minor) ** 2)
    phi = np.arctan2(v / minor, u / major)
    boundary = 1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in harmonics)
    # Signed distance to the rim along the ray from the centre, in pixels (for anti-aliasing).
    sd = np.hypot(u, v) * (boundary / np.maximum(rn, 1e-6) - 1.0)
    # The part sits on the major axis, away from the centre, inside the body.
    r_part = minor * rng.uniform(0.38, 0.5) * part_scale
    offset = rng.uniform(0.15, 0.95) * max(0.0, 0.85 * major - r_part) * rng.choice([-1.0, 1.0])
    pu = u - np.float32(offset)
    rho = np.hypot(pu, v)
    part_alpha = np.clip(0.5 + (r_part - rho), 0.0, 1.0)
    turn = rng.uniform(0, 2 * math.pi)
    tc, ts = np.float32(math.cos(turn) / r_part), np.float32(math.sin(turn) / r_part)
    box = (slice(y0, y1), slice(x0, x1))
    part, mask = np.zeros((size, size), bool), np.zeros((size, size), bool)
    part[box] = rho <= r_part
    mask[box] = (rn <= boundary) | part[box]
    return _Object(cls=cls, box=box, mask=mask, part=part,
                   alpha=np.maximum(np.clip(0.5 + sd, 0.0, 1.0), part_alpha), part_alpha=part_alpha,
                   rn=rn, u=u, part_uv=(pu * tc + v * ts, v * tc - pu * ts))


_PATTERNS = {
    "stripes": lambda u, v, r, a: np.sin(2.2 * math.pi * u),
    "checks": lambda u, v, r, a: np.sin(1.8 * math.pi * u) * np.sin(1.8 * math.pi * v),
    "rings": lambda u, v, r, a: np.sin(2.5 * math.pi * r),
    "sectors": lambda u, v, r, a: np.sin(3.0 * a),
    "bullseye": lambda u, v, r, a: np.maximum(0.4 - r, r - 0.72),
    "cross": lambda u, v, r, a: 0.35 - np.minimum(np.abs(u), np.abs(v)),
    "chevrons": lambda u, v, r, a: np.sin(2.5 * math.pi * (u + 0.6 * np.abs(v))),
    "spiral": lambda u, v, r, a: np.sin(3.0 * math.pi * r + 2.0 * a),
    "dots": lambda u, v, r, a: np.cos(2.5 * math.pi * u) * np.cos(2.5 * math.pi * v) - 0.3,
    "halves": lambda u, v, r, a: u,
    "diamond": lambda u, v, r, a: 0.55 - (np.abs(u) + np.abs(v)),
    "grid": lambda u, v, r, a: np.minimum(np.abs(np.sin(2 * math.pi * u)),
                                          np.abs(np.sin(2 * math.pi * v))) - 0.35,
}


def _pattern(kind: str, qu: np.ndarray, qv: np.ndarray) -> np.ndarray:
    """Pattern value in [0, 1] (0 = colour a, 1 = colour b) on part coordinates (radius 1)."""
    s = _PATTERNS[kind](qu, qv, np.hypot(qu, qv), np.arctan2(qv, qu))
    return np.clip(0.5 + 4.0 * s, 0.0, 1.0)


def _blend(dst: np.ndarray, alpha: np.ndarray, src: np.ndarray) -> None:
    a = alpha[..., None]
    dst *= 1.0 - a
    dst += a * src


def _paint(rng: np.random.Generator, img: np.ndarray, obj: _Object, num_classes: int,
           avoid: list[np.ndarray]) -> np.ndarray:
    """Blend ``obj`` into ``img`` in place; return the body's base colour."""
    crop = img[obj.box]
    local_bg = (crop * obj.alpha[..., None]).sum((0, 1)) / max(float(obj.alpha.sum()), 1e-6)
    # Faint class cue in colour: a minority of bodies take a hue near their class's own hue.
    biased = rng.uniform() < 0.3
    # Each body differs from the background around it (and from the other bodies): coherent
    # regions for affinity methods, though the colour distribution is the background's.
    best, best_d = local_bg, -1.0
    for _ in range(40):
        colour = _random_colour(rng, (obj.cls - 1) / num_classes + rng.normal(0, 0.05) if biased else None)
        d = min(float(np.linalg.norm(colour - c)) for c in [local_bg, *avoid])
        if d > best_d:
            best, best_d = colour, d
        if d >= 0.3:
            break
    # Body texture shared by every class: bands across the major axis, mottling, rim shading.
    band_period, band_amp = rng.uniform(5.0, 9.0), rng.uniform(0.02, 0.06)
    bands = np.sin(obj.u * np.float32(2 * math.pi / band_period)) * np.float32(band_amp)
    mottle = _smooth_field(rng, obj.rn.shape, 5.0, 1)[..., 0] * np.float32(0.05)
    shade = 1.0 - 0.2 * np.clip(obj.rn, 0.0, 1.2) ** 2
    _blend(crop, obj.alpha, best * shade[..., None] + (bands + mottle)[..., None])
    _, kind, col_a, col_b = _CLASS_TABLE[obj.cls - 1]
    p = _pattern(kind, *obj.part_uv)[..., None]
    jitter = rng.uniform(-0.04, 0.04, 3)
    col_a, col_b = (np.asarray(_COLOURS[c], np.float32) for c in (col_a, col_b))
    part_rgb = (1.0 - p) * col_a + p * col_b
    _blend(crop, obj.part_alpha, part_rgb + jitter.astype(np.float32))
    return best


def _place(rng: np.random.Generator, classes: list[int], size: int, object_scale: float = 1.0,
           part_scale: float = 1.0) -> list[_Object]:
    """Objects of ``classes`` placed so that every part stays fully visible and overlaps are
    small (at most 20 % of the new object and of each earlier object's visible area). An object
    that finds no place is dropped, except the first: failing all tries, it is drawn small and
    centred, which always fits the empty canvas."""
    placed: list[_Object] = []
    visible: list[np.ndarray] = []
    covered = np.zeros((size, size), bool)
    for cls in classes:
        obj = None
        for attempt in range(60):
            cand = _shape(rng, cls, size, 0.85 ** (attempt // 20), False, object_scale, part_scale)
            m = cand.mask
            if (any((m & o.part).any() for o in placed) or (m & covered).sum() > 0.2 * m.sum()
                    or any((m & vis).sum() > 0.2 * vis.sum() for vis in visible)):
                continue
            obj = cand
            break
        if obj is None and not placed:
            obj = _shape(rng, cls, size, 0.6, True, object_scale, part_scale)
        if obj is None:
            continue
        for vis in visible:
            vis &= ~obj.mask
        placed.append(obj)
        visible.append(obj.mask.copy())
        covered |= obj.mask
    return placed


def render_image(seed: int, split: str, index: int, size: int, num_classes: int,
                 object_scale: float = 1.0, part_scale: float = 1.0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image: ``(rgb uint8 (S,S,3), label uint8 (S,S), part label uint8 (S,S))``.

    Deterministic in its arguments (its own random stream from ``(seed, split, index)``).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))
    n_obj = min(num_classes, int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2])))
    classes = [int(c) + 1 for c in rng.permutation(num_classes)[:n_obj]]
    img = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    parts = np.zeros((size, size), np.uint8)
    body_colours: list[np.ndarray] = []
    for obj in _place(rng, classes, size, object_scale, part_scale):
        body_colours.append(_paint(rng, img, obj, num_classes, body_colours))
        label[obj.mask] = obj.cls
        parts[obj.mask] = 0
        parts[obj.part] = obj.cls
    img += rng.normal(0.0, 0.015, img.shape).astype(np.float32)
    img = (img - 0.5) * rng.uniform(0.85, 1.1) + 0.5 + rng.uniform(-0.05, 0.05)
    rgb = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return rgb, label, parts


def _png_bytes(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    label_to_image(label).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def _prepare_root(root: Path, params: SynthParams) -> None:
    """Make ``root`` ready: refuse a non-empty folder that is not a synthetic dataset; mark it as
    one first (``synth.json``) so that an interrupted run can be re-run into it; drop the old id
    lists and labels, which are written last, so that a half-written dataset is never complete."""
    if root.exists() and not root.is_dir():
        raise DataError(f"synthetic dataset output {str(root)!r} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not (root / "synth.json").is_file():
        raise DataError(
            f"synthetic dataset output {str(root)!r} is a non-empty folder without synth.json; "
            "expected an empty or new folder (or an earlier synthetic dataset to overwrite)"
        )
    for sub in (*SUBDIRS, "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(root / sub)
    clean_stale_temporaries(root)
    for stale in ("image_labels.json", "ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt"):
        (root / stale).unlink(missing_ok=True)
    names = class_names(params.num_classes)
    atomic_write_json(root / "synth.json", {
        "generator": "plda.data.synth", "generator_version": GENERATOR_VERSION,
        **asdict(params), "classes": names, "jpeg_quality": JPEG_QUALITY,
        "parts": {name: {"pattern": pat, "colours": [a, b]}
                  for name, pat, a, b in _CLASS_TABLE[:params.num_classes]},
    })


def _remove_stale(root: Path, keep: set[str]) -> None:
    """Remove images of an earlier, larger generation so that folders match the id lists."""
    for sub in SUBDIRS:
        for p in (root / sub).iterdir():
            if _ID_RE.match(p.stem) and p.stem not in keep:
                p.unlink()


def _write_sample(root: Path, image_id: str, rgb: np.ndarray, label: np.ndarray, parts: np.ndarray) -> None:
    atomic_write_bytes(root / "JPEGImages" / f"{image_id}.jpg", _jpeg_bytes(rgb))
    atomic_write_bytes(root / "SegmentationClassAug" / f"{image_id}.png", _png_bytes(label))
    atomic_write_bytes(root / "SegmentationParts" / f"{image_id}.png", _png_bytes(parts))


def generate_synthetic(out: str | Path, seed: int = SynthParams.seed, n_train: int = SynthParams.n_train,
                       n_val: int = SynthParams.n_val, size: int = SynthParams.size,
                       num_classes: int = SynthParams.num_classes,
                       object_scale: float = SynthParams.object_scale,
                       part_scale: float = SynthParams.part_scale) -> dict:
    """Write the synthetic dataset to ``out`` (VOC layout, see the module docstring).

    Returns a summary: root, counts per split, class names, images per class, mean objects per
    image and mean part fraction of object area.
    """
    params = SynthParams(seed=seed, n_train=n_train, n_val=n_val, size=size, num_classes=num_classes,
                         object_scale=object_scale, part_scale=part_scale)
    params.validate()
    root = Path(out)
    _prepare_root(root, params)
    names = class_names(num_classes)
    ids = {split: [f"{split}_{i:05d}" for i in range(n)] for split, n in zip(SPLITS, (n_train, n_val))}
    all_ids = [(split, i, image_id) for split in SPLITS for i, image_id in enumerate(ids[split])]
    image_labels: dict[str, list[str]] = {}
    class_counts = dict.fromkeys(names, 0)
    n_objects, part_fracs = 0, []
    # Encoding and fsync'ed writes run in threads (both release the GIL) while drawing goes on.
    with ThreadPoolExecutor(max_workers=4) as pool:
        pending = []
        for split, index, image_id in progress(all_ids, desc="synth", unit="img"):
            rgb, label, parts = render_image(seed, split, index, size, num_classes,
                                             object_scale, part_scale)
            pending.append(pool.submit(_write_sample, root, image_id, rgb, label, parts))
            present = [int(c) for c in np.unique(label) if c != 0]
            image_labels[image_id] = [names[c - 1] for c in present]
            n_objects += len(present)
            for c in present:
                class_counts[names[c - 1]] += 1
                part_fracs.append(float((parts == c).sum()) / float((label == c).sum()))
        for fut in pending:
            fut.result()
    _remove_stale(root, set(image_labels))
    for split in SPLITS:
        atomic_write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt",
                          "".join(f"{i}\n" for i in ids[split]))
    atomic_write_text(root / "classes.txt", "".join(f"{n}\n" for n in names))
    atomic_write_json(root / "image_labels.json", image_labels)
    return {
        "root": str(root), "num_train": n_train, "num_val": n_val, "size": size,
        "classes": names, "images_per_class": class_counts,
        "objects_per_image": n_objects / len(all_ids),
        "mean_part_fraction": float(np.mean(part_fracs)) if part_fracs else 0.0,
    }
