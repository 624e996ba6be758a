"""Data pipeline throughput: decode + augmentation, images/s in one process (no DataLoader).

    .venv/bin/python benchmarks/data_throughput.py [--size 512] [--images 64]

Images are the `shapes` generator's scenes at VOC-like sizes (375..500 px JPEG), read
through the VOC adapter, so the numbers include JPEG decoding, XML and mask reading.
Multiply by the DataLoader worker count for a multi-core estimate.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import torch  # noqa: E402

from multitask_edet.datasets import build_dataset, write_shapes  # noqa: E402
from multitask_edet.datasets.transforms import eval_transforms, train_transforms  # noqa: E402


def rate(ds, n: int, repeats: int) -> float:
    for i in range(min(8, n)):  # warm-up: page cache, first-call costs
        ds[i]
    t = time.perf_counter()
    for _ in range(repeats):
        for i in range(n):
            ds[i]
    return repeats * n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as d:
        write_shapes(d, num_train=args.images, num_val=1, image_size=500)
        rows = []
        for tasks in (("det",), ("det", "seg")):
            ds = build_dataset("shapes", d, "train", tasks)
            rows.append((f"decode only ({'+'.join(tasks)})", rate(ds, args.images, args.repeats)))
            ds.transform = train_transforms(args.size, ("boxes", "mask") if "seg" in tasks else ("boxes",))
            rows.append((f"train {args.size} ({'+'.join(tasks)})", rate(ds, args.images, args.repeats)))
            ds.transform = eval_transforms(args.size)
            rows.append((f"eval {args.size} ({'+'.join(tasks)})", rate(ds, args.images, args.repeats)))
    print(f"{'pipeline':<28} images/s (1 process, 1 thread)")
    for name, r in rows:
        print(f"{name:<28} {r:8.1f}")


if __name__ == "__main__":
    main()
