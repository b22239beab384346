"""Model-level checks of the stage-1 methods on a tiny fake backbone (3x32x32 images)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plda.errors import DataError, WeightsError
from plda.methods import (LossWeights, MethodConfig, PLDAConfig, SEAMConfig, SEAMPLDAModel,
                          build_method, convert_reference_state_dict,
                          to_reference_state_dict)
from plda.methods.plda import dropout_disabled

NUM_CLASSES = 3
TERMS = {
    "cam": {"cls"},
    "seam": {"cls", "rvmin", "er", "ecr"},
    "cam_plda": {"cls", "domain", "cps_source", "cps_target"},
    "seam_plda": {"cls", "rvmin", "er", "ecr", "domain", "cps_source", "cps_target"},
}
_PLDA_STATS = {"stat/grl_alpha", "stat/source_fraction", "stat/target_fraction"}
STATS = {"cam_plda": _PLDA_STATS, "seam_plda": _PLDA_STATS}
METHODS = list(TERMS)


class FakeBackbone(nn.Module):
    """The backbone interface in miniature: a frozen stem + BN, stride-8 levels a, b, final."""

    level_names = ("a", "b", "final")
    channels = {"a": 8, "b": 12, "final": 16}
    strides = {"a": 8, "b": 8, "final": 8}
    final_level = "final"
    pcm_levels = ("a", "b")
    input_mean = (0.485, 0.456, 0.406)
    input_std = (0.229, 0.224, 0.225)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.down1 = nn.Conv2d(8, 8, 3, 2, 1)
        self.down2 = nn.Conv2d(8, 8, 3, 2, 1)
        self.mid = nn.Conv2d(8, 12, 3, 1, 1)
        self.drop = nn.Dropout2d(0.3)
        self.top = nn.Conv2d(12, 16, 3, 1, 1)
        self.train()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.relu(self.down1(F.relu(self.bn(self.stem(x)))))
        a = F.relu(self.down2(x))
        b = F.relu(self.mid(a))
        return {"a": a, "b": b, "final": F.relu(self.top(self.drop(b)))}

    def forward_views(self, images):
        return [self(x) for x in images]

    def train(self, mode: bool = True) -> "FakeBackbone":
        super().train(mode)
        for frozen in (self.stem, self.bn):
            frozen.eval()
            frozen.requires_grad_(False)
        return self

    def parameter_groups(self):
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        return ([p for n, p in params if not n.endswith("bias")],
                [p for n, p in params if n.endswith("bias")])


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = build_method(MethodConfig(name=name, **kwargs), FakeBackbone(), NUM_CLASSES)
    return model.train()


def batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 32, 32, generator=gen)
    image[1, :, 8:24, 8:24] += 2.0  # an "object" for the CAM to find
    return {"image": image, "label": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])}


def new_layer_params(model: nn.Module) -> list[nn.Parameter]:
    groups = model.parameter_groups()
    return groups[2]["params"] + groups[3]["params"]


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("reference", [False, True])
def test_forward_returns_finite_terms_and_backward_reaches_new_layers(name, reference):
    model = make(name, reference=reference)
    out = model(batch(), progress=0.5)
    assert set(out) == {"loss"} | TERMS[name] | STATS.get(name, set())
    for key, value in out.items():
        assert value.dim() == 0 and torch.isfinite(value), key
        assert value.requires_grad == (key == "loss"), key
    total = sum(out[k] for k in TERMS[name])
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-5)
    out["loss"].backward()
    for p in new_layer_params(model):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert model.backbone.top.weight.grad.abs().sum() > 0
    assert model.backbone.stem.weight.grad is None  # frozen


def test_loss_weights_scale_the_terms():
    weights = LossWeights(cls=0.5, rvmin=2.0, er=0.0, ecr=3.0, domain=0.25, cps_source=1.5,
                          cps_target=0.0)
    torch.manual_seed(0)
    model = build_method(MethodConfig(weights=weights), FakeBackbone(), NUM_CLASSES).train()
    out = model(batch(), progress=0.2)
    expected = sum(getattr(weights, k) * out[k] for k in TERMS["seam_plda"])
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["stat/grl_alpha"].item() == pytest.approx(2 / (1 + torch.e ** -2) - 1, rel=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_sgd_steps_lower_the_loss(name):
    model = make(name)
    data = batch()
    params = [p for p in model.parameters() if p.requires_grad]
    lr = 0.02 if model.has_background else 0.05
    losses = []
    for _ in range(6):
        torch.manual_seed(0)  # the same dropout masks every step: a fixed objective
        loss = model(data, progress=0.0)["loss"]
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():  # plain SGD (torch.optim's first step costs seconds of imports)
            for p, g in zip(params, grads):
                p -= lr * g
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", METHODS)
def test_cams_shapes(name):
    model = make(name).eval()
    out = model.cams(batch()["image"])
    raw_channels = NUM_CLASSES + model.has_background
    assert out.cam.shape == (2, NUM_CLASSES, 4, 4)
    assert out.raw.shape == (2, raw_channels, 4, 4)
    assert not out.cam.requires_grad
    if not model.has_background:
        torch.testing.assert_close(out.cam, out.raw)


def test_seam_cams_are_the_revised_cam_and_chunking_does_not_change_them():
    full = make("seam", seam=SEAMConfig(pcm_chunk_size=0)).eval()
    image = batch()["image"]
    reference = full.cams(image)
    torch.testing.assert_close(full.cams(image, chunk_size=5).cam, reference.cam)
    full.seam_cfg.pcm_chunk_size = 7
    torch.testing.assert_close(full.cams(image).cam, reference.cam)
    # The revised CAM differs from the raw one (PCM did propagate) and shares its shape.
    assert not torch.allclose(reference.cam, reference.raw[:, 1:])


@pytest.mark.parametrize("name", METHODS)
def test_unrevised_cams_are_the_classifier_map(name):
    """``revised=False`` (``cam.map=raw``): SEAM/PLDA give their classifier's foreground map,
    PCM skipped; plain CAM has no other map and gives the same output either way."""
    model = make(name).eval()
    image = batch()["image"]
    revised, raw = model.cams(image), model.cams(image, revised=False)
    torch.testing.assert_close(raw.raw, revised.raw)
    if not model.has_background:
        torch.testing.assert_close(raw.cam, revised.cam)
    else:
        torch.testing.assert_close(raw.cam, revised.raw[:, 1:])
        assert not torch.allclose(raw.cam, revised.cam)


@pytest.mark.parametrize("name", METHODS)
def test_parameter_groups_cover_every_trainable_parameter_once(name):
    model = make(name)
    groups = model.parameter_groups()
    assert [g["name"] for g in groups] == ["backbone_weights", "backbone_biases", "new_weights",
                                           "new_biases"]
    assert [g["lr_mult"] for g in groups] == [1.0, 2.0, 10.0, 20.0]
    assert [g["weight_decay_mult"] for g in groups] == [1.0, 0.0, 1.0, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    backbone = {id(p) for p in model.backbone.parameters()}
    assert all(id(p) in backbone for g in groups[:2] for p in g["params"])
    assert not any(id(p) in backbone for g in groups[2:] for p in g["params"])
    assert all(p.dim() == 1 for p in groups[3]["params"])


def test_domain_loss_gradient_is_reversed_into_the_backbone():
    weights = LossWeights(cls=0, rvmin=0, er=0, ecr=0, domain=1, cps_source=0, cps_target=0)
    grads = {}
    for progress in (0.0, 1.0):
        torch.manual_seed(0)
        model = build_method(MethodConfig(weights=weights), FakeBackbone(), NUM_CLASSES).eval()
        model(batch(), progress=progress)["loss"].backward()
        grads[progress] = model.backbone.top.weight.grad.clone()
        assert model.plda.domain.trunk[0].weight.grad.abs().sum() > 0
    assert torch.all(grads[0.0] == 0)  # alpha(0) = 0 blocks the backbone gradient
    assert grads[1.0].abs().sum() > 0


def test_erased_pass_dropout_follows_the_reference_switch():
    image = batch()["image"]
    for reference in (False, True):
        model = make("seam_plda", reference=reference)
        label = batch()["label"]
        with torch.no_grad(), dropout_disabled(model):
            view = model.run_views([image])[0]
        runs = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            runs.append(model.plda.domains(model, image, view, label)[3].raw)
        assert torch.equal(runs[0], runs[1]) != reference
        assert all(m.training for m in model.modules() if isinstance(m, nn.Dropout2d))


def test_dropout_disabled_restores_modes():
    model = make("seam_plda")
    model.plda.domain.trunk[2].eval()  # an inactive dropout must stay inactive
    with dropout_disabled(model):
        assert not any(m.training for m in model.modules()
                       if isinstance(m, nn.modules.dropout._DropoutNd))
    assert model.classifier.dropout.training and model.backbone.drop.training
    assert not model.plda.domain.trunk[2].training


def test_wrong_label_shape_is_a_data_error():
    model = make("seam")
    data = batch()
    data["label"] = data["label"][:, :2]
    with pytest.raises(DataError, match="num_classes=3"):
        model(data)


def _published_pamr_buffers() -> dict[str, torch.Tensor]:
    """PAMR's three ``kernel`` buffers as the published ``Net.state_dict()`` saves them, written
    out cell by cell (LocalAffinityAbs: centre +1, neighbour -1; LocalAffinityCopy: neighbour +1;
    LocalStDev: each cell of the window)."""
    neighbours = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
    diff, copy, window = torch.zeros(8, 1, 3, 3), torch.zeros(8, 1, 3, 3), torch.zeros(9, 1, 3, 3)
    for row, (y, x) in enumerate(neighbours):
        diff[row, 0, 1, 1], diff[row, 0, y, x] = 1, -1
        copy[row, 0, y, x] = 1
    for row in range(9):
        window[row, 0, row // 3, row % 3] = 1
    return {"PAMR.aff_x.kernel": diff, "PAMR.aff_m.kernel": copy, "PAMR.aff_std.kernel": window}


def _published_state(model: nn.Module, prefix: str, seed: int = 5) -> dict[str, torch.Tensor]:
    """The full key set of the published ``resnet38_plda.Net.state_dict()`` (parameters and
    buffers: BN statistics, PAMR's kernels) for ``model``'s shapes, random values."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(shape, generator=gen)  # noqa: E731
    state = {k: rand(*v.shape).to(v.dtype) for k, v in model.backbone.state_dict().items()}
    state.update({
        "fc8.weight": rand(4, 16, 1, 1),
        "f8_3.weight": rand(64, 8, 1, 1),
        "f8_4.weight": rand(128, 12, 1, 1),
        "f9.weight": rand(192, 195, 1, 1),
        "discriminator.d_conv1.weight": rand(1024, 16, 1, 1),
        "discriminator.d_conv1.bias": rand(1024),
        "discriminator.d_conv2.weight": rand(512, 1024, 1, 1),
        "discriminator.d_conv2.bias": rand(512),
    })
    for c in range(NUM_CLASSES):
        state[f"head_list.{c}.weight"], state[f"head_list.{c}.bias"] = rand(2, 512, 1, 1), rand(2)
    state.update(_published_pamr_buffers())
    return {prefix + k: v for k, v in state.items()}


@pytest.mark.parametrize("prefix", ["", "module."])
def test_reference_checkpoint_names_map_onto_the_model(prefix):
    model = make("seam_plda")
    state = _published_state(model, prefix)
    model.load_state_dict(convert_reference_state_dict(state), strict=True)
    assert torch.equal(model.classifier.conv.weight, state[f"{prefix}fc8.weight"])
    assert torch.equal(model.pcm.embed.weight, state[f"{prefix}f9.weight"])
    for c, (sw, sb) in enumerate(zip(*model.plda.domain.to_separate_heads())):
        assert torch.equal(state[f"{prefix}head_list.{c}.weight"], sw)
        assert torch.equal(state[f"{prefix}head_list.{c}.bias"], sb)
    assert isinstance(model, SEAMPLDAModel)


def test_reference_export_is_the_inverse_of_the_import():
    model = make("seam_plda", seed=3)
    exported = to_reference_state_dict(model.state_dict())
    assert set(exported) == set(_published_state(model, ""))
    for key, value in _published_pamr_buffers().items():
        assert torch.equal(exported[key], value)
    back = convert_reference_state_dict(exported)
    assert set(back) == set(model.state_dict())
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("key", ["PAMR.aff_x.kernel", "PAMR.aff_std.kernel"])
def test_a_reference_pamr_buffer_that_is_not_the_fixed_kernel_is_refused(key):
    state = _published_state(make("seam_plda"), "module.")
    state[f"module.{key}"] = state[f"module.{key}"].flip(0)
    with pytest.raises(WeightsError, match=key.replace(".", r"\.")):
        convert_reference_state_dict(state)


@pytest.mark.parametrize("reference", [False, True])
def test_cps_on_single_class_images_depends_on_the_reference_switch(reference):
    # Seed 7: initial weights whose confident CAMs (x100) give PAMR labels that claim both
    # background and the image's class inside its source region, so CPS has pixels to weigh.
    model = make("seam_plda", seed=7, reference=reference)
    with torch.no_grad():
        model.classifier.conv.weight.mul_(100)
    for m in model.modules():  # the outcome must not hinge on which channels dropout drew
        if isinstance(m, nn.Dropout2d):
            m.p = 0.0
    data = batch()
    data["label"] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = model(data, progress=0.5)
    assert out["stat/source_fraction"] > 0  # there are source pixels to supervise
    # Reference: weights (N - N_k) / (N + 1) on a one-class pseudo label are all 0.
    # Default: counts include the background of the full pseudo label, so the loss is positive.
    assert (out["cps_source"].item() == 0.0) == reference


def _assert_trains_and_infers(model, data, name: str, cam_grid: tuple[int, int]) -> None:
    """Every loss term of ``name`` present and finite, finite gradients reaching the classifier,
    and finite eval-mode CAMs on ``cam_grid``."""
    out = model(data, progress=0.5)
    assert TERMS[name] <= set(out)
    for key in TERMS[name] | {"loss"}:
        assert torch.isfinite(out[key]), key
    out["loss"].backward()
    grads = [p.grad for p in model.classifier.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    cams = model.eval().cams(data["image"][:1])
    assert cams.cam.shape == (1, NUM_CLASSES, *cam_grid) and torch.isfinite(cams.cam).all()


@pytest.mark.parametrize("name", METHODS)
def test_methods_train_and_infer_on_a_stride_32_backbone(name):
    """Stride 32 (EfficientNet-Lite0 as pretrained, no dilation): SEAM's 0.3x view of a 64 px
    crop is then a single feature pixel; every loss stays finite, gradients reach the
    classifier, and CAMs come out on the /32 grid."""
    from plda.models.backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", output_stride=32)
    model = build_method(MethodConfig(name=name), backbone, NUM_CLASSES).train()
    gen = torch.Generator().manual_seed(2)
    data = {"image": torch.randn(2, 3, 64, 64, generator=gen),
            "label": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])}
    _assert_trains_and_infers(model, data, name, (2, 2))


@pytest.mark.parametrize("name", ["seam", "seam_plda"])
def test_pcm_on_a_finer_grid_than_a_stride_32_cam(name):
    """``method.seam.pcm_stride=16`` on a stride-32 backbone: the raw CAM is upsampled to the
    stride-16 level's grid before PCM, so the revised CAMs (and PLDA's source / target masks)
    live on that grid; training stays finite and the classifier still gets gradients."""
    from plda.models.backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", output_stride=32)
    cfg = MethodConfig(name=name, seam=SEAMConfig(pcm_stride=16))
    model = build_method(cfg, backbone, NUM_CLASSES).train()
    assert model.pcm_grid_level == "stage5"
    gen = torch.Generator().manual_seed(2)
    data = {"image": torch.randn(2, 3, 96, 96, generator=gen),
            "label": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])}
    view = model.run_view(data["image"])
    assert view.features.shape[-2:] == (3, 3)
    assert view.raw.shape[-2:] == view.cam_rv.shape[-2:] == (6, 6)
    # The upsampled raw CAM is the classifier's stride-32 map resized, not a new prediction.
    raw = model.classifier(view.features)
    assert torch.allclose(view.raw, F.interpolate(raw, size=(6, 6), mode="bilinear",
                                                  align_corners=True), atol=1e-6)
    _assert_trains_and_infers(model, data, name, (6, 6))


@pytest.mark.parametrize("stride,output_stride,match", [
    (8, 16, None),        # stage3 is at stride 8 whatever the output stride
    (16, 16, None),       # the CAM's own grid: nothing to do
    (32, 16, "no level at that stride"),  # coarser than the CAM
    (4, 32, None),
    (12, 32, "expected null or one of"),
])
def test_pcm_stride_must_name_a_level_of_the_backbone(stride, output_stride, match):
    from plda.errors import ConfigError
    from plda.methods.seam import _pcm_grid_level
    from plda.models.backbones import build_backbone

    backbone = build_backbone("efficientnet_lite0", output_stride=output_stride)
    if match is None:
        level = _pcm_grid_level(backbone, stride)
        assert level is None if stride == output_stride else backbone.strides[level] == stride
    else:
        with pytest.raises(ConfigError, match=match):
            _pcm_grid_level(backbone, stride)
    with pytest.raises(ConfigError, match="pcm_stride"):
        SEAMConfig(pcm_stride=0)


def _plda_domains():
    from benchmarks import plda_domains

    return plda_domains


def test_plda_domains_scores_source_and_target_against_the_mask():
    """benchmarks/plda_domains.py: pixel counts of S_c / T_c against a hand-made mask."""
    import numpy as np

    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:, :2] = 1          # class index 0 (label value 1) on the left half
    gt[0, 0] = 255         # ignored
    source = np.zeros((2, 4, 4), dtype=bool)
    target = np.zeros((2, 4, 4), dtype=bool)
    source[0, :, 0] = True                 # 3 kept pixels, all on the object
    target[0, :, 1] = True                 # 4 on the object
    target[0, :2, 2] = True                # 2 on background
    source[1] = target[1] = True           # class 1 is absent: not scored
    cps_source = source.copy()
    cps_target = np.zeros_like(target)
    cps_target[0, 1:3, 2] = True           # 2 on background
    cps_target[0, 3, 1] = True             # 1 on the object
    counts = _plda_domains().score_domains(source, target, gt, [0], cps_source, cps_target)
    assert counts == {"s": 3, "s_in": 3, "t": 6, "t_in": 4, "t_bg": 2, "gt": 7, "covered": 7,
                      "pairs": 1, "grid": 15, "cps_s": 3, "cps_s_in": 3, "cps_t": 3,
                      "cps_t_in": 1}
    table = _plda_domains().purity(counts)
    assert table["S in c"] == 100.0 and table["CPS T in c"] == pytest.approx(100 / 3)


def test_plda_domains_near_keeps_targets_next_to_the_source():
    model = make("seam_plda", plda=PLDAConfig(tau=0.3)).eval()
    data = batch()
    domains = _plda_domains()
    source, target, cps_s, cps_t = domains.domain_masks(model, model.plda, data["image"],
                                                        data["label"])
    assert source.any() and target.any() and not (source & target).any()
    assert cps_s.shape == source.shape and not (cps_s & ~source).any()  # CPS stays inside S
    model.plda.cfg.target_near = 1
    _, near, _, _ = domains.domain_masks(model, model.plda, data["image"], data["label"])
    assert not (near & ~target).any()  # a subset of the unrestricted target
    for b, c, i, j in torch.nonzero(near).tolist():
        assert source[b, c, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].any()


def test_near_source_keeps_targets_within_k_cells_of_the_same_class():
    from plda.methods.domain import near_source

    source = torch.zeros(1, 2, 7, 7, dtype=torch.bool)
    source[0, 0, 3, 3] = True
    target = torch.ones(1, 2, 7, 7, dtype=torch.bool)
    assert torch.equal(near_source(target, source, 0), target)
    one = near_source(target, source, 1)
    assert one[0, 0].sum() == 9 and one[0, 0, 2:5, 2:5].all()
    assert not one[0, 1].any()  # class 1 has no source: nothing of its target is near one
    assert near_source(target, source, 2)[0, 0].sum() == 25


def test_target_near_restricts_the_domain_target_in_training():
    gen = torch.Generator().manual_seed(3)
    image = torch.randn(2, 3, 96, 96, generator=gen)  # a 12 x 12 grid
    image[:, :, 8:40, 56:88] += 2.0
    data = {"image": image, "label": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])}
    fractions = {}
    for near in (0, 1):
        model = make("seam_plda", plda=PLDAConfig(tau=0.9, target_near=near))
        out = model(data, progress=0.5)
        assert torch.isfinite(out["loss"])
        fractions[near] = float(out["stat/target_fraction"])
    assert 0 < fractions[1] < fractions[0]


def test_plda_domains_shows_what_plda_would_get_from_a_cam_baseline():
    """A baseline run has no PLDA layers: a PLDA component is built from its settings, and S, T
    and CPS's labels come from the plain CAM."""
    from types import SimpleNamespace

    model = make("cam").eval()
    with torch.no_grad():  # positive CAMs (the features are ReLU outputs): something to assign
        model.classifier.conv.weight.abs_()
    domains = _plda_domains()
    plda = domains.plda_part(model, SimpleNamespace(method=MethodConfig(
        name="cam", plda=PLDAConfig(tau=0.3))))
    data = batch()
    source, target, cps_s, cps_t = domains.domain_masks(model, plda, data["image"], data["label"])
    assert source.shape == (2, NUM_CLASSES, 4, 4) and source.any()
    # Only present classes get a source.
    assert not source[data["label"] == 0].any()
    assert not (target & source).any() and not (cps_t & ~target).any()
