"""A task of your own, trained jointly with detection (README: "Your own task").

A heat map of object centres on BiFPN level P3 (CenterNet-style), learnt from the dataset's
boxes and scored by centre precision/recall. The library sees one registered task type; its
options come from its config section (``--set centres.sigma=0.25``, or examples/centres.yaml).
"""
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from multitask_edet import Evaluator, Experiment, Task, register_task


@dataclass(frozen=True)
class CentreConfig:
    source: str = "det"        # learns from the dataset's boxes
    level: int = 3             # reads P3 (stride 8)
    sigma: float = 1 / 6       # Gaussian radius, as a fraction of the box's shorter side


class CentreHead(nn.Sequential):
    def __init__(self, in_channels, cfg):
        super().__init__(nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.SiLU(), nn.Conv2d(32, 1, 1))
        self.levels = (cfg.level,)                   # the pyramid levels the head reads
        nn.init.constant_(self[-1].bias, -2.2)       # start at p = 0.1 everywhere

    def forward(self, feats):
        return super().forward(feats[0])             # (B, 1, H/8, W/8) logits


def to_original(points, meta):
    """Input pixels -> the image's own pixels (datasets/base.py: scale and pad in meta)."""
    top, left = meta["pad"]
    return (points - points.new_tensor([left, top])) / meta["scale"]


@register_task("centres")
class CentreTask(Task):
    Config = CentreConfig
    annotation = "boxes"

    def build_head(self, in_channels, padding="pytorch"):
        return CentreHead(in_channels, self.config)

    def centre_maps(self, batch, shape, stride):  # Gaussian bumps at the box centres, 1 at the centre's cell
        heat = torch.zeros(shape)
        ys = (torch.arange(shape[2]) + 0.5).view(-1, 1) * stride
        xs = (torch.arange(shape[3]) + 0.5).view(1, -1) * stride
        for i, ann in enumerate(batch[self.source]):
            for x0, y0, x1, y1 in ([] if ann is None else ann["boxes"].tolist()):
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                sigma = max(stride / 2, min(x1 - x0, y1 - y0) * self.config.sigma)
                bump = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
                heat[i, 0] = torch.maximum(heat[i, 0], bump)
                heat[i, 0, min(int(cy // stride), shape[2] - 1), min(int(cx // stride), shape[3] - 1)] = 1.0
        return heat

    def loss(self, logits, batch):
        stride = batch["images"].shape[-1] / logits.shape[-1]
        target = self.centre_maps(batch, logits.shape, stride).to(logits)
        keep = self.has_targets(batch).to(logits).view(-1, 1, 1, 1)  # images without boxes add nothing
        p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
        pos = (target == 1).to(logits)
        focal = -(pos * (1 - p) ** 2 * p.log() + (1 - pos) * (1 - target) ** 4 * p**2 * (1 - p).log())
        return {"focal": (focal * keep).sum() / (pos * keep).sum().clamp(min=1)}

    def postprocess(self, logits, batch, threshold=0.3):
        stride = batch["images"].shape[-1] / logits.shape[-1]
        heat = logits.sigmoid()
        peaks = (heat == F.max_pool2d(heat, 3, 1, 1)) & (heat > threshold)
        out = []
        for i, meta in enumerate(batch["meta"]):
            _, ys, xs = peaks[i].nonzero(as_tuple=True)
            points = torch.stack([xs, ys], 1).float().add(0.5).mul(stride)
            out.append({"points": to_original(points, meta), "scores": heat[i, 0, ys, xs]})
        return out

    def evaluator(self, dataset=None, output_dir=None):
        return CentreEvaluator(self.source)


@dataclass
class CentreEvaluator(Evaluator):
    """A predicted centre within a quarter of the object's size of a true one is a hit."""

    source: str                                      # the batch key of the boxes
    main_metric = "F1"

    def reset(self):
        self.hits = self.predicted = self.objects = 0

    def update(self, predictions, batch):
        for pred, ann, meta in zip(predictions, batch[self.source], batch["meta"]):
            boxes = torch.zeros(0, 4) if ann is None else ann["boxes"]
            centres = to_original((boxes[:, :2] + boxes[:, 2:]) / 2, meta)
            radius = (boxes[:, 2:] - boxes[:, :2]).min(1).values / meta["scale"] / 4
            if len(centres) and len(pred["points"]):
                near = torch.cdist(centres, pred["points"]) <= radius[:, None]
                self.hits += int(near.any(1).sum())
            self.predicted += len(pred["points"])
            self.objects += len(centres)

    def compute(self):
        recall, precision = self.hits / max(self.objects, 1), self.hits / max(self.predicted, 1)
        return {"F1": 2 * precision * recall / max(precision + recall, 1e-9), "precision": precision, "recall": recall}

    def report(self):
        m = self.compute()
        return f"centres: F1 {m['F1']:.3f}  precision {m['precision']:.3f}  recall {m['recall']:.3f}"


if __name__ == "__main__":
    exp = Experiment(
        "demo-shapes",                               # the demo's recipe: tiny trunk, 128 px
        tasks=["det", "centres"],                    # a built-in task and yours on one trunk
        centres={"sigma": 0.25},                     # your task's options, validated like any section
        weighting="dwa", train={"loss_weighting_options": {"window": 10}},
        max_steps=30, output="runs/example-centres",
    )
    exp.train()
    metrics = exp.evaluate()
    print(f"AP50 {metrics['det']['AP50']:.3f}  centre F1 {metrics['centres']['F1']:.3f}")
