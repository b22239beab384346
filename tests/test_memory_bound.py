"""Memory bounded by design: images larger than ``max_side`` go through the network at that
size and their outputs are upsampled to the image; an allocation failure names the image and
the setting to lower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from plda.errors import DataError

from test_inference import FakeCamModel, make_layout
from test_predict import checkpoint  # noqa: F401 - the module's fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def test_upsampled_argmax_equals_the_full_interpolation():
    from plda.segmentation.inference import upsampled_argmax

    probs = torch.rand(4, 13, 17, generator=torch.Generator().manual_seed(0))
    full = F.interpolate(probs[None], size=(150, 97), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(upsampled_argmax(probs, (150, 97), band=16),
                                  full[0].argmax(0).numpy())


def test_predict_segments_a_large_image_at_max_side(tmp_path, checkpoint):  # noqa: F811
    from plda.cli.predict import predict_images
    from plda.segmentation.inference import multiscale_probs, upsampled_argmax
    from plda.segmentation.models import load_segmentation_net
    from plda.data.labels import load_label_png

    rgb = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb).save(tmp_path / "in" / "big.png")
    net, _ = load_segmentation_net(checkpoint)
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    import plda.segmentation.models as models

    original = models.load_segmentation_net
    try:
        models.load_segmentation_net = lambda *a, **k: (net, {"class_names": ["bg", "a", "b"]})
        predict_images(checkpoint, [tmp_path / "in"], tmp_path / "out", max_side=64,
                       overlay=False)
    finally:
        models.load_segmentation_net = original
    assert max(max(s) for s in seen) <= 64  # the network never saw the full image
    labels = load_label_png(tmp_path / "out" / "big.png")
    assert labels.shape == (120, 200)
    small = np.asarray(Image.fromarray(rgb).resize((64, 38), Image.BILINEAR))
    expected = upsampled_argmax(multiscale_probs(net, small, (1.0,), True), (120, 200))
    np.testing.assert_array_equal(labels, expected)


def test_cams_of_a_large_image_are_inferred_at_max_side(tmp_path):
    from plda.data.camfile import load_cams
    from plda.inference.cams import infer_cams

    layout = make_layout(tmp_path / "data", [(90, 150)], [[1, 2]])
    model = FakeCamModel()
    seen = []
    real = model.cams
    model.cams = lambda image, **kw: seen.append(tuple(image.shape[-2:])) or real(image, **kw)
    infer_cams(model, layout, "train", tmp_path / "cams", scales=(1.0,), flip=False,
               max_side=50)
    assert seen == [(30, 50)]
    cam_file = load_cams(tmp_path / "cams" / "img_000.npz")
    assert cam_file.image_size == (90, 150) and cam_file.cams.shape == (2, 90, 150)
    assert cam_file.cams.max() > 0.9  # normalised maps, upsampled


def test_an_allocation_failure_names_the_image_and_the_setting(tmp_path, checkpoint,  # noqa: F811
                                                               monkeypatch):
    from plda.cli.predict import predict_images
    import plda.segmentation.inference as inference

    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "in" / "huge.jpg")

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 123456789012 bytes")

    monkeypatch.setattr(inference, "multiscale_probs_batch", no_memory)
    with pytest.raises(DataError, match=r"out of memory segmenting .*huge.jpg: lower "
                                        r"--max-side \(now 2048\)"):
        predict_images(checkpoint, [tmp_path / "in"], tmp_path / "out")


def test_max_side_settings_are_checked(capsys):
    from plda.cli.main import main
    from plda.config import load_run_config
    from plda.errors import ConfigError

    with pytest.raises(ConfigError, match="cam.max_side=8"):
        load_run_config("synth_cam", ["cam.max_side=8"])
    assert load_run_config("synth_cam", ["cam.max_side=null"]).cam.max_side is None
    with pytest.raises(SystemExit):
        main(["predict", "W", "I", "--out", "O", "--max-side", "10"])
    assert "expected 0 (no limit) or at least 32" in capsys.readouterr().err


def test_a_crop_that_cannot_fit_is_refused_before_training(tmp_path, capsys):
    from plda.cli.main import main

    from test_pipeline import TINY

    run = tmp_path / "run"
    assert main(["train", "synth_cam", *TINY, f"run_dir={run}", "data.crop=40000"]) == 2
    err = capsys.readouterr().err
    assert "data.crop=40000 with batch 4 needs about" in err and "GiB are free" in err
    assert "lower data.crop or the batch size" in err and "Traceback" not in err
    assert not (run / "checkpoints").exists()


def test_the_memory_probe_changes_nothing_and_scales_with_the_crop():
    from plda.engine.memory import estimate_training_memory
    from plda.methods import MethodConfig, build_method

    from test_methods_models import FakeBackbone, NUM_CLASSES

    torch.manual_seed(0)
    model = build_method(MethodConfig(name="seam_plda"), FakeBackbone(), NUM_CLASSES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    small = estimate_training_memory(model, NUM_CLASSES, 64, 2, torch.device("cpu"))
    large = estimate_training_memory(model, NUM_CLASSES, 128, 2, torch.device("cpu"))
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert large.activations == pytest.approx(4 * small.activations, rel=1e-6)
    assert small.activations > 0 and small.parameters > 0


def test_an_allocation_failure_in_cam_inference_names_the_image(tmp_path):
    from plda.inference.cams import infer_cams

    layout = make_layout(tmp_path / "data", [(30, 40), (30, 40)], [[1], [2]])
    model = FakeCamModel()
    real = model.cams
    calls = []

    def cams(image, **kw):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                               "allocate 99999999999 bytes")
        return real(image, **kw)

    model.cams = cams
    with pytest.raises(DataError, match=r"out of memory on image 'img_001' \(.*img_001.png\): "
                                        r"lower cam.max_side \(now 1024\)"):
        infer_cams(model, layout, "train", tmp_path / "cams", scales=(1.0,), flip=False,
                   max_side=1024)
    assert (tmp_path / "cams" / "img_000.npz").is_file()  # the finished one is kept


def test_a_segmentation_crop_that_cannot_fit_is_refused(tmp_path):
    from plda.config import load_run_config
    from plda.pipeline.segment import train_segmentation

    from test_pipeline import TINY

    masks = tmp_path / "masks"
    masks.mkdir()
    cfg = load_run_config("synth_cam", [*TINY, f"run_dir={tmp_path / 'run'}",
                                        "seg.model.pretrained=null", "seg.crop=40000",
                                        f"seg.mask_dir={masks}"])
    from plda.runfolder import dataset_root

    dataset_root(cfg)  # the synthetic images
    with pytest.raises(Exception, match=r"seg.crop=40000 with batch \d+ needs about"
                                        r".*seg.train.grad_accum_steps"):
        train_segmentation(cfg)
    assert not (tmp_path / "run" / "deeplab").exists()
