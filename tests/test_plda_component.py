"""PLDA as a component: CAM + PLDA on hand-made tensors, a third baseline composed without
touching PLDA, and ``model.init_from`` (a baseline's weights into its PLDA variant)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plda.errors import ConfigError, WeightsError
from plda.methods import (CAMPLDAModel, CPSConfig, LossWeights, MethodConfig, PAMRConfig,
                          WithPLDA, build_method)
from plda.methods.base import StageOneModel, ViewOutput
from plda.methods.cps import cam_probabilities
from plda.methods.domain import IGNORE, domain_labels
from plda.methods.init_from import init_from, resolve_source
from plda.weights.io import save_state_dict_file

pytestmark = pytest.mark.usefixtures("one_thread")

STRIDE = 4
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class PoolBackbone(nn.Module):
    """A backbone whose final features are the image average-pooled to stride 4, plus a ReLU:
    with the classifier set to the identity, class c's CAM is the pooled image channel c."""

    level_names = ("final",)
    channels = {"final": 3}
    strides = {"final": STRIDE}
    final_level = "final"
    pcm_levels = ("final", "final")
    input_mean, input_std = MEAN, STD

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1))  # something to train

    def forward(self, x):
        return {"final": F.relu(self.gain * F.avg_pool2d(x, STRIDE))}

    def forward_views(self, images):
        return [self(x) for x in images]

    def parameter_groups(self):
        return [self.gain], []


def cam_plda(**method) -> CAMPLDAModel:
    torch.manual_seed(0)
    model = build_method(MethodConfig(name="cam_plda", **method), PoolBackbone(), 3)
    with torch.no_grad():
        model.classifier.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    return model.train()


def part_and_body_image() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One 32x32 image (8x8 grid): class 0's channel is 4 on a 2x2-cell part and 2 on the 2x4
    cells of its body next to it, 0 elsewhere; channels 1 and 2 are 0. Returns (image, part
    cells, body cells) with the masks on the grid."""
    image = torch.zeros(1, 3, 32, 32)
    part = torch.zeros(8, 8, dtype=torch.bool)
    body = torch.zeros(8, 8, dtype=torch.bool)
    part[2:4, 2:4] = True
    body[2:4, 4:8] = True
    image[0, 0] = F.interpolate((4.0 * part + 2.0 * body)[None, None].float(), scale_factor=STRIDE,
                                mode="nearest")[0, 0]
    return image, part, body


def test_cam_views_carry_the_cam_with_a_constant_background():
    model = cam_plda(cps=CPSConfig(background_logit=1.5))
    image, part, body = part_and_body_image()
    view = model.run_views([image])[0]
    assert view.raw.shape == (1, 4, 8, 8) and view.cam_rv is view.raw
    assert torch.all(view.raw[:, 0] == 1.5)
    torch.testing.assert_close(view.raw[0, 1], 4.0 * part + 2.0 * body)  # the CAM itself
    assert not model.has_background  # inference output is plain CAM's
    out = model.cams(image)
    torch.testing.assert_close(out.cam, view.raw[:, 1:])


def test_cam_plda_source_is_the_part_and_target_the_body():
    """MaskAssign on the CAM: normalised part 1.0 > tau 0.6 > body 0.5, so S = the part; with the
    part erased, the body alone peaks, so T = the body; domain labels follow."""
    model = cam_plda()
    image, part, body = part_and_body_image()
    label = torch.tensor([[1.0, 0.0, 0.0]])
    with torch.no_grad():
        view = model.run_views([image])[0]
        source, target, erased, second = model.plda.domains(model, image, view, label)
    assert torch.equal(source[0, 0], part) and not source[0, 1:].any()
    pixels = F.interpolate(part[None, None].float(), scale_factor=STRIDE)[0, 0].bool()
    assert torch.all(erased[0, :, pixels] == 0)  # the part is erased (0 = the mean colour)
    assert torch.equal(erased[0, :, ~pixels], image[0, :, ~pixels])
    assert torch.equal(target[0, 0], body)
    labels = domain_labels(source, target & ~source)
    assert torch.all(labels[0, 0][part] == 0) and torch.all(labels[0, 0][body] == 1)
    assert torch.all(labels[0, 0][~(part | body)] == IGNORE)
    assert torch.all(labels[0, 1:] == IGNORE)


def test_cam_plda_cps_trains_the_cam_against_the_constant_background():
    model = cam_plda(pamr=PAMRConfig(iterations=0))
    image, part, body = part_and_body_image()
    label = torch.tensor([[1.0, 0.0, 0.0]])
    view = model.run_views([image])[0]
    terms, stats = model.plda(model, image, view, label, alpha=1.0)
    assert set(terms) == {"domain", "cps_source", "cps_target"}
    assert stats["source_fraction"].item() == pytest.approx(4 / 64)
    assert stats["target_fraction"].item() == pytest.approx(8 / 64)
    # The pseudo labels CPS uses: softmax of (1, CAM) claims the part and body for class 1.
    prob = cam_probabilities(view.raw)
    assert torch.all(prob[0, 1][part | body] > prob[0, 0][part | body])
    (terms["cps_source"] + terms["cps_target"]).backward()
    grad = model.classifier.conv.weight.grad.flatten(1)
    assert grad[0, 0] < 0  # CPS raises class 1's logit where its pseudo labels are
    assert terms["cps_source"] > 0 and terms["cps_target"] > 0


def test_cam_plda_domain_gradient_is_reversed():
    weights = LossWeights(cls=0, domain=1, cps_source=0, cps_target=0)
    image, _, _ = part_and_body_image()
    label = torch.tensor([[1.0, 0.0, 0.0]])
    grads = []
    for alpha in (0.5, -0.5):  # -alpha undoes the reversal: the plain gradient, scaled
        model = cam_plda(weights=weights)
        model.plda.domain.eval()  # no dropout: the same objective both times
        view = model.run_views([image])[0]
        terms, _ = model.plda(model, image, view, label, alpha=alpha)
        terms["domain"].backward()
        grads.append(model.backbone.gain.grad.clone())
    assert grads[0].abs().item() > 0
    torch.testing.assert_close(grads[0], -grads[1])


def test_cam_plda_step_has_the_cam_and_plda_terms_and_trains():
    model = cam_plda()
    image, _, _ = part_and_body_image()
    image = image.repeat(2, 1, 1, 1)
    image[1] = image[1].roll(3, -1)
    out = model({"image": image, "label": torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])},
                progress=0.5)
    assert {"loss", "cls", "domain", "cps_source", "cps_target", "stat/grl_alpha"} <= set(out)
    out["loss"].backward()
    assert model.plda.domain.heads.weight.grad.abs().sum() > 0
    assert model.backbone.gain.grad.abs().sum() > 0


class TwoScaleCAM(StageOneModel):
    """A third baseline written against the interface only: plain CAM on the image and on its
    half-size copy, with a background channel of its own."""

    has_background = True

    def __init__(self, cfg, backbone, num_classes):
        super().__init__(backbone, num_classes, cfg.weights)
        self.head = nn.Conv2d(backbone.channels["final"], num_classes + 1, 1, bias=False)

    def training_views(self, image):
        return [image, F.interpolate(image, scale_factor=0.5, mode="bilinear")]

    def run_views(self, images):
        out = []
        for levels in self.backbone.forward_views(images):
            raw = self.head(levels["final"])
            out.append(ViewOutput(features=levels["final"], raw=raw, cam_rv=raw))
        return out

    def baseline_losses(self, images, views, label):
        return {"cls": sum(F.multilabel_soft_margin_loss(v.raw[:, 1:].mean((2, 3)), label)
                           for v in views) / len(views)}

    def cams(self, image, chunk_size=None, revised=True):
        raise NotImplementedError


class TwoScaleCAMPLDA(WithPLDA, TwoScaleCAM):
    pass


def test_a_new_baseline_gets_plda_by_composition():
    torch.manual_seed(0)
    base = TwoScaleCAM(MethodConfig(name="cam"), PoolBackbone(), 3)
    torch.manual_seed(0)
    model = TwoScaleCAMPLDA(MethodConfig(name="cam"), PoolBackbone(), 3).train()
    image, _, _ = part_and_body_image()
    batch = {"image": image.repeat(2, 1, 1, 1), "label": torch.tensor([[1.0, 0, 0]] * 2)}
    out = model(batch, progress=1.0)
    assert {"cls", "domain", "cps_source", "cps_target"} <= set(out)
    assert out["cls"].item() == pytest.approx(base(batch)["cls"].item())  # same init, same term
    out["loss"].backward()
    assert model.plda.domain.heads.weight.grad is not None
    assert set(model.state_dict()) - set(base.state_dict()) == {
        k for k in model.state_dict() if k.startswith("plda.")}


# ---- model.init_from ---------------------------------------------------------------------

def test_a_cam_run_initialises_cam_plda_and_plda_starts_fresh(tmp_path):
    torch.manual_seed(3)
    cam = build_method(MethodConfig(name="cam"), PoolBackbone(), 3)
    with torch.no_grad():
        cam.classifier.conv.weight.normal_()
        cam.backbone.gain.fill_(2.5)
    run = tmp_path / "cam_run"
    run.mkdir()
    save_state_dict_file(run / "stage1.safetensors", cam.state_dict())
    fresh = cam_plda()
    before = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("plda.")}
    report = init_from(fresh, run)
    assert torch.equal(fresh.classifier.conv.weight, cam.classifier.conv.weight)
    assert fresh.backbone.gain.item() == 2.5
    assert report.loaded == 2 and report.path == str(run / "stage1.safetensors")
    assert set(report.fresh) == set(before) and not report.skipped and not report.not_loaded
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())


def test_a_seam_run_initialises_seam_plda(tmp_path):
    from test_methods_models import FakeBackbone

    torch.manual_seed(4)
    seam = build_method(MethodConfig(name="seam"), FakeBackbone(), 3)
    path = tmp_path / "seam.safetensors"
    save_state_dict_file(path, seam.state_dict())
    torch.manual_seed(5)
    model = build_method(MethodConfig(name="seam_plda"), FakeBackbone(), 3)
    report = init_from(model, path)
    for key, value in seam.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert report.fresh and all(k.startswith("plda.domain.") for k in report.fresh)


def test_a_mismatched_file_names_the_keys(tmp_path):
    from test_methods_models import FakeBackbone

    seam = build_method(MethodConfig(name="seam"), FakeBackbone(), 3)
    path = tmp_path / "seam.safetensors"
    save_state_dict_file(path, seam.state_dict())
    model = build_method(MethodConfig(name="cam_plda"), FakeBackbone(), 3)
    before = model.classifier.conv.weight.clone()
    with pytest.raises(WeightsError) as err:
        init_from(model, path)
    text = str(err.value)
    assert "not in the model: pcm." in text
    assert "classifier.conv.weight (4, 16, 1, 1) in the file, (3, 16, 1, 1) in the model" in text
    assert "init_from_strict=false" in text
    assert torch.equal(model.classifier.conv.weight, before)  # nothing loaded
    # Non-strict: the backbone loads, the rest is reported.
    report = init_from(model, path, strict=False)
    assert torch.equal(model.backbone.top.weight, seam.backbone.top.weight)
    assert "classifier.conv.weight" in report.skipped and "classifier.conv.weight" in \
        report.not_loaded
    assert any(k.startswith("pcm.") for k in report.skipped)


def test_a_baseline_missing_a_non_plda_layer_is_refused(tmp_path):
    cam = build_method(MethodConfig(name="cam"), PoolBackbone(), 3)
    state = {k: v for k, v in cam.state_dict().items() if k != "classifier.conv.weight"}
    path = tmp_path / "partial.safetensors"
    save_state_dict_file(path, state)
    with pytest.raises(WeightsError, match=r"missing from the file: classifier\.conv\.weight"):
        init_from(cam_plda(), path)


def test_published_seam_names_and_old_plda_names_load(tmp_path):
    from test_methods_models import FakeBackbone

    from plda.methods import to_reference_state_dict

    torch.manual_seed(6)
    seam = build_method(MethodConfig(name="seam"), FakeBackbone(), 3)
    published = to_reference_state_dict(seam.state_dict())  # fc8, f8_3, f8_4, f9, backbone
    path = tmp_path / "published_seam.pth"
    torch.save(published, path)
    model = build_method(MethodConfig(name="seam_plda"), FakeBackbone(), 3)
    init_from(model, path)
    assert torch.equal(model.pcm.embed.weight, seam.pcm.embed.weight)
    # A SEAM+PLDA state saved when PLDA's layers were top-level ``domain.*``.
    torch.manual_seed(7)
    other = build_method(MethodConfig(name="seam_plda"), FakeBackbone(), 3)
    old = {("domain." + k[len("plda.domain."):] if k.startswith("plda.domain.") else k): v
           for k, v in other.state_dict().items()}
    save_state_dict_file(tmp_path / "old.safetensors", old)
    report = init_from(model, tmp_path / "old.safetensors")
    assert not report.fresh
    assert torch.equal(model.plda.domain.heads.weight, other.plda.domain.heads.weight)
    model.load_state_dict(old)  # the load hook renames them too


def test_init_from_sources_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="no such file or folder"):
        resolve_source(tmp_path / "nowhere")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ConfigError, match="no stage1.safetensors and no checkpoints"):
        resolve_source(tmp_path / "empty_run")
    save_state_dict_file(tmp_path / "other.safetensors", {"x.weight": torch.zeros(2)})
    with pytest.raises(WeightsError, match="has no tensor that fits"):
        init_from(cam_plda(), tmp_path / "other.safetensors", strict=False)
