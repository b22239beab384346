"""Stage-1 / segmentation / evaluation transforms: determinism, geometry, padding, alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from plda.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, EvalTransform, SegTransform,
                                  Stage1Transform, color_jitter, denormalize, normalize,
                                  random_crop_box)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def noise_image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


GEOMETRY_ONLY = dict(resize_long=None, jitter=None)


def test_stage1_deterministic_and_shape():
    t = Stage1Transform(resize_long=(64, 96), crop=48)
    img = noise_image(50, 70)
    a, b, c = t(img, rng(5)), t(img, rng(5)), t(img, rng(6))
    assert a.shape == (3, 48, 48) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stage1_matches_normalise_then_crop():
    # The reference normalises the whole image, then crops/pads with zeros; we crop first.
    for h, w in ((50, 20), (20, 50), (32, 32), (40, 40)):
        img = noise_image(h, w, seed=h)
        out = Stage1Transform(crop=32, flip=False, **GEOMETRY_ONLY)(img, rng(h + w))
        st, sl, dt, dl, ch, cw = random_crop_box(h, w, 32, rng(h + w))
        ref = np.zeros((32, 32, 3), np.float32)
        ref[dt:dt + ch, dl:dl + cw] = normalize(np.asarray(img))[st:st + ch, sl:sl + cw]
        np.testing.assert_array_equal(out.numpy(), ref.transpose(2, 0, 1))


def test_stage1_zero_padding_after_normalising():
    img = Image.new("RGB", (10, 20), (255, 255, 255))  # W 10, H 20; nowhere near the mean
    placements = set()
    for seed in range(20):
        out = Stage1Transform(crop=32, flip=False, **GEOMETRY_ONLY)(img, rng(seed))
        inside = (out != 0).all(0)
        assert int(inside.sum()) == 200 and int((out == 0).all(0).sum()) == 32 * 32 - 200
        ys, xs = torch.nonzero(inside, as_tuple=True)
        assert ys.max() - ys.min() == 19 and xs.max() - xs.min() == 9  # one solid block
        white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        torch.testing.assert_close(out[:, ys[0], xs[0]], white)
        placements.add((int(ys.min()), int(xs.min())))
    assert len(placements) > 5  # the image lands at random offsets in the canvas


def test_stage1_resize_long_range():
    t = Stage1Transform(resize_long=(50, 60), crop=None, flip=False, jitter=None)
    img = noise_image(30, 40)
    longs = set()
    for seed in range(300):
        out = t(img, rng(seed))
        long_side = out.shape[2]
        assert 50 <= long_side <= 60 and out.shape[1] == round(30 * long_side / 40)
        longs.add(long_side)
    assert longs == set(range(50, 61))  # inclusive at both ends, as random.randint
    portrait = t(noise_image(40, 30), rng(0))
    assert 50 <= portrait.shape[1] <= 60 and portrait.shape[1] > portrait.shape[2]


def test_stage1_flip_really_flips():
    img = noise_image(12, 17)
    plain = torch.from_numpy(normalize(np.asarray(img)).transpose(2, 0, 1).copy())
    seen = set()
    for seed in range(20):
        out = Stage1Transform(crop=None, **GEOMETRY_ONLY)(img, rng(seed))
        flipped = torch.equal(out, plain.flip(-1))
        assert flipped or torch.equal(out, plain)
        seen.add(flipped)
    assert seen == {True, False}


def test_color_jitter_draws_from_rng():
    import torchvision.transforms.functional as TF

    img = noise_image(16, 16)
    out = Stage1Transform(crop=None, flip=False, resize_long=None)(img, rng(1))
    assert torch.equal(out, Stage1Transform(crop=None, flip=False, resize_long=None)(img, rng(1)))
    assert not torch.equal(out, EvalTransform()(img))
    # Brightness only: the factor is the draw after the order permutation.
    r = rng(7)
    r.permutation(4)
    factor = r.uniform(0.7, 1.3)
    expected = np.asarray(TF.adjust_brightness(img, factor))
    np.testing.assert_array_equal(np.asarray(color_jitter(img, (0.3, 0, 0, 0), rng(7))), expected)
    assert not np.array_equal(expected, np.asarray(img))


def test_eval_transform_and_denormalize():
    img = noise_image(9, 11)
    out = EvalTransform()(img)
    arr = np.asarray(img, np.float32)
    expected = (arr / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out.numpy(), expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(denormalize(out), torch.from_numpy(arr.transpose(2, 0, 1)),
                               atol=1e-3, rtol=0)
    mask = np.full((9, 11), 3, np.uint8)
    image, m = EvalTransform()(img, mask)
    assert torch.equal(image, out) and m.dtype == torch.int64 and m.shape == (9, 11)


COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)


def blocks_mask(h: int, w: int, seed: int) -> np.ndarray:
    """Big rectangles of labels 0..3, so most pixels are far from a label edge."""
    r = np.random.default_rng(seed)
    coarse = r.integers(0, 4, (h // 16, w // 16)).astype(np.uint8)
    return np.kron(coarse, np.ones((16, 16), np.uint8))


def test_seg_transform_keeps_image_and_mask_aligned():
    h, w = 64, 96
    mask = blocks_mask(h, w, 0)
    img = Image.fromarray(COLOURS[mask])
    t = SegTransform(crop=72, scale=(0.6, 1.4))
    for seed in range(12):
        image, m = t(img, mask, rng(seed))
        rgb = denormalize(image).permute(1, 2, 0).numpy()
        m = m.numpy()
        padded = m == 255
        np.testing.assert_array_equal(padded, (image == 0).all(0).numpy())
        # Away from label edges the pixel colour must be the colour of its label.
        interior = np.ones_like(padded)
        for dy in (-2, 0, 2):
            for dx in (-2, 0, 2):
                interior &= np.roll(m, (dy, dx), (0, 1)) == m
        interior[:2], interior[-2:], interior[:, :2], interior[:, -2:] = False, False, False, False
        interior &= ~padded
        assert interior.sum() > 500
        err = np.abs(rgb[interior] - COLOURS[m[interior]]).max()
        assert err < 2.0, (seed, err)


def test_seg_transform_padding_shapes_and_determinism():
    img, mask = noise_image(20, 30), np.full((20, 30), 4, np.uint8)
    t = SegTransform(crop=64, scale=(1.0, 1.0), flip=False)
    image, m = t(img, mask, rng(0))
    assert image.shape == (3, 64, 64) and m.shape == (64, 64) and m.dtype == torch.int64
    assert int((m == 4).sum()) == 600 and int((m == 255).sum()) == 64 * 64 - 600
    assert bool((image[:, m == 255] == 0).all())
    a, b = SegTransform(crop=16)(img, mask, rng(3)), SegTransform(crop=16)(img, mask, rng(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="mask shape"):
        t(img, mask[:10], rng(0))


def test_seg_transform_scale_nearest_and_variable_size():
    mask = np.zeros((40, 50), np.uint8)
    mask[5:30, 10:40], mask[12:20, 15:25] = 7, 200
    img = noise_image(40, 50)
    sizes = set()
    for seed in range(30):
        image, m = SegTransform(crop=None, scale=(0.5, 1.5))(img, mask, rng(seed))
        assert image.shape[1:] == m.shape
        assert 20 <= m.shape[0] <= 60 and abs(m.shape[1] / m.shape[0] - 1.25) < 0.06
        assert set(torch.unique(m).tolist()) == {0, 7, 200}  # nearest: no blended labels
        sizes.add(tuple(m.shape))
    assert len(sizes) > 10
