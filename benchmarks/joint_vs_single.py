"""Joint training of several heads on one trunk vs each head trained alone, on the same budget.

Two suites, one script:

``--dataset shapes`` (default): detection + segmentation on the built-in ``shapes`` sample with
the demo's recipe (``configs/demo-shapes.yaml``: the demo's tiny EfficientDet).

``--dataset bdd100k``: detection + drivable area + lane lines (three heads, two of them of type
seg) on the ``shapes`` scenes written in the real BDD100K layout (``mtedet data sample --format
bdd100k``), read by the ``bdd100k`` adapter. The recipe is ``bdd100k-d3`` (its tasks, losses —
focal + Tversky for both seg heads — data options and HybridNets-protocol evaluation) with the network
and schedule shrunk to CPU scale: the tiny ``test-efficientdet`` trunk with a 64-channel BiFPN
over P2–P5 (as the demo), 128×224 inputs, AdamW at 1e-2, EMA 0.99, lanes widened by 1 px.

Every run of a suite has the same data, number of optimizer steps, batch size and seed. Each
single-task model is what a user gets for that task alone: detection alone builds the BiFPN
over P3–P5 (no P2 level, since no head reads it), a segmentation head alone over P2–P5 without
the detection head. Reported per run: the val-split metrics, parameters, training wall time
(including the one evaluation at the end) and seconds per step.

    python benchmarks/joint_vs_single.py                    # shapes, the demo's step budget
    python benchmarks/joint_vs_single.py --dataset bdd100k --steps 1200 --write-results

``--write-results`` replaces the suite's section of benchmarks/RESULTS.md.
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

from multitask_edet.datasets.format_samples import write_format_sample
from multitask_edet.engine.checkpoint import load_weights
from multitask_edet.engine.config import build_config
from multitask_edet.engine.run import run_training

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

#: the BDD100K suite's data and the recipe's shrinking to CPU scale (see the module docstring)
BDD_SAMPLE = {"n_train": 500, "n_val": 50, "seed": 0, "image_size": 224}
BDD_OVERRIDES = {
    "model": {"name": "test-efficientdet", "image_size": [128, 224], "channels_last": True,
              "backbone": {"pretrained": False},  # from scratch, as every run here (the recipe's B3 is ImageNet's)
              "neck": {"channels": 64, "max_level": 5}},
    "data": {"workers": 0, "options": {"lane_dilation": 1}},
    "train": {"epochs": 1000, "batch_size": 8, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0001,
              "ema_decay": 0.99, "amp": "fp32", "seed": 0},
    "eval": {"every_epochs": 0},
    "log": {"every_steps": 50, "tensorboard": False},
}

SUITES = {
    "shapes": {
        "recipe": "demo-shapes",
        "runs": {"joint (det+seg)": ("det", "seg"), "det only": ("det",), "seg only": ("seg",)},
        "section": "## Joint vs single-task",
        "columns": [("det AP50", "det", "AP50"), ("det AP (0.5:0.95)", "det", "AP"), ("seg mIoU", "seg", "mIoU")],
    },
    "bdd100k": {
        "recipe": "bdd100k-d3",
        "runs": {"joint (det+drivable+lane)": ("det", "drivable", "lane"), "det only": ("det",),
                 "drivable only": ("drivable",), "lane only": ("lane",)},
        "section": "## BDD100K layout: det + drivable + lane on one trunk vs each alone",
        "columns": [("det AP50", "det", "AP50"), ("det AP", "det", "AP"),
                    ("det recall (HybridNets)", "det", "hybridnets/recall"), ("drivable mIoU", "drivable", "mIoU"),
                    ("drivable IoU", "drivable", "IoU/drivable"), ("lane IoU", "lane", "IoU/lane"),
                    ("lane IoU (HybridNets)", "lane", "hybridnets/IoU_lane")],
    },
}


def suite_config(suite: str, tasks: tuple[str, ...], run_dir: Path, steps: int | None, device: str, data_root: Path | None):
    train = {"device": device} | ({"max_steps": steps} if steps else {})
    common = {"output": str(run_dir), "train": train, "log": {"progress": "plain"}}
    if suite == "shapes":
        return build_config("demo-shapes", tasks=list(tasks), overrides=common)
    overrides = json.loads(json.dumps(BDD_OVERRIDES))
    overrides["data"]["root"] = str(data_root)
    overrides["train"].update(train)
    overrides.update({"output": common["output"], "log": {**overrides["log"], **common["log"]}})
    if "det" in tasks:
        overrides["det"] = {"levels": [3, 4, 5]}  # the trunk stops at P5
    for t in ("drivable", "lane"):
        if t in tasks:
            overrides[t] = {"repeats": 2}
    return build_config("bdd100k-d3", tasks=list(tasks), overrides=overrides)


def run_one(suite: str, name: str, tasks: tuple[str, ...], steps: int | None, out: Path, device: str,
            data_root: Path | None = None) -> dict:
    run_dir = out / re.sub(r"\W+", "-", name).strip("-")
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = suite_config(suite, tasks, run_dir, steps, device, data_root)
    start = time.perf_counter()
    result = run_training(cfg)
    seconds = time.perf_counter() - start
    sd, _ = load_weights(run_dir / "model.safetensors")
    params = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    values = {header: result.metrics.get(task, {}).get(key) for header, task, key in SUITES[suite]["columns"]}
    return {"run": name, "tasks": list(tasks), "steps": result.step, "params": params, "seconds": seconds,
            "s_per_step": seconds / max(result.step, 1), "metrics": values}


def table(suite: str, rows: list[dict]) -> str:
    def f(v):
        return "—" if v is None else f"{v:.3f}"

    headers = [h for h, _, _ in SUITES[suite]["columns"]]
    lines = ["| run | params | steps | train time | s/step | " + " | ".join(headers) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(headers)]
    for r in rows:
        cells = " | ".join(f(r["metrics"][h]) for h in headers)
        lines.append(f"| {r['run']} | {r['params'] / 1e6:.3f} M | {r['steps']} | {r['seconds']:.0f} s | "
                     f"{r['s_per_step']:.3f} | {cells} |")
    return "\n".join(lines)


def write_section(section: str, text: str) -> None:
    old = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n"
    # the section's heading may carry a suffix, e.g. "## Joint vs single-task (shapes)"
    pattern = re.compile(rf"{re.escape(section)}[^\n]*\n.*?(?=\n## |\Z)", re.S)
    new = pattern.sub(lambda _: text.rstrip("\n") + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new.rstrip("\n") + "\n")


def describe(suite: str, steps: int | None) -> str:
    if suite == "shapes":
        return ("Recipe `demo-shapes` (the demo's tiny EfficientDet, 128 px, batch 8, AdamW), same steps and "
                "seed for every run, metrics on the `shapes` val split (50 images), EMA weights.")
    s = BDD_SAMPLE
    return (f"Data: `mtedet data sample --format bdd100k --num-train {s['n_train']} --num-val {s['n_val']} "
            f"--image-size {s['image_size']}` (the shapes scenes in the released BDD100K layout: circles, "
            "triangles, stars, crosses = car, traffic sign, pedestrian, bus; squares = drivable areas; 1–3 "
            "one-pixel lane lines per image, widened by 1 px), read by the `bdd100k` adapter. Recipe "
            "`bdd100k-d3` (tasks, losses: focal + Tversky for drivable and lanes; HybridNets-protocol "
            "figures) shrunk to CPU scale: `test-efficientdet` trunk, BiFPN 64 ch over P2–P5, 128×224 input, "
            "batch 8, AdamW 1e-2, EMA 0.99; same steps and seed for every run; metrics on the val split "
            f"({s['n_val']} images), EMA weights. Standard figures: COCO AP, dataset-level IoU; "
            "\"(HybridNets)\" columns: that paper's protocol (tasks/*/paper_metrics.py).")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=list(SUITES), default="shapes", help="the suite (default shapes)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the recipe's; "
                   "bdd100k: 1200)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as the demo)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="parent folder of the run folders (default runs/bench-joint-vs-single"
                   "[-bdd100k])")
    p.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    suite = args.dataset
    out = Path(args.out or ("runs/bench-joint-vs-single" + ("" if suite == "shapes" else f"-{suite}")))
    steps = args.steps if args.steps or suite == "shapes" else 1200
    data_root = None
    if suite == "bdd100k":
        data_root = out / "data"
        shutil.rmtree(data_root, ignore_errors=True)
        write_format_sample("bdd100k", data_root, **BDD_SAMPLE)
    rows = [run_one(suite, name, tasks, steps, out, args.device, data_root) for name, tasks in SUITES[suite]["runs"].items()]
    md = table(suite, rows)
    print("\n" + md)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    if args.write_results:
        cmd = ("python benchmarks/joint_vs_single.py" + (f" --dataset {suite}" if suite != "shapes" else "")
               + (f" --steps {args.steps}" if args.steps else "") + " --write-results")
        machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{args.threads} intra-op thread(s), device {args.device}")
        write_section(SUITES[suite]["section"], f"{SUITES[suite]['section']}\n\nCommand: `{cmd}` ({machine}; "
                      f"{time.strftime('%Y-%m-%d')}).\n{describe(suite, steps)}\n\n{md}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
