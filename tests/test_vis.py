"""CAM and label overlays, side-by-side panels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from plda.vis.overlay import cam_overlay, label_overlay, save_panel, side_by_side


def gray(h: int = 4, w: int = 6, value: int = 100) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def test_cam_overlay_blends_jet_by_hand():
    cam = np.zeros((4, 6), np.float32)
    cam[0, 0], cam[0, 1] = 1.0, 7.0  # above 1 is clipped
    out = cam_overlay(gray(), cam, alpha=0.5)
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    # jet(0) = (0, 0, 0.5), jet(1) = (0.5, 0, 0): 0.5 * 100 + 0.5 * 127.5 = 113.75 -> 114.
    assert out[1, 1].tolist() == [50, 50, 114]
    assert out[0, 0].tolist() == out[0, 1].tolist() == [114, 50, 50]
    np.testing.assert_array_equal(cam_overlay(gray(), cam, alpha=0.0), gray())
    assert cam_overlay(gray(), cam, alpha=1.0)[0, 0].tolist() == [128, 0, 0]
    with pytest.raises(ValueError, match="cam shape"):
        cam_overlay(gray(), np.zeros((3, 6)))
    with pytest.raises(ValueError, match="uint8"):
        cam_overlay(gray().astype(np.float32), cam)
    with pytest.raises(ValueError, match="alpha"):
        cam_overlay(gray(), cam, alpha=1.5)


def test_label_overlay_keeps_background():
    label = np.zeros((4, 6), np.uint8)
    label[0, 0], label[0, 1] = 1, 255  # VOC colours (128, 0, 0) and (224, 224, 192)
    out = label_overlay(gray(), label, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    assert out[0, 0].tolist() == [114, 50, 50]
    assert out[0, 1].tolist() == [162, 162, 146]
    np.testing.assert_array_equal(out[1:], gray()[1:])


def test_side_by_side_layout_and_save(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (14, 8, 3), dtype=np.uint8)
    panel = side_by_side([("image", a), ("GT", b)], gap=4, font_size=12)
    assert isinstance(panel, Image.Image) and panel.mode == "RGB"
    arr = np.asarray(panel)
    title_h = 12 + 6
    assert arr.shape == (14 + title_h + 4, 4 + 20 + 4 + 8 + 4, 3)
    np.testing.assert_array_equal(arr[title_h:title_h + 10, 4:24], a)
    np.testing.assert_array_equal(arr[title_h:title_h + 14, 28:36], b)
    assert (arr[title_h + 10:, 4:24] == 255).all()  # the shorter panel is padded with white
    assert (arr[:title_h, 4:24] < 255).any()  # a title was drawn
    save_panel(tmp_path / "p.png", [("image", a), ("GT", b)], gap=4, font_size=12)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p.png").convert("RGB")), arr)
    with pytest.raises(ValueError, match="at least one"):
        side_by_side([])
