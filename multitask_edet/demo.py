"""``mtedet demo`` / ``make demo``: joint detection + segmentation on the built-in sample, on CPU.

What a newcomer sees on a fresh machine, without downloading anything: the ``shapes``
sample is generated (real COCO and VOC layouts, read back by the real adapters), a tiny
EfficientDet-style trunk (timm ``test_efficientnet`` + BiFPN over P2–P5, det head on P3–P5,
seg head on P2 — paper §3 and §5.2 at toy scale) is scored untrained, trained jointly on both
tasks with the engine, and scored again with the paper's metrics (COCO AP for detection,
mIoU for segmentation) on the val split. The run folder gets the checkpoint, the release
weights, metrics, evaluation reports and overlay pictures. The recipe is
``configs/demo-shapes.yaml``; ``mtedet train --config demo-shapes`` trains the same model.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError

RECIPE = "demo-shapes"
#: what the demo promises on the shapes val split
TARGETS = {"det/AP50": 0.8, "seg/mIoU": 0.8}
MARKER = "demo.json"
OVERLAY_IMAGES = 4


def demo_config(output: str | Path, device: str = "auto", max_steps: int | None = None, **sections: Any):
    """The demo's experiment config (recipe ``demo-shapes``), optionally shortened."""
    from .engine.config import build_config, deep_merge

    over: dict[str, Any] = {"output": str(output), "train": {"device": device}}
    if max_steps is not None:
        over["train"]["max_steps"] = int(max_steps)
    return build_config(RECIPE, overrides=deep_merge(over, sections))


def _prepare_output(out: Path) -> None:
    """Start clean: a previous demo's folder is replaced, anything else is left alone."""
    if not out.exists():
        return
    if (out / MARKER).is_file() or (out / "config.yaml").is_file() and _is_demo_run(out / "config.yaml"):
        from .engine.run_folder import RunFolder

        with RunFolder(out):  # a demo still training there keeps its folder: RunFolderBusyError names it
            shutil.rmtree(out)
    elif any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not a previous demo run; choose another folder with --output")


def _is_demo_run(config_yaml: Path) -> bool:
    import yaml

    try:
        cfg = yaml.safe_load(config_yaml.read_text()) or {}
    except yaml.YAMLError:
        return False
    return cfg.get("data", {}).get("dataset") == "shapes" and cfg.get("model", {}).get("name") == "test-efficientdet"


def _headline(results: dict[str, dict[str, float]]) -> dict[str, float]:
    det = results.get("det", {})
    return {"det/AP50": float(det.get("AP50", float("nan"))), "det/AP": float(det.get("AP", det.get("coco_AP", float("nan")))),
            "seg/mIoU": float(results.get("seg", {}).get("mIoU", float("nan")))}


def _overlay_grid(paths: list[Path], out: Path) -> Path:
    """The overlays side by side in one picture (for the README)."""
    from PIL import Image

    pics = [Image.open(p).convert("RGB") for p in paths]
    h = max(p.height for p in pics)
    grid = Image.new("RGB", (sum(p.width for p in pics) + 4 * (len(pics) - 1), h), (255, 255, 255))
    x = 0
    for p in pics:
        grid.paste(p, (x, 0))
        x += p.width + 4
    grid.save(out)
    return out


def run_demo(
    output: str | Path = "runs/demo", device: str = "auto", max_steps: int | None = None, threads: int | None = 1
) -> dict[str, Any]:
    """Generate the sample if needed, score untrained, train det + seg jointly, score, draw.

    Returns (and writes to ``OUTPUT/demo.json``) the untrained and trained figures, the
    timings and the paths of the checkpoint and pictures. ``max_steps`` shortens the run
    (the tests use it); the targets are only meant for the full recipe. ``threads``: torch
    intra-op threads during the demo (None = leave as is). One thread plus the recipe's data
    worker is the fastest use of 2 cores for a model this small — a tiny op gains nothing from
    a second thread — and stays fast on a busy machine, where spinning OpenMP threads of
    several processes slow each other down many times over.
    """
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_demo(output, device, max_steps)
    finally:
        torch.set_num_threads(previous)


def _run_demo(output: str | Path, device: str, max_steps: int | None) -> dict[str, Any]:
    import torch

    from .datasets.sample import ensure_shapes
    from .engine.builders import build_data, build_model, build_tasks, load_trained, seed_everything
    from .engine.distributed import env_dist_info, resolve_device
    from .engine.evaluate import evaluate
    from .engine.predict import run_prediction
    from .engine.run import run_training

    t_start = time.perf_counter()
    out = Path(output)
    _prepare_output(out)
    cfg = demo_config(out, device, max_steps)
    dev = resolve_device(cfg.train.device, env_dist_info())
    print(f"multitask_edet demo: detection + segmentation on one trunk, trained on {dev} "
          f"({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})", flush=True)

    t = time.perf_counter()
    sizes = {k: v for k, v in cfg.data.options.items() if k in ("num_train", "num_val", "image_size", "seed")}
    root = ensure_shapes(cfg.data.root, **sizes)
    print(f"[1/4] sample dataset 'shapes' ready in {root} ({time.perf_counter() - t:.1f} s)", flush=True)

    # The same seed and build order as run_training: this is the very initialisation it trains.
    seed_everything(cfg.train.seed)
    data = build_data(cfg)
    model = build_model(cfg, data.class_names).to(dev)
    tasks = build_tasks(model, data.class_names)
    t = time.perf_counter()
    untrained, _ = evaluate(model, tasks, data.eval_sets, device=dev, batch_size=cfg.eval.batch_size or cfg.train.batch_size)
    before = _headline(untrained)
    params = sum(p.numel() for p in model.parameters())
    print(f"[2/4] untrained model ({params / 1e6:.2f} M parameters): AP50 {before['det/AP50']:.3f}, "
          f"mIoU {before['seg/mIoU']:.3f} on shapes val ({time.perf_counter() - t:.1f} s)", flush=True)
    del model

    print(f"[3/4] training det + seg jointly for {cfg.train.max_steps} steps "
          f"(batch {cfg.train.batch_size}, {cfg.model.image_size[0]}x{cfg.model.image_size[1]} px)", flush=True)
    t = time.perf_counter()
    result = run_training(cfg)
    train_seconds = time.perf_counter() - t

    t = time.perf_counter()
    checkpoint = out / "best.pt" if (out / "best.pt").is_file() else out / "last.pt"
    trained = load_trained(checkpoint, device=dev)
    # the saved checkpoint, scored again: the figures below are those of the file on disk
    results, _ = evaluate(trained.model, trained.tasks, data.eval_sets, device=dev,
                          batch_size=cfg.eval.batch_size or cfg.train.batch_size)
    after = _headline(results)
    val = data.eval_sets[0][0]
    files = [val.file_name(i) for i in range(min(OVERLAY_IMAGES, len(val)))]
    run_prediction(checkpoint, files, out / "overlays", device=str(dev))
    overlays = sorted((out / "overlays").glob("*_overlay.png"))
    grid = _overlay_grid(overlays, out / "overlays.png") if overlays else None
    total = time.perf_counter() - t_start

    print(f"[4/4] trained model (checkpoint {checkpoint}); its full AP and IoU tables are above", flush=True)
    rows = [("det AP50", "det/AP50"), ("det AP (COCO 0.5:0.95)", "det/AP"), ("seg mIoU", "seg/mIoU")]
    lines = [f"{'shapes val':<24}{'untrained':>10}{'trained':>10}{'target':>9}"]
    for label, key in rows:
        target = f">= {TARGETS[key]:.1f}" if key in TARGETS else ""
        lines.append(f"{label:<24}{before[key]:>10.3f}{after[key]:>10.3f}{target:>9}")
    met = all(after[k] >= v for k, v in TARGETS.items())
    print("\n" + "\n".join(lines), flush=True)
    print(f"\ntargets {'met' if met else 'NOT met'}; total time {total / 60:.1f} min "
          f"(training {train_seconds / 60:.1f} min, {result.step} steps) on {dev}", flush=True)
    print(f"run folder {out}: best.pt / last.pt (training state), model.safetensors (weights), "
          f"metrics.jsonl, eval/, overlays/ ({len(overlays)} pictures{', grid ' + str(grid) if grid else ''})", flush=True)

    record = {
        "untrained": untrained, "trained": results, "headline": {"untrained": before, "trained": after},
        "targets": TARGETS, "targets_met": met, "steps": result.step, "parameters": params,
        "seconds": {"total": total, "training": train_seconds}, "device": str(dev),
        "threads": torch.get_num_threads(), "checkpoint": str(checkpoint),
        "overlays": [str(p) for p in overlays], "overlay_grid": str(grid) if grid else None,
    }  # fmt: skip
    (out / MARKER).write_text(json.dumps(record, indent=2, default=float) + "\n")
    return record
