"""The pipeline on a tiny synthetic dataset: train -> cam -> seeds, re-run skips, stale CAMs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from plda.config import load_run_config, load_run_folder_config
from plda.data.labels import load_label_png

TINY = ["data.synth.n_train=8", "data.synth.n_val=4", "data.synth.size=64",
        "data.synth.num_classes=3", "data.resize_long=[56,72]", "data.crop=64",
        "model.pretrained=null", "model.output_stride=16", "train.epochs=1", "train.batch_size=4",
        "train.log_every=1", "train.checkpoint_every=1", "train.vis_every=2",
        "cam.scales=[1.0]", "cam.sweep=[0.1,0.5,0.1]"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cam", "seam_plda"])
def test_pipeline_end_to_end_and_rerun_skips(tmp_path, monkeypatch, method):
    from plda.pipeline.run import format_metrics, run_pipeline

    cfg = load_run_config(f"synth_{method}", [*TINY, f"run_dir={tmp_path / 'run'}"])
    metrics = run_pipeline(cfg, until="seeds")
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "stage1.safetensors").is_file()
    # The resolved config round-trips (the folder it lies in is the run: run_dir ".").
    assert load_run_folder_config(run) == cfg
    assert sorted(p.name for p in (run / "vis").glob("*.png")) == ["step_00000002.png"]
    log = [json.loads(line) for line in (run / "logs/train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r and "loss" in r] == [1, 2]
    for split, n in (("train", 8), ("val", 4)):
        cams = sorted((run / "cams" / split).glob("*.npz"))
        seeds = sorted((run / "seeds" / split).glob("*.png"))
        assert len(cams) == n and len(seeds) == n
        gt = load_label_png(run / "data/SegmentationClassAug" / f"{seeds[0].stem}.png")
        seed = load_label_png(seeds[0])
        assert seed.shape == gt.shape and set(np.unique(seed)) <= {0, 1, 2, 3}
        assert 0.0 <= metrics["seeds"][split]["miou"] <= 100.0
    assert metrics["seeds"]["bg_threshold"] in (0.1, 0.2, 0.3, 0.4)
    assert [p["threshold"] for p in metrics["seeds"]["sweep"]["curve"]] == [0.1, 0.2, 0.3, 0.4]
    table = format_metrics(metrics)
    assert "seeds" in table and f"{metrics['seeds']['val']['miou']:.1f}" in table
    # the classifier's image-level scores on val, from the CAM stage
    classification = metrics["classification"]["val"]
    assert classification["images"] == 4 and 0.0 <= classification["f1"] <= 1.0
    assert f"image-level classification on val: F1 {classification['f1']:.2f}" in table

    # Re-run: training and CAMs are skipped (files untouched), results identical.
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("cams/*/*.npz")}
    weights_stamp = (run / "stage1.safetensors").stat().st_mtime_ns
    again = run_pipeline(cfg, until="seeds")
    assert again["seeds"] == metrics["seeds"]
    assert (run / "stage1.safetensors").stat().st_mtime_ns == weights_stamp
    assert {p: p.stat().st_mtime_ns for p in run.glob("cams/*/*.npz")} == stamps

    # Changed CAM settings make the old CAM files stale: they are recomputed.
    cfg2 = load_run_config(f"synth_{method}", [*TINY, f"run_dir={run}", "cam.flip=false"])
    run_pipeline(cfg2, start="cam", until="cam")
    assert all(p.stat().st_mtime_ns != stamps[p] for p in stamps)

    # cam.map=raw (the classifier's map, PCM skipped) is a CAM setting like the others: the files
    # are stale and redone, and the model is asked for its unrevised map. (What that map is per
    # method: tests/test_methods_models.py; this tiny untrained model's maps are all zero.)
    import plda.inference.cams as inference

    asked, real = [], inference.infer_cams

    def recording(*args, **kwargs):
        asked.append(kwargs.get("revised"))
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "infer_cams", recording)
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("cams/*/*.npz")}
    cfg3 = load_run_config(f"synth_{method}", [*TINY, f"run_dir={run}", "cam.flip=false",
                                               "cam.map=raw"])
    run_pipeline(cfg3, start="cam", until="cam")
    assert asked and set(asked) == {False}
    assert all(p.stat().st_mtime_ns != stamps[p] for p in stamps)


def test_unknown_stage_is_a_config_error(tmp_path):
    from plda.errors import ConfigError
    from plda.pipeline.run import run_pipeline

    cfg = load_run_config("synth_cam", [f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="unknown stage 'tarin'"):
        run_pipeline(cfg, start="tarin")


def test_missing_dataset_root_is_named(tmp_path):
    from plda.errors import DataError
    from plda.runfolder import dataset_root

    cfg = load_run_config("synth_cam", [f"run_dir={tmp_path}", f"data.root={tmp_path / 'nope'}"])
    with pytest.raises(DataError, match="nope.*not a folder"):
        dataset_root(cfg)


def test_cam_without_trained_model_says_what_to_do(tmp_path):
    from plda.errors import ConfigError
    from plda.methods.build import load_stage1_model

    cfg = load_run_config("synth_cam", [f"run_dir={tmp_path}", "model.pretrained=null"])
    with pytest.raises(ConfigError, match="plda train"):
        load_stage1_model(cfg, 5)


@pytest.mark.slow
@pytest.mark.parametrize("image_scale", [1.0, 0.5])
def test_refine_irn_end_to_end_resumes_and_scores(tmp_path, capsys, image_scale):
    """train -> cam -> seeds -> refine irn on the tiny synthetic set: relation labels, a
    trained boundary net, one pseudo mask per image (labels within the image's classes),
    pseudo-mask mIoU in metrics.json; re-running keeps every finished file. At image_scale
    0.5 (CRF, boundary and walk on half-size images) every file still has the image's size."""
    from plda.pipeline.refine import refine
    from plda.refinement.irn import BOUNDARY_WEIGHTS
    from plda.pipeline.run import run_pipeline

    run = tmp_path / "run"
    cfg = load_run_config("synth_cam", [*TINY, f"run_dir={run}", "refine.method=irn",
                                        "refine.irn.crop=64",
                                        "refine.irn.width=8", "refine.irn.train.batch_size=4",
                                        "refine.irn.train.log_every=1",
                                        "refine.irn.train.num_workers=0",
                                        "refine.irn.train_radius=4", "refine.irn.exp_times=4",
                                        f"refine.irn.image_scale={image_scale}"])
    run_pipeline(cfg, until="seeds")
    summary = refine(cfg, workers=1)
    relations = sorted((run / "irn" / "relations").glob("*.png"))
    assert len(relations) == 8
    assert set(np.unique(load_label_png(relations[0]))) <= {0, 1, 2, 3, 255}
    assert load_label_png(relations[0]).shape == \
        load_label_png(run / "data/SegmentationClassAug" / relations[0].name).shape
    assert (run / "irn" / BOUNDARY_WEIGHTS).is_file()
    assert summary["train"]["steps"] == 6  # 8 images, batch 4, IRN's 3 epochs
    metrics = json.loads((run / "metrics.json").read_text())
    for split, n in (("train", 8), ("val", 4)):
        masks = sorted((run / "pseudo" / split).glob("*.png"))
        assert len(masks) == n
        gt = load_label_png(run / "data/SegmentationClassAug" / f"{masks[0].stem}.png")
        mask = load_label_png(masks[0])
        assert mask.shape == gt.shape and set(np.unique(mask)) <= {0, 1, 2, 3}
        assert 0.0 <= metrics["pseudo"][split]["miou"] <= 100.0
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("pseudo/*/*.png")}
    (run / "pseudo" / "val" / masks[0].name).unlink()  # as if killed before this file
    again = refine(cfg, workers=1)
    assert "train" not in again  # the boundary net is not retrained
    assert again["pseudo"]["val"]["written"] == 1 and again["pseudo"]["train"]["written"] == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.exists()
               and p.name != masks[0].name)

    # benchmarks/irn_walk_sweep.py recomputes the same walk: at the run's own threshold and
    # walk length it scores exactly the pseudo masks refine wrote for the training split.
    from benchmarks.irn_walk_sweep import main as walk_sweep
    capsys.readouterr()
    assert walk_sweep([str(run), "--images", "8", "--exp-times", "2,4",
                       "--thresholds", "0.1:0.5:0.2"]) == 0
    rows = {line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:5]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| walk")
            or line.startswith("| seeds")}
    assert set(rows) == {"seeds, best threshold", "seeds, the run's threshold",
                         "walk 2^2, best threshold", "walk 2^4, best threshold",
                         "walk 2^4, the run's threshold"}
    threshold, miou = rows["walk 2^4, the run's threshold"][:2]
    assert threshold == pytest.approx(0.25, abs=0.005)
    assert miou == pytest.approx(metrics["pseudo"]["train"]["miou"], abs=0.05)
    assert rows["walk 2^4, best threshold"][1] >= miou
    assert rows["seeds, the run's threshold"][1] == pytest.approx(
        metrics["seeds"]["train"]["miou"], abs=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["crf", "pamr"])
def test_refine_with_crf_or_pamr_writes_scored_pseudo_masks(tmp_path, method):
    from plda.pipeline.refine import refine
    from plda.pipeline.run import run_pipeline

    if method == "crf":
        pytest.importorskip("pydensecrf.densecrf")
    run = tmp_path / "run"
    cfg = load_run_config("synth_cam", [*TINY, f"run_dir={run}", f"refine.method={method}"])
    run_pipeline(cfg, until="seeds")
    summary = refine(cfg, workers=1)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pseudo"]["method"] == method
    assert metrics["pseudo"]["bg_threshold"] == metrics["seeds"]["bg_threshold"]
    for split, n in (("train", 8), ("val", 4)):
        masks = sorted((run / "pseudo" / split).glob("*.png"))
        assert len(masks) == n and summary["pseudo"][split]["written"] == n
        gt = load_label_png(run / "data/SegmentationClassAug" / f"{masks[0].stem}.png")
        mask = load_label_png(masks[0])
        assert mask.shape == gt.shape and set(np.unique(mask)) <= {0, 1, 2, 3}
        assert 0.0 <= metrics["pseudo"][split]["miou"] <= 100.0
    assert refine(cfg, workers=1)["pseudo"]["val"]["written"] == 0  # finished files kept


@pytest.mark.slow
def test_refine_affinity_end_to_end(tmp_path):
    """la/ha seeds -> affinity labels -> AffinityNet -> walked pseudo masks, scored."""
    pytest.importorskip("pydensecrf.densecrf")
    from plda.pipeline.refine import refine
    from plda.refinement.affinity import AFFINITY_WEIGHTS
    from plda.pipeline.run import run_pipeline

    run = tmp_path / "run"
    cfg = load_run_config("synth_cam", [*TINY, f"run_dir={run}", "refine.method=affinity",
                                        "refine.affinity.crop=64", "refine.affinity.radius=3",
                                        "refine.affinity.logt=4",
                                        "refine.affinity.train.epochs=1",
                                        "refine.affinity.train.batch_size=4",
                                        "refine.affinity.train.num_workers=0"])
    run_pipeline(cfg, until="seeds")
    summary = refine(cfg, workers=1)
    labels = sorted((run / "affinity" / "labels").glob("*.png"))
    assert len(labels) == 8
    assert set(np.unique(load_label_png(labels[0]))) <= {0, 1, 2, 3, 255}
    assert (run / "affinity" / AFFINITY_WEIGHTS).is_file()
    assert summary["train"]["steps"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pseudo"]["method"] == "affinity"
    for split, n in (("train", 8), ("val", 4)):
        masks = sorted((run / "pseudo" / split).glob("*.png"))
        assert len(masks) == n
        assert 0.0 <= metrics["pseudo"][split]["miou"] <= 100.0


def test_irn_thresholds_follow_the_chosen_seed_threshold(tmp_path):
    """IRN's 0.30 / 0.05 / 0.25 were set for seeds thresholded at 0.15: relative_to_seeds with
    the linear rule scales all three by the run's chosen threshold / 0.15 (capped at 0.95);
    otherwise they are the configured values. The relation labels use them."""
    from plda.errors import DataError
    from plda.refinement.irn import irn_thresholds
    from plda.refinement.relations import relation_labels
    from plda.runfolder import update_metrics

    run = tmp_path / "run"
    fixed = load_run_config("synth_cam", [f"run_dir={run}"])
    assert irn_thresholds(fixed) == {"fg": 0.30, "bg": 0.05, "walk_bg": 0.25}
    cfg = load_run_config("synth_cam", [f"run_dir={run}", "refine.irn.relative_to_seeds=true",
                                        "refine.irn.relative_rule=linear"])
    with pytest.raises(DataError, match="no background threshold"):
        irn_thresholds(cfg)
    run.mkdir()
    update_metrics(cfg, "seeds", {"bg_threshold": 0.39})
    got = irn_thresholds(cfg)
    assert got == pytest.approx({"fg": 0.78, "bg": 0.13, "walk_bg": 0.65})
    update_metrics(cfg, "seeds", {"bg_threshold": 0.6})
    assert irn_thresholds(cfg)["fg"] == 0.95 and irn_thresholds(cfg)["bg"] == pytest.approx(0.2)
    # A flat, high CAM (as SEAM's PCM gives): no confident background at IRN's 0.05, some at
    # the scaled 0.13 (0.39 / 0.15 x 0.05).
    cams = np.full((1, 4, 4), 0.5, np.float32)
    cams[0, :, :2] = 0.1
    assert not (relation_labels(cams, [3], None, fg_threshold=0.30, bg_threshold=0.05) == 0).any()
    scaled = relation_labels(cams, [3], None, fg_threshold=got["fg"], bg_threshold=got["bg"])
    assert (scaled[:, :2] == 0).all() and (scaled[:, 2:] == 255).all()


def test_irn_power_rule_equals_irn_values_on_rescaled_cams(tmp_path):
    """The power rule moves IRN's thresholds to v ** (ln t / ln 0.15): thresholding the CAMs
    there labels exactly the pixels that IRN's own values label on the CAMs raised to the power
    that sends the seed threshold t onto 0.15. At t = 0.15 the values are IRN's; a threshold
    outside (0, 1) is refused by name."""
    from plda.errors import DataError
    from plda.refinement.irn import irn_thresholds
    from plda.refinement.relations import relation_labels
    from plda.runfolder import update_metrics

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_run_config("synth_cam", [f"run_dir={run}", "refine.irn.relative_to_seeds=true"])
    assert cfg.refine.irn.relative_rule == "power"
    update_metrics(cfg, "seeds", {"bg_threshold": 0.15})
    assert irn_thresholds(cfg) == pytest.approx({"fg": 0.30, "bg": 0.05, "walk_bg": 0.25})
    update_metrics(cfg, "seeds", {"bg_threshold": 0.38})
    got = irn_thresholds(cfg)
    gamma = np.log(0.15) / np.log(0.38)
    assert got == pytest.approx({"fg": 0.30 ** (1 / gamma), "bg": 0.05 ** (1 / gamma),
                                 "walk_bg": 0.25 ** (1 / gamma)})
    assert 0.05 < got["bg"] < 0.38 < got["fg"] < 0.95  # ordered around t, none capped
    rng = np.random.default_rng(0)
    cams = rng.random((2, 9, 9)).astype(np.float64)
    moved = relation_labels(cams, [3, 7], None, fg_threshold=got["fg"], bg_threshold=got["bg"])
    rescaled = relation_labels(cams ** gamma, [3, 7], None, fg_threshold=0.30,
                               bg_threshold=0.05)
    assert (moved == rescaled).all() and {0, 255} <= set(np.unique(moved).tolist())
    cfg = load_run_config("synth_cam", [f"run_dir={run}", "refine.irn.relative_to_seeds=true",
                                        "cam.bg_threshold=0"])
    with pytest.raises(DataError, match="seed threshold in \\(0, 1\\), got 0"):
        irn_thresholds(cfg)

