"""Stage-2 inference (multi-scale, flip, CRF) and the resumable ``plda segment eval`` step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plda.data.transforms import normalize
from plda.errors import ConfigError
from plda.segmentation.inference import (SEG_CRF_PARAMS, iter_label_maps, labels_from_probs,
                                         multiscale_probs, predict_labels, to_rgb_array)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class TinySegNet(nn.Module):
    """Position-dependent (not flip-symmetric), stride-4 logits, like a DeepLab head."""

    def __init__(self, num_classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.num_classes = num_classes
        self.input_mean, self.input_std = MEAN, STD
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.Conv2d(8, num_classes, 3, stride=2, padding=0))
        self.dropout = nn.Dropout(0.5)  # changes outputs in training mode: eval must be used
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.dropout(self.body(x))


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _naive_probs(net, image: np.ndarray, scales, flip: bool) -> torch.Tensor:
    """One forward per scale and per flip; averaged softmax at image size."""
    h, w = image.shape[:2]
    x = torch.from_numpy(normalize(image, MEAN, STD).transpose(2, 0, 1).copy())[None]
    net.eval()
    views = []
    with torch.no_grad():
        for s in scales:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear",
                                                         align_corners=False, antialias=True)
            for flipped in ([False, True] if flip else [False]):
                out = net(xs.flip(-1) if flipped else xs)
                out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
                p = torch.softmax(out, dim=1)[0]
                views.append(p.flip(-1) if flipped else p)
    return torch.stack(views).mean(0)


@pytest.mark.parametrize("flip", [True, False])
def test_multiscale_probs_equal_a_naive_loop(one_thread, flip):
    net = TinySegNet()
    net.train()
    image = _image(21, 30)
    scales = (0.5, 0.75, 1.0, 1.25)
    got = multiscale_probs(net, image, scales, flip=flip)
    assert net.training, "the net's mode must be restored"
    assert got.shape == (3, 21, 30) and got.dtype == torch.float32
    expected = _naive_probs(net, image, scales, flip)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.sum(0), torch.ones(21, 30), atol=1e-5, rtol=0)
    # The flip pair goes through the net as one batch of two per scale.
    net.calls.clear()
    multiscale_probs(net, image, scales, flip=flip)
    assert [c[0] for c in net.calls] == [2 if flip else 1] * len(scales)


def test_flip_matters_and_pil_input_equals_array(one_thread):
    from PIL import Image

    net = TinySegNet()
    image = _image(17, 26, seed=3)
    with_flip = multiscale_probs(net, image, (1.0,), flip=True)
    without = multiscale_probs(net, image, (1.0,), flip=False)
    assert not torch.allclose(with_flip, without)  # the tiny net is not mirror-symmetric
    torch.testing.assert_close(multiscale_probs(net, Image.fromarray(image), (1.0,)), with_flip)


def test_predict_labels_is_the_argmax_and_scales_are_checked(one_thread):
    net = TinySegNet(num_classes=4)
    image = _image(19, 23, seed=5)
    labels = predict_labels(net, image, (0.75, 1.0))
    assert labels.shape == (19, 23) and labels.dtype == np.uint8
    assert np.array_equal(labels, _naive_probs(net, image, (0.75, 1.0), True).argmax(0).numpy())
    with pytest.raises(ConfigError, match="scales"):
        predict_labels(net, image, ())
    with pytest.raises(ConfigError, match="amp"):
        predict_labels(net, image, (1.0,), amp="fp64")


def test_crf_refines_to_valid_labels_of_the_image_size(one_thread):
    pytest.importorskip("pydensecrf.densecrf")
    net = TinySegNet(num_classes=3)
    image = _image(20, 28, seed=7)
    labels = predict_labels(net, image, (1.0,), crf=True)
    assert labels.shape == (20, 28) and labels.dtype == np.uint8 and labels.max() < 3
    # The CRF path is argmax(dense_crf(probs)) with the segmentation parameters.
    from plda.inference.crf import dense_crf

    probs = multiscale_probs(net, image, (1.0,)).numpy()
    assert np.array_equal(labels, dense_crf(image, probs, **SEG_CRF_PARAMS).argmax(0))
    # A confident prediction survives the CRF.
    sure = np.zeros((3, 20, 28), np.float32)
    sure[1] = 0.98
    sure[[0, 2]] = 0.01
    assert (labels_from_probs(torch.from_numpy(sure), image, crf=True) == 1).all()


def test_mixed_sizes_match_one_image_at_a_time(one_thread):
    net = TinySegNet()
    images = [_image(16, 20, 0), _image(16, 20, 1), _image(13, 27, 2), _image(16, 20, 3),
              _image(16, 20, 4), _image(16, 20, 5)]
    net.calls.clear()
    out = list(iter_label_maps(net, enumerate(images), (1.0, 0.5), flip=True, batch_size=2))
    assert [k for k, _, _ in out] == list(range(6))
    for (_, rgb, labels), image in zip(out, images):
        assert np.array_equal(rgb, image)
        assert np.array_equal(labels, predict_labels(net, image, (1.0, 0.5)))
    # Stacks of consecutive equal sizes, at most 2: [0, 1], [2], [3, 4], [5].
    assert [c[0] for c in net.calls[:8]] == [4, 4, 2, 2, 4, 4, 2, 2]


def test_to_rgb_array_handles_every_mode():
    from PIL import Image

    rgb = _image(5, 6)
    assert np.array_equal(to_rgb_array(Image.fromarray(rgb).convert("RGBA")), rgb)
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6)
    assert np.array_equal(to_rgb_array(Image.fromarray(gray)), np.repeat(gray[..., None], 3, 2))
    deep = (gray.astype(np.uint16) * 257)
    assert np.array_equal(to_rgb_array(Image.fromarray(deep)), np.repeat(gray[..., None], 3, 2))
    assert to_rgb_array(Image.fromarray(rgb).convert("P")).shape == (5, 6, 3)
    assert np.array_equal(to_rgb_array(gray), np.repeat(gray[..., None], 3, 2))
    with pytest.raises(ValueError, match="uint8"):
        to_rgb_array(rgb.astype(np.float32))


# ---- plda segment eval ------------------------------------------------------------------------

def _seg_run(tmp_path, *overrides):
    """A run folder with a 4-image synthetic val split and a random tiny segmentation net."""
    from plda.config import load_run_config
    from plda.data.synth import generate_synthetic
    from plda.runfolder import load_layout
    from plda.segmentation.models import build_segmentation_net, save_segmentation_net

    run = tmp_path / "run"
    cfg = load_run_config("synth_cam", [
        f"run_dir={run}", "data.synth.n_train=2", "data.synth.n_val=4", "data.synth.size=40",
        "data.synth.num_classes=2", "seg.scales=[1.0,0.75]", "seg.eval_splits=[val]",
        *overrides])
    generate_synthetic(run / "data", n_train=2, n_val=4, size=40, num_classes=2)
    layout = load_layout(cfg, generate=False)
    torch.manual_seed(0)
    net = build_segmentation_net("deeplab_lite", "efficientnet_lite0", 3, output_stride=16)
    save_segmentation_net(run / "deeplab" / "segmentation.safetensors", net, layout.class_names)
    return cfg, run, layout


def test_evaluate_segmentation_writes_scores_and_resumes(tmp_path, one_thread):
    import json
    import os

    from plda.engine.distributed import single_process
    from plda.pipeline.segment_eval import evaluate_segmentation
    from plda.segmentation.models import load_segmentation_net
    from plda.data.labels import load_label_png

    cfg, run, layout = _seg_run(tmp_path)
    dist = single_process("cpu")
    res = evaluate_segmentation(cfg, dist=dist)
    ids = layout.ids("val")
    folder = run / "seg" / "val"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i}.png" for i in ids)
    assert res["val"]["written"] == 4 and res["val"]["images"] == 4
    assert 0 <= res["val"]["miou"] <= 100 and set(res["val"]["iou"]) == set(layout.class_names)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["seg"]["val"] == json.loads(json.dumps(res["val"]))
    full = json.loads((run / "seg" / "eval_val.json").read_text())
    assert full["miou"] == res["val"]["miou"] and full["settings"]["scales"] == [1.0, 0.75]
    net, _ = load_segmentation_net(run)
    for image_id in ids[:2]:
        image = layout.load_image(image_id)
        expected = predict_labels(net, image, (1.0, 0.75), flip=True)
        assert np.array_equal(load_label_png(folder / f"{image_id}.png"), expected)

    # A killed run: two maps never written, a temporary left behind. Only those two are redone.
    for image_id in ids[:2]:
        (folder / f"{image_id}.png").unlink()
    (folder / f".tmp-{ids[0]}.png.abc123").write_bytes(b"partial")
    kept = {i: os.stat(folder / f"{i}.png").st_mtime_ns for i in ids[2:]}
    res = evaluate_segmentation(cfg, dist=dist)
    assert res["val"]["written"] == 2
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i}.png" for i in ids)
    assert {i: os.stat(folder / f"{i}.png").st_mtime_ns for i in ids[2:]} == kept
    assert res["val"]["miou"] == full["miou"]

    # Other settings make every map stale; another split adds to metrics.json's section.
    import copy

    cfg2 = copy.deepcopy(cfg)
    cfg2.seg.eval_flip = False
    res = evaluate_segmentation(cfg2, ["val", "train"], dist=dist)
    assert res["val"]["written"] == 4 and res["train"]["written"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["seg"]) == {"val", "train"}


def test_evaluate_segmentation_without_weights_says_what_to_do(tmp_path):
    from plda.errors import DataError
    from plda.pipeline.segment_eval import evaluate_segmentation

    cfg, run, _ = _seg_run(tmp_path)
    (run / "deeplab" / "segmentation.safetensors").unlink()
    with pytest.raises(DataError, match="plda segment train"):
        evaluate_segmentation(cfg)


def test_evaluate_segmentation_refuses_a_net_for_other_classes(tmp_path):
    from plda.pipeline.segment_eval import evaluate_segmentation
    from plda.segmentation.models import build_segmentation_net, save_segmentation_net

    cfg, run, _ = _seg_run(tmp_path)
    other = tmp_path / "other.safetensors"
    save_segmentation_net(other, build_segmentation_net("deeplab_lite", "efficientnet_lite0", 5,
                                                        output_stride=16),
                          ["background", "a", "b", "c", "d"])
    with pytest.raises(ConfigError, match="5 classes"):
        evaluate_segmentation(cfg, weights=other)


def test_drop_stale_outputs_keeps_matching_and_clears_other_sources(tmp_path):
    from plda.runfolder import drop_stale_outputs

    folder = tmp_path / "maps"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    (folder / "keep.txt").write_text("other kind")
    marker = tmp_path / "source_maps.json"
    assert drop_stale_outputs(folder, {"sha256": "1"}, "*.png", marker=marker) is False
    assert not (folder / "a.png").exists() and (folder / "keep.txt").exists()
    (folder / "a.png").write_bytes(b"x")
    assert drop_stale_outputs(folder, {"sha256": "1"}, "*.png", marker=marker) is True
    assert (folder / "a.png").exists()
    marker.write_text("{not json")
    assert drop_stale_outputs(folder, {"sha256": "1"}, "*.png", marker=marker) is False
    assert not (folder / "a.png").exists()


_RANK_SCRIPT = """
import json, pathlib, sys
import torch
torch.set_num_threads(1)
from plda.config import load_run_config
from plda.engine.distributed import cleanup, init_distributed
from plda.pipeline.segment_eval import evaluate_segmentation
dist = init_distributed()
res = evaluate_segmentation(load_run_config(sys.argv[1]), dist=dist)
# One file per rank: two ranks printing at once can interleave on one stdout line.
out = pathlib.Path(sys.argv[2]) / f"rank{dist.rank}.json"
out.write_text(json.dumps({"rank": dist.rank, "res": res}))
cleanup()
"""


@pytest.mark.slow
def test_two_ranks_share_the_images_and_agree_with_one(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys

    from plda.config.loader import save_config
    from plda.pipeline.segment_eval import evaluate_segmentation

    cfg, run, layout = _seg_run(tmp_path, "seg.scales=[1.0]")
    save_config(cfg, run / "config.yaml")
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PLDA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # gloo on the CPU even where a GPU is visible
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={port}", str(script),
                           str(run / "config.yaml"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(o["rank"] for o in outs) == [0, 1]
    assert outs[0]["res"] == outs[1]["res"]  # every rank returns the scores
    ddp = outs[0]["res"]["val"]
    assert ddp["written"] == 4 and ddp["images"] == 4 and "miou" in ddp
    ddp_maps = {p.name: p.read_bytes() for p in (run / "seg" / "val").iterdir()}
    assert len(ddp_maps) == 4

    import shutil

    from plda.engine.distributed import single_process

    shutil.rmtree(run / "seg")
    single = evaluate_segmentation(cfg, dist=single_process("cpu"))["val"]
    assert single["miou"] == ddp["miou"]
    assert {p.name: p.read_bytes() for p in (run / "seg" / "val").iterdir()} == ddp_maps
