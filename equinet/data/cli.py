"""``equinet data ...``: write synthetic datasets in the real formats, build the FBP cache, check a root.

equinet data synth --kind knee|lodopab|imagenet --out DIR [--num N] [--size S] ...
equinet data fbp-cache --root LODOPAB_DIR [--backend auto|astra|torch|skimage] [--geometry N A D]
equinet data check --kind knee|lodopab|imagenet [--root DIR] [--crop-size C] [--geometry N A D]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

DEFAULT_SIZE = {"knee": 320, "lodopab": 362, "imagenet": 375}
DEFAULT_NUM = {"knee": 8, "lodopab": 60, "imagenet": 64}


def _add_geometry(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(
        "--geometry",
        nargs=3,
        type=int,
        default=None,
        metavar=("IMAGE_SIZE", "ANGLES", "BINS"),
        help=f"{prefix}geometry of data that is not LoDoPaB's 362 / 1000 x 513 (or declare it in "
        "equinet_lodopab.json)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="equinet data",
        description="Datasets in the real file formats (fastMRI, LoDoPaB-CT, ImageNet val).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    synth = sub.add_parser(
        "synth",
        help="write a synthetic dataset in a real file format",
        description=(
            "Write a synthetic dataset from phantoms (random ellipses, Shepp-Logan variants) and "
            "scikit-image's bundled natural images, in the real on-disk format: knee = fastMRI "
            "single-coil (OUT/singlecoil_{train,val,test}/*.h5), lodopab = LoDoPaB-CT "
            "(OUT/{ground_truth,observation}_{train,validation,test}_NNN.hdf5), imagenet = "
            "ILSVRC2012_val_*.JPEG. Nothing is downloaded. OUT must not exist or be empty."
        ),
    )
    synth.add_argument("--kind", required=True, choices=sorted(DEFAULT_SIZE), help="dataset format")
    synth.add_argument("--out", required=True, type=Path, help="output folder (created; must not hold files)")
    synth.add_argument(
        "--num",
        type=int,
        default=None,
        help="training volumes (knee, default 8), training samples (lodopab, default 60) or images (imagenet, default 64)",
    )
    synth.add_argument(
        "--size",
        type=int,
        default=None,
        help="knee: reconstruction size (default 320, k-space 2S x 1.15S); lodopab: image size (default 362 = LoDoPaB geometry, 1000 angles x 513 bins); imagenet: shorter side (default 375)",
    )
    synth.add_argument(
        "--num-val",
        type=int,
        default=None,
        help="validation volumes/samples (default max(2, N//4) knee, max(1, N//4) lodopab)",
    )
    synth.add_argument(
        "--num-test", type=int, default=None, help="test volumes/samples (default: as --num-val)"
    )
    synth.add_argument("--slices", type=int, default=8, help="knee: slices per volume (default 8)")
    synth.add_argument(
        "--samples-per-file",
        type=int,
        default=128,
        help="lodopab: rows per file, the last file zero-padded (default 128 as LoDoPaB)",
    )
    synth.add_argument(
        "--num-angles",
        type=int,
        default=None,
        help="lodopab: projection angles (default 1000 per 362 pixels)",
    )
    synth.add_argument(
        "--layout", choices=("flat", "classes"), default="flat", help="imagenet: flat folder or class folders"
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")

    cache = sub.add_parser(
        "fbp-cache",
        help="precompute the LoDoPaB FBP cache (resumable)",
        description="Compute the FBP of every LoDoPaB observation once, next to the data (or --cache-dir); an interrupted run resumes.",
    )
    cache.add_argument("--root", required=True, type=Path, help="LoDoPaB folder")
    cache.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "astra", "torch", "skimage"),
        help="FBP backend (auto: astra if it has CUDA, else torch)",
    )
    cache.add_argument(
        "--device", default=None, help="torch device for the torch backend (default: cuda if available)"
    )
    cache.add_argument("--cache-dir", default=None, help="cache folder (default ROOT/fbp_cache)")
    _add_geometry(cache)
    cache.add_argument(
        "--parts",
        nargs="*",
        default=None,
        choices=("train", "validation", "test"),
        help="parts to cache (default all present)",
    )

    check = sub.add_parser(
        "check",
        help="load a dataset through its DataModule and print what it holds",
        description="Set up a DataModule (root=None: the synthetic default) and print split sizes and one batch.",
    )
    check.add_argument("--kind", required=True, choices=sorted(DEFAULT_SIZE))
    check.add_argument("--root", default=None, help="dataset folder (default: the synthetic default)")
    check.add_argument("--crop-size", type=int, default=None, help="crop size (default: the DataModule's)")
    check.add_argument(
        "--forward-model", default="mri", choices=("mri", "ct", "none"), help="imagenet: forward model"
    )
    _add_geometry(check, "lodopab: ")
    return parser


def synth(args: argparse.Namespace) -> Path:
    from equinet.data import synthetic
    from equinet.data.common import DataFormatError, atomic_directory

    kind = args.kind
    size = args.size if args.size is not None else DEFAULT_SIZE[kind]
    num = args.num if args.num is not None else DEFAULT_NUM[kind]
    out: Path = args.out.expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataFormatError(f"{out} exists and is not an empty folder; choose another --out or remove it")
    if out.is_dir():
        out.rmdir()
    start = time.perf_counter()
    with atomic_directory(out) as tmp:
        if kind == "knee":
            synthetic.write_knee_dataset(tmp, num, args.slices, size, args.num_val, args.num_test, args.seed)
        elif kind == "lodopab":
            synthetic.write_lodopab_dataset(
                tmp,
                num,
                args.num_val,
                args.num_test,
                size,
                args.num_angles,
                args.samples_per_file,
                seed=args.seed,
                progress=True,
            )
        else:
            synthetic.write_imagenet_folder(tmp, num, size, args.layout, args.seed)
    files = sum(1 for p in out.rglob("*") if p.is_file())
    print(f"wrote {files} files ({kind}, size {size}) to {out} in {time.perf_counter() - start:.1f} s")
    return out


def fbp_cache(args: argparse.Namespace) -> None:
    from equinet.data.lodopab import LoDoPaBDataModule

    module = LoDoPaBDataModule(
        root=str(args.root),
        geometry=args.geometry,
        fbp=args.backend,
        fbp_device=args.device,
        fbp_cache_dir=args.cache_dir,
    )
    report = module.build_fbp_cache(parts=args.parts, log_summary=False)
    print(f"{report.summary()}, {module.cache_folder(report.backend)}")


def check(args: argparse.Namespace) -> None:
    from equinet.data import FastMRIDataModule, ImageNetShiftDataModule, LoDoPaBDataModule

    kwargs = {"root": args.root, "synthetic": args.root is None}
    if args.crop_size is not None:
        kwargs["crop_size"] = args.crop_size
    if args.kind == "knee":
        module = FastMRIDataModule(**kwargs)
    elif args.kind == "lodopab":
        module = LoDoPaBDataModule(geometry=args.geometry, **kwargs)
    else:
        module = ImageNetShiftDataModule(forward_model=args.forward_model, **kwargs)
    module.prepare_data()
    module.setup()  # reuses what prepare_data checked and cached
    for split in ("train", "val", "test"):
        dataset = getattr(module, f"{split}_set")
        if dataset is not None and (split != "train" or args.kind != "imagenet"):
            print(f"{split}: {len(dataset)} samples")
    batch = next(iter(module.test_dataloader()))
    print(
        f"batch: input {tuple(batch.input.shape)} {batch.input.dtype}, target {tuple(batch.target.shape)}, "
        f"fname {batch.fname[0]!r}, slice {int(batch.slice_num[0])}, mean {float(batch.mean[0]):.4g}, "
        f"std {float(batch.std[0]):.4g}, max_value {float(batch.max_value[0]):.4g}"
    )


def main(argv: Optional[List[str]] = None) -> None:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from equinet.data.common import DataFormatError

    try:
        {"synth": synth, "fbp-cache": fbp_cache, "check": check}[args.command](args)
    except DataFormatError as err:
        sys.stderr.write(f"equinet data {args.command}: {err}\n")
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    main()
