"""A head and a task of your own, trained jointly with detection (README: "Your own head and task").

The head predicts a heat map of object centres on BiFPN level P3 (CenterNet-style); the task
turns the batch's boxes into target maps, finds peaks, and scores centre precision/recall.
All of it is user code: the library only sees a registered head and a registered task.
"""
import torch
from torch import nn
from torch.nn import functional as F

from multitask_edet import Evaluator, Experiment, Task, register_head, register_task


@register_head("centres")
class CentreHead(nn.Module):
    levels = (3,)                                    # reads P3 (stride 8)

    def __init__(self, in_channels, channels=32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
                                 nn.SiLU(), nn.Conv2d(channels, 1, 1))
        nn.init.constant_(self.net[-1].bias, -2.2)   # start at p = 0.1 everywhere

    def forward(self, feats):
        return self.net(feats[0])                    # (B, 1, H/8, W/8) logits


def centre_maps(boxes_per_image, shape, stride):
    """Gaussian bumps at the box centres, exactly 1 at the centre's cell."""
    heat = torch.zeros(shape)
    ys = (torch.arange(shape[2]) + 0.5).view(-1, 1) * stride
    xs = (torch.arange(shape[3]) + 0.5).view(1, -1) * stride
    for i, boxes in enumerate(boxes_per_image):
        for x0, y0, x1, y1 in ([] if boxes is None else boxes.tolist()):
            cx, cy, sigma = (x0 + x1) / 2, (y0 + y1) / 2, max(stride / 2, min(x1 - x0, y1 - y0) / 6)
            bump = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
            heat[i, 0] = torch.maximum(heat[i, 0], bump)
            heat[i, 0, min(int(cy // stride), shape[2] - 1), min(int(cx // stride), shape[3] - 1)] = 1.0
    return heat


def to_original(points, meta):
    """Input pixels -> the image's own pixels (datasets/base.py: scale and pad in meta)."""
    top, left = meta["pad"]
    return (points - points.new_tensor([left, top])) / meta["scale"]


@register_task("centres")
class CentreTask(Task):
    name = "centres"
    target_keys = ("boxes",)                         # centres come from the detection boxes

    def build_head(self, in_channels):
        return CentreHead(in_channels)

    def loss(self, logits, batch):
        stride = batch["images"].shape[-1] / logits.shape[-1]
        target = centre_maps(batch["boxes"], logits.shape, stride).to(logits)
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
        return CentreEvaluator()


class CentreEvaluator(Evaluator):
    """A predicted centre within a quarter of the object's size of a true one is a hit."""

    main_metric = "F1"

    def reset(self):
        self.hits = self.predicted = self.objects = 0

    def update(self, predictions, batch):
        for pred, boxes, meta in zip(predictions, batch["boxes"], batch["meta"]):
            boxes = torch.zeros(0, 4) if boxes is None else boxes
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


exp = Experiment(
    "demo-shapes",                                   # the demo's recipe: tiny trunk, 128 px
    tasks=["det", "centres"],                        # a built-in task and yours on one trunk
    weighting="dwa", train={"loss_weighting_options": {"window": 10}},
    max_steps=30, output="runs/example-centres",
)
exp.train()
metrics = exp.evaluate()
print(f"AP50 {metrics['det']['AP50']:.3f}  centre F1 {metrics['centres']['F1']:.3f}")
