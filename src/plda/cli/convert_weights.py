"""``plda convert-weights``: turn reference pretrained weights into this toolkit's state dicts."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert-weights", help="convert pretrained weights (MXNet ResNet-38) to safetensors/.pth",
        description="Rename and shape-check an MXNet ImageNet ResNet-38 file "
        "(ilsvrc-cls_rna-a1_cls1000_ep-0001.params) for plda's ResNet38 backbone and write it as "
        ".safetensors or a weights-only .pth. The ImageNet classifier (linear1000) is dropped.")
    p.add_argument("arch", choices=["resnet38"], help="target backbone")
    p.add_argument("input", help="MXNet .params file")
    p.add_argument("output", help="output file (.safetensors or .pth)")
    p.add_argument("--format", choices=["safetensors", "pth"], default=None, dest="fmt",
                   help="output format (default: from the output suffix)")
    p.add_argument("--allow-missing", action="store_true",
                   help="write even when some model parameters are absent from the input")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from plda.models.backbones.resnet38 import convert_imagenet_params

    report = convert_imagenet_params(args.input, args.output, fmt=args.fmt, allow_missing=args.allow_missing)
    print(report.summary())
    return 0
