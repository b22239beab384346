"""``plda prepare voc|coco``: image-level labels and lists in the layout the toolkit reads."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare", help="write image-level labels and image lists (VOC) or convert COCO",
        description="Prepare a dataset: VOC labels + train_aug list, or COCO → VOC layout.")
    targets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    voc = targets.add_parser(
        "voc", help="image_labels.json from Annotations/*.xml and the train_aug list",
        description="Write ROOT/image_labels.json from the VOC XML annotations and "
        "ROOT/ImageSets/Segmentation/train_aug.txt = SegmentationClassAug minus val.txt.")
    voc.add_argument("root", help="VOC2012 folder (holds Annotations/, JPEGImages/, ImageSets/)")
    voc.add_argument("--out", default=None, help="labels file (default ROOT/image_labels.json)")
    voc.add_argument("--train-aug", action=argparse.BooleanOptionalAction, default=True,
                     help="also write train_aug.txt (default: yes)")
    voc.set_defaults(func=run)

    coco = targets.add_parser(
        "coco", help="convert COCO 2014 instance annotations into VOC layout",
        description="Write JPEGImages/, SegmentationClass/, classes.txt, image_labels.json and "
        "ImageSets/Segmentation/SPLIT.txt under OUT from a COCO instances json.")
    coco.add_argument("--images", required=True, help="folder of the split's images (train2014/)")
    coco.add_argument("--annotations", required=True, help="instances_<split>2014.json")
    coco.add_argument("--out", required=True, help="output dataset root")
    coco.add_argument("--split", default="train", help="list name to write (default train)")
    coco.add_argument("--limit", type=int, default=None, help="convert only the first N images")
    coco.add_argument("--keep-empty", action="store_true",
                      help="keep images without annotations (empty labels)")
    coco.add_argument("--link", choices=("copy", "hardlink", "symlink"), default="copy",
                      help="how images are placed in OUT/JPEGImages (default copy)")
    coco.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.dataset == "voc":
        from plda.data.prepare_voc import prepare_voc

        summary = prepare_voc(args.root, out=args.out, write_train_aug=args.train_aug)
        print(f"wrote {summary['labels_file']}: labels of {summary['num_images']} images")
        if "train_aug_file" in summary:
            print(f"wrote {summary['train_aug_file']}: {summary['num_train_aug']} ids")
    else:
        from plda.data.prepare_coco import prepare_coco

        summary = prepare_coco(args.images, args.annotations, args.out, split=args.split,
                               limit=args.limit, keep_empty=args.keep_empty, link=args.link)
        print(f"wrote {summary['num_images']} images of {summary['num_classes']} classes to "
              f"{summary['out']} (list {summary['list_file']}; "
              f"{summary['skipped_empty']} images without annotations skipped)")
    return 0
