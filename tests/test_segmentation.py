"""Stage-2 segmentation networks, their weights file and their training on masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from plda.errors import ConfigError, DataError, WeightsError
from plda.segmentation.models import (build_segmentation_net, load_segmentation_net,
                                      read_segmentation_metadata,
                                      save_segmentation_net)
from plda.segmentation.training import SegmentationTrainModel, segmentation_loss


def _lite(num_classes: int = 4, arch: str = "deeplab_lite", output_stride: int = 16):
    torch.manual_seed(0)
    return build_segmentation_net(arch, "efficientnet_lite0", num_classes,
                                  output_stride=output_stride)


# ---- architectures ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,backbone,output_stride,size,stride", [
    ("deeplab_lite", "efficientnet_lite0", 16, 64, 16),
    ("deeplab_lite", "efficientnet_lite0", 8, 64, 8),
    ("deeplab_v3plus", "efficientnet_lite0", 16, 64, 4),
    ("deeplab_lite_plus", "efficientnet_lite0", 32, 64, 4),
    ("deeplab_lite_plus", "efficientnet_lite0", 16, 64, 4),
    ("deeplab_lite_plus", "resnet50", 32, 64, 4),
    ("deeplab_v2", "resnet50", 16, 64, 16),
    ("deeplab_v1_largefov", "resnet38", 8, 32, 8),
    ("deeplab_v2", "resnet101", 8, 32, 8),
])
def test_arch_output_shape_and_stride(one_thread, arch, backbone, output_stride, size, stride):
    net = build_segmentation_net(arch, backbone, 3, output_stride=output_stride).eval()
    assert (net.arch, net.backbone_name, net.num_classes) == (arch, backbone, 3)
    assert net.logit_stride == stride
    with torch.no_grad():
        out = net(torch.randn(1, 3, size, size))
    assert out.shape == (1, 3, size // stride, size // stride)
    assert torch.isfinite(out).all()


def test_deeplab_v2_aspp_rates_and_init(one_thread):
    net = build_segmentation_net("deeplab_v2", "resnet50", 21, output_stride=8)
    assert net.head.rates == (6, 12, 18, 24)
    for conv in net.head.branches:
        assert conv.out_channels == 21 and conv.kernel_size == (3, 3)
        assert conv.bias.abs().max() == 0 and 0.005 < conv.weight.std() < 0.015
    # At stride 16 the dilations halve: the same field of view in input pixels.
    assert build_segmentation_net("deeplab_v2", "resnet50", 3, output_stride=16).head.rates == \
        (3, 6, 9, 12)


def test_lite_plus_runs_the_backbone_undilated_at_stride_32(one_thread):
    net = _lite(3, arch="deeplab_lite_plus", output_stride=32).eval()
    # No dilated convolution in the backbone: the network as ImageNet trained it.
    dilations = {m.dilation for m in net.backbone.modules() if isinstance(m, nn.Conv2d)}
    assert dilations == {(1, 1)}
    assert net.backbone.strides["head"] == 32 and net.low_level == "stage2"
    assert net.head.aspp.rates == (3, 6)  # 6 / 12 at stride 16, the same field of view
    assert net.head.reduce[0].in_channels == 24 and net.head.reduce[0].out_channels == 32
    # The decoder is what makes the logits fine: a change confined to one 4 x 4 input cell
    # (stride-4 position (8, 8)) moves the logits around that position only, where a stride-32
    # head would move a whole 32 x 32 block.
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        base = net(x)
        y = x.clone()
        y[..., 32:36, 32:36] += 3.0
        diff = (net(y) - base).abs().sum(1)[0]
    assert diff.shape == (16, 16)
    row, col = divmod(diff.argmax().item(), 16)
    assert abs(row - 8) <= 2 and abs(col - 8) <= 2
    assert diff[5:12, 5:12].sum() > 0.95 * diff.sum()


def test_largefov_head_matches_seam_widths(one_thread):
    net = build_segmentation_net("deeplab_v1_largefov", "resnet38", 21)
    head = net.head
    assert head.fc6.in_channels == 4096 and head.fc6.out_channels == 512
    assert head.fc6.dilation == (12, 12) and head.fc6.kernel_size == (3, 3)
    assert head.fc7.kernel_size == (1, 1) and head.fc8.out_channels == 21
    assert head.dropout.p == 0.5


@pytest.mark.parametrize("kwargs,match", [
    (dict(arch="deeplab_v9", backbone="resnet101"), "deeplab_v2"),
    (dict(arch="deeplab_v2", backbone="vgg16"), "efficientnet_lite0"),
    (dict(arch="deeplab_lite", backbone="efficientnet_lite0", output_stride=4), "8, 16 or 32"),
    (dict(arch="deeplab_v1_largefov", backbone="resnet38", output_stride=16), "resnet38"),
    (dict(arch="deeplab_lite_plus", backbone="resnet38", output_stride=32), "resnet38"),
])
def test_bad_arch_or_backbone_is_config_error(kwargs, match):
    args = dict(kwargs)
    with pytest.raises(ConfigError, match=match):
        build_segmentation_net(args.pop("arch"), args.pop("backbone"), 3, **args)


@pytest.mark.parametrize("arch", ["deeplab_lite", "deeplab_v3plus", "deeplab_lite_plus"])
def test_parameter_groups_cover_trainable_params_once(one_thread, arch):
    net = _lite(arch=arch)
    groups = net.parameter_groups()
    assert [(g["name"], g["lr_mult"], g["weight_decay_mult"]) for g in groups] == [
        ("backbone_weights", 1.0, 1.0), ("backbone_biases", 2.0, 0.0),
        ("new_weights", 10.0, 1.0), ("new_biases", 20.0, 0.0)]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in net.parameters() if p.requires_grad}
    head = {id(p) for p in net.head.parameters()}
    assert {id(p) for p in groups[2]["params"] + groups[3]["params"]} == head
    # Frozen backbone BN (the default) is not trained at all.
    bn_ids = {id(p) for m in net.backbone.modules() if isinstance(m, nn.BatchNorm2d)
              for p in m.parameters()}
    assert not bn_ids & set(ids)


def test_frozen_bn_stays_frozen_under_sync_batchnorm(one_thread):
    net = nn.SyncBatchNorm.convert_sync_batchnorm(_lite())
    net.train()
    backbone_bn = [m for m in net.backbone.modules() if isinstance(m, nn.SyncBatchNorm)]
    head_bn = [m for m in net.head.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert backbone_bn and head_bn
    assert all(not m.training and not m.weight.requires_grad for m in backbone_bn)
    assert all(m.training and m.weight.requires_grad for m in head_bn)


# ---- weights file -------------------------------------------------------------------------------

def test_save_load_round_trip(one_thread, tmp_path):
    net = _lite(3, arch="deeplab_v3plus").eval()
    with torch.no_grad():  # make BN statistics non-default so that buffers are checked too
        net.head.reduce[1].running_mean.uniform_(-1, 1)
    names = ["background", "cat", "dog"]
    path = tmp_path / "run" / "deeplab" / "segmentation.safetensors"
    save_segmentation_net(path, net, names)
    assert not list(path.parent.glob(".tmp-*"))
    x = torch.randn(2, 3, 48, 40)
    for source in (path, tmp_path / "run"):  # the file, or the run folder
        loaded, meta = load_segmentation_net(source, device="cpu")
        assert not loaded.training
        assert meta["class_names"] == names
        assert (meta["arch"], meta["backbone"], meta["output_stride"], meta["num_classes"]) == \
            ("deeplab_v3plus", "efficientnet_lite0", 16, 3)
        assert meta["input_mean"] == pytest.approx(net.input_mean)
        # Loaded nets come in NHWC order (faster convolutions): the same weights in the same
        # order compute the same numbers.
        assert loaded.head.classifier.weight.is_contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            assert torch.equal(loaded(x), net.to(memory_format=torch.channels_last)(x))


def test_save_refuses_wrong_class_count(tmp_path):
    with pytest.raises(ConfigError, match="class names"):
        save_segmentation_net(tmp_path / "w.safetensors", _lite(3), ["background", "a"])


def test_foreign_or_broken_files_are_weights_errors(one_thread, tmp_path):
    from safetensors.torch import load_file, save_file

    plain = tmp_path / "stage1.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(WeightsError, match="stage1.safetensors.*format"):
        load_segmentation_net(plain)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a weights file at all")
    with pytest.raises(WeightsError, match="garbage.safetensors"):
        load_segmentation_net(garbage)
    with pytest.raises(WeightsError, match="missing.safetensors"):
        load_segmentation_net(tmp_path / "missing.safetensors")
    with pytest.raises(WeightsError, match="plda segment train"):
        load_segmentation_net(tmp_path)

    good = tmp_path / "good.safetensors"
    save_segmentation_net(good, _lite(3), ["background", "a", "b"])
    meta = read_segmentation_metadata(good)
    from safetensors import safe_open

    with safe_open(str(good), "pt") as fh:
        raw = fh.metadata()
    tensors = load_file(str(good))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    tampered = tmp_path / "tampered.safetensors"
    save_file(tensors, str(tampered), metadata=raw)
    with pytest.raises(WeightsError, match=rf"tampered.safetensors.*missing keys.*{dropped}"):
        load_segmentation_net(tampered)
    no_names = tmp_path / "no_names.safetensors"
    save_file(load_file(str(good)), str(no_names),
              metadata={k: v for k, v in raw.items() if k != "class_names"})
    with pytest.raises(WeightsError, match="no_names.safetensors.*class_names"):
        load_segmentation_net(no_names)
    assert meta["num_classes"] == 3


# ---- loss and training --------------------------------------------------------------------------

def test_all_ignored_batch_gives_finite_zero_loss(one_thread):
    net = _lite(3).train()
    model = SegmentationTrainModel(net)
    batch = {"image": torch.randn(2, 3, 32, 32), "mask": torch.full((2, 32, 32), 255),
             "id": ["a", "b"]}
    out = model(batch)
    assert out["loss"].item() == 0.0 and torch.isfinite(out["loss"])
    assert out["loss"].requires_grad
    out["loss"].backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and g.abs().max() == 0 for g in grads)
    assert out["stat/labelled"].item() == 0.0


def test_loss_is_mean_over_labelled_pixels():
    logits = torch.randn(1, 3, 4, 4)
    mask = torch.randint(0, 3, (1, 4, 4))
    mask[0, :2] = 255
    expected = torch.nn.functional.cross_entropy(logits, mask, ignore_index=255)
    assert segmentation_loss(logits, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_out_of_range_mask_value_names_the_image(one_thread):
    model = SegmentationTrainModel(_lite(3))
    mask = torch.zeros(2, 32, 32, dtype=torch.long)
    mask[1, 3, 3] = 7
    with pytest.raises(DataError, match=r"\[7\].*img_0002"):
        model({"image": torch.randn(2, 3, 32, 32), "mask": mask, "id": ["img_0001", "img_0002"]})


def _tiny_dataset(tmp_path: Path, n_train: int = 8, size: int = 48):
    from plda.data.synth import generate_synthetic

    root = tmp_path / "data"
    generate_synthetic(root, seed=1, n_train=n_train, n_val=2, size=size, num_classes=2)
    return root


def test_training_steps_lower_the_loss(one_thread, tmp_path):
    from plda.data.datasets import SegmentationDataset
    from plda.data.transforms import SegTransform
    from plda.engine.config import TrainConfig
    from plda.engine.distributed import init_distributed
    from plda.engine.trainer import Trainer

    root = _tiny_dataset(tmp_path, size=32)
    net = _lite(3)
    dataset = SegmentationDataset(root, "train", SegTransform(crop=32, scale=None, flip=False,
                                                              mean=net.input_mean,
                                                              std=net.input_std))
    cfg = TrainConfig(iterations=12, batch_size=4, lr=0.01, num_workers=0, log_every=1,
                      checkpoint_every=0, seed=0)
    result = Trainer(SegmentationTrainModel(net), dataset, cfg, tmp_path / "out",
                     dist=init_distributed()).fit()
    assert result.step == 12
    records = [json.loads(line) for line in (tmp_path / "out/logs/train.jsonl").open()
               if '"loss"' in line]
    losses = [r["loss"] for r in records]
    assert len(losses) == 12 and all(np.isfinite(losses))
    print("losses", [round(v, 3) for v in losses])
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    assert all(0.0 <= r["stat/pixel_acc"] <= 1.0 for r in records)


def _run_overrides(tmp_path: Path) -> list[str]:
    return [f"run_dir={tmp_path / 'run'}", "data.synth.n_train=8", "data.synth.n_val=2",
            "data.synth.size=48", "data.synth.num_classes=2", "data.synth.seed=1",
            "seg.model.pretrained=null", "seg.crop=48", "seg.train.iterations=3",
            "seg.train.batch_size=4", "seg.train.checkpoint_every=2", "seg.train.log_every=1"]


def test_segment_train_cli_writes_weights_and_metrics(one_thread, tmp_path, capsys):
    from plda.cli.main import main

    _tiny_dataset(tmp_path / "run")  # what data.root=synth generates into <run_dir>/data
    masks = tmp_path / "run" / "data" / "SegmentationClassAug"
    assert masks.is_dir()
    overrides = _run_overrides(tmp_path)

    assert main(["segment", "train", "synth_base", *overrides, "seg.mask_dir=pseudo/train"]) == 2
    assert "run 'plda refine' first" in capsys.readouterr().err

    assert main(["segment", "train", "synth_base", *overrides, f"seg.mask_dir={masks}"]) == 0
    weights = tmp_path / "run" / "deeplab" / "segmentation.safetensors"
    assert weights.is_file()
    assert str(weights) in capsys.readouterr().out
    net, meta = load_segmentation_net(tmp_path / "run")
    assert meta["class_names"][0] == "background" and net.num_classes == 3
    assert (net.arch, net.backbone_name) == ("deeplab_lite_plus", "efficientnet_lite0")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["seg_train"]["steps"] == 3 and metrics["seg_train"]["images"] == 8
    assert (tmp_path / "run" / "deeplab" / "checkpoints").is_dir()
    assert (tmp_path / "run" / "deeplab" / "logs" / "train.jsonl").is_file()
    # The run folder now names its settings: resuming from it finds the run complete.
    assert "seg:" in (tmp_path / "run" / "config.yaml").read_text()
    assert main(["segment", "train", str(tmp_path / "run"), "--resume"]) == 0


def test_resolve_mask_dir(tmp_path):
    from plda.config import load_run_config
    from plda.pipeline.segment import resolve_mask_dir, seg_dir

    cfg = load_run_config("synth_base", [f"run_dir={tmp_path}"])
    assert resolve_mask_dir(cfg) == tmp_path / "pseudo" / "train"
    assert seg_dir(cfg) == tmp_path / "deeplab"
    cfg = load_run_config("synth_base", [f"run_dir={tmp_path}", f"seg.mask_dir={tmp_path / 'm'}"])
    assert resolve_mask_dir(cfg) == tmp_path / "m"



def test_seg_backbone_starts_from_the_stage1_classifier(one_thread, tmp_path):
    from plda.config import load_run_config
    from plda.errors import ConfigError
    from plda.methods.build import build_stage1_model
    from plda.pipeline.segment import build_seg_net
    from plda.runfolder import STAGE1_WEIGHTS
    from plda.weights.io import save_state_dict_file

    overrides = [f"run_dir={tmp_path}", "model.pretrained=null", "seg.model.pretrained=stage1"]
    cfg = load_run_config("synth_base", overrides)
    with pytest.raises(ConfigError, match="no trained stage-1 model"):
        build_seg_net(cfg, 6)
    stage1 = build_stage1_model(cfg, 5, pretrained=False)
    with torch.no_grad():  # weights no fresh network has
        for p in stage1.backbone.parameters():
            p.add_(torch.randn_like(p))
    save_state_dict_file(tmp_path / STAGE1_WEIGHTS, stage1.state_dict())

    net = build_seg_net(cfg, 6)
    own = net.backbone.state_dict()
    for key, value in stage1.backbone.state_dict().items():
        assert torch.equal(own[key], value), key
    # The head is new, and seeded: the same in every build.
    again = build_seg_net(cfg, 6)
    assert all(torch.equal(a, b) for a, b in zip(net.head.state_dict().values(),
                                                 again.head.state_dict().values()))
    # Without pretrained weights (loading a trained file) nothing is read from stage 1.
    first = next(name for name, _ in stage1.backbone.named_parameters())
    assert not torch.equal(build_seg_net(cfg, 6, pretrained=False).backbone.state_dict()[first],
                           own[first])

    other = load_run_config("synth_base", overrides + ["seg.model.backbone=resnet50"])
    with pytest.raises(ConfigError, match="needs the stage-1 backbone.*resnet50"):
        build_seg_net(other, 6)
