"""Data loading throughput of every DataModule, and the FBP cache step (per-image time, backend).

Generates small datasets in the real formats at the real sizes (fastMRI 320 / 640x368 k-space,
LoDoPaB 362 with 1000x513 sinograms, ImageNet-like 375px JPEGs) in a temporary folder, builds
the LoDoPaB FBP cache (reporting ms/image and the backend it chose), then times full passes over
each DataModule's loader with ``--workers`` workers. Throughputs are also given as ratios to the
fastMRI loader measured in the same run (absolute numbers depend on the machine and its load).
FBP backends available here are timed on the same sinograms, as ratios to the chosen one.

Validation cost: the always-on per-sample checks are timed as the ratio of loading a sample with
them to loading it with them switched off (back to back, alternating order, median of the
per-pair ratios over every sample, in one process); the one-time checks of LoDoPaB files (read,
checksum, zero rows, range) and of an FBP cache file are given as a fraction of the FBP cache
step they accompany.

    python experiments/benchmarks/data_throughput.py [--workers 2] [--batch-size 4] [--passes 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from equinet.data import FastMRIDataModule, ImageNetShiftDataModule, LoDoPaBDataModule, ct
from equinet.data.fbp_cache import check_stack
from equinet.data.lodopab import LoDoPaBDataset, check_pair
from equinet.data.mri import MriSliceTransform


def throughput(loader, passes: int) -> tuple[int, float, float]:
    """(samples per pass, samples/s over ``passes`` full passes after a warm-up pass, first-batch s)."""
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - start
    for _ in iterator:
        pass
    count = 0
    start = time.perf_counter()
    for _ in range(passes):
        for batch in loader:
            count += batch.input.shape[0]
    return count // passes, count / (time.perf_counter() - start), first


def check_overhead(dataset, owner: type, repeats: int) -> float:
    """Median over (sample, repeat) pairs of the seconds to load that sample with ``owner.check``
    (the per-sample checks) on / off, timed back to back in alternating order."""
    real = owner.__dict__["check"]

    def load(index: int, checks: bool) -> float:
        if not checks:
            owner.check = lambda self, *args: None
        try:
            start = time.perf_counter()
            dataset[index]
            return time.perf_counter() - start
        finally:
            owner.check = real

    ratios = []
    for index in range(len(dataset)):
        load(index, True)  # warm-up: file handles, page cache
        for r in range(repeats):
            if r % 2:
                off, on = load(index, False), load(index, True)
            else:
                on, off = load(index, True), load(index, False)
            ratios.append(on / off)
    return statistics.median(ratios)


def fbp_backend_times(geometry: ct.ParallelBeamGeometry, images: int) -> dict:
    """Seconds per image of each available FBP backend on the same noisy sinograms (torch gets
    them as one batch, as the cache step does; the others loop over images)."""
    from equinet.data.synthetic import random_body_ellipses

    rng = np.random.default_rng(0)
    sinos = torch.stack(
        [
            ct.simulate_observation(
                torch.from_numpy(ct.ellipse_sinogram(random_body_ellipses(rng), geometry)),
                generator=torch.Generator().manual_seed(i),
            )
            for i in range(images)
        ]
    )
    times = {}
    for backend in ct.available_fbp_backends():
        ct.fbp(sinos[:1], geometry, backend)  # warm-up: one-time setup (torch's sparse backprojector)
        start = time.perf_counter()
        if backend == "torch":
            ct.fbp(sinos, geometry, backend)
        else:
            for sino in sinos:
                ct.fbp(sino, geometry, backend)
        times[backend] = (time.perf_counter() - start) / images
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--passes", type=int, default=2, help="timed passes over each loader")
    parser.add_argument(
        "--knee-volumes", type=int, default=2, help="fastMRI volumes per split (8 slices each)"
    )
    parser.add_argument(
        "--lodopab-samples", type=int, default=16, help="LoDoPaB training samples (val/test get N // 4)"
    )
    parser.add_argument("--images", type=int, default=32, help="ImageNet images")
    parser.add_argument("--repeats", type=int, default=7, help="on/off pairs timing the per-sample checks")
    parser.add_argument("--small", action="store_true", help="reduced sizes (128 px) for a quick smoke run")
    parser.add_argument("--data-dir", default=None, help="where to generate (default: a temporary folder)")
    args = parser.parse_args()
    logging.getLogger("equinet.data").setLevel(logging.WARNING)

    knee_size, ct_size, image_size, crop = (128, 128, 160, 128) if args.small else (320, 362, 375, 320)
    tmp = tempfile.TemporaryDirectory(prefix="equinet-bench-") if args.data_dir is None else None
    root = Path(args.data_dir or tmp.name)
    common = dict(batch_size=args.batch_size, num_workers=args.workers, data_dir=str(root), synthetic=True)
    print(
        f"torch threads={torch.get_num_threads()}, workers={args.workers}, batch={args.batch_size}, data in {root}"
    )

    start = time.perf_counter()
    knee = FastMRIDataModule(
        crop_size=crop,
        synthetic_size=knee_size,
        synthetic_volumes=args.knee_volumes,
        synthetic_slices=8,
        **common,
    )
    knee.prepare_data()
    lodopab = LoDoPaBDataModule(
        crop_size=min(352, ct_size),
        synthetic_size=ct_size,
        synthetic_num=args.lodopab_samples,
        synthetic_samples_per_file=4,
        progress=False,
        **common,
    )
    images = ImageNetShiftDataModule(
        num_images=args.images,
        crop_size=crop,
        forward_model="mri",
        synthetic_num=args.images,
        synthetic_size=image_size,
        **common,
    )
    images.prepare_data()
    lodopab.prepare_data()  # generates, then builds the FBP cache
    print(f"generated the datasets and the FBP cache in {time.perf_counter() - start:.1f} s")
    report = lodopab.cache_report
    geometry = lodopab.layout.geometry
    print(
        f"\nFBP cache step ({geometry.describe()}): {report.per_image_ms:.0f} ms/image over {report.computed} images (one-time setup included), backend '{report.backend}'"
    )

    modules = [("FastMRIDataModule (train)", knee), ("LoDoPaBDataModule (train)", lodopab)]
    for model in ("mri", "none"):
        modules.append(
            (
                f"ImageNetShiftDataModule ({model})",
                ImageNetShiftDataModule(
                    num_images=args.images,
                    crop_size=crop,
                    forward_model=model,
                    synthetic_num=args.images,
                    synthetic_size=image_size,
                    **common,
                ),
            )
        )
    rows = []
    for name, module in modules:
        is_eval_only = isinstance(module, ImageNetShiftDataModule)
        module.setup("test" if is_eval_only else "fit")
        loader = module.test_dataloader() if is_eval_only else module.train_dataloader()
        rows.append((name, *throughput(loader, args.passes)))
    reference = rows[0][2]
    print(
        f"\n| DataModule | samples/pass | samples/s ({args.workers} workers) | vs fastMRI | first batch (s) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, count, rate, first in rows:
        print(f"| {name} | {count} | {rate:.1f} | {rate / reference:.2f}x | {first:.2f} |")

    print(
        f"\n| per-sample checks (always on; {args.repeats} on/off pairs per sample) "
        "| load time with / without |"
    )
    print("|---|---:|")
    for name, dataset, owner in (
        ("FastMRIDataModule (train)", knee.train_set, MriSliceTransform),
        ("LoDoPaBDataModule (train)", lodopab.train_set, LoDoPaBDataset),
    ):
        print(f"| {name} | {check_overhead(dataset, owner, args.repeats):.3f}x |")
    files = [f for part in ("train", "validation") for f in lodopab.layout.files[part]]
    start = time.perf_counter()
    for info in files:
        check_pair(info)
    check_ms = 1000 * (time.perf_counter() - start) / sum(f.num_valid for f in files)
    cache_files = sorted(lodopab.cache_folder(report.backend).glob("observation_*.hdf5"))
    start = time.perf_counter()
    for path, info in zip(cache_files, files):
        assert check_stack(path, info.rows[-1] + 1, (geometry.image_size, geometry.image_size)) is None
    verify_ms = 1000 * (time.perf_counter() - start) / sum(f.rows[-1] + 1 for f in files)
    print(
        f"\none-time checks (remembered until a file changes): LoDoPaB file pair {check_ms:.1f} ms/sample "
        f"({check_ms / report.per_image_ms:.1%} of the FBP cache step), "
        f"FBP cache file {verify_ms:.1f} ms/image "
        f"({verify_ms / report.per_image_ms:.1%})"
    )

    times = fbp_backend_times(geometry, images=3)
    chosen = times[report.backend]
    print(
        f"\n| FBP backend ({geometry.image_size}px, {geometry.num_angles} angles) | ms/image | time vs '{report.backend}' |"
    )
    print("|---|---:|---:|")
    for backend, seconds in times.items():
        print(
            f"| {backend}{' (auto)' if backend == report.backend else ''} | {1000 * seconds:.0f} | {seconds / chosen:.2f}x |"
        )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
