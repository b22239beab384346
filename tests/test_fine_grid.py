"""The fine-grid presets (a CAM grid of at least 28 x 28 at the training crop) and the verdict
script's record of each run: its CAM grid and its val seeds, re-scorable from files alone."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from plda.config import load_run_config

from benchmarks import voc12subset
from benchmarks.verdict import jobs, seedmaps

METHODS = ("cam", "cam_plda", "seam", "seam_plda")


def _grid(cfg) -> list[int]:
    from plda.methods.build import build_stage1_model

    model = build_stage1_model(cfg, 5, pretrained=False)
    return jobs.cam_grid(model, cfg.data.crop)


@pytest.mark.parametrize("suite", ["voc12subset", "synth"])
def test_fine_presets_put_every_method_on_a_grid_of_at_least_28(suite, one_thread):
    configs = {m: load_run_config(voc12subset.preset_name(m, suite, "fine")) for m in METHODS}
    grids = {m: _grid(cfg) for m, cfg in configs.items()}
    assert all(g == [28, 28] for g in grids.values()), grids
    coarse = _grid(load_run_config(voc12subset.preset_name("cam", suite, "coarse")))
    assert coarse[0] < 28  # the coarse presets' grid, for contrast (7 x 7)
    # Same data, backbone, budget and crop: only the method differs.
    plain = [asdict(cfg) for cfg in configs.values()]
    for cfg in plain:
        for key in ("name", "description", "run_dir", "method"):
            cfg.pop(key)
    assert all(cfg == plain[0] for cfg in plain[1:])


def test_unknown_grid_is_refused():
    with pytest.raises(SystemExit, match="grid 'medium'"):
        voc12subset.preset_name("cam", "voc12subset", "medium")


def _tiny_voc(root: Path, ids: list[str], rng: np.random.Generator) -> None:
    from plda.data.labels import save_label_png

    (root / "SegmentationClassAug").mkdir(parents=True)
    for image_id in ids:
        gt = rng.integers(0, 4, (12, 16)).astype(np.uint8)
        gt[0, :3] = 255  # ignored pixels
        save_label_png(root / "SegmentationClassAug" / f"{image_id}.png", gt)
    (root / "JPEGImages").mkdir()
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in ids))
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in ids))


def test_kept_seed_maps_rescore_to_the_recorded_numbers(tmp_path):
    """seeds_val.npz holds the run's seed PNGs exactly, and re-scoring it gives what the
    pipeline's own evaluation of those PNGs gives (the figure a verdict.json records)."""
    from plda.evaluation.evaluate import evaluate_labels
    from plda.data.labels import save_label_png

    rng = np.random.default_rng(0)
    data, run = tmp_path / "data", tmp_path / "run"
    ids = ["2007_000001", "2007_000002", "2008_000003"]
    _tiny_voc(data, ids, rng)
    seeds = run / "seeds" / "val"
    seeds.mkdir(parents=True)
    for image_id in ids:
        save_label_png(seeds / f"{image_id}.png", rng.integers(0, 4, (12, 16)).astype(np.uint8))
    npz = seedmaps.save_seed_maps(run, "val")
    assert npz == run / seedmaps.SEED_MAPS
    with np.load(npz) as maps:
        assert sorted(maps.files) == ids
        from plda.data.labels import load_label_png

        for image_id in ids:
            assert np.array_equal(maps[image_id], load_label_png(seeds / f"{image_id}.png"))
    names = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
             "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
             "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    direct = evaluate_labels(seeds, data / "SegmentationClassAug", ids, names)
    again = seedmaps.rescore_seed_maps(npz, data)
    assert again["val_miou_present"] == pytest.approx(direct["miou"], abs=1e-9)
    assert again["val_iou"] == pytest.approx(direct["iou"], abs=1e-9)
    expected_13 = voc12subset._mean(direct["iou"].get(c) for c in voc12subset.SUPPORTED)
    assert again["val_miou_13"] == pytest.approx(expected_13, abs=1e-9)

    # --rescore compares with each verdict.json and names a run whose number differs.
    out = tmp_path / "out"
    final = out / "continue" / "seed0" / "cam"
    final.mkdir(parents=True)
    (final / seedmaps.SEED_MAPS).write_bytes(npz.read_bytes())
    (final / seedmaps.RESULT).write_text(json.dumps({"val_miou_13": expected_13}))
    [(folder, recorded, rescored)] = seedmaps.rescore(out, data)
    assert folder == final and rescored == pytest.approx(recorded, abs=1e-9)
    (final / seedmaps.RESULT).write_text(json.dumps({"val_miou_13": expected_13 + 0.5}))
    with pytest.raises(SystemExit, match="differs from verdict.json: .*seed0/cam"):
        seedmaps.rescore(out, data)


def test_a_seed_map_of_the_wrong_size_is_named(tmp_path):
    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    _tiny_voc(data, ["a1"], rng)
    npz = tmp_path / "seeds_val.npz"
    np.savez_compressed(npz, a1=np.zeros((6, 8), np.uint8))
    with pytest.raises(SystemExit, match=r"a1 is \(6, 8\), its mask \(12, 16\)"):
        seedmaps.rescore_seed_maps(npz, data)


def test_cam_grid_is_the_final_level_at_the_crop(one_thread):
    from plda.models.backbones import build_backbone

    class Model(torch.nn.Module):
        def __init__(self, stride: int) -> None:
            super().__init__()
            self.backbone = build_backbone("efficientnet_lite0", pretrained=None,
                                           output_stride=stride)

    assert jobs.cam_grid(Model(8), 224) == [28, 28]
    assert jobs.cam_grid(Model(32), 224) == [7, 7]
    assert jobs.cam_grid(Model(16), 100) == [7, 7]  # TF "same": ceil(100 / 16)


def test_fine_continue_jobs_can_start_from_another_folder(tmp_path):
    from argparse import Namespace

    coarse = tmp_path / "coarse"
    args = Namespace(out=tmp_path / "fine", epochs=8, continue_epochs=2, amp="none",
                     start_from=coarse, grid="fine")
    _, overrides = jobs.job_overrides("continue", "cam_plda", 2, args)
    assert f"model.init_from={coarse / 'scratch' / 'seed2' / 'cam'}" in overrides


def test_a_finished_run_is_kept_with_its_seed_maps(tmp_path):
    out, keep = tmp_path / "runs", tmp_path / "results"
    run = out / "continue" / "seed1" / "seam_plda"
    run.mkdir(parents=True)
    (run / seedmaps.RESULT).write_text('{"val_miou_13": 30.0}')
    np.savez_compressed(run / seedmaps.SEED_MAPS, a=np.ones((2, 2), np.uint8))
    (run / "stage1.safetensors").write_bytes(b"weights stay in the run folder")
    jobs.keep_result(run, keep, out)
    kept = keep / "continue" / "seed1" / "seam_plda"
    assert sorted(p.name for p in kept.iterdir()) == [seedmaps.SEED_MAPS, seedmaps.RESULT]
    assert json.loads((kept / seedmaps.RESULT).read_text()) == {"val_miou_13": 30.0}
    jobs.keep_result(run, None, out)  # nothing asked: nothing copied, no error


def test_undilated_stride_8_keeps_the_kernels_footprint_and_the_weights():
    """model.dilate=false: a 28 x 28 grid at crop 224 with no dilated convolution, the same
    parameters as the stride-32 network (a coarse run's weights load as they are), and a
    different fingerprint only where set; backbones that cannot drop a stride say so."""
    from plda.errors import ConfigError
    from plda.methods.build import build_stage1_model
    from plda.pipeline.run import fingerprints

    stride8 = ["model.pretrained=null", "model.output_stride=8"]
    cfg = load_run_config("voc12subset_cam_effnetlite0", [*stride8, "model.dilate=false"])
    model = build_stage1_model(cfg, 20)
    assert jobs.cam_grid(model, 224) == [28, 28]
    assert all(max(m.dilation) == 1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    coarse = build_stage1_model(load_run_config("voc12subset_cam_effnetlite0",
                                                ["model.pretrained=null"]), 20)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in coarse.state_dict().items()}
    dilated = load_run_config("voc12subset_cam_effnetlite0", stride8)
    assert any(max(m.dilation) > 1 for m in build_stage1_model(dilated, 20).modules()
               if isinstance(m, torch.nn.Conv2d))
    a, b = fingerprints(dilated), fingerprints(cfg)
    assert a["data"] == b["data"] and a["train"] != b["train"]
    with pytest.raises(ConfigError, match="resnet38.*always dilates"):
        build_stage1_model(load_run_config("voc12subset_cam_effnetlite0", [
            *stride8, "model.dilate=false", "model.backbone=resnet38"]), 20)


@pytest.mark.parametrize("name", ["stride8_dilated", "stride8_undilated", "crop448_stride16"])
def test_fine_grid_candidates_give_a_28_by_28_grid(tmp_path, name):
    from benchmarks.fine_grid_choice import CANDIDATES
    from plda.methods.build import build_stage1_model

    grid, overrides = CANDIDATES[name]
    _, _, cfg = voc12subset.method_config("cam", tmp_path, tmp_path, [
        "model.pretrained=null", *overrides], refine="none", grid=grid)
    assert jobs.cam_grid(build_stage1_model(cfg, 20), cfg.data.crop) == [28, 28]


def test_high_frequency_share_tells_a_lattice_from_a_smooth_map():
    from benchmarks.fine_grid_choice import hf_share

    y, x = np.mgrid[:224, :224]
    blob = np.exp(-((y - 112) ** 2 + (x - 100) ** 2) / (2 * 40.0 ** 2))
    dots = blob * (1 + ((y // 8) % 2 == 0) * ((x // 8) % 2 == 0))
    assert hf_share(blob) < 0.001 < 0.1 < hf_share(dots)
    assert np.isnan(hf_share(np.ones((8, 8))))
