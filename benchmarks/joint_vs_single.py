"""Joint detection + segmentation on one trunk vs detection alone vs segmentation alone.

Same data (the built-in ``shapes`` sample), same recipe (``configs/demo-shapes.yaml``: the
demo's tiny EfficientDet), same number of optimizer steps and batch size, same seed. Each
single-task model is what a user gets for that task alone: detection alone builds the BiFPN
over P3–P5 (no P2 level, since no head reads it), segmentation alone over P2–P5 without the
detection head. Reported per run: the val-split metrics, parameters, training wall time
(including the one evaluation at the end) and seconds per step.

    python benchmarks/joint_vs_single.py                    # the demo's step budget
    python benchmarks/joint_vs_single.py --steps 300 --write-results

``--write-results`` replaces the "Joint vs single-task" section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch

from multitask_edet.engine.run import run_training
from multitask_edet.engine.checkpoint import load_weights
from multitask_edet.engine.config import build_config

RUNS = {"joint (det+seg)": ("det", "seg"), "det only": ("det",), "seg only": ("seg",)}
SECTION = "## Joint vs single-task"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def run_one(name: str, tasks: tuple[str, ...], steps: int | None, out: Path, device: str) -> dict:
    run_dir = out / re.sub(r"\W+", "-", name).strip("-")
    shutil.rmtree(run_dir, ignore_errors=True)
    train = {"device": device} | ({"max_steps": steps} if steps else {})
    cfg = build_config("demo-shapes", tasks=list(tasks), overrides={"output": str(run_dir), "train": train,
                                                                    "log": {"progress": "plain"}})
    start = time.perf_counter()
    result = run_training(cfg)
    seconds = time.perf_counter() - start
    sd, _ = load_weights(run_dir / "model.safetensors")
    params = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    det, seg = result.metrics.get("det", {}), result.metrics.get("seg", {})
    return {"run": name, "tasks": list(tasks), "steps": result.step, "params": params, "seconds": seconds,
            "s_per_step": seconds / max(result.step, 1), "det_AP50": det.get("AP50"), "det_AP": det.get("AP"),
            "seg_mIoU": seg.get("mIoU")}


def table(rows: list[dict]) -> str:
    def f(v):
        return "—" if v is None else f"{v:.3f}"

    lines = ["| run | params | steps | train time | s/step | det AP50 | det AP (0.5:0.95) | seg mIoU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['params'] / 1e6:.3f} M | {r['steps']} | {r['seconds']:.0f} s | "
                     f"{r['s_per_step']:.3f} | {f(r['det_AP50'])} | {f(r['det_AP'])} | {f(r['seg_mIoU'])} |")
    return "\n".join(lines)


def write_section(text: str) -> None:
    old = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n"
    # the section's heading may carry a suffix, e.g. "## Joint vs single-task (shapes)"
    pattern = re.compile(rf"{re.escape(SECTION)}[^\n]*\n.*?(?=\n## |\Z)", re.S)
    new = pattern.sub(lambda _: text.rstrip("\n") + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new.rstrip("\n") + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the demo recipe's)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as the demo)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/bench-joint-vs-single", help="parent folder of the three run folders")
    p.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [run_one(name, tasks, args.steps, Path(args.out), args.device) for name, tasks in RUNS.items()]
    md = table(rows)
    print("\n" + md)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2))
    if args.write_results:
        cmd = "python benchmarks/joint_vs_single.py" + (f" --steps {args.steps}" if args.steps else "") + " --write-results"
        machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{args.threads} intra-op thread(s), device {args.device}")
        write_section(f"{SECTION}\n\nCommand: `{cmd}` ({machine}; {time.strftime('%Y-%m-%d')}).\n"
                      "Recipe `demo-shapes` (the demo's tiny EfficientDet, 128 px, batch 8, AdamW), same steps and "
                      "seed for every run, metrics on the `shapes` val split (50 images), EMA weights.\n\n"
                      f"{md}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
