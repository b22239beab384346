"""Losses and building blocks of CAM / SEAM / SEAM+PLDA on tiny hand-made tensors.

Expected values are worked out by hand (see the comments) or by plain-Python loops written here,
independently of the vectorised implementation.
"""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from plda.errors import ConfigError
from plda.methods.cam import classification_loss
from plda.methods.config import MethodConfig
from plda.methods.cps import (balanced_cross_entropy, cam_probabilities, cps_targets,
                              pseudo_labels, restrict_to_regions)
from plda.methods.domain import (IGNORE, DomainClassifier, domain_labels, domain_loss, erase,
                                 grl_alpha, mask_assign, reverse_gradient)
from plda.methods.pamr import PAMR
from plda.methods.seam import (ecr_loss, ecr_target, er_loss, max_norm, pcm_revise, pcm_seed,
                               rvmin_loss)

EPS = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------ config

def test_config_defaults_are_the_reference_values():
    cfg = MethodConfig()
    assert (cfg.name, cfg.reference) == ("seam_plda", False)
    assert cfg.seam.view_scale == 0.3 and cfg.seam.classifier_dropout == 0.5
    assert cfg.seam.pcm_channels == (64, 128) and cfg.seam.pcm_embed_channels == 192
    assert cfg.seam.pcm_embed_gain == 4.0
    assert cfg.seam.ecr_top_fraction == 0.2 and cfg.seam.rvmin_fraction == 0.25
    assert cfg.plda.tau == 0.6 and cfg.plda.domain_hidden == (1024, 512)
    assert cfg.plda.domain_dropout == 0.5 and cfg.plda.grl_gamma == 10.0
    assert cfg.plda.target_near == 0  # every re-found pixel is target, as the reference
    assert cfg.pamr.iterations == 10 and cfg.pamr.dilations == (1, 2, 4, 8, 12, 24)
    assert (cfg.cps.cutoff_low, cfg.cps.cutoff_top, cfg.cps.cutoff_top_bg) == (0.2, 0.6, 0.7)
    assert cfg.cps.background_logit == 1.0
    assert all(v == 1.0 for v in vars(cfg.weights).values())


def test_config_loads_from_a_mapping_and_rejects_bad_values():
    from plda.config.loader import from_dict

    cfg = from_dict(MethodConfig, {"name": "seam", "reference": True,
                                   "pamr": {"dilations": [1, 2]}, "weights": {"domain": 0.5}})
    assert cfg.name == "seam" and cfg.reference and cfg.pamr.dilations == (1, 2)
    assert cfg.weights.domain == 0.5
    with pytest.raises(ConfigError, match="tau"):
        from_dict(MethodConfig, {"plda": {"tau": 1.5}})
    with pytest.raises(ConfigError, match="name"):
        from_dict(MethodConfig, {"name": "irn"})
    for bad in (-1, 1.5):
        with pytest.raises(ConfigError, match="target_near"):
            from_dict(MethodConfig, {"plda": {"target_near": bad}})
    with pytest.raises(ConfigError, match="weights.er"):
        MethodConfig(weights=type(MethodConfig().weights)(er=-1.0))


# ------------------------------------------------------------------ CAM / SEAM losses

def test_multilabel_soft_margin_by_hand():
    scores = t([[2.0, -1.0], [0.5, 3.0]])
    labels = t([[1.0, 0.0], [1.0, 1.0]])
    softplus = lambda z: math.log1p(math.exp(z))  # noqa: E731  -log sigmoid(x) = softplus(-x)
    expected = ((softplus(-2.0) + softplus(-1.0)) / 2 + (softplus(-0.5) + softplus(-3.0)) / 2) / 2
    assert classification_loss(scores, labels).item() == pytest.approx(expected, rel=1e-12)


def test_max_norm_by_hand():
    out = max_norm(t([[[[-1.0, 0.0, 2.0, 4.0]]]]))
    # ReLU -> [0, 0, 2, 4]; min 0, max 4.
    expected = [0.0, 0.0, (2 - EPS) / (4 + EPS), (4 - EPS) / (4 + EPS)]
    assert out.flatten().tolist() == pytest.approx(expected, rel=1e-12)


def test_pcm_seed_by_hand():
    raw = t([[[[5.0, 0.0, 0.0]], [[2.0, 1.0, -1.0]], [[1.0, 3.0, 0.0]]]])  # (1, 3, 1, 3)
    seed = pcm_seed(raw)[0, :, 0]
    a = (2 - EPS) / (2 + EPS)  # class 1 at pixel 0, its peak
    b = (3 - EPS) / (3 + EPS)  # class 2 at pixel 1, its peak
    # Pixel 0: class 1 wins; pixel 1: class 2 wins; pixel 2: both 0 (ties are kept, both 0).
    assert seed[1].tolist() == pytest.approx([a, 0.0, 0.0], abs=1e-12)
    assert seed[2].tolist() == pytest.approx([0.0, b, 0.0], abs=1e-12)
    assert seed[0].tolist() == pytest.approx([1 - a, 1 - b, 1.0], abs=1e-12)


def _pcm_loop(seed: torch.Tensor, emb: torch.Tensor) -> list[list[float]]:
    k, n = seed.shape[1], seed.shape[2] * seed.shape[3]
    s = seed[0].reshape(k, n).tolist()
    g = emb[0].reshape(emb.shape[1], n).T.tolist()
    g = [[v / (math.sqrt(sum(x * x for x in row)) + EPS) for v in row] for row in g]
    aff = [[max(0.0, sum(a * b for a, b in zip(g[i], g[j]))) for j in range(n)] for i in range(n)]
    col = [sum(aff[i][j] for i in range(n)) + EPS for j in range(n)]
    return [[sum(s[c][i] * aff[i][j] for i in range(n)) / col[j] for j in range(n)]
            for c in range(k)]


def test_pcm_revise_matches_loop_and_chunks_match_full():
    gen = torch.Generator().manual_seed(0)
    seed = torch.rand(1, 3, 2, 3, generator=gen, dtype=torch.float64)
    emb = torch.randn(1, 4, 2, 3, generator=gen, dtype=torch.float64)
    full = pcm_revise(seed, emb)
    expected = _pcm_loop(seed, emb)
    assert full[0].reshape(3, 6).tolist() == [pytest.approx(r, rel=1e-10) for r in expected]
    for chunk in (1, 4, 6, 50):
        torch.testing.assert_close(pcm_revise(seed, emb, chunk_size=chunk), full)


def test_rvmin_by_hand():
    cam = t([[[[0.5, -0.2], [0.3, 0.9]], [[0.1, 0.4], [0.6, 0.0]]],
             [[[-0.7, 0.2], [0.8, 0.1]], [[-0.5, 0.3], [0.2, 0.4]]]])  # (2, 2, 2, 2)
    # Per-pixel max over classes: image 0 -> [0.5, 0.4, 0.6, 0.9], image 1 -> [-0.5, 0.3, 0.8, 0.4].
    # k = 4 * 0.25 = 1 lowest per image: 0.4 and ReLU(-0.5) = 0 -> (0.4 + 0) / (1 * 2).
    assert rvmin_loss(cam, 0.25).item() == pytest.approx(0.2)
    # k = 2: image 0 -> 0.4 + 0.5, image 1 -> 0 + 0.3 -> 1.2 / 4.
    assert rvmin_loss(cam, 0.5).item() == pytest.approx(0.3)


def test_er_is_mean_abs_difference():
    a = t([[[[0.0, 1.0]], [[0.5, 0.5]]]])
    b = t([[[[1.0, 1.0]], [[0.0, 0.25]]]])
    assert er_loss(a, b).item() == pytest.approx((1 + 0 + 0.5 + 0.25) / 4)


def test_ecr_matches_loop():
    other = t([[[[0.3, 0.9]], [[0.8, 0.2]], [[0.5, 0.2]]]])  # (1, 3, 1, 2): bg, fg1, fg2
    cam_rv = t([[[[0.1, 0.5]], [[0.6, 0.4]], [[0.9, 0.0]]]])
    target = ecr_target(other)
    # Pixel 0: fg max 0.8 (class 1) -> bg 0.2, class 2 zeroed. Pixel 1: tie 0.2/0.2 -> both kept.
    torch.testing.assert_close(target[0, :, 0], t([[0.2, 0.8], [0.8, 0.2], [0.0, 0.2]]))
    diffs = sorted((abs(a - b) for a, b in zip(target.flatten().tolist(),
                                               cam_rv.flatten().tolist())), reverse=True)
    for fraction in (0.2, 0.5, 1.0):
        k = max(1, int(6 * fraction))
        assert ecr_loss(other, cam_rv, fraction).item() == pytest.approx(sum(diffs[:k]) / k)


# ------------------------------------------------------------------ PLDA: MaskAssign, erase, labels

def test_mask_assign_by_hand():
    cam_rv = t([[[[9.0, 9.0], [9.0, 9.0]],      # background: ignored
                 [[-2.0, 1.0], [3.0, 4.0]],     # class 1 present: ReLU -> 0,1,3,4 -> 0,.25,.75,1
                 [[0.0, 5.0], [5.0, 5.0]]]])    # class 2 absent from the labels
    source = mask_assign(cam_rv, t([[1.0, 0.0]]), tau=0.6)
    assert source.dtype == torch.bool
    assert source[0, 0].tolist() == [[False, False], [True, True]]
    assert not source[0, 1].any()
    # tau 0.2 also takes the 0.25 pixel; the minimum pixel never passes.
    assert mask_assign(cam_rv, t([[1.0, 0.0]]), tau=0.2)[0, 0].tolist() == [[False, True],
                                                                            [True, True]]


def test_erase_zeroes_the_upsampled_union_of_source_pixels():
    image = torch.arange(1, 1 + 3 * 4 * 4, dtype=torch.float64).view(1, 3, 4, 4)
    source = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    source[0, 1, 0, 1] = True  # class 2, grid cell (0, 1) -> image rows 0-1, cols 2-3
    source[0, 0, 1, 1] = True  # class 1, grid cell (1, 1) -> rows 2-3, cols 2-3
    out = erase(image, source)
    expected = image.clone()
    expected[:, :, :, 2:] = 0
    torch.testing.assert_close(out, expected)


def test_domain_labels_source_wins_then_target_then_ignore():
    source = torch.tensor([[[[True, False, False, True]]]])
    target = torch.tensor([[[[True, True, False, False]]]])
    assert domain_labels(source, target).flatten().tolist() == [0, 1, IGNORE, 0]


# ------------------------------------------------------------------ PLDA: domain loss

def _domain_loss_loop(logits, labels, average):
    b, c, _, h, w = logits.shape
    per_class, present = [], 0
    for k in range(c):
        total = 0.0
        if any(labels[i, k, y, x] != IGNORE for i in range(b) for y in range(h) for x in range(w)):
            present += 1
        for i in range(b):
            lab = [int(labels[i, k, y, x]) for y in range(h) for x in range(w)]
            ns, nt = lab.count(0), lab.count(1)
            for y, x in itertools.product(range(h), range(w)):
                d = int(labels[i, k, y, x])
                if d == IGNORE:
                    continue
                z = [float(logits[i, k, j, y, x]) for j in range(2)]
                m = max(z)
                lse = m + math.log(sum(math.exp(v - m) for v in z))
                p = [math.exp(v - lse) for v in z]
                ent = -sum(q * math.log(q + 1e-10) for q in p)
                w_bal = (nt if d == 0 else ns) / (ns + nt + 1)
                total += (1 + math.exp(-ent)) * w_bal * (lse - z[d])
        per_class.append(total / (b * h * w))
    return sum(per_class) / max(present, 1) if average else sum(per_class)


def test_domain_loss_matches_loop_with_both_weights():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 2, 1, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.full((2, 3, 1, 3), IGNORE, dtype=torch.long)
    labels[0, 0, 0] = torch.tensor([0, 1, IGNORE])   # balanced: both weights 1/3
    labels[1, 0, 0] = torch.tensor([0, 0, IGNORE])   # only source -> contributes 0
    labels[1, 1, 0] = torch.tensor([1, 0, 0])        # source 1/4 each, target 2/4
    # class 2 has no labelled pixel: absent from the class average.
    for average in (False, True):
        expected = _domain_loss_loop(logits.detach(), labels, average)
        assert domain_loss(logits, labels, average).item() == pytest.approx(expected, rel=1e-10)
    # The image with only source pixels adds nothing, ignored pixels still count in the mean.
    only_source = labels.clone()
    only_source[1, 0, 0] = IGNORE
    assert domain_loss(logits, only_source, False).item() == pytest.approx(
        domain_loss(logits, labels, False).item(), rel=1e-12)
    domain_loss(logits, labels, False).backward()
    ignored = (labels == IGNORE).unsqueeze(2).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0) and logits.grad.abs().sum() > 0
    assert torch.all(logits.grad[1, 0] == 0)  # only-source image: zero weight, zero gradient


def test_domain_loss_upsamples_logits_to_the_label_grid():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 2, 2, 2, 2, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 2, (1, 2, 3, 3), generator=gen)
    up = F.interpolate(logits.flatten(1, 2), size=(3, 3), mode="bilinear", align_corners=True)
    expected = _domain_loss_loop(up.unflatten(1, (2, 2)), labels, True)
    assert domain_loss(logits, labels, True).item() == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------ PLDA: GRL and heads

def test_gradient_reversal():
    x = torch.randn(2, 3, requires_grad=True)
    g = torch.randn(2, 3)
    y = reverse_gradient(x, 0.37)
    torch.testing.assert_close(y, x)
    (y * g).sum().backward()
    torch.testing.assert_close(x.grad, -0.37 * g)


def test_grl_alpha_schedule():
    assert grl_alpha(0.0) == 0.0
    assert grl_alpha(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert grl_alpha(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert grl_alpha(3.0) == grl_alpha(1.0) and grl_alpha(-1.0) == 0.0


def test_grouped_domain_heads_equal_separate_convs():
    torch.manual_seed(0)
    clf = DomainClassifier(8, num_classes=3, hidden=(6, 5), dropout=0.5).eval()
    bound = math.sqrt(6 / (5 + 2))  # Xavier of one (2, 5) head
    assert clf.heads.weight.abs().max() <= bound
    features = torch.randn(2, 8, 3, 4)
    heads = []
    for w, b in zip(*clf.to_separate_heads()):
        conv = torch.nn.Conv2d(5, 2, 1)
        conv.weight.data.copy_(w)
        conv.bias.data.copy_(b)
        heads.append(conv)
    trunk = clf.trunk(features)
    expected = torch.stack([h(trunk) for h in heads], 1)
    torch.testing.assert_close(clf(features), expected)
    # Round trip from reference-style separate heads.
    weights = [torch.randn(2, 5, 1, 1) for _ in range(3)]
    biases = [torch.randn(2) for _ in range(3)]
    clf.from_separate_heads(weights, biases)
    back_w, back_b = clf.to_separate_heads()
    for a, b in zip(weights + biases, back_w + back_b):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError):
        clf.from_separate_heads(weights[:2], biases[:2])


# ------------------------------------------------------------------ PAMR

def _pamr_loop(image, mask, dilations, iterations):
    _, k, h, w = image.shape
    c = mask.shape[1]
    img = image[0].tolist()
    offs = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    clamp = lambda v, n: min(max(v, 0), n - 1)  # noqa: E731
    weights = {}
    for y, x in itertools.product(range(h), range(w)):
        nbs = [(clamp(y + dy * d, h), clamp(x + dx * d, w)) for d in dilations for dy, dx in offs
               if dy or dx]
        logits = [0.0] * len(nbs)
        for ch in range(k):
            window = [img[ch][clamp(y + dy * d, h)][clamp(x + dx * d, w)]
                      for d in dilations for dy, dx in offs]
            sigma = statistics.stdev(window)
            for i, (ny, nx) in enumerate(nbs):
                logits[i] += -abs(img[ch][y][x] - img[ch][ny][nx]) / (1e-8 + 0.1 * sigma) / k
        m = max(logits)
        e = [math.exp(v - m) for v in logits]
        weights[y, x] = (nbs, [v / sum(e) for v in e])
    cur = mask[0].tolist()
    for _ in range(iterations):
        cur = [[[sum(wv * cur[ch][ny][nx] for (ny, nx), wv in zip(*weights[y, x]))
                 for x in range(w)] for y in range(h)] for ch in range(c)]
    return cur


def test_pamr_matches_loop():
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 5, 4, generator=gen, dtype=torch.float64)
    mask = torch.rand(1, 2, 5, 4, generator=gen, dtype=torch.float64)
    out = PAMR(iterations=2, dilations=(1, 3))(image, mask)  # dilation 3 > half the size
    expected = _pamr_loop(image, mask, (1, 3), 2)
    assert out[0].tolist() == [[pytest.approx(row, rel=1e-9) for row in ch] for ch in expected]


def test_pamr_neighbour_slices_equal_a_clamped_index_gather(monkeypatch):
    """The padded-slice neighbours are exactly the values a gather through clamped flat indices
    reads (the plain path), dilations wider than the map included; so is the refined mask."""
    from plda.methods.pamr import _OFFSETS, _neighbours

    def gathered(x, d, centre):
        b, k, h, w = x.shape
        ys, xs = torch.arange(h), torch.arange(w)
        index = torch.stack([((ys + dy * d).clamp(0, h - 1)[:, None] * w
                              + (xs + dx * d).clamp(0, w - 1)[None, :]).flatten()
                             for dy, dx in _OFFSETS if centre or dy or dx])
        return x.flatten(2)[:, :, index].view(b, k, index.shape[0], h, w)

    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 7, 5, generator=gen)
    for d, centre in itertools.product((1, 2, 4, 6, 24), (False, True)):
        assert torch.equal(_neighbours(x, d, centre), gathered(x, d, centre)), (d, centre)

    image = torch.rand(2, 3, 9, 8, generator=gen)
    mask = torch.rand(2, 4, 9, 8, generator=gen).softmax(1)
    sliced = PAMR(3, (1, 2, 4, 12))(image, mask)
    monkeypatch.setattr("plda.methods.pamr._neighbours", gathered)  # the same PAMR, plain gather
    assert torch.equal(sliced, PAMR(3, (1, 2, 4, 12))(image, mask))


def test_pamr_propagates_within_a_region_not_across_the_edge():
    image = torch.zeros(1, 3, 6, 6, dtype=torch.float64)
    image[..., 3:] = 1.0  # left half black, right half white
    mask = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    mask[0, 0, 2, 1] = 1.0  # class 0 seeded on the left
    mask[0, 1, 4, 4] = 1.0  # class 1 seeded on the right
    out = PAMR(iterations=10, dilations=(1, 2))(image, mask)
    # A colour step of 1 against a local std of ~0.5 gives weights ~exp(-20) across the edge.
    assert out[0, 0, :, :3].min() > 1e-2 and out[0, 0, :, 3:].max() < 1e-6
    assert out[0, 1, :, 3:].min() > 1e-2 and out[0, 1, :, :3].max() < 1e-6
    # Averaging over neighbours keeps each region's mass of order one.
    assert 0.5 < out[0, 0].sum().item() < 2.0


# ------------------------------------------------------------------ CPS

def test_cam_probabilities_set_background_logit():
    prob = cam_probabilities(t([[[[5.0]], [[1.0]], [[2.0]]]]), background_logit=1.0)
    z = [math.exp(1.0), math.exp(1.0), math.exp(2.0)]
    assert prob.flatten().tolist() == pytest.approx([v / sum(z) for v in z])


def test_pseudo_labels_by_hand():
    prob = t([[[[0.9, 0.1, 0.5, 0.1]],     # background: threshold 0.7 * 0.9 = 0.63
               [[0.7, 0.8, 0.45, 0.1]],    # class 1: threshold 0.6 * 0.8 = 0.48
               [[0.05, 0.1, 0.05, 0.3]]]])  # class 2: 0.6 * 0.3 = 0.18 -> raised to 0.2
    out = pseudo_labels(prob, cutoff_low=0.2, cutoff_top=0.6, cutoff_top_bg=0.7)
    # Pixel 0: background and class 1 both claim -> dropped; 1 -> class 1; 2 -> none; 3 -> class 2.
    assert out[0, :, 0].tolist() == [[False, False, False, False],
                                     [False, True, False, False],
                                     [False, False, False, True]]


def test_restrict_to_regions():
    pseudo = torch.tensor([[[[True, False, False]], [[False, True, False]],
                            [[False, False, True]]]])
    regions = torch.tensor([[[[True, True, False]], [[False, False, False]]]])
    out = restrict_to_regions(pseudo, regions)
    assert out[0, :, 0].tolist() == [[False] * 3, [False, True, False], [False] * 3]


def test_cps_targets_without_refinement():
    # (1, 3, 1, 3) raw CAM; with the background logit set to 1 the softmax is
    # pixel 0: bg .119, class 1 .881; pixel 1: bg .936, class 1 .047; pixel 2: class 2 .950.
    raw = t([[[[0.0, 0.0, 0.0]], [[3.0, -2.0, -2.0]], [[-5.0, -3.0, 4.0]]]])
    image = torch.rand(1, 3, 8, 24, dtype=torch.float64)
    regions = torch.tensor([[[[True, True, False]], [[True, True, True]]]])
    restricted, full = cps_targets(raw, image, t([[1.0, 0.0]]), regions, PAMR(iterations=0),
                                   MethodConfig().cps)
    # Class 2 is not in the labels: its probability is zeroed and pixel 2 stays unclaimed
    # (background .047 < max(.2, .7 * .936)).
    assert full[0, :, 0].tolist() == [[False, True, False], [True, False, False],
                                      [False, False, False]]
    assert restricted[0, :, 0].tolist() == [[False] * 3, [True, False, False], [False] * 3]
    outside = torch.tensor([[[[False, True, True]], [[True, True, True]]]])
    assert not cps_targets(raw, image, t([[1.0, 0.0]]), outside, PAMR(iterations=0),
                           MethodConfig().cps)[0].any()


def _ce(z, k):
    m = max(z)
    return m + math.log(sum(math.exp(v - m) for v in z)) - z[k]


def test_balanced_cross_entropy_by_hand():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 3, 1, 4, generator=gen, dtype=torch.float64)
    target = torch.zeros(1, 3, 1, 4, dtype=torch.bool)
    target[0, 1, 0, 0] = target[0, 1, 0, 1] = target[0, 2, 0, 2] = True  # pixel 3 unlabelled
    z = [logits[0, :, 0, i].tolist() for i in range(4)]
    # N1 = 2, N2 = 1, N = 3: weights (3 - 2) / 4 and (3 - 1) / 4.
    expected = (0.25 * _ce(z[0], 1) + 0.25 * _ce(z[1], 1) + 0.5 * _ce(z[2], 2)) / 4
    assert balanced_cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-12)
    # One class only: weight (N - N) / (N + 1) = 0 (the reference's consequence).
    single = torch.zeros_like(target)
    single[0, 1, 0, :2] = True
    assert balanced_cross_entropy(logits, single).item() == 0.0
    # Counting on the full pseudo label (background on pixels 2, 3): N = 4, N1 = 2 -> 2 / 5.
    full = single.clone()
    full[0, 0, 0, 2:] = True
    expected = 0.4 * (_ce(z[0], 1) + _ce(z[1], 1)) / 4
    assert balanced_cross_entropy(logits, single, counts_from=full).item() == pytest.approx(
        expected, rel=1e-12)
