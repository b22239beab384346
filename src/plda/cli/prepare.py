"""``plda prepare voc|coco|folder``: image-level labels and lists in the layout the toolkit
reads."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare", help="import your photos + tags, write VOC labels and lists, or convert COCO",
        description="Prepare a dataset: a folder of photos with a tags file → VOC layout; VOC "
        "labels + train_aug list; or COCO → VOC layout.")
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

    folder = targets.add_parser(
        "folder", help="import a folder of photos and a tags file (masks optional)",
        description="Import PHOTOS (images at any depth, any extension and letter case) tagged "
        "by a CSV (file,tags; tags of a photo separated by --tag-sep) or JSON ({file: [tags]}) "
        "file into a dataset in VOC layout at OUT: JPEGImages/, classes.txt (label k = line k), "
        "image_labels.json, ImageSets/Segmentation/{train,val}.txt, SegmentationClass/ for the "
        "masks given, import.json. Then: plda run own_cam_effnetlite0 data.root=OUT.")
    folder.add_argument("photos", metavar="PHOTOS", help="folder of images")
    folder.add_argument("--tags", required=True, metavar="FILE",
                        help="tags.csv (file,tags) or tags.json ({file: [tags]})")
    folder.add_argument("--out", required=True, metavar="OUT", help="dataset folder to write")
    folder.add_argument("--masks", metavar="DIR", default=None,
                        help="label PNGs for some or all photos, named by the photo's stem "
                        "(value k = line k of classes.txt, 0 background, 255 ignore)")
    folder.add_argument("--classes", metavar="FILE", default=None,
                        help="the class list, one per line, in label order (default: the tags' "
                        "names, sorted)")
    folder.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                        help="share of photos in val, drawn reproducibly with --seed "
                        "(default %(default)s)")
    folder.add_argument("--val-from-masks", action="store_true",
                        help="val = exactly the photos that have a mask")
    folder.add_argument("--seed", type=int, default=0, help="seed of the train/val draw")
    folder.add_argument("--delimiter", default=",", metavar="CHAR",
                        help="CSV column separator (default ','; e.g. ';' or tab)")
    folder.add_argument("--tag-sep", default=";", metavar="SEP",
                        help="separator of the tags inside one cell (default ';')")
    folder.add_argument("--link", choices=("copy", "hardlink", "symlink"), default="copy",
                        help="how photos are placed in OUT/JPEGImages (default copy)")
    folder.add_argument("--name", default=None,
                        help="the dataset's name in reports (default: the photo folder's name)")
    folder.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.dataset == "folder":
        from plda.data.prepare_folder import prepare_folder

        delimiter = "\t" if args.delimiter in ("\\t", "tab", "TAB") else args.delimiter
        prepare_folder(args.photos, args.tags, args.out, masks=args.masks,
                       classes=args.classes, val_fraction=args.val_fraction,
                       val_from_masks=args.val_from_masks, seed=args.seed,
                       delimiter=delimiter, tag_sep=args.tag_sep, link=args.link,
                       name=args.name)
        print(f"next: plda run own_cam_effnetlite0 data.root={args.out} "
              f"run_dir=runs/{Path(args.out).name}")
        return 0
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
