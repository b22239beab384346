"""Multi-scale CAM inference, resumable CAM files, sharding, and seed label maps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from plda.data.camfile import load_cams, save_cams
from plda.data.layout import DatasetLayout
from plda.data.transforms import EvalTransform
from plda.errors import ConfigError, DataError
from plda.inference.seeds import seeds_from_cams
from plda.inference.cams import (infer_cams, multiscale_cam, multiscale_cam_batch, normalize_cams,
                                 scaled_size)
from plda.inference.seeds import write_seeds
from plda.data.labels import load_label_png

NUM_CLASSES = 3


@dataclass
class FakeCamOutput:
    cam: Tensor
    raw: Tensor


class FakeCamModel(nn.Module):
    """A fixed random conv on a stride-4 grid: not flip-symmetric, with a dropout that would make
    results random outside eval mode. ``delay`` seconds of sleep per call make it slow."""

    def __init__(self, num_classes: int = NUM_CLASSES, seed: int = 0, delay: float = 0.0,
                 bias: tuple[float, ...] | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(0.5)
        self.conv = nn.Conv2d(3, num_classes + 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.tensor((0.0, *bias)) if bias is not None
                                 else torch.randn(num_classes + 1, generator=g))
        self.delay = delay
        self.calls: list[tuple[tuple[int, ...], dict]] = []

    def cams(self, image: Tensor, **kwargs) -> FakeCamOutput:
        self.calls.append((tuple(image.shape), kwargs))
        if self.delay:
            time.sleep(self.delay)
        raw = self.conv(self.dropout(F.avg_pool2d(image, 4, ceil_mode=True)))
        # Like SEAM: raw leads with background; cam is a different (revised) foreground map.
        return FakeCamOutput(cam=raw[:, 1:] * 2 - raw[:, :1], raw=raw)


def make_layout(root: Path, sizes: list[tuple[int, int]], labels: list[list[int]], seed: int = 0
                ) -> DatasetLayout:
    """A tiny VOC-layout dataset: PNG images, split ``train``, 3 classes, label lists (1-based)."""
    rng = np.random.default_rng(seed)
    names = [f"c{k}" for k in range(1, NUM_CLASSES + 1)]
    ids = [f"img_{i:03d}" for i in range(len(sizes))]
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for image_id, (h, w) in zip(ids, sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{image_id}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    (root / "image_labels.json").write_text(json.dumps(
        {i: [names[k - 1] for k in lab] for i, lab in zip(ids, labels)}))
    return DatasetLayout(root)


def naive_multiscale_cam(model, image, scales, flip, labels):
    """The reference computation written out: one pass per scale and flip, SEAM's normalisation
    literally (``infer_SEAM.py``), then negatives clipped to 0."""
    model.eval()
    height, width = image.shape[-2:]
    total = torch.zeros(model.num_classes, height, width)
    with torch.no_grad():
        for s in scales:
            size = (round(height * s), round(width * s))
            x = image[None]
            if size != (height, width):
                x = F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)
            for flipped in ([False, True] if flip else [False]):
                cam = model.cams(x.flip(-1) if flipped else x).cam
                cam = F.interpolate(cam, size, mode="bilinear", align_corners=True)
                cam = F.interpolate(cam, (height, width), mode="bilinear", align_corners=False)[0]
                total += (cam.flip(-1) if flipped else cam) * labels.view(-1, 1, 1)
    arr = total.numpy().copy()
    arr[arr < 0] = 0
    cam_max = arr.max((1, 2), keepdims=True)
    cam_min = arr.min((1, 2), keepdims=True)
    arr[arr < cam_min + 1e-5] = 0
    norm = (arr - cam_min - 1e-5) / (cam_max - cam_min + 1e-5)
    return torch.from_numpy(np.maximum(norm, 0))


# ---- multiscale_cam ------------------------------------------------------------------------------

@pytest.mark.parametrize("flip", [True, False])
def test_multiscale_cam_equals_naive_loop(flip):
    torch.manual_seed(0)
    model = FakeCamModel()
    model.train()
    image = torch.randn(3, 25, 35)
    labels = torch.tensor([1.0, 0.0, 1.0])
    scales = (0.5, 1.0, 1.5, 2.0)
    out = multiscale_cam(model, image, scales, flip, labels)
    assert model.training  # mode restored
    expected = naive_multiscale_cam(model, image, scales, flip, labels)
    assert out.shape == (NUM_CLASSES, 25, 35) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out.min() >= 0 and out.max() < 1
    assert (out[1] == 0).all()  # absent class
    for k in (0, 2):
        assert out[k].max() > 0.99 and out[k].min() == 0


def test_flip_pairs_go_as_one_batch_at_reference_rounded_sizes():
    model = FakeCamModel()
    multiscale_cam(model, torch.randn(3, 25, 35), (0.5, 1.0, 1.5), True, chunk_size=7,
                   flip_batch=True)
    # round() is half-to-even, as SEAM's VOC12ClsDatasetMSF: 12.5 -> 12, 17.5 -> 18, 37.5 -> 38.
    assert [shape for shape, _ in model.calls] == [(2, 3, 12, 18), (2, 3, 25, 35), (2, 3, 38, 52)]
    assert all(kwargs == {"chunk_size": 7} for _, kwargs in model.calls)
    model.calls.clear()  # on a CPU the default is one pass per flip (faster and lighter there)
    multiscale_cam(model, torch.randn(3, 25, 35), (0.5, 1.0), True)
    assert [shape for shape, _ in model.calls] == [(1, 3, 12, 18)] * 2 + [(1, 3, 25, 35)] * 2
    assert scaled_size(25, 35, 0.5) == (12, 18)


def test_flip_batch_off_matches_and_without_labels_keeps_all_classes():
    model = FakeCamModel(seed=3)
    image = torch.randn(3, 20, 28)
    batched = multiscale_cam(model, image, (0.5, 1.0), True, flip_batch=True)
    model.calls.clear()
    separate = multiscale_cam(model, image, (0.5, 1.0), True, flip_batch=False)
    assert [shape[0] for shape, _ in model.calls] == [1, 1, 1, 1]
    torch.testing.assert_close(batched, separate, atol=1e-5, rtol=1e-5)
    expected = naive_multiscale_cam(model, image, (0.5, 1.0), True, torch.ones(NUM_CLASSES))
    torch.testing.assert_close(batched, expected, atol=1e-5, rtol=1e-5)


def test_batch_equals_per_image():
    model = FakeCamModel(seed=1)
    images = torch.randn(3, 3, 18, 22)
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    batch = multiscale_cam_batch(model, images, (0.5, 1.0, 2.0), True, labels)
    assert batch.shape == (3, NUM_CLASSES, 18, 22)
    for b in range(3):
        single = multiscale_cam(model, images[b], (0.5, 1.0, 2.0), True, labels[b])
        torch.testing.assert_close(batch[b], single, atol=1e-5, rtol=1e-5)


def test_normalize_cams_is_seam_min_max():
    x = torch.tensor([[[[-1.0, 0.5], [2.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    out = normalize_cams(x)[0]
    lo = 1e-5 / (4.0 + 1e-5)  # SEAM subtracts min + 1e-5 and divides by range + 1e-5
    expected = torch.tensor([[[0.0, 0.5 / 4.00001 - lo], [2.0 / 4.00001 - lo, 4.0 / 4.00001 - lo]],
                             [[0.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(out, expected)


def test_bf16_autocast_is_close_to_fp32():
    model = FakeCamModel(seed=2)
    image = torch.randn(3, 16, 16)
    fp32 = multiscale_cam(model, image, (1.0, 2.0), True)
    bf16 = multiscale_cam(model, image, (1.0, 2.0), True, amp="bf16")
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.05
    with pytest.raises(ConfigError, match="amp"):
        multiscale_cam(model, image, (1.0,), True, amp="fp8")


# ---- infer_cams ----------------------------------------------------------------------------------

SIZES = [(20, 28), (24, 24), (17, 31), (26, 18), (20, 20), (22, 30)]
LABELS = [[1], [2, 3], [1, 3], [], [3], [1, 2, 3]]


def _file_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def test_infer_cams_writes_present_classes_in_float16(tmp_path):
    layout = make_layout(tmp_path / "data", SIZES, LABELS)
    model = FakeCamModel()
    summary = infer_cams(model, layout, "train", tmp_path / "cams", scales=(0.5, 1.0), flip=True)
    assert summary["written"] == len(SIZES) and summary["skipped"] == 0
    assert summary["seconds"] > 0 and summary["seconds_per_image"] > 0
    transform = EvalTransform()
    for image_id, (h, w), lab in zip(layout.ids("train"), SIZES, LABELS):
        path = tmp_path / "cams" / f"{image_id}.npz"
        assert _file_arrays(path)["cams"].dtype == np.float16
        cam_file = load_cams(path)
        assert cam_file.keys.tolist() == lab and cam_file.image_size == (h, w)
        assert cam_file.num_classes == NUM_CLASSES
        expected = multiscale_cam(model, transform(layout.load_image(image_id)), (0.5, 1.0), True,
                                  torch.tensor(layout.labels(image_id)))
        np.testing.assert_allclose(cam_file.cams, expected[[k - 1 for k in lab]].numpy(), atol=1e-3)
    again = infer_cams(model, layout, "train", tmp_path / "cams", scales=(0.5, 1.0), flip=True)
    assert again["written"] == 0 and again["skipped"] == len(SIZES)


def test_infer_cams_predicted_labels(tmp_path):
    layout = make_layout(tmp_path / "data", SIZES[:3], [[1], [1], [1]])
    model = FakeCamModel(bias=(3.0, -3.0, 0.0))
    infer_cams(model, layout, "train", tmp_path / "cams", scales=(0.5, 2.0), flip=False,
               label_source="predicted", score_threshold=0.5)
    transform = EvalTransform()
    seen = set()
    for image_id in layout.ids("train"):
        with torch.no_grad():
            raw = model.eval().cams(transform(layout.load_image(image_id))[None]).raw
        expected = (torch.sigmoid(raw[0, 1:].mean((1, 2))) > 0.5).nonzero().flatten() + 1
        keys = load_cams(tmp_path / "cams" / f"{image_id}.npz").keys.tolist()
        assert keys == expected.tolist()
        seen.add(tuple(keys))
    assert any(1 in k and 2 not in k for k in seen)  # the biases make the prediction non-trivial


def test_infer_cams_refuses_mismatched_classes_and_bad_options(tmp_path):
    layout = make_layout(tmp_path / "data", SIZES[:1], LABELS[:1])
    with pytest.raises(ConfigError, match="classes"):
        infer_cams(FakeCamModel(num_classes=5), layout, "train", tmp_path / "cams")
    with pytest.raises(ConfigError, match="label_source"):
        infer_cams(FakeCamModel(), layout, "train", tmp_path / "cams", label_source="xml")


def test_sharding_over_two_ranks_covers_every_id_once(tmp_path, monkeypatch):
    layout = make_layout(tmp_path / "data", SIZES, LABELS)
    out = tmp_path / "cams"
    files_by_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        before = set(os.listdir(out)) if out.exists() else set()
        summary = infer_cams(FakeCamModel(), layout, "train", out, scales=(1.0,), flip=False)
        assert summary["rank"] == rank and summary["world_size"] == 2
        assert summary["skipped"] == 0
        files_by_rank.append(set(os.listdir(out)) - before)
    ids = layout.ids("train")
    assert files_by_rank[0] == {f"{i}.npz" for i in ids[0::2]}
    assert files_by_rank[1] == {f"{i}.npz" for i in ids[1::2]}


_RESUME_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_inference import FakeCamModel
from plda.inference.cams import infer_cams
infer_cams(FakeCamModel(delay={delay}), {data!r}, "train", {out!r}, scales=(0.5, 1.0), flip=True)
"""


@pytest.mark.slow
def test_resume_after_sigkill_writes_only_the_remaining_files(tmp_path):
    sizes = [(16 + i, 20) for i in range(12)]
    labels = [[1 + i % 3] for i in range(12)]
    layout = make_layout(tmp_path / "data", sizes, labels)
    ids = layout.ids("train")
    out = tmp_path / "cams"
    script = tmp_path / "run.py"
    script.write_text(_RESUME_SCRIPT.format(tests=str(Path(__file__).parent), delay=0.1,
                                            data=str(tmp_path / "data"), out=str(out)))
    env = {**os.environ, "PLDA_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and len(list(out.glob("*.npz"))) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.npz")}
    assert 3 <= len(done) < len(ids)
    # A truncated file and a stale temporary, as a kill during a non-atomic copy would leave.
    remaining = [i for i in ids if f"{i}.npz" not in done]
    (out / f"{remaining[0]}.npz").write_bytes(b"PK\x03\x04 truncated")
    (out / f".tmp-{remaining[1]}.npz.abc123").write_bytes(b"partial")

    summary = infer_cams(FakeCamModel(), layout, "train", out, scales=(0.5, 1.0), flip=True)
    assert summary["skipped"] == len(done)
    assert summary["written"] == len(ids) - len(done)
    assert not list(out.glob(".tmp-*"))
    for name, stat in done.items():  # untouched
        assert (out / name).stat().st_ino == stat[0] and (out / name).stat().st_mtime_ns == stat[1]

    fresh = tmp_path / "fresh"
    infer_cams(FakeCamModel(), layout, "train", fresh, scales=(0.5, 1.0), flip=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in fresh.iterdir())
    for image_id in ids:
        a, b = _file_arrays(out / f"{image_id}.npz"), _file_arrays(fresh / f"{image_id}.npz")
        assert a.keys() == b.keys()
        for key in a:
            if key == "cams":  # float results of two processes: allow one float16 step
                np.testing.assert_allclose(a[key], b[key], atol=1e-3, rtol=0)
            else:
                assert np.array_equal(a[key], b[key]), (image_id, key)


# ---- seeds ---------------------------------------------------------------------------------------

def _smooth_cams(rng: np.random.Generator, k: int, h: int, w: int) -> np.ndarray:
    if k == 0:
        return np.zeros((0, h, w), np.float32)
    coarse = torch.from_numpy(rng.uniform(0, 1, (1, k, 3, 4)).astype(np.float32))
    cams = F.interpolate(coarse, (h, w), mode="bilinear", align_corners=False)[0].numpy()
    lo, hi = cams.min((1, 2), keepdims=True), cams.max((1, 2), keepdims=True)
    return (cams - lo) / (hi - lo)


def _write_cam_files(cam_dir: Path, layout: DatasetLayout, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for image_id in layout.ids("train"):
        h, w = layout.image_size(image_id)
        keys = np.flatnonzero(layout.labels(image_id)) + 1
        save_cams(cam_dir / f"{image_id}.npz", _smooth_cams(rng, len(keys), h, w), keys,
                  NUM_CLASSES, (h, w))


def test_threshold_seeds_equal_seeds_from_cams(tmp_path):
    layout = make_layout(tmp_path / "data", SIZES, LABELS)
    _write_cam_files(tmp_path / "cams", layout)
    ids = layout.ids("train")
    summary = write_seeds(tmp_path / "cams", tmp_path / "seeds", ids, 0.3)
    assert summary["written"] == len(ids) and summary["skipped"] == 0
    for image_id in ids:
        cam_file = load_cams(tmp_path / "cams" / f"{image_id}.npz")
        seed = load_label_png(tmp_path / "seeds" / f"{image_id}.png")
        assert np.array_equal(seed, seeds_from_cams(cam_file, 0.3))
        dense = np.concatenate([np.full((1, *cam_file.image_size), 0.3), cam_file.cams])
        assert np.array_equal(seed, np.concatenate([[0], cam_file.keys])[dense.argmax(0)])
    assert write_seeds(tmp_path / "cams", tmp_path / "seeds", ids, 0.3)["skipped"] == len(ids)


def test_seeds_report_missing_cam_files_and_options(tmp_path):
    with pytest.raises(DataError, match="img_x.npz"):
        write_seeds(tmp_path / "cams", tmp_path / "seeds", ["img_x"], 0.3)
    with pytest.raises(ConfigError, match="crf"):
        write_seeds(tmp_path / "cams", tmp_path / "seeds", ["img_x"], 0.3, crf="mid")
    with pytest.raises(ConfigError, match="layout"):
        write_seeds(tmp_path / "cams", tmp_path / "seeds", ["img_x"], None, crf="la")


@pytest.mark.slow
def test_crf_seeds_follow_seam_alphas(tmp_path):
    pytest.importorskip("pydensecrf.densecrf")
    from plda.inference.crf import dense_crf

    layout = make_layout(tmp_path / "data", SIZES, LABELS)
    _write_cam_files(tmp_path / "cams", layout)
    ids = layout.ids("train")
    fg = {}
    for crf, alpha, workers in (("la", 4, 2), ("ha", 24, 1)):
        summary = write_seeds(tmp_path / "cams", tmp_path / crf, ids, None, crf=crf,
                              layout=layout, workers=workers)
        assert summary["written"] == len(ids)
        fg[crf] = 0
        for image_id in ids:
            cam_file = load_cams(tmp_path / "cams" / f"{image_id}.npz")
            image = np.asarray(layout.load_image(image_id))
            bg = (1 - cam_file.cams.max(0, keepdims=True) if len(cam_file.keys)
                  else np.ones((1, *image.shape[:2]))) ** alpha
            q = dense_crf(image, np.concatenate([bg, cam_file.cams]))
            expected = np.concatenate([[0], cam_file.keys])[q.argmax(0)]
            seed = load_label_png(tmp_path / crf / f"{image_id}.png")
            assert np.array_equal(seed, expected)
            fg[crf] += int((seed > 0).sum())
    # A larger alpha lowers the background score: "ha" has more foreground than "la".
    assert fg["ha"] > fg["la"]


# ---- cam.resize: the reference's per-scale inputs ------------------------------------------------

class RecordingCamModel(FakeCamModel):
    """FakeCamModel that keeps every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[Tensor] = []

    def cams(self, image: Tensor, **kwargs) -> FakeCamOutput:
        self.inputs.append(image.clone())
        return super().cams(image, **kwargs)


def test_reference_resize_feeds_pil_bicubic_of_the_uint8_image(tmp_path):
    layout = make_layout(tmp_path / "data", [(25, 35)], [[1, 3]])
    model = RecordingCamModel()
    scales = (0.5, 1.0, 1.5)
    infer_cams(model, layout, "train", tmp_path / "cams", scales=scales, flip=True,
               resize="reference")
    image = layout.load_image(layout.ids("train")[0])
    transform = EvalTransform()
    assert len(model.inputs) == 2 * len(scales)  # on a CPU: the image, then its flip
    for scale, seen, flipped in zip(scales, model.inputs[::2], model.inputs[1::2]):
        h, w = scaled_size(25, 35, scale)
        expected = transform(image if scale == 1.0 else image.resize((w, h), Image.BICUBIC))
        assert torch.equal(seen[0], expected) and torch.equal(flipped[0], expected.flip(-1))
    # The file is the multi-scale CAM of exactly those inputs.
    inputs = {tuple(x.shape[-2:]): x[:1] for x in model.inputs[::2]}  # unflipped passes
    again = multiscale_cam(model, transform(image), scales, True, torch.tensor([1.0, 0.0, 1.0]),
                           scaled=lambda size: inputs[tuple(size)])
    np.testing.assert_allclose(load_cams(tmp_path / "cams" / "img_000.npz").cams,
                               again[[0, 2]].numpy(), atol=1e-3)


def test_reference_and_tensor_resize_agree_at_scale_one_only(tmp_path):
    layout = make_layout(tmp_path / "data", [(40, 52)], [[2]])
    cams = {}
    for resize in ("tensor", "reference"):
        for scales in ((1.0,), (0.5,)):
            out = tmp_path / f"{resize}{scales[0]}"
            infer_cams(FakeCamModel(), layout, "train", out, scales=scales, flip=False,
                       resize=resize)
            cams[resize, scales[0]] = load_cams(out / "img_000.npz").cams
    np.testing.assert_array_equal(cams["tensor", 1.0], cams["reference", 1.0])
    assert np.abs(cams["tensor", 0.5].astype(np.float32)
                  - cams["reference", 0.5].astype(np.float32)).max() > 1e-2


def test_unknown_resize_mode_is_refused(tmp_path):
    layout = make_layout(tmp_path / "data", SIZES[:1], LABELS[:1])
    with pytest.raises(ConfigError, match="resize='bicubic'"):
        infer_cams(FakeCamModel(), layout, "train", tmp_path / "cams", resize="bicubic")
    with pytest.raises(ConfigError, match="cam.resize"):
        from plda.config import load_run_config
        load_run_config(None, ["cam.resize=bicubic"])
