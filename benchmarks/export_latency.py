"""CPU latency of one model three ways: onnxruntime on the exported graph, PyTorch eager, and
PyTorch with ``fuse_for_inference`` (BN folded into the convs, models/fuse.py), in one process.

    .venv/bin/python benchmarks/export_latency.py                       # D0 at 512 (det) + the tiny det+seg model
    .venv/bin/python benchmarks/export_latency.py --reps 31 --threads 1 --markdown out.md

Per model, batch 1, one letterboxed uint8 image already in memory (no decoding, no resizing):

- **end-to-end**: uint8 image → detections (and masks). PyTorch = engine/inference.py
  ``predict_batch``, what ``mtedet predict`` and evaluation run (normalise, forward, each task's
  ``predict``: top-k, decoding, torchvision NMS, mask argmax); onnxruntime = the
  ``mtedet export --end-to-end`` graph (normalisation, NMS and top-k inside).
- **network**: normalised float image → raw head outputs. PyTorch = ``model(x)``;
  onnxruntime = the raw export.

Before anything is timed, the exports are checked against PyTorch by ``export_onnx`` itself
(onnxruntime vs PyTorch on the same input). Timed calls are interleaved (speed.py
``interleaved``) so load changes on a shared machine hit every implementation alike; the table
gives medians, quartiles and the ratio to PyTorch eager (median of the per-repetition ratios in
parentheses). Threads: ``torch.set_num_threads(--threads)``; onnxruntime with
``intra_op_num_threads=--threads``, one inter-op thread, default graph optimisations
(which fold BN into the convs as ``fuse_for_inference`` does). Weights are random (latency does
not depend on them; NMS always sees the top 5000 candidates).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from speed import environment, interleaved, summarise  # noqa: E402 — benchmarks/ is the script's folder

import multitask_edet as mt  # noqa: E402
from multitask_edet.engine.builders import load_for_inference  # noqa: E402
from multitask_edet.engine.export import export_onnx  # noqa: E402
from multitask_edet.engine.inference import model_images, predict_batch  # noqa: E402
from multitask_edet.models.fuse import fuse_for_inference  # noqa: E402

MODELS = {"d0": ("efficientdet-d0", ["det"]), "tiny": ("test-efficientdet", ["det", "seg"])}


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def functions(name: str, tmp: Path, threads: int, batch: int) -> dict[str, dict[str, Callable[[], object]]]:
    """{"end-to-end": {impl: fn}, "network": {impl: fn}} for one model, exported into ``tmp``."""
    variant, tasks = MODELS[name]
    mt.create_model(variant, tasks=tasks).save_pretrained(tmp / name)
    export_onnx(tmp / name, tmp / f"{name}-e2e.onnx", end_to_end=True)
    export_onnx(tmp / name, tmp / f"{name}-raw.onnx", batch_size=batch)
    trained = load_for_inference(tmp / name)
    eager, fused = trained.model.eval(), fuse_for_inference(trained.model)
    h, w = trained.image_size
    images = torch.randint(0, 256, (batch, 3, h, w), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    meta = [{"scale": 1.0, "pad": (0, 0), "orig_size": (h, w)} for _ in range(batch)]
    data = {"images": images, "meta": meta}
    x = model_images(eager, images, torch.device("cpu"))
    e2e, raw = session(tmp / f"{name}-e2e.onnx", threads), session(tmp / f"{name}-raw.onnx", threads)
    feeds = {"images": images.numpy(), "orig_sizes": np.array([[h, w]] * batch, dtype=np.int64)}
    cpu = torch.device("cpu")

    def net(m):
        def run():
            with torch.no_grad():
                return m(x)
        return run

    return {
        "end-to-end": {
            "PyTorch eager": lambda: predict_batch(eager, trained.tasks, data, cpu),
            "PyTorch fused": lambda: predict_batch(fused, trained.tasks, data, cpu),
            "onnxruntime": lambda: e2e.run(None, feeds),
        },
        "network": {
            "PyTorch eager": net(eager),
            "PyTorch fused": net(fused),
            "onnxruntime": lambda: raw.run(None, {"images": x.numpy()}),
        },
    }


def table(title: str, times: dict[str, list[float]]) -> str:
    base = times["PyTorch eager"]
    lines = [f"**{title}**", "", "| impl | median ms | IQR ms | ratio vs eager (paired) |", "|---|---|---|---|"]
    for impl, t in times.items():
        s = summarise(t)
        paired = statistics.median(a / b for a, b in zip(t, base))
        ratio = s["median"] / statistics.median(base)
        lines.append(f"| {impl} | {s['median'] * 1e3:.1f} | {s['q1'] * 1e3:.1f}–{s['q3'] * 1e3:.1f} | "
                     f"{ratio:.3f} ({paired:.3f}) |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="d0,tiny", help="comma-separated: d0 (efficientdet-d0, det, 512), tiny "
                   "(test-efficientdet, det+seg, 128)")
    p.add_argument("--reps", type=int, default=21)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--markdown", metavar="FILE", help="also write the tables to FILE")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            fns = functions(name, Path(tmp), args.threads, args.batch)
            variant, tasks = MODELS[name]
            for what, group in fns.items():
                times = interleaved(group, args.reps, args.warmup)
                out.append(table(f"{variant} ({'+'.join(tasks)}) {what}, batch {args.batch}, {args.threads} thread(s)",
                                 times))
                print(out[-1] + "\n", flush=True)
    import onnxruntime

    env = f"{environment()}; onnxruntime {onnxruntime.__version__}"
    print(env)
    if args.markdown:
        Path(args.markdown).write_text("\n\n".join(out) + f"\n\n{env}\n")


if __name__ == "__main__":
    sys.exit(main())
