"""``plda export RUN_OR_WEIGHTS --onnx FILE``: the segmentation model for use without plda."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export the segmentation model to ONNX (checked against PyTorch)",
        description="Write the trained segmentation network as one ONNX file that runs "
        "'plda predict's default inference (one scale + flip) on an image of any size: input "
        "'image' (1, 3, H, W) float32 RGB 0..255; outputs 'probs' (1, K, H, W) and 'labels' "
        "(1, H, W) int64, value k = line k of FILE.classes.txt (0 background). Class names "
        "are also in the file's metadata. With --check, the file is run with onnxruntime on "
        "the images given and compared with the PyTorch network.")
    p.add_argument("weights", metavar="RUN_OR_WEIGHTS",
                   help="a run folder (its deeplab/segmentation.safetensors) or a weights file")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX file to write")
    p.add_argument("--no-flip", action="store_true", help="leave the mirrored pass out")
    p.add_argument("--check", nargs="*", metavar="IMAGE_OR_FOLDER", default=None,
                   help="compare the file with PyTorch on these images (default with no "
                   "argument: two random images)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from plda.segmentation.export import check_onnx, export_onnx, require_onnx

    require_onnx()
    res = export_onnx(args.weights, args.onnx, flip=not args.no_flip)
    print(f"wrote {res['path']} (opset {res['opset']}, {len(res['class_names'])} classes; "
          f"names in {res['classes_file']})")
    if args.check is not None:
        if args.check:
            from plda.cli.predict import collect_inputs, read_image

            images = [np.asarray(read_image(p).convert("RGB")) for p in collect_inputs(args.check)]
        else:
            rng = np.random.default_rng(0)
            images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                      for h, w in ((97, 131), (240, 180))]
        check = check_onnx(res["path"], args.weights, images, flip=not args.no_flip)
        print(f"checked on {check['images']} images: {check['agreement']:.4%} of "
              f"{check['pixels']} pixels get the PyTorch network's label (the rest are "
              "near ties)")
    return 0
