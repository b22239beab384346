"""Refinement building blocks (IRN / AffinityNet): the pair set, pair labels from a seed map,
boundary -> affinity, the affinity loss, the transition matrix and the random walk (equal to a
dense matrix power), and IRN's relation labels from a hand-made CAM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from plda.refinement.walk import (
    affinity_loss,
    boundary_to_affinity,
    displacements,
    pair_labels,
    random_walk,
    transition_matrix,
    valid_pairs,
)
from plda.refinement.relations import relation_labels


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_displacements_are_irn_half_disc():
    assert displacements(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    d5 = displacements(5)
    assert len(d5) == 34 and len(set(d5)) == 34
    # each unordered neighbour pair once: no displacement is the negative of another
    assert not {(-dy, -dx) for dy, dx in d5} & set(d5)
    full = {(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
            if 0 < dy * dy + dx * dx < 25}
    assert set(d5) | {(-dy, -dx) for dy, dx in d5} == full
    with pytest.raises(ValueError, match="radius"):
        displacements(1)


def test_pair_labels_by_hand():
    label = torch.tensor([[0, 0, 3],
                          [0, 255, 3]])
    disps = [(0, 1), (1, 0)]
    lab = pair_labels(label, disps)
    # (0,1): pairs (r, c)->(r, c+1); (1,0): (0, c)->(1, c)
    assert lab["bg_pos"][0].tolist() == [[True, False, False], [False, False, False]]
    assert lab["neg"][0].tolist() == [[False, True, False], [False, False, False]]
    assert lab["bg_pos"][1].tolist() == [[True, False, False], [False, False, False]]
    assert lab["fg_pos"][1].tolist() == [[False, False, True], [False, False, False]]
    assert not lab["neg"][1].any()  # (0,1) -> (1,1) touches an ignored pixel
    total = sum(v.sum() for v in lab.values())
    assert total == 4  # every other pair is ignored or leaves the grid


def test_boundary_to_affinity_blocks_pairs_across_a_wall():
    boundary = torch.zeros(5, 6)
    boundary[:, 3] = 1.0  # a vertical wall in column 3
    disps = [(0, 1), (0, 2), (1, 1), (2, -2)]
    aff = boundary_to_affinity(boundary, disps)
    valid = valid_pairs((5, 6), disps)
    assert aff.shape == (4, 5, 6)
    for k, (dy, dx) in enumerate(disps):
        for y in range(5):
            for x in range(6):
                if not valid[k, y, x]:
                    assert aff[k, y, x] == 0
                    continue
                crosses = min(x, x + dx) <= 3 <= max(x, x + dx)
                assert aff[k, y, x] == (0.0 if crosses else 1.0), (dy, dx, y, x)
    soft = boundary_to_affinity(torch.full((3, 3), 0.25), [(1, 1)])
    assert torch.allclose(soft[0, :2, :2], torch.full((2, 2), 0.75))


def test_affinity_loss_by_hand():
    aff = torch.tensor([[[0.9, 0.2]]])
    labels = {"bg_pos": torch.tensor([[[True, False]]]), "fg_pos": torch.tensor([[[False, False]]]),
              "neg": torch.tensor([[[False, True]]])}
    out = affinity_loss(aff, labels)
    eps = 1e-5
    bg = -math.log(0.9 + eps) / (1 + eps)
    neg = -math.log(1 + eps - 0.2) / (1 + eps)
    assert out["bg_pos"].item() == pytest.approx(bg, rel=1e-6)
    assert out["fg_pos"].item() == 0.0  # no positive foreground pairs: 0, not NaN
    assert out["neg"].item() == pytest.approx(neg, rel=1e-6)
    assert out["total"].item() == pytest.approx((bg / 2 + neg) / 2, rel=1e-6)


def test_random_walk_equals_dense_matrix_power():
    torch.manual_seed(0)
    h, w = 5, 7
    disps = displacements(3)
    aff = boundary_to_affinity(torch.rand(h, w, dtype=torch.float64), disps)
    dense = transition_matrix(aff, disps, beta=10.0).to_dense()
    assert torch.allclose(dense.sum(0), torch.ones(h * w, dtype=torch.float64))
    assert torch.equal(dense > 0, (dense > 0).t())  # the pair graph is symmetric
    cams = torch.rand(3, h, w, dtype=torch.float64)
    for exp_times in (0, 1, 3):
        expected = cams.reshape(3, -1) @ torch.linalg.matrix_power(dense, 2 ** exp_times)
        out = random_walk(cams, aff, disps, beta=10.0, exp_times=exp_times)
        torch.testing.assert_close(out, expected.reshape(3, h, w), rtol=1e-10, atol=1e-12)


def test_transition_matrix_entries_by_hand():
    aff = torch.tensor([[[0.5, 0.0]]], dtype=torch.float64)   # 1 x 2 grid, pair (0,0)->(0,1)
    t = transition_matrix(aff, [(0, 1)], beta=2.0).to_dense()
    a = 0.25  # 0.5 ** 2
    expected = torch.tensor([[1.0, a], [a, 1.0]], dtype=torch.float64) / (1.0 + a)
    torch.testing.assert_close(t, expected)
    with pytest.raises(ValueError, match="2 affinity planes for 1 displacements"):
        transition_matrix(torch.zeros(2, 1, 2), [(0, 1)], beta=1.0)


def test_relation_labels_from_a_hand_made_cam():
    cam = np.zeros((1, 9, 9), np.float32)
    cam[0, 2:7, 2:7] = 0.1   # weak: above the background threshold 0.05, below 0.30
    cam[0, 3:6, 3:6] = 0.8   # confident foreground
    out = relation_labels(cam, [7], None)
    expected = np.zeros((9, 9), np.uint8)
    expected[2:7, 2:7] = 255
    expected[3:6, 3:6] = 7
    np.testing.assert_array_equal(out, expected)
    two = np.stack([cam[0], np.roll(cam[0], 3, axis=1) * 0.5])
    labels = relation_labels(two, [7, 12], None, fg_threshold=0.3, bg_threshold=0.05)
    assert set(np.unique(labels)) == {0, 7, 12, 255}
    with pytest.raises(ValueError, match="one plane per class"):
        relation_labels(cam, [7, 8], None)
    with pytest.raises(ValueError, match="bg_threshold < fg_threshold"):
        relation_labels(cam, [7], None, fg_threshold=0.05, bg_threshold=0.3)


def test_relation_labels_with_crf_follow_the_image():
    """The label CRF snaps both confident maps to the object's edges: a bright 20x20 square,
    CAM core 18x18 inside it and a weak CAM halo beyond it -> exactly the square is the class,
    everything else confident background."""
    pytest.importorskip("pydensecrf.densecrf")
    n = 40
    cam = np.zeros((1, n, n), np.float32)
    cam[0, 8:32, 8:32] = 0.1
    cam[0, 11:29, 11:29] = 0.9
    image = np.full((n, n, 3), 30, np.uint8)
    image[10:30, 10:30] = 220
    a = relation_labels(cam, [5], image)
    np.testing.assert_array_equal(a, relation_labels(cam, [5], image))  # deterministic
    expected = np.zeros((n, n), np.uint8)
    expected[10:30, 10:30] = 5
    np.testing.assert_array_equal(a, expected)


def test_pair_paths_are_irn_line_neighbourhoods():
    from plda.refinement.walk import _segment

    # points of the bounding box less than one pixel from the line (IRN's dist_sq < 1)
    assert sorted(_segment((1, 2))) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert sorted(_segment((0, 3))) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert sorted(_segment((2, -2))) == [(0, -1), (0, 0), (1, -2), (1, -1), (1, 0), (2, -2),
                                         (2, -1)]


def test_propagation_stays_inside_a_closed_boundary():
    """The walk averages each pixel over its affinity-weighted neighbours (IRN's x T with T
    normalised over columns): CAM spreads freely inside a region, not across a boundary ring,
    and a constant map stays constant."""
    from plda.refinement.walk import propagate_cams

    h = w = 14
    boundary = torch.zeros(h, w, dtype=torch.float64)
    boundary[2, 2:11] = boundary[10, 2:11] = 1.0
    boundary[2:11, 2] = boundary[2:11, 10] = 1.0
    cams = torch.zeros(1, h, w, dtype=torch.float64)
    cams[0, 5, 5] = 1.0  # one confident pixel inside the ring
    out = propagate_cams(cams, boundary, radius=5, beta=10.0, exp_times=6)[0]
    inside = out[3:10, 3:10]
    outside = torch.ones(h, w, dtype=torch.bool)
    outside[2:11, 2:11] = False
    assert inside.min().item() > 0  # spread over the whole inside
    assert out[outside].max().item() < 1e-6 * inside.max().item()
    flat = propagate_cams(torch.ones(1, h, w, dtype=torch.float64),
                          torch.zeros(h, w, dtype=torch.float64), radius=3, exp_times=4)
    torch.testing.assert_close(flat, torch.ones_like(flat))


# ---------------------------------------------------------------- IRN boundary branch
def _irn(width: int = 8):
    from plda.models.backbones import build_backbone
    from plda.refinement.irn import BoundaryNet, IRNModel

    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", pretrained=None, output_stride=16)
    return IRNModel(BoundaryNet(backbone, width=width, groups=2), radius=4)


def test_irn_boundary_head_trains_on_relation_labels_and_backbone_stays_frozen():
    from plda.engine.config import TrainConfig
    from plda.engine.optim import build_optimizer

    model = _irn()
    frozen = {k: v.clone() for k, v in model.net.backbone.state_dict().items()}
    image = torch.randn(2, 3, 64, 64)
    image[:, :, 16:48, 16:48] += 2.0  # an object
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, 16:48, 16:48] = 3
    mask[:, 12:16, 12:52] = 255      # unsure band
    opt = build_optimizer(model.parameter_groups(), TrainConfig(iterations=30, lr=0.1,
                                                                 momentum=0.9))
    model.train()
    losses = []
    for _ in range(30):
        out = model({"image": image, "mask": mask})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    assert {"bg_pos", "fg_pos", "neg", "stat/pos_pairs"} <= set(out)
    for k, v in model.net.backbone.state_dict().items():
        assert torch.equal(v, frozen[k]), k  # frozen weights and BN statistics
    assert not any(p.requires_grad for p in model.net.backbone.parameters())


def test_boundary_map_averages_the_flip():
    from plda.refinement.irn import boundary_map

    model = _irn()
    image = torch.randn(3, 48, 40)
    b = boundary_map(model.net, image)
    assert b.shape == (12, 10) and float(b.min()) >= 0 and float(b.max()) <= 1
    # the mirror image's boundary is the mirror of this one
    torch.testing.assert_close(boundary_map(model.net, image.flip(-1)), b.flip(-1),
                               rtol=1e-4, atol=1e-5)
    assert model.training  # restored


def test_irn_pseudo_mask_fills_the_region_a_boundary_encloses():
    from plda.refinement.irn import irn_pseudo_mask

    grid = 12
    boundary = torch.zeros(grid, grid, dtype=torch.float64)
    boundary[2, 2:10] = boundary[9, 2:10] = 1.0
    boundary[2:10, 2] = boundary[2:10, 9] = 1.0
    cams = torch.zeros(1, 48, 48)
    cams[0, 20:24, 20:24] = 1.0     # a small confident part of the object
    mask = irn_pseudo_mask(cams, [7], boundary, radius=5, exp_times=6, bg_threshold=0.25)
    assert mask.shape == (48, 48) and mask.dtype == torch.uint8
    inside = mask[16:32, 16:32]     # the enclosed cells 3..8 of the grid, at 4 px per cell
    assert (inside == 7).float().mean() > 0.9
    assert (mask[:6] == 0).all() and (mask[42:] == 0).all()
    empty = irn_pseudo_mask(torch.zeros(0, 48, 48), [], boundary)
    assert empty.shape == (48, 48) and not empty.any()


# ---------------------------------------------------------------- AffinityNet
def test_affinity_labels_from_la_and_ha_seeds():
    from plda.refinement.affinity import affinity_labels

    la = np.array([[0, 3, 3], [0, 0, 5]], np.uint8)
    ha = np.array([[0, 3, 3], [3, 0, 5]], np.uint8)
    np.testing.assert_array_equal(affinity_labels(la, ha),
                                  [[0, 3, 3], [255, 0, 5]])
    with pytest.raises(ValueError, match="differ in size"):
        affinity_labels(la, ha[:1])


def test_pair_affinity_is_exp_of_mean_l1_distance():
    from plda.refinement.affinity import pair_affinity

    f = torch.zeros(1, 2, 2, 3)
    f[0, :, 0, 1] = torch.tensor([1.0, 3.0])   # pixel (0, 1)
    aff = pair_affinity(f, [(0, 1), (1, 0)])
    assert aff.shape == (1, 2, 2, 3)
    assert aff[0, 0, 0, 0].item() == pytest.approx(math.exp(-2.0))  # (0,0)-(0,1): mean |1|,|3|
    assert aff[0, 0, 1, 0].item() == pytest.approx(1.0)             # identical features
    assert aff[0, 0, 0, 2].item() == 0.0 and aff[0, 1, 1, 1].item() == 0.0  # off the grid


def test_affinitynet_trains_its_head_and_backbone():
    from plda.engine.config import TrainConfig
    from plda.engine.optim import build_optimizer
    from plda.models.backbones import build_backbone
    from plda.refinement.affinity import AffinityNet, AffinityNetModel

    torch.manual_seed(0)
    net = AffinityNet(build_backbone("efficientnet_lite0", pretrained=None, output_stride=16))
    model = AffinityNetModel(net, radius=3).train()
    groups = model.parameter_groups()
    assert [g["lr_mult"] for g in groups] == [1.0, 2.0, 10.0]
    image = torch.randn(2, 3, 64, 64)
    image[:, :, 16:48, 16:48] += 2.0
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, 16:48, 16:48] = 2
    opt = build_optimizer(groups, TrainConfig(iterations=20, lr=0.01, momentum=0.9))
    losses = []
    for _ in range(20):
        out = model({"image": image, "mask": mask})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.8 * losses[0], losses
    changed = [p for p in groups[0]["params"] if p.grad is not None]
    assert changed, "the backbone receives gradients (psa trains it)"


class _RegionFeatures(torch.nn.Module):
    """A stand-in feature net: a strongly different feature inside a square than outside."""

    stride = 4

    def forward(self, image):
        h, w = image.shape[-2] // 4, image.shape[-1] // 4
        f = torch.zeros(1, 2, h, w, dtype=torch.float64)
        f[0, 0, 2:8, 2:8] = 20.0
        return f


def test_affinity_pseudo_mask_spreads_a_seed_over_its_region():
    from plda.refinement.affinity import affinity_pseudo_mask

    cams = torch.zeros(1, 44, 40, dtype=torch.float64)
    cams[0, 8:32, 8:32] = 0.3     # weak over the square (feature cells 2..7)...
    cams[0, 16:20, 16:20] = 1.0   # ...confident in a small part
    cams[0, 32:36, 8:32] = 0.6    # and a spurious response just outside it
    mask = affinity_pseudo_mask(_RegionFeatures(), torch.zeros(3, 44, 40), cams, [9],
                                radius=4, alpha=16.0, beta=8.0, logt=6)
    assert mask.shape == (44, 40)
    assert (mask[11:29, 11:29] == 9).all()  # the inside (edges blur by the 4x upsampling)
    assert (mask[:6] == 0).all() and (mask[36:] == 0).all()
    assert (mask[33:36, 8:32] == 0).float().mean() > 0.9  # the walk outside averages it away


def _naive_affinity(boundary: torch.Tensor, disps) -> torch.Tensor:
    """The definition, one pair at a time: 1 - max of the boundary over the pair's path, the
    boundary counting as 1 outside the grid."""
    from plda.refinement.walk import _segment

    h, w = boundary.shape[-2:]
    out = torch.zeros(*boundary.shape[:-2], len(disps), h, w, dtype=boundary.dtype)
    for k, d in enumerate(disps):
        for y in range(h):
            for x in range(w):
                values = [boundary[..., y + oy, x + ox] if 0 <= y + oy < h and 0 <= x + ox < w
                          else torch.ones_like(boundary[..., 0, 0]) for oy, ox in _segment(d)]
                out[..., k, y, x] = 1 - torch.stack(values).amax(0)
    return out


@pytest.mark.parametrize("radius", [2, 4])
def test_boundary_to_affinity_equals_the_per_pair_definition_with_gradients(radius):
    torch.manual_seed(radius)
    disps = displacements(radius)
    boundary = torch.rand(2, 6, 7, dtype=torch.float64, requires_grad=True)
    fast = boundary_to_affinity(boundary, disps)
    naive = _naive_affinity(boundary, disps)
    assert fast.shape == (2, len(disps), 6, 7)
    assert torch.equal(fast, naive)
    weights = torch.rand_like(fast)
    (g_fast,) = torch.autograd.grad((fast * weights).sum(), boundary)
    (g_naive,) = torch.autograd.grad((naive * weights).sum(), boundary)
    assert torch.allclose(g_fast, g_naive)
