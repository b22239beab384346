"""The pinned SEAM+PLDA step: seeded ResNet-38 weights, a two-image batch, and this package's
loss terms and gradient norms for it, all in float64.

``scripts/reference_step.py`` feeds the same weights (exported with ``to_reference_state_dict``)
and batch to the published code and writes what it computes to ``tests/data/
reference_step.json``; ``tests/test_reference_step.py`` recomputes our side and compares. The
weights are drawn tensor by tensor from one generator in sorted key order of the published
``Net.state_dict()``, so they do not depend on how this package initialises its layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_CLASSES = 20
CROP = 128
PROGRESS = 0.25  # GRL alpha = 2 / (1 + exp(-10 p)) - 1
SEED = 20240607
# Several classes per image: the reference's CPS class balance gives an image whose restricted
# pseudo label holds one class weight 0, and CPS's gradient is part of what is pinned.
LABELS = ((2, 7, 11), (5, 14))
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# As in a trained classifier, fc8's rows of the classes absent from the batch are negative (the
# features are ReLU outputs, so those logits are well below zero) and the batch's classes'
# rows are scaled by FC8_GAIN; otherwise the 18 absent classes share the 21-way softmax and
# CPS's pseudo labels (a class claims a pixel when its share beats 0.2) stay empty.
FC8_GAIN = 15.0
# Terms of ``SEAMPLDAModel.forward`` and the published loop's names for the same values.
TERMS = ("cls", "rvmin", "er", "ecr", "domain", "cps_source", "cps_target", "loss")


def pinned_model(**method) -> nn.Module:
    """SEAM+PLDA on ResNet-38 in reference mode, 20 classes, pinned weights, float64, train
    mode with every dropout at p = 0 (the published code's layers are neutralised the same way).
    ``method``: other ``MethodConfig`` fields (to show what the pin catches)."""
    from plda.methods import MethodConfig, build_method, convert_reference_state_dict
    from plda.models.backbones import build_backbone

    method = {"name": "seam_plda", "reference": True, **method}
    model = build_method(MethodConfig(**method),
                         build_backbone("resnet38", pretrained=None), NUM_CLASSES)
    model.load_state_dict(convert_reference_state_dict(pinned_reference_state(model)),
                          strict=True)
    model = model.double().train()
    no_dropout(model)
    return model


def no_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0


def pinned_reference_state(model: nn.Module) -> dict[str, Tensor]:
    """The published ``Net.state_dict()`` of ``model``'s shapes with pinned values: conv
    weights N(0, 1/fan_in), biases N(0, 0.01²), BN weight 1 + N(0, 0.1²), bias N(0, 0.1²),
    running mean N(0, 0.1²), running var 1 + U(0, 0.5); PAMR's buffers keep their fixed kernels."""
    from plda.methods import to_reference_state_dict

    shapes = to_reference_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(SEED)
    state: dict[str, Tensor] = {}
    for key in sorted(shapes):
        like = shapes[key]
        if key.startswith("PAMR.") or key.endswith("num_batches_tracked"):
            state[key] = like.clone()
            continue
        noise = torch.randn(like.shape, generator=gen, dtype=torch.float64)
        if key.endswith("running_var"):
            value = 1 + 0.5 * torch.rand(like.shape, generator=gen, dtype=torch.float64)
        elif like.dim() == 4:
            value = noise / math.sqrt(like[0].numel())
            if key == "fc8.weight":
                value = _fc8(value)
        elif key.endswith("bias") and not _is_bn(key, shapes):
            value = 0.01 * noise
        elif key.endswith("weight"):
            value = 1 + 0.1 * noise
        else:  # BN bias, running_mean
            value = 0.1 * noise
        # float32 values, whatever the model's dtype: the same numbers on both sides.
        state[key] = value.to(torch.float32 if like.is_floating_point() else like.dtype)
    return state


def _fc8(value: Tensor) -> Tensor:
    present = sorted({c + 1 for classes in LABELS for c in classes})
    absent = [c for c in range(1, NUM_CLASSES + 1) if c not in present]
    value = value.clone()
    value[present] *= FC8_GAIN
    value[absent] = -value[absent].abs()
    return value


def _is_bn(key: str, shapes: dict[str, Tensor]) -> bool:
    return key.rsplit(".", 1)[0] + ".running_mean" in shapes


def pinned_batch() -> tuple[Tensor, Tensor]:
    """(image, label): two normalised 128² images in float64 (smooth colour fields with a bright
    and a dark square), multi-hot labels (2, 20)."""
    gen = torch.Generator().manual_seed(SEED + 1)
    coarse = torch.rand(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    image = F.interpolate(coarse, size=(CROP, CROP), mode="bilinear", align_corners=False)
    image[0, :, 20:70, 30:90] = image[0, :, 20:70, 30:90] * 0.3 + 0.7
    image[0, :, 80:120, 10:50] *= 0.2
    image[1, :, 40:110, 40:100] = image[1, :, 40:110, 40:100] * 0.4 + 0.6
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    label = torch.zeros(2, NUM_CLASSES, dtype=torch.float64)
    for b, classes in enumerate(LABELS):
        label[b, list(classes)] = 1
    return (image - mean) / std, label


def our_step(model: nn.Module | None = None) -> dict:
    """This package's terms, stats and per-tensor gradient norms (published names) of one
    forward and backward of the pinned model on the pinned batch."""
    from plda.methods import to_reference_state_dict

    model = pinned_model() if model is None else model
    image, label = pinned_batch()
    model.zero_grad(set_to_none=True)
    out = model({"image": image, "label": label}, progress=PROGRESS)
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    named = to_reference_state_dict(grads, pamr_kernels=False)
    return {
        "terms": {k: out[k].item() for k in TERMS},
        "stats": {k: out[f"stat/{k}"].item() for k in ("source_fraction", "target_fraction")},
        "grad_norms": {k: v.norm().item() for k, v in sorted(named.items())},
    }


DEFAULT_FIXTURE = "default_step.json"


def main(argv: list[str] | None = None) -> int:
    """``python tests/_reference_step.py --write-default``: write our default mode's (not
    reference mode's) terms, stats and gradient norms on the pinned weights and batch to
    ``tests/data/default_step.json``, with the commit that computed them. The file pins the
    default step against refactors of the methods: ``tests/test_reference_step.py`` recomputes
    it and asks for equality to float64 rounding."""
    import argparse
    import json
    import subprocess
    from pathlib import Path

    p = argparse.ArgumentParser(description=main.__doc__.split("\n\n")[0])
    p.add_argument("--write-default", action="store_true", required=True)
    p.parse_args(argv)
    here = Path(__file__).resolve().parent
    commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--",
                                 "../src"], capture_output=True, text=True).stdout.strip())
    record = our_step(pinned_model(reference=False))
    record["produced_by"] = {"commit": commit, "src_modified": dirty,
                             "torch": torch.__version__,
                             "command": "python tests/_reference_step.py --write-default"}
    path = here / "data" / DEFAULT_FIXTURE
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src"))
    raise SystemExit(main())
