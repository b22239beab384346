"""VOC palette and label PNG reading/writing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from plda.errors import DataError
from plda.data.labels import colorize, label_to_image, load_label_png, save_label_png, voc_palette


def test_palette_matches_the_voc_colour_map():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    # Values from the PASCAL VOC devkit's labelcolormap.
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[3].tolist() == [128, 128, 0]
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]  # ignore / void
    assert len({tuple(c) for c in pal}) == 256


def test_save_and_load_round_trip(tmp_path):
    label = np.array([[0, 1, 2], [20, 255, 7]], dtype=np.uint8)
    save_label_png(tmp_path / "a.png", label)
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode == "P"
        assert img.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(load_label_png(tmp_path / "a.png"), label)
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write leaves no temporary


def test_rgb_and_grayscale_pngs_decode_to_indices(tmp_path):
    label = np.array([[0, 1], [15, 255]], dtype=np.uint8)
    Image.fromarray(colorize(label)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_label_png(tmp_path / "rgb.png"), label)
    Image.fromarray(label, mode="L").save(tmp_path / "gray.png")
    np.testing.assert_array_equal(load_label_png(tmp_path / "gray.png"), label)


def test_unknown_colour_and_corrupt_file_name_the_file(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    with pytest.raises(DataError, match=r"odd.png: colour \(1, 2, 3\) is not in the VOC palette"):
        load_label_png(tmp_path / "odd.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="bad.png"):
        load_label_png(tmp_path / "bad.png")


def test_label_to_image_rejects_bad_shapes_and_values():
    with pytest.raises(ValueError, match="2-D"):
        label_to_image(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="0..255"):
        label_to_image(np.array([[300]]))
