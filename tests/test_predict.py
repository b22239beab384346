"""``plda predict``: a folder of mixed sizes and formats, bad inputs, re-runs, the CLI."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from plda.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["background", "cat", "dog"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from plda.segmentation.models import build_segmentation_net, save_segmentation_net

    torch.manual_seed(0)
    net = build_segmentation_net("deeplab_lite", "efficientnet_lite0", 3, output_stride=16)
    path = tmp_path_factory.mktemp("ckpt") / "segmentation.safetensors"
    save_segmentation_net(path, net, CLASSES)
    return path


def _images(folder):
    """Mixed sizes and formats: {file name: (height, width)}."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def rgb(h, w):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    Image.fromarray(rgb(30, 41)).save(folder / "photo.jpg", quality=90)
    Image.fromarray(rgb(24, 24)).save(folder / "plain.PNG")
    Image.fromarray(rgb(33, 20)[..., 0]).save(folder / "gray.png")
    rgba = np.concatenate([rgb(18, 35), rng.integers(0, 256, (18, 35, 1), dtype=np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    Image.fromarray(rgb(27, 22)).convert("P").save(folder / "palette.png")
    Image.fromarray((rng.integers(0, 65536, (21, 26))).astype(np.uint16)).save(folder / "deep.png")
    Image.fromarray(rgb(24, 24)).save(folder / "plain2.bmp")
    (folder / "notes.txt").write_text("not an image")
    return {"photo": (30, 41), "plain": (24, 24), "gray": (33, 20), "alpha": (18, 35),
            "palette": (27, 22), "deep": (21, 26), "plain2": (24, 24)}


def test_folder_of_mixed_sizes_and_formats_gets_one_mask_each(tmp_path, checkpoint):
    from PIL import Image

    from plda.cli.predict import predict_images
    from plda.segmentation.inference import predict_labels
    from plda.segmentation.models import load_segmentation_net
    from plda.data.labels import load_label_png

    sizes = _images(tmp_path / "in")
    out = tmp_path / "out"
    res = predict_images(checkpoint, [tmp_path / "in"], out, scales=(1.0, 0.5), device="cpu",
                         batch_size=2)
    assert res["written"] == len(sizes) and res["bad"] == [] and res["total"] == len(sizes)
    assert res["class_names"] == CLASSES
    expected_files = {f"{s}.png" for s in sizes} | {f"{s}_overlay.jpg" for s in sizes}
    assert {p.name for p in out.iterdir()} == expected_files | {"classes.txt"}
    assert (out / "classes.txt").read_text().splitlines() == CLASSES[1:]
    net, _ = load_segmentation_net(checkpoint)
    for stem, (h, w) in sizes.items():
        with Image.open(out / f"{stem}.png") as mask:
            assert mask.mode == "P" and mask.size == (w, h)
        with Image.open(out / f"{stem}_overlay.jpg") as overlay:
            assert overlay.mode == "RGB" and overlay.size == (w, h)
        labels = load_label_png(out / f"{stem}.png")
        assert labels.max() < len(CLASSES)
    # Batched, mixed-size prediction equals one image at a time.
    for name in ("alpha.png", "plain2.bmp"):  # plain2 was stacked with plain (same size)
        with Image.open(tmp_path / "in" / name) as img:
            alone = predict_labels(net, img, (1.0, 0.5))
        assert np.array_equal(load_label_png(out / f"{name.split('.')[0]}.png"), alone)

    # A re-run skips finished images; a lost mask (and a killed write's temporary) is redone.
    (out / "gray.png").unlink()
    (out / ".tmp-gray.png.x1y2").write_bytes(b"partial")
    before = os.stat(out / "photo.png").st_mtime_ns
    res = predict_images(checkpoint, [tmp_path / "in"], out, device="cpu")
    assert res["written"] == 1 and res["skipped_existing"] == len(sizes) - 1
    assert os.stat(out / "photo.png").st_mtime_ns == before
    assert {p.name for p in out.iterdir()} == expected_files | {"classes.txt"}


def test_corrupt_image_is_named_or_skipped(tmp_path, checkpoint):
    from plda.cli.predict import predict_images

    folder = tmp_path / "in"
    _images(folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = folder / "plain.PNG"
    truncated = folder / "cut.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match="broken.jpg"):
        predict_images(checkpoint, [folder], tmp_path / "out", device="cpu")
    with pytest.warns(UserWarning, match="skipping"):
        res = predict_images(checkpoint, [folder], tmp_path / "out2", device="cpu", skip_bad=True)
    assert sorted(os.path.basename(b["path"]) for b in res["bad"]) == ["broken.jpg", "cut.png"]
    assert res["written"] == 7
    assert not (tmp_path / "out2" / "broken.png").exists()


def test_input_errors_are_clear(tmp_path, checkpoint):
    from PIL import Image

    from plda.cli.predict import collect_inputs, predict_images

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    Image.new("RGB", (8, 8)).save(a / "x.jpg")
    Image.new("RGB", (8, 8)).save(b / "x.png")
    with pytest.raises(DataError, match="share the name 'x'"):
        collect_inputs([a, b])
    assert collect_inputs([a, a / "x.jpg"]) == [a / "x.jpg"]  # the same file once
    with pytest.raises(DataError, match="missing.jpg not found"):
        collect_inputs([tmp_path / "missing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        collect_inputs([tmp_path / "empty"])
    with pytest.raises(DataError, match="overwrite input"):
        predict_images(checkpoint, [b], b, device="cpu")


def test_cli_predict_and_skip_bad_report(tmp_path, checkpoint, capsys):
    from plda.cli.main import main

    folder = tmp_path / "in"
    sizes = _images(folder)
    (folder / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    code = main(["predict", str(checkpoint), str(folder), "--out", str(out), "--device", "cpu",
                 "--scales", "1.0", "--no-flip"])
    assert code == 2
    assert "broken.png" in capsys.readouterr().err
    code = main(["predict", str(checkpoint), str(folder), "--out", str(out), "--device", "cpu",
                 "--scales", "1.0", "--no-flip", "--skip-bad", "--no-overlay"])
    captured = capsys.readouterr()
    assert code == 0
    assert "skipped 1 unreadable image(s)" in captured.err and "broken.png" in captured.err
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{s}.png" for s in sizes]
                                                           + ["classes.txt"])
    assert main(["predict", str(checkpoint), str(folder), "--out", str(out),
                 "--scales", "1,x"]) == 2
    assert "--scales" in capsys.readouterr().err


def test_cli_accepts_a_run_folder(tmp_path, checkpoint):
    from PIL import Image

    from plda.cli.main import main

    run = tmp_path / "run"
    (run / "deeplab").mkdir(parents=True)
    (run / "deeplab" / "segmentation.safetensors").write_bytes(checkpoint.read_bytes())
    Image.new("L", (12, 9), 128).save(tmp_path / "one.png")
    assert main(["predict", str(run), str(tmp_path / "one.png"), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--scales", "1.0"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["classes.txt", "one.png",
                                                                  "one_overlay.jpg"]


def test_crf_without_pydensecrf_fails_before_any_work(tmp_path, checkpoint, monkeypatch):
    import sys

    from PIL import Image

    from plda.cli.predict import predict_images
    from plda.errors import PldaError

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # makes the import fail
    with pytest.raises(PldaError, match="pydensecrf"):
        predict_images(checkpoint, [tmp_path / "a.png"], tmp_path / "out", crf=True,
                       device="cpu")
    assert not (tmp_path / "out").exists()


def test_crf_prediction_writes_valid_masks(tmp_path, checkpoint):
    pytest.importorskip("pydensecrf.densecrf")
    from PIL import Image

    from plda.cli.predict import predict_images
    from plda.data.labels import load_label_png

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
                    ).save(tmp_path / "a.png")
    res = predict_images(checkpoint, [tmp_path / "a.png"], tmp_path / "out", crf=True,
                         device="cpu", overlay=False)
    labels = load_label_png(tmp_path / "out" / "a.png")
    assert res["written"] == 1 and labels.shape == (20, 30) and labels.max() < len(CLASSES)


def test_device_and_scales_options_are_checked():
    from plda.cli.predict import parse_scales, resolve_device
    from plda.errors import ConfigError

    assert parse_scales("1.0, 0.75,1.25") == (1.0, 0.75, 1.25)
    for bad in ("", "1,-1", "a"):
        with pytest.raises(ConfigError, match="--scales"):
            parse_scales(bad)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")
