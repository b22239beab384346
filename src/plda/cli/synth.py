"""``plda synth OUT``: write the built-in synthetic dataset (see :mod:`plda.data.synth`)."""

from __future__ import annotations

import argparse

from plda.data.synth import MAX_CLASSES, SynthParams

_DEFAULTS = SynthParams()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate the built-in synthetic dataset (VOC layout)",
        description="Generate a small synthetic WSSS dataset in VOC layout: objects whose small, "
        "class-specific part is the discriminative cue while the larger body is shared by all "
        "classes. Deterministic for a seed.",
    )
    p.add_argument("out", metavar="OUT", help="output folder (new, empty, or an earlier synthetic dataset)")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="random seed (default %(default)s)")
    p.add_argument("--train", type=int, default=_DEFAULTS.n_train, metavar="N",
                   help="number of training images (default %(default)s)")
    p.add_argument("--val", type=int, default=_DEFAULTS.n_val, metavar="M",
                   help="number of validation images (default %(default)s)")
    p.add_argument("--size", type=int, default=_DEFAULTS.size, metavar="PX",
                   help="image side in pixels (default %(default)s)")
    p.add_argument("--classes", type=int, default=_DEFAULTS.num_classes, metavar="K",
                   help=f"number of object classes, 1..{MAX_CLASSES} (default %(default)s)")
    p.add_argument("--object-scale", type=float, default=_DEFAULTS.object_scale, metavar="F",
                   help="object size, relative to a semi-major axis of 0.17-0.27 of the image "
                   "side (default %(default)s)")
    p.add_argument("--part-scale", type=float, default=_DEFAULTS.part_scale, metavar="F",
                   help="part radius, relative to 0.38-0.5 of the object's semi-minor axis "
                   "(default %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from plda.data.synth import generate_synthetic

    start = time.perf_counter()
    summary = generate_synthetic(args.out, seed=args.seed, n_train=args.train, n_val=args.val,
                                 size=args.size, num_classes=args.classes,
                                 object_scale=args.object_scale, part_scale=args.part_scale)
    seconds = time.perf_counter() - start
    counts = ", ".join(f"{k} {v}" for k, v in summary["images_per_class"].items())
    print(f"wrote {summary['num_train']} train + {summary['num_val']} val images of "
          f"{summary['size']} px to {summary['root']} in {seconds:.1f} s")
    print(f"classes: {counts}")
    print(f"objects per image {summary['objects_per_image']:.2f}; "
          f"part area {100 * summary['mean_part_fraction']:.1f} % of object area")
    return 0
