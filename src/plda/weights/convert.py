"""Convert the MXNet ImageNet ResNet-38 weights to a state dict of :class:`ResNet38`.

The reference (jiwoon-ahn/psa ``convert_mxnet_to_torch``, used by SEAM and PLDA) starts from
``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` of Wu et al.'s "Wider or Deeper" release and renames:

- ``res{S}{a|bK}_branch{B}_weight`` -> ``b{S}[_K].conv_branch{B}.weight`` (``a`` is the first
  block of stage S, ``bK`` the K-th after it);
- ``bn{S}{a|bK}_branch{B}_{gamma,beta,moving_mean,moving_var}`` ->
  ``b{S}[_K].bn_branch{B}.{weight,bias,running_mean,running_var}``;
- ``conv1a_weight`` -> ``conv1a.weight``; ``bn7_*`` -> ``bn7.*``;
- ``linear1000_*`` (the ImageNet classifier) is dropped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from plda.errors import WeightsError
from plda.weights.io import save_format, save_state_dict_file
from plda.weights.mxnet import read_params, strip_name

_BLOCK = re.compile(r"(res|bn)(\d)(?:a|b(\d+))_(branch(?:1|2a|2b1|2b2))_"
                    r"(weight|gamma|beta|moving_mean|moving_var)")
_BN7 = re.compile(r"bn7_(gamma|beta|moving_mean|moving_var)")
_PARAM = {"weight": "weight", "gamma": "weight", "beta": "bias",
          "moving_mean": "running_mean", "moving_var": "running_var"}
_CLASSIFIER = re.compile(r"linear1000_\w+")


def resnet38_name_map(mx_name: str) -> str | None:
    """Map an MXNet ResNet-38 parameter name (``arg:``/``aux:`` prefix optional) to ours.

    Returns ``None`` for names with no counterpart in the backbone: the ``linear1000``
    classifier, which the reference drops, and any name outside the reference naming.
    """
    name = strip_name(mx_name)
    if name == "conv1a_weight":
        return "conv1a.weight"
    if m := _BN7.fullmatch(name):
        return f"bn7.{_PARAM[m[1]]}"
    if m := _BLOCK.fullmatch(name):
        kind, stage, index, branch, param = m.groups()
        if kind == "res" and param != "weight" or kind == "bn" and param == "weight":
            return None  # convs have no bias/BN stats and BN has no "weight" in MXNet naming
        block = f"b{stage}" if index is None else f"b{stage}_{index}"
        return f"{block}.{'conv' if kind == 'res' else 'bn'}_{branch}.{_PARAM[param]}"
    return None


@dataclass
class ConvertReport:
    """What :func:`convert_resnet38` found; names are as stored in the input file."""

    converted: list[str] = field(default_factory=list)  # model keys written
    missing: list[str] = field(default_factory=list)  # model keys absent from the file
    unexpected: list[str] = field(default_factory=list)  # file names with no model key
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # the ImageNet classifier
    output: str | None = None

    def summary(self) -> str:
        """A short multi-line text for the CLI."""
        lines = [f"converted {len(self.converted)} tensors"
                 + (f" -> {self.output}" if self.output else " (nothing written)")]
        for title, items in (("dropped", self.dropped), ("missing", self.missing),
                             ("unexpected", self.unexpected),
                             ("shape mismatches", [_mismatch_text(m) for m in self.shape_mismatches])):
            if items:
                lines.append(f"{title} ({len(items)}): {_preview(items)}")
        return "\n".join(lines)


def _preview(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _mismatch_text(m: tuple[str, tuple[int, ...], tuple[int, ...]]) -> str:
    return f"{m[0]} ({resnet38_name_map(m[0])}): file {m[1]} vs model {m[2]}"


def convert_resnet38(params_path: str | os.PathLike, out_path: str | os.PathLike,
                     expected: dict[str, tuple[tuple[int, ...], object]],
                     fmt: str | None = None, allow_missing: bool = False) -> ConvertReport:
    """Rename, shape-check and save the MXNet ImageNet ResNet-38 weights for a model whose state
    dict has the keys, shapes and dtypes of ``expected`` (``{key: (shape, dtype)}``: for
    ResNet-38, :func:`plda.models.backbones.resnet38.convert_imagenet_params` gives them).

    ``fmt`` is ``"safetensors"`` or ``"pth"`` (default: from ``out_path``'s suffix). Refuses to
    write (``WeightsError``) on any shape mismatch, on two file names mapping to one key, and,
    unless ``allow_missing``, when model parameters are absent from the file. BN
    ``num_batches_tracked`` counters are never "missing": they are written as 0 so the result
    loads with ``strict=True``.
    """
    import torch

    out_path = Path(out_path)
    fmt = save_format(out_path, fmt)
    report = ConvertReport()
    state: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for name, arr in read_params(params_path).items():
        key = resnet38_name_map(name)
        if key is None:
            (report.dropped if _CLASSIFIER.fullmatch(strip_name(name)) else report.unexpected).append(name)
        elif key not in expected:
            report.unexpected.append(name)
        elif key in source:
            raise WeightsError(f"{params_path}: {source[key]!r} and {name!r} both map to {key!r}")
        elif tuple(arr.shape) != expected[key][0]:
            report.shape_mismatches.append((name, tuple(arr.shape), expected[key][0]))
        else:
            source[key] = name
            state[key] = torch.from_numpy(arr).to(expected[key][1])
    report.missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if report.shape_mismatches:
        raise WeightsError(f"{params_path}: refusing to convert, shapes differ from ResNet38 for "
                           f"{len(report.shape_mismatches)} tensors: "
                           f"{_preview([_mismatch_text(m) for m in report.shape_mismatches])}")
    if report.missing and not allow_missing:
        raise WeightsError(f"{params_path}: {len(report.missing)} ResNet38 parameters are not in the "
                           f"file: {_preview(report.missing)}"
                           + (f"; names outside the reference naming: {_preview(report.unexpected)}"
                              if report.unexpected else "")
                           + " (pass allow_missing / --allow-missing to write anyway)")
    ordered = {}
    for key, (shape, dtype) in expected.items():
        if key in state:
            ordered[key] = state[key]
        elif key.endswith("num_batches_tracked"):
            ordered[key] = torch.zeros(shape, dtype=dtype)
    report.converted = [k for k in ordered if k in state]
    save_state_dict_file(out_path, ordered, fmt=fmt)
    report.output = str(out_path)
    return report
