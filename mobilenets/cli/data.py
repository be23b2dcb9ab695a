"""`mobilenets data scenes`: build the detection / segmentation scene sets."""
from __future__ import annotations

from pathlib import Path

from ..datasets.scenes import write_scenes


def add_commands(sub) -> None:
    p = sub.add_parser("data", help="build data sets")
    data = p.add_subparsers(dest="data_command", required=True)
    s = data.add_parser("scenes", help="detection/segmentation scenes from Fashion-MNIST items "
                                       "(COCO and VOC formats)")
    s.add_argument("--out", required=True, help="output folder (gets coco/ and voc/)")
    s.add_argument("--train", type=int, default=4000, help="training images")
    s.add_argument("--val", type=int, default=500, help="validation images")
    s.add_argument("--size", type=int, default=128, help="canvas side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data-dir", default=None, help="folder with Fashion-MNIST idx files")
    s.set_defaults(func=_cmd_scenes)


def _cmd_scenes(args) -> int:
    summary = write_scenes(args.out, args.train, args.val, args.size, args.seed, args.data_dir)
    for split, s in summary.items():
        print(f"{split}: {s['images']} images, {s['objects']} objects")
    print(f"wrote {Path(args.out) / 'coco'} (COCO JSON) and {Path(args.out) / 'voc'} (VOC masks)")
    return 0
