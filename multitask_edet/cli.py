"""``mtedet``: the command line, a thin layer over the engine and the Python API.

Every error a user can cause (a bad path, a missing dataset, an unknown config key, a
checkpoint of another model) is printed as one line naming the fix, exit code 2, without a
traceback; ``--debug`` or ``MTEDET_DEBUG=1`` shows the traceback. A file that cannot be
written or read (disk full, read-only folder, permission) is one line naming the path and
the cause. The exit codes are listed in ``EXIT_CODES`` and in ``mtedet --help``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import ConfigError, MtedetError, NonFiniteError, RunFolderBusyError
from .filesystem import describe_os_error, ensure_writable_dir

#: exit codes of every command (printed by ``mtedet --help``); schedulers and scripts rely on them
EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_BUSY = 73  # sysexits.h EX_CANTCREAT: the output cannot be created (another process holds it)
EXIT_IO_ERROR = 74  # sysexits.h EX_IOERR
EXIT_STOPPED = 75  # sysexits.h EX_TEMPFAIL: try again (here: --resume) and it continues
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
EXIT_CODES = {
    EXIT_DONE: "done",
    EXIT_FAILED: "ran but has no valid result: `data check` found problems, training stopped on non-finite "
                 "values, or the model's outputs were all non-finite",
    EXIT_USER_ERROR: "user error: a bad argument, config, path, dataset file or checkpoint (the message says which)",
    EXIT_BUSY: "the run folder is in use by another training (the message names its PID and host); nothing was written",
    EXIT_IO_ERROR: "a file could not be written or read: disk full, read-only folder, permission (path and cause printed)",
    EXIT_STOPPED: "stopped by SIGTERM/SIGINT after writing last.pt: resumable, continue with `mtedet train --resume`",
    EXIT_INTERRUPTED: "interrupted at once (a second Ctrl-C): the state of the current step is not saved",
}

EPILOG_TRAIN = """\
examples:
  mtedet train --task det                          EfficientDet-D0 on COCO (data in $MTEDET_DATA or ./data)
  mtedet train --task seg --dataset voc2012        the paper's §5.2 segmentation model on VOC 2012
  mtedet train --task det,seg --dataset voc2012    detection + segmentation on one trunk
  mtedet train --task det,drivable,lane --dataset bdd100k    three heads on one trunk (recipe bdd100k-d3)
  mtedet train --config det-coco-d3 --set train.batch_size=4 --set det.postprocess.nms=soft_nms
  mtedet train --output runs/x --resume            continue runs/x from its last.pt
  torchrun --nproc_per_node=8 -m multitask_edet train --task det    8 GPUs with DDP

recipes (--config NAME): {recipes}
"""


# ---------------------------------------------------------------------------- helpers

def _image_size(text: str) -> list[int]:
    """``512`` or ``512x640`` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size {text!r}: expected N or HxW, e.g. 512 or 512x640") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"image size {text!r}: expected N or HxW with positive numbers")
    return parts


def _int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum`` (a bad count is refused before any work)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not allowed: it must be {minimum} or more")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise argparse.ArgumentTypeError("--task needs at least one task, e.g. det, seg or det,seg")
    return tasks


def _add_model_source(p: argparse.ArgumentParser) -> None:
    """--checkpoint SOURCE, or --model NAME --weights coco for a published COCO detector."""
    p.add_argument("--checkpoint", metavar="SOURCE", help="a checkpoint (last.pt, best.pt, model.safetensors), a run or "
                   "save_pretrained folder, a Hugging Face Hub repository id (owner/name), or effdet:NAME")
    p.add_argument("--model", metavar="NAME", help="with --weights coco: a COCO-trained detector effdet published, "
                   "e.g. tf_efficientdet-d0 … tf_efficientdet-d7x, efficientdet-d0 (fetched once into torch.hub's cache)")
    p.add_argument("--weights", choices=["coco"], help="the weights of --model: coco (80 COCO classes, no training)")


def _model_source(args: argparse.Namespace) -> str:
    """The model source of --checkpoint, or ``effdet:NAME`` for --model NAME --weights coco."""
    if args.checkpoint and (args.model or args.weights):
        raise ConfigError("give either --checkpoint SOURCE or --model NAME --weights coco, not both")
    if args.checkpoint:
        return args.checkpoint
    if args.model and args.weights:
        from .compat.effdet_weights import PREFIX

        return PREFIX + args.model
    raise ConfigError("which model? --checkpoint SOURCE (a checkpoint, run folder, Hub repository id), or "
                      "--model NAME --weights coco for a COCO-trained detector, e.g. --model tf_efficientdet-d0 --weights coco")


def _recipes() -> str:
    # read the folder directly: importing the engine (torch) would make --help slow
    folder = Path(__file__).parent / "configs"
    return ", ".join(sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_")))


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The nested config updates that the explicit train flags stand for (engine/config.py)."""
    from .engine.config import experiment_overrides

    return experiment_overrides(
        tasks=args.task, dataset=args.dataset, data_root=args.data_root, workers=args.workers, on_error=args.on_error,
        model=args.model, image_size=args.image_size, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, device=args.device, amp=args.amp, seed=args.seed, output=args.output,
    )  # fmt: skip


# ---------------------------------------------------------------------------- commands

def cmd_train(args: argparse.Namespace) -> int:
    from .config_utils import parse_overrides
    from .engine.builders import load_resume_config
    from .engine.config import build_config, deep_merge
    from .engine.run import run_training

    overrides = _train_overrides(args)
    resume = None
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues with the checkpoint's own config; drop --config (use --set to change a value)")
        if isinstance(args.resume, str):
            resume = Path(args.resume)
        else:
            run_dir = Path(args.output) if args.output else build_config(None, tasks=args.task, overrides=overrides).run_dir()
            resume = run_dir / "last.pt"
        if not resume.is_file():
            raise FileNotFoundError(f"nothing to resume: {resume} does not exist (give --output RUN_DIR or --resume PATH)")
        cfg = load_resume_config(resume, deep_merge(overrides, parse_overrides(args.set)))
        if args.output is None:
            # the run folder is where the checkpoint is, even if it was moved
            from .engine.config import replace

            cfg = replace(cfg, output=str(resume.parent))
    else:
        cfg = build_config(args.config, tasks=args.task, overrides=overrides, set_items=args.set)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    # before any work, without creating the folder (a refused start must leave none behind)
    ensure_writable_dir(cfg.run_dir(), create=False)
    result = run_training(cfg, resume=resume)
    from .engine.distributed import is_main_process

    if result.stop_reason == "signal":
        if is_main_process() and not (result.run_dir / "last.pt").exists():
            print(f"stopped before the first step completed: nothing was kept in {result.run_dir}; run the same "
                  f"command again (exit code {EXIT_STOPPED})")
        elif is_main_process():
            print(f"stopped at step {result.step}: last.pt is written; continue with "
                  f"`mtedet train --output {result.run_dir} --resume` (exit code {EXIT_STOPPED})")
        return EXIT_STOPPED
    if is_main_process():
        best = f", best {result.best:.4f}" if result.best is not None else ""
        print(f"done: {result.step} steps ({result.stop_reason}){best}; run folder {result.run_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .config_utils import parse_overrides
    from .engine.commands import run_evaluation

    # checked before the inference, not after it (the default report folder goes next to the checkpoint);
    # create=False everywhere: a command refused later (a bad checkpoint, say) leaves no empty folder
    ensure_writable_dir(args.output or Path(args.checkpoint).parent, create=False)
    run_evaluation(
        args.checkpoint, dataset=args.dataset, split=args.split, root=args.data_root, batch_size=args.batch_size,
        device=args.device, workers=args.workers, output=args.output, max_images=args.max_images,
        overrides=parse_overrides(args.set),
    )  # fmt: skip
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .config_utils import parse_overrides
    from .engine.predict import run_prediction

    ensure_writable_dir(args.out, create=False)
    records = run_prediction(
        _model_source(args), args.inputs, args.out, batch_size=args.batch_size, device=args.device,
        score_threshold=args.score_threshold, overlays=not args.no_overlay, overrides=parse_overrides(args.set),
    )  # fmt: skip
    print(f"wrote predictions for {len(records)} image(s) to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .config_utils import parse_overrides

    if args.format == "pt2":
        return _export_program(args)
    from .engine.export import export_onnx

    ensure_writable_dir(Path(args.out).parent, create=False)
    desc = export_onnx(
        _model_source(args), args.out, end_to_end=args.end_to_end, image_size=args.image_size,
        batch_size=args.batch_size, dynamic_batch=args.dynamic_batch, dynamic_size=args.dynamic_size,
        opset=args.opset, check=not args.no_check, overrides=parse_overrides(args.set),
    )  # fmt: skip
    out = Path(args.out).with_suffix(".onnx")
    arrays = [v for task in desc["tasks"].values() for k, v in task.items() if k.endswith("_file")]
    print(f"wrote {out}, {out.with_suffix('.json')}" + "".join(f", {out.parent / a}" for a in arrays))
    if args.end_to_end:
        print("inputs: " + ", ".join(f"{n} {v['dtype']} {v['shape']}" for n, v in desc["inputs"].items()))
        print("outputs: " + ", ".join(f"{n} {v['dtype']} {v['shape']}" for n, v in desc["outputs"].items()))
    if "max_abs_diff" in desc:
        print(f"onnxruntime vs PyTorch: max abs diff {desc['max_abs_diff']:.3g}")
    for task, figures in desc.get("check", {}).items():
        print(f"onnxruntime vs PyTorch, {task}: " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .engine.builders import load_for_inference
    from .hub import push

    trained = load_for_inference(args.source)
    url = push(trained.model, args.repo_id, private=args.private or None, token=args.token,
               commit_message=args.message or f"Upload {args.source} with mtedet push")
    print(f"pushed {args.source} (config.json, model.safetensors, README.md) to {args.repo_id}: {url}")
    return 0


def _export_program(args: argparse.Namespace) -> int:
    from .config_utils import parse_overrides
    from .engine.export_program import export_program

    if args.end_to_end:
        raise ConfigError("--end-to-end exports to ONNX only (torch.export cannot capture NMS: torchvision's batched_nms "
                          "branches on a data-dependent size); drop --end-to-end or use --format onnx")
    desc = export_program(_model_source(args), args.out, image_size=args.image_size, dynamic_size=args.dynamic_size,
                          check=not args.no_check, overrides=parse_overrides(args.set))
    out = Path(args.out).with_suffix(".pt2")
    print(f"wrote {out}, {out.with_suffix('.json')}; load it with torch.export.load('{out}').module()")
    if "max_abs_diff" in desc:
        print(f"loaded program vs PyTorch: max abs diff {desc['max_abs_diff']:.3g}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .models.info import model_info

    info = model_info(args.model, tasks=args.tasks, num_classes=args.num_classes, image_size=args.image_size)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['model']}  tasks {','.join(info['tasks'])}  input {info['image_size'][0]}x{info['image_size'][1]}  "
          f"levels P{info['levels'][0]}-P{info['levels'][1]}")
    print(f"parameters {info['params'] / 1e6:.3f}M  GMACs {info['gmacs']:.2f}")
    for part, n in info["params_per_part"].items():
        print(f"  {part:<12} {n / 1e6:8.3f}M")
    for ref in info["published"]:
        gmacs = f", {ref['gmacs']:g} GMACs" if ref["gmacs"] is not None else ""
        print(f"published: {ref['model']} {ref['params'] / 1e6:.3f}M params{gmacs} ({ref['note']}); "
              f"this model {info['params'] / ref['params']:.2f}x its parameters")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .models.factory import convert_effdet_file

    ensure_writable_dir(Path(args.dst).parent, create=False)
    sd = convert_effdet_file(args.src, args.dst, args.model)
    print(f"wrote {args.dst} ({len(sd)} tensors) for {args.model}")
    return 0


def cmd_convert_backbone(args: argparse.Namespace) -> int:
    from .compat.efficientnet_pytorch import convert_efficientnet_pytorch_file

    sd = convert_efficientnet_pytorch_file(args.src, args.dst, args.backbone)
    print(f"wrote {args.dst} ({len(sd)} tensors, timm naming) for {args.backbone}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .datasets import DATASETS
    from .datasets.check import check_dataset, format_report

    if args.json:
        ensure_writable_dir(Path(args.json).parent, create=False)
    try:
        entry = DATASETS.get(args.dataset)
    except KeyError as e:
        raise ConfigError(e.args[0]) from None
    from .config_utils import parse_overrides

    annotations = args.annotations or entry.annotations()
    splits = args.split or ("train", "val")
    report = check_dataset(args.dataset, args.data_root, splits=splits, annotations=annotations, workers=args.workers,
                           **parse_overrides(args.option))
    print(format_report(report, max_problems=args.max_problems))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.ok else 1


def cmd_data_sample(args: argparse.Namespace) -> int:
    if args.format != "shapes":
        from .datasets.format_samples import write_format_sample

        counts = {"n_train": args.num_train, "n_val": args.num_val, "image_size": args.image_size, "seed": args.seed}
        folder, dataset = write_format_sample(args.format, args.out_dir, **{k: v for k, v in counts.items() if v is not None})
        print(f"wrote the {args.format} sample (the shapes scenes in the {dataset} layout) to {folder}; "
              f"train on it with --dataset {dataset} --data-root {args.out_dir}")
        return 0
    from .datasets import write_shapes

    ensure_writable_dir(args.out_dir)
    given = {k: getattr(args, k) for k in ("num_train", "num_val", "image_size", "seed") if getattr(args, k) is not None}
    out = write_shapes(args.out_dir, **given)
    print(f"wrote the shapes sample dataset to {out} (COCO layout in coco/, VOC layout in VOC/); "
          f"train on it with --dataset shapes --data-root {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    ensure_writable_dir(args.output, create=False)
    run_demo(output=args.output, device=args.device, max_steps=args.max_steps)
    return 0


# ---------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="mtedet",
        description="Joint object detection and semantic segmentation on one EfficientDet trunk "
        "(EfficientNet + BiFPN over P2-P7): train, evaluate, predict, export.",
        epilog="Run `mtedet COMMAND --help` for the options of a command. "
        "Errors print one line; --debug (or MTEDET_DEBUG=1) shows the traceback.\n\nexit codes:\n"
        + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items()),
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=f"mtedet {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # -- train
    t = sub.add_parser(
        "train", help="train a model (det, seg or both); resumable, distributed with torchrun",
        description="Train detection, segmentation or both on one trunk. Defaults: --task det → efficientdet-d0 "
        "on COCO; --task seg → efficientdet-d4-seg on VOC 2012 (train_aug when SBD is present, else train); "
        "--task det,seg → efficientdet-d0 on VOC 2012. Evaluation runs on the val split. The resolved config, "
        "metrics.jsonl, TensorBoard events, last.pt/best.pt and model.safetensors go to the run folder.",
        epilog=EPILOG_TRAIN.format(recipes=_recipes()), formatter_class=fmt,
    )  # fmt: skip
    t.add_argument("--task", type=_tasks, metavar="TASKS",
                   help="det, seg, det,seg or tasks of the recipe, e.g. det,drivable,lane (default: the recipe's; det)")
    t.add_argument("--dataset", help="coco, voc2012, voc2007, voc0712, shapes, bdd100k, cityscapes, coco-panoptic, "
                   "coco-format, or A+B for one dataset per task (e.g. coco+voc2012 with --task det,seg)")
    t.add_argument("--data-root", metavar="DIR", help="folder holding the datasets (default: $MTEDET_DATA, then ./data)")
    t.add_argument("--model", help="model variant, e.g. efficientdet-d0 … efficientdet-d7x, efficientdet-d4-seg "
                   "(`mtedet info` shows their size)")
    t.add_argument("--config", metavar="FILE_OR_RECIPE", help="a YAML file or a shipped recipe name (see below)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set train.base_lr=0.08 (repeatable; unknown keys are errors)")
    t.add_argument("--epochs", type=_positive_int, help="number of epochs")
    t.add_argument("--max-steps", type=_positive_int, metavar="N", help="stop after N optimizer steps (the schedule ends there)")
    t.add_argument("--batch-size", type=_positive_int, metavar="N", help="images per process per step (lr scales with the global batch)")
    t.add_argument("--image-size", type=_image_size, metavar="N|HxW", help="network input size (multiple of 128 for P7)")
    t.add_argument("--output", metavar="DIR", help="run folder (default: runs/<tasks>-<dataset>-<model>)")
    t.add_argument("--resume", nargs="?", const=True, metavar="PATH",
                   help="continue a run from PATH or from the run folder's last.pt (mid-epoch included)")
    t.add_argument("--device", help="auto (default: this process's GPU, else CPU), cpu, cuda, cuda:1")
    t.add_argument("--amp", choices=["auto", "fp32", "bf16", "fp16"],
                   help="mixed precision: auto = bf16/fp16 on GPU, fp32 on CPU (default auto)")
    t.add_argument("--seed", type=int, help="random seed (data order, augmentation, initialisation)")
    t.add_argument("--workers", type=_non_negative_int, metavar="N", help="DataLoader worker processes per training process")
    t.add_argument("--on-error", choices=["raise", "skip"],
                   help="a sample that fails to load: stop (raise, default) or skip it and list it at the end")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.set_defaults(func=cmd_train)

    # -- eval
    e = sub.add_parser(
        "eval", help="evaluate a checkpoint: COCO AP / per-class IoU tables, JSON, pictures",
        description="Evaluate a checkpoint (last.pt, best.pt or model.safetensors of a run) on the val split of its "
        "run's dataset, or on another dataset/split with the same classes. Prints the AP table (det; COCO or VOC protocol) and the "
        "per-class IoU table (seg); writes metrics.json, precision-recall curves (det) and a confusion matrix (seg).",
    )  # fmt: skip
    e.add_argument("--checkpoint", required=True, metavar="SOURCE", help="a checkpoint (last.pt, best.pt, model.safetensors), a run or save_pretrained folder, or a Hugging Face Hub repository id (owner/name)")
    e.add_argument("--dataset", help="dataset to evaluate on (default: the run's)")
    e.add_argument("--split", help="split (default: the run's val split)")
    e.add_argument("--data-root", metavar="DIR", help="folder holding the datasets (default: the run's, $MTEDET_DATA, ./data)")
    e.add_argument("--batch-size", type=_positive_int, metavar="N", help="images per step (default: the run's)")
    e.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1")
    e.add_argument("--workers", type=_non_negative_int, metavar="N", help="DataLoader worker processes")
    e.add_argument("--max-images", type=_positive_int, metavar="N", help="evaluate only the first N images (a quick look)")
    e.add_argument("--output", metavar="DIR", help="where to write the report (default: next to the checkpoint)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change evaluation options, e.g. --set det.eval.protocol=voc --set det.postprocess.nms=soft_nms")
    e.set_defaults(func=cmd_eval)

    # -- predict
    pr = sub.add_parser(
        "predict", help="run a checkpoint on images: JSON, class-index PNG mask, overlay PNG",
        description="Predict on image files or folders. Per image: <name>.json (boxes in original pixels with class "
        "names and scores; classes of the mask), <name>_mask.png (class indices as a palette PNG) and "
        "<name>_overlay.png (coloured mask, boxes and labels). Boxes on your photos without training: "
        "--model tf_efficientdet-d0 --weights coco (a COCO-trained detector, fetched once into torch.hub's cache).",
    )  # fmt: skip
    _add_model_source(pr)
    pr.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDER", help="image files and/or folders of images")
    pr.add_argument("--out", required=True, metavar="DIR", help="output folder")
    pr.add_argument("--batch-size", type=_positive_int, default=4, metavar="N", help="images per forward pass (default 4)")
    pr.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1")
    pr.add_argument("--score-threshold", type=float, default=0.3, metavar="S",
                    help="keep detections scoring at least S (default 0.3)")
    pr.add_argument("--no-overlay", action="store_true", help="do not draw overlay pictures")
    pr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change inference options, e.g. --set seg.flip_test=true --set det.postprocess.nms=soft_nms")
    pr.set_defaults(func=cmd_predict)

    # -- export
    ex = sub.add_parser(
        "export", help="export to ONNX: end-to-end (image in, boxes and masks out) or raw head outputs",
        description="Export to ONNX. Default (raw): the network's raw outputs, no NMS in the graph, with "
        "OUT.det.anchors.npy (the anchors in the order of the flattened detection outputs) and OUT.json (input "
        "normalisation, output meaning, box decoding, class names). --end-to-end: one graph from letterboxed uint8 "
        "images and their original sizes to predictions, normalisation, box decoding, per-class NMS "
        "(NonMaxSuppression) and top-k inside: boxes/scores/labels/num_detections per detection task (boxes in "
        "original pixels) and per segmentation task class-index masks at each image's original size (as mtedet "
        "predict gives them) and at the input size; OUT.json says how to letterbox. The export is checked against "
        "PyTorch with onnxruntime.",
    )  # fmt: skip
    _add_model_source(ex)
    ex.add_argument("--format", choices=["onnx", "pt2"], default="onnx",
                    help="onnx (default) or pt2: the network as a torch.export ExportedProgram (torch.export.save)")
    ex.add_argument("out", metavar="OUT", help="output file (.onnx or .pt2)")
    ex.add_argument("--image-size", type=_image_size, metavar="N|HxW", help="input size (default: the run's)")
    ex.add_argument("--batch-size", type=_positive_int, default=1, metavar="N", help="batch size of the exported graph (default 1)")
    ex.add_argument("--end-to-end", action="store_true",
                    help="image in, predictions out: normalisation, decoding, NMS and top-k inside the graph")
    ex.add_argument("--dynamic-batch", action="store_true", help="raw export: make the batch dimension dynamic "
                    "(always dynamic end-to-end)")
    ex.add_argument("--dynamic-size", action="store_true",
                    help="end-to-end ONNX or pt2: accept any input height/width that is a multiple of 2**max_level")
    ex.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change post-processing baked into an end-to-end graph, e.g. --set det.postprocess.score_threshold=0.3")
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    ex.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    ex.set_defaults(func=cmd_export)

    # -- push
    pu = sub.add_parser(
        "push", help="share a model on the Hugging Face Hub (config.json, model.safetensors, model card)",
        description="Upload a model to a Hugging Face Hub repository (created if needed) as a pretrained folder: "
        "config.json, model.safetensors and a README.md model card with the run's evaluation metrics. Anyone then "
        "loads it with multitask_edet.from_pretrained(REPO_ID) or `mtedet predict --checkpoint REPO_ID`. Needs a "
        "token (`hf auth login`, $HF_TOKEN or --token).",
    )  # fmt: skip
    pu.add_argument("source", metavar="SOURCE", help="a run folder, checkpoint, or save_pretrained folder")
    pu.add_argument("repo_id", metavar="REPO_ID", help="owner/name of the Hub repository")
    pu.add_argument("--private", action="store_true", help="create the repository as private")
    pu.add_argument("--token", help="Hub token (default: the one `hf auth login` stored, or $HF_TOKEN)")
    pu.add_argument("--message", metavar="TEXT", help="commit message")
    pu.set_defaults(func=cmd_push)

    # -- info
    i = sub.add_parser("info", help="parameters (per part) and GMACs of a model variant",
                       description="Parameters (total, backbone, neck, each head) and multiply-adds (GMACs, one image) "
                       "of a named model at its native or a given input size.")
    i.add_argument("model", metavar="MODEL", help="a variant, e.g. efficientdet-d0 … efficientdet-d7x, efficientdet-d4-seg, "
                   "efficientdet-d3-bdd (the bdd100k-d3 recipe's model, beside HybridNets' 12.83M)")
    i.add_argument("--tasks", metavar="TASKS", help="heads to attach: det, seg or det,seg (default: the variant's)")
    i.add_argument("--num-classes", type=_positive_int, metavar="N", help="classes of every head (default: the variant's)")
    i.add_argument("--image-size", type=_image_size, metavar="N|HxW", help="input size (default: the variant's native)")
    i.add_argument("--json", action="store_true", help="print one JSON object (params, gmacs, params_per_part, ...)")
    i.set_defaults(func=cmd_info)

    # -- convert-effdet
    c = sub.add_parser("convert-effdet", help="convert an effdet (efficientdet-pytorch) checkpoint to ours",
                       description="Convert an effdet state dict (tf_efficientdet_d0…d7x, efficientdet_d0…d5) to this "
                       "project's layout, written as safetensors; load it with --set model.checkpoint=OUT.")
    c.add_argument("src", metavar="IN", help="effdet checkpoint (.pth/.pt/.safetensors)")
    c.add_argument("dst", metavar="OUT", help="output .safetensors file")
    c.add_argument("--model", required=True, help="our variant the weights are for, e.g. tf_efficientdet-d0")
    c.set_defaults(func=cmd_convert)

    # -- convert-backbone
    cb = sub.add_parser("convert-backbone", help="convert EfficientNet weights in efficientnet_pytorch/smp naming to timm's",
                        description="Map an efficientnet_pytorch or smp efficientnet-b* checkpoint (_blocks.N._depthwise_conv"
                        "…) onto timm's names by structure, checked by shape; load the result with "
                        "--set model.backbone.weights=OUT (such files are also converted automatically there).")
    cb.add_argument("src", metavar="IN", help="checkpoint in efficientnet_pytorch naming (.pth/.safetensors)")
    cb.add_argument("dst", metavar="OUT", help="output .safetensors file (timm naming)")
    cb.add_argument("--backbone", required=True, help="timm model, e.g. tf_efficientnet_b3 or tf_efficientnet_lite0")
    cb.set_defaults(func=cmd_convert_backbone)

    # -- data
    d = sub.add_parser("data", help="dataset tools: check a dataset, write the sample dataset",
                       description="Dataset tools.")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    dc = dsub.add_parser(
        "check", help="validate every image and annotation, summarise classes",
        description="Load every image and annotation of the splits through the training adapter; print a summary "
        "(images, objects per class, mask class histogram) and every problem with its file. Exit code 1 when "
        "there are problems.",
    )  # fmt: skip
    dc.add_argument("--dataset", required=True, help="coco, voc2012, voc2007, voc0712, shapes, bdd100k, cityscapes, "
                    "coco-panoptic, ...")
    dc.add_argument("--data-root", metavar="DIR", help="folder holding the dataset (default: $MTEDET_DATA, then ./data)")
    dc.add_argument("--split", action="append", metavar="SPLIT", help="split to check (repeatable; default train and val)")
    dc.add_argument("--annotations", "--task", dest="annotations", metavar="NAMES",
                    help="annotations to check, e.g. det, seg or det,seg (default: every annotation the dataset "
                    "supplies; det for voc2007/voc0712)")
    dc.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="an option of the dataset's adapter, as data.options of a config, e.g. --option "
                    "lane_dilation=3 --option class_map=vehicle (repeatable; unknown options are errors)")
    dc.add_argument("--workers", type=_non_negative_int, default=0, metavar="N", help="loader worker processes (default 0)")
    dc.add_argument("--max-problems", type=_non_negative_int, default=200, metavar="N", help="print at most N problems (default 200)")
    dc.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    dc.set_defaults(func=cmd_data_check)
    ds = dsub.add_parser("sample", help="write the built-in shapes dataset (COCO and VOC, or a multi-task layout)",
                         description="Write the synthetic `shapes` scenes (deterministic) in real on-disk layouts: "
                         "COCO and VOC (--format shapes, for --dataset shapes), or the BDD100K (released or "
                         "HybridNets/YOLOP re-packed), Cityscapes or COCO panoptic layout, under OUT_DIR/bdd100k, "
                         "OUT_DIR/cityscapes or OUT_DIR/coco, for --dataset bdd100k|cityscapes|coco-panoptic "
                         "--data-root OUT_DIR.")
    ds.add_argument("out_dir", metavar="OUT_DIR", help="folder to write")
    ds.add_argument("--format", "--layout", dest="format", default="shapes",
                    choices=["shapes", "bdd100k", "bdd100k-repacked", "cityscapes", "coco-panoptic"],
                    help="layout to write (default shapes: COCO + VOC)")
    # defaults are the generator's (datasets/sample.py DEFAULTS, what --dataset shapes uses)
    ds.add_argument("--num-train", type=_positive_int, metavar="N", help="training images (default: as --dataset shapes)")
    ds.add_argument("--num-val", type=_positive_int, metavar="N", help="validation images (default: as --dataset shapes)")
    ds.add_argument("--image-size", type=_positive_int, metavar="N", help="largest image side (default: as --dataset shapes; "
                    "128 for the other formats)")
    ds.add_argument("--seed", type=int, help="generator seed (default: as --dataset shapes)")
    ds.set_defaults(func=cmd_data_sample)

    # -- demo
    dm = sub.add_parser("demo", help="train det + seg jointly on the built-in shapes sample (CPU, minutes)",
                        description="Train detection and segmentation jointly on the built-in shapes sample, evaluate, "
                        "print the AP and mIoU tables, write a checkpoint and overlay pictures.")
    dm.add_argument("--output", default="runs/demo", metavar="DIR", help="run folder (default runs/demo)")
    dm.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    dm.add_argument("--max-steps", type=_positive_int, metavar="N", help="shorten the run to N steps (a quick look; the AP/mIoU "
                    "targets are for the full run)")
    dm.set_defaults(func=cmd_demo)
    return p


def _debug_requested(argv: Sequence[str] | None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get("MTEDET_DEBUG", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    debug = _debug_requested(argv)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    ok = False
    try:
        code = int(args.func(args) or 0)
        ok = True
        return code
    except (MtedetError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        if debug:
            raise
        if isinstance(e, NonFiniteError):
            print(f"mtedet {args.command}: stopped: {e}", file=sys.stderr)
            return EXIT_FAILED
        if isinstance(e, RunFolderBusyError):
            print(f"mtedet {args.command}: error: {e}", file=sys.stderr)
            return EXIT_BUSY
        print(f"mtedet {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        if debug:
            raise
        print(f"mtedet {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return EXIT_IO_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"mtedet {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RuntimeError as e:
        if "inline_container.cc" in str(e) and not debug:
            # torch.save's write failure without the OSError that caused it (engine/checkpoint.py
            # translates its own saves; this catches any other torch.save)
            print(f"mtedet {args.command}: error: writing a file failed ({str(e).strip().splitlines()[0][:160]}): "
                  "the disk may be full or the folder not writable", file=sys.stderr)
            return EXIT_IO_ERROR
        raise
    finally:
        from .engine.distributed import shutdown_distributed

        shutdown_distributed(wait_for_all=ok)


if __name__ == "__main__":
    raise SystemExit(main())
