"""Speed of our EfficientDet against effdet on the same network, side by side in one process.

    .venv/bin/python benchmarks/speed.py                        # D0 512², inference + training, both paddings
    .venv/bin/python benchmarks/speed.py --cases infer --variants d0,d1 --reps 21
    .venv/bin/python benchmarks/speed.py --cases seg,data       # d4-seg vs smp; data pipeline
    .venv/bin/python benchmarks/speed.py --check-only --tiny    # correctness check only (the test's)

Method. effdet's model is built with random weights and non-trivial BN statistics, biases
and fusion weights; ours gets the same weights through our converter (compat/effdet.py).
Before anything is timed, both run on the same input and must agree: class/box outputs
within 1e-4 (inference), losses and gradients within 1e-4 relative (training: forward, anchor
labelling, focal + Huber loss, backward). Timed runs are interleaved (ours, effdet, effdet,
ours, ...) so a load change on a shared machine hits both alike; we report the median, the
quartiles and the ratio of medians ours/effdet (< 1: ours is faster), plus the median of
the per-repetition ratios, which is robust to slow load drift. CPU runs use fp32 and
``--threads`` intra-op threads. Stochastic depth is off in both (it is random per call).

The training step is what a trainer does: zero grads, forward, targets from the boxes
(effdet: DetBenchTrain with its AnchorLabeler; ours: DetectionTask.loss), backward, SGD
(momentum 0.9, weight decay 4e-5). Peak memory (CPU) is measured per implementation in a
fresh subprocess that builds both models exactly as here, then runs two steps of one of
them: peak RSS (VmHWM) minus the RSS before the first step = the memory a training step
adds (activations, gradients, optimizer state). tracemalloc cannot see torch's allocations;
RSS sees all of them. On CUDA: torch.cuda.max_memory_allocated.

Ours runs in its default memory layout (channels_last, see models/backbone.py); "ours fused"
is ``fuse_for_inference(model)`` (BN folded into convs, models/fuse.py). With
``--ref-channels-last`` effdet (and smp) are also timed with channels_last inputs and weights,
to show what the layout alone gives. On a GPU (untested here: no GPU was available when this was
written) the modes bf16 autocast, channels_last and torch.compile are run for both as well.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning. With libgomp's default (spin), a 2-thread
# run on a machine where another process holds a core becomes 10-30x slower and erratic: a
# spinning thread burns the core its sibling waits for. Same for both implementations; set
# OMP_WAIT_POLICY=ACTIVE to measure the default. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import warnings  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)  # effdet's torch.jit.script
warnings.filterwarnings("ignore", category=UserWarning, module="torch.utils.flop_counter")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from multitask_edet.compat.effdet import convert_effdet_state_dict  # noqa: E402
from multitask_edet.models.factory import build_model_tasks, create_model  # noqa: E402
from multitask_edet.models.fuse import fuse_for_inference  # noqa: E402

TOL = 1e-4
NATIVE_SIZE = {"d0": 512, "d1": 640, "d2": 768}
#: a tiny network (timm's test_efficientnet, 16 channels, one repeat) for the test suite
TINY = dict(backbone="test_efficientnet", channels=16, repeats=1, head_repeats=1, num_classes=5)


# --- building the pair --------------------------------------------------------------------


def effdet_name(variant: str, padding: str) -> str:
    return ("tf_" if padding == "same" else "") + f"efficientdet_{variant}"


@torch.no_grad()
def randomise(ref: nn.Module, seed: int = 1) -> None:
    """Non-trivial BN statistics/affines, conv biases and fusion weights, so a wrong mapping
    or a missed fold would show in the outputs (random init leaves BN at identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.copy_(1 + torch.randn(m.num_features, generator=g) * 0.1)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    for n, p in ref.named_parameters():
        if n.endswith("edge_weights"):
            p.copy_(torch.rand(p.shape, generator=g) * 2)


def no_drop_path(*models: nn.Module) -> None:
    for model in models:
        for m in model.modules():
            if hasattr(m, "drop_prob"):  # timm DropPath
                m.drop_prob = 0.0


def build_pair(variant: str, padding: str, size: int, tiny: bool = False) -> tuple[nn.Module, nn.Module]:
    """(effdet model, our model) with identical weights, both in eval mode."""
    import effdet
    from effdet.config import get_efficientdet_config

    name = effdet_name(variant, padding)
    ours_name = name.replace("efficientdet_", "efficientdet-")
    if tiny:
        cfg = get_efficientdet_config(name)
        cfg.update(backbone_name=TINY["backbone"], fpn_channels=TINY["channels"], fpn_cell_repeats=TINY["repeats"],
                   box_class_repeats=TINY["head_repeats"], num_classes=TINY["num_classes"], image_size=(size, size),
                   backbone_args={})
        ref = effdet.EfficientDet(cfg, pretrained_backbone=False)
        ours = create_model(ours_name, backbone={"name": TINY["backbone"], "drop_path_rate": 0.0},
                            neck={"channels": TINY["channels"], "repeats": TINY["repeats"]},
                            det={"num_classes": TINY["num_classes"], "repeats": TINY["head_repeats"]})
    else:
        ref = effdet.create_model(name, pretrained=False, pretrained_backbone=False, image_size=(size, size))
        ours = create_model(ours_name, tasks=("det",))
    randomise(ref)
    ours.load_state_dict(convert_effdet_state_dict(ref.state_dict(), ours))
    no_drop_path(ref, ours)
    return ref.eval(), ours.eval()


def make_batch(batch: int, size: int, num_classes: int, seed: int = 0, boxes_per_image: int = 8):
    """Images (normalised float) and random boxes/labels: ours (lists) and effdet's targets."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    boxes, labels = [], []
    for _ in range(batch):
        xy = torch.rand(boxes_per_image, 2, generator=g) * size * 0.7
        wh = torch.rand(boxes_per_image, 2, generator=g) * size * 0.3 + size / 32
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=size)], 1))
        labels.append(torch.randint(0, num_classes, (boxes_per_image,), generator=g))
    ours = {"images": images, "det": [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]}
    # effdet: yxyx boxes, 1-based float classes, -1 padding (all images have the same count)
    ref = {"bbox": torch.stack([b[:, [1, 0, 3, 2]] for b in boxes]), "cls": torch.stack(labels).float() + 1}
    return ours, ref


# --- the steps being compared ----------------------------------------------------------------


@dataclass
class Mode:
    """How a case runs: device, autocast dtype, memory layout, torch.compile."""

    device: str = "cpu"
    amp: torch.dtype | None = None
    #: both models and inputs channels_last (on CPU ours is channels_last anyway)
    channels_last: bool = False
    compile: bool = False

    @property
    def label(self) -> str:
        parts = [self.device, "bf16" if self.amp else "fp32"]
        parts += ["channels_last"] if self.channels_last else []
        parts += ["compile"] if self.compile else []
        return " ".join(parts)

    def autocast(self):
        if self.amp is None:
            return torch.autocast(self.device, enabled=False)
        return torch.autocast(self.device, dtype=self.amp)

    @property
    def tol(self) -> float | None:
        """The agreement required before timing: fp32 eager must match (on CUDA with TF32 off
        for the check, see exact_math); bf16 and compiled modes are only reported."""
        return TOL if self.amp is None and not self.compile else None

    def place(self, model: nn.Module, x: torch.Tensor):
        model = model.to(self.device)
        x = x.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        return model, x


@contextlib.contextmanager
def exact_math(device: str):
    """fp32 convolutions/matmuls in full precision on CUDA (TF32 is PyTorch's default for convs)."""
    if not device.startswith("cuda"):
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def gate(case: str, diffs: dict[str, float], mode: Mode, log) -> None:
    log(f"{case}: check vs effdet " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    bad = {k: v for k, v in diffs.items() if mode.tol is not None and v > mode.tol}
    if bad:
        raise SystemExit(f"{case}: differs from effdet by more than {mode.tol}: {bad} — not timing it")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def inference_fns(ref, ours, x, mode: Mode, fused: bool = True) -> dict[str, Callable[[], object]]:
    ref_m, xr = mode.place(ref, x)
    ours_m, xo = mode.place(ours, x)
    fns = {"effdet": ref_m, "ours": ours_m}
    if fused:
        fns["ours fused"] = fuse_for_inference(ours_m)
    if mode.compile:
        fns = {k: torch.compile(m) for k, m in fns.items()}

    def call(m, xx):
        def run():
            with torch.inference_mode(), mode.autocast():
                return m(xx)
        return run

    return {k: call(m, xr if k == "effdet" else xo) for k, m in fns.items()}


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=4e-5)


def train_fns(ref, ours, batch: dict, ref_target: dict, mode: Mode):
    """({impl: one training step per call, returning its losses detached}, {impl: model})."""
    from effdet.bench import DetBenchTrain

    ref_m, xr = mode.place(ref, batch["images"])
    ours_m, xo = mode.place(ours, batch["images"])
    bench = DetBenchTrain(ref_m).train()
    ours_m.train()
    models = {"effdet": ref_m, "ours": ours_m}
    ours_fwd = ours_m
    if mode.compile:  # the networks; labelling and loss stay eager in both
        bench.model = torch.compile(ref_m)
        ours_fwd = torch.compile(ours_m)
    target = {k: v.to(mode.device) for k, v in ref_target.items()}
    task = build_model_tasks(ours.config)["det"]
    ours_batch = dict(batch, images=xo)
    opts = {"effdet": _sgd(bench), "ours": _sgd(ours_m)}

    def effdet_step():
        opts["effdet"].zero_grad(set_to_none=True)
        with mode.autocast():
            out = bench(xr, target)
        out["loss"].backward()
        opts["effdet"].step()
        return {"total": out["loss"].detach(), "cls": out["class_loss"].detach(), "box": out["box_loss"].detach()}

    def ours_step():
        opts["ours"].zero_grad(set_to_none=True)
        with mode.autocast():
            losses = task.loss(ours_fwd(xo)["det"], ours_batch)
        total = sum(losses.values())
        total.backward()
        opts["ours"].step()
        # det_box carries the box weight; effdet's box_loss does not
        return {"total": total.detach(), "cls": losses["det_cls"].detach(),
                "box": losses["det_box"].detach() / task.config.loss.box_loss_weight}

    return {"effdet": effdet_step, "ours": ours_step}, models


# --- correctness before timing -------------------------------------------------------------


def _flat_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, dict):
        out = (out["det"]["cls"], out["det"]["box"])
    return [t.float() for t in list(out[0]) + list(out[1])]


def check_inference(fns: dict) -> dict[str, float]:
    """Max abs difference of every class/box output against effdet's."""
    ref = _flat_outputs(fns["effdet"]())
    diffs = {}
    for name, fn in fns.items():
        if name != "effdet":
            outs = _flat_outputs(fn())
            diffs[name] = max((a - b).abs().max().item() for a, b in zip(ref, outs))
    return diffs


def check_training(ref, ours, batch, ref_target, mode: Mode) -> dict[str, float]:
    """One step of each on copies (the timed models stay as built): relative differences of
    the losses, and the largest gradient difference relative to the largest gradient.

    Both run in the layout ours uses (channels_last on CPU): summation order alone moves the
    backbone's stem gradient by ~1e-2 of its size between NCHW and NHWC (many-term sums with
    cancellation, through train-mode BN), which would hide what this check is for.
    """
    cl = mode.channels_last or (mode.device == "cpu" and getattr(ours.backbone, "channels_last_on_cpu", False))
    mode = Mode(mode.device, mode.amp, channels_last=cl, compile=False)
    fns, models = train_fns(copy.deepcopy(ref), copy.deepcopy(ours), batch, ref_target, mode)
    with exact_math(mode.device):
        out_ref, out_ours = fns["effdet"](), fns["ours"]()
    diffs = {f"loss_{k}": abs(out_ref[k].item() - out_ours[k].item()) / max(1.0, abs(out_ref[k].item()))
             for k in out_ref}
    # effdet's gradients under our names: its state dict with each parameter replaced by its
    # gradient, through the converter (SGD's step leaves .grad as it was)
    sd = dict(models["effdet"].state_dict())
    for n, p in models["effdet"].named_parameters():
        sd[n] = p.grad if p.grad is not None else torch.zeros_like(p)
    ref_grads = convert_effdet_state_dict(sd, models["ours"])
    # relative to the largest gradient of the network: a parameter whose gradient is ~0 in
    # theory (a bias before a train-mode BN) only has rounding noise to compare
    worst, scale = 0.0, 0.0
    for n, p in models["ours"].named_parameters():
        if p.grad is not None:
            worst = max(worst, (ref_grads[n] - p.grad).abs().max().item())
            scale = max(scale, ref_grads[n].abs().max().item())
    worst /= max(scale, 1e-12)
    diffs["grad_rel"] = worst
    return diffs


# --- timing and memory -------------------------------------------------------------------------


#: process CPU seconds of the timed calls (all threads), keyed like interleaved()'s result;
#: on a shared machine it shows the work done while the wall time also shows the waiting
CPU_TIMES: dict[str, list[float]] = {}


def interleaved(fns: dict[str, Callable], reps: int, warmup: int, device: str = "cpu") -> dict[str, list[float]]:
    """Wall seconds per call of every fn, alternating the order each repetition."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    CPU_TIMES.clear()
    CPU_TIMES.update({n: [] for n in names})
    for r in range(reps):
        for n in names if r % 2 == 0 else names[::-1]:
            t, c = time.perf_counter(), time.process_time()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t)
            CPU_TIMES[n].append(time.process_time() - c)
    return times


def summarise(times: list[float], cpu: list[float] | None = None) -> dict[str, float]:
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    out = {"median": statistics.median(times), "q1": q[0], "q3": q[2], "min": min(times), "max": max(times),
           "n": len(times)}
    if cpu:
        out["cpu_median"] = statistics.median(cpu)
    return out


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith(field + ":"))
    return int(line.split()[1]) * 1024  # kB


def _rss_bytes() -> int:
    return _status_bytes("VmRSS")


def _peak_rss_bytes() -> int:
    # VmHWM belongs to this process image; getrusage's ru_maxrss would not do: Linux carries
    # it over fork + exec, so a child of a big parent reports the parent's size
    return _status_bytes("VmHWM")


def memory_child(spec: dict) -> dict:
    """Runs in a fresh process: build both models as the parent does, then two steps of one."""
    torch.set_num_threads(spec["threads"])
    ref, ours = build_pair(spec["variant"], spec["padding"], spec["size"], spec.get("tiny", False))
    batch, target = make_batch(spec["batch"], spec["size"], ours.heads["det"].num_classes)
    mode = Mode()
    if spec["kind"] == "train":
        fns, _ = train_fns(ref, ours, batch, target, mode)
    else:
        fns = inference_fns(ref, ours, batch["images"], mode)
    fn = fns[spec["impl"]]
    before = _rss_bytes()
    for _ in range(2):
        fn()
    return {"before": before, "peak": _peak_rss_bytes(), "step": _peak_rss_bytes() - before}


def measure_memory(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory child failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def cuda_peak(fn: Callable) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# --- cases ---------------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    impl: str
    batch: int
    times: dict
    check: float | None = None
    memory: dict | None = None
    extra: dict = field(default_factory=dict)


def _ratios(rows: list[Row], raw: dict[str, list[float]]) -> None:
    """Ratio of medians and median of paired per-repetition ratios, each impl vs effdet."""
    ref = next(r for r in rows if r.impl == "effdet")
    for r in rows:
        r.extra["ratio"] = r.times["median"] / ref.times["median"]
        pairs = [a / b for a, b in zip(raw[r.impl], raw["effdet"])]
        r.extra["paired_ratio"] = statistics.median(pairs)
        if "cpu_median" in r.times and ref.times.get("cpu_median"):
            r.extra["cpu_ratio"] = r.times["cpu_median"] / ref.times["cpu_median"]


def run_inference(args, variant, padding, size, mode: Mode, log) -> list[Row]:
    ref, ours = build_pair(variant, padding, size, args.tiny)
    rows = []
    for batch in args.infer_batches:
        x = make_batch(batch, size, ours.heads["det"].num_classes)[0]["images"]
        fns = inference_fns(ref, ours, x, mode)
        if args.ref_channels_last and not mode.channels_last and mode.device == "cpu":
            cl = Mode(mode.device, mode.amp, channels_last=True, compile=mode.compile)
            # a copy of each: place() converts the models it is given
            fns["effdet channels_last"] = inference_fns(
                copy.deepcopy(ref), copy.deepcopy(ours), x, cl, fused=False)["effdet"]
        with exact_math(mode.device):
            diffs = check_inference(fns)
        case = f"infer {effdet_name(variant, padding)} {size}² b{batch} [{mode.label}]"
        gate(case + " (max |Δ| of class/box outputs)", diffs, mode, log)
        if args.check_only:
            rows += [Row(case, k, batch, {}, check=v) for k, v in diffs.items()]
            continue
        raw = interleaved(fns, args.reps, args.warmup, mode.device)
        case_rows = [Row(case, k, batch, summarise(v, CPU_TIMES.get(k)), check=diffs.get(k)) for k, v in raw.items()]
        _ratios(case_rows, raw)
        if mode.device.startswith("cuda"):
            for r in case_rows:
                r.memory = {"step": cuda_peak(fns[r.impl])}
        rows += case_rows
        for r in case_rows:
            log("  " + format_row(r))
    return rows


def run_training(args, variant, padding, size, mode: Mode, log) -> list[Row]:
    ref, ours = build_pair(variant, padding, size, args.tiny)
    batch, target = make_batch(args.train_batch, size, ours.heads["det"].num_classes)
    case = f"train {effdet_name(variant, padding)} {size}² b{args.train_batch} [{mode.label}]"
    diffs = check_training(ref, ours, batch, target, mode)
    gate(case + " (relative)", diffs, mode, log)
    worst = max(diffs.values())
    if args.check_only:
        return [Row(case, "ours", args.train_batch, {}, check=worst, extra=diffs)]
    fns, _ = train_fns(ref, ours, batch, target, mode)
    if args.ref_channels_last and not mode.channels_last and mode.device == "cpu":
        cl = Mode(mode.device, mode.amp, channels_last=True, compile=mode.compile)
        fns["effdet channels_last"] = train_fns(copy.deepcopy(ref), copy.deepcopy(ours), batch, target, cl)[0]["effdet"]
    raw = interleaved(fns, args.train_reps, args.warmup, mode.device)
    rows = [Row(case, k, args.train_batch, summarise(v, CPU_TIMES.get(k)), check=worst if k == "ours" else None) for k, v in raw.items()]
    _ratios(rows, raw)
    for r in rows:
        if mode.device == "cpu" and not args.no_memory and r.impl in ("effdet", "ours"):
            r.memory = measure_memory(dict(kind="train", impl=r.impl, variant=variant, padding=padding, size=size,
                                           batch=args.train_batch, threads=args.threads, tiny=args.tiny))
        elif mode.device.startswith("cuda"):
            r.memory = {"step": cuda_peak(fns[r.impl])}
        log("  " + format_row(r))
    return rows


def extra_modes(device: str) -> list[Mode]:
    """bf16 autocast, channels_last, torch.compile: run on a GPU beside the CPU fp32 eager case
    (untested on a GPU: none was available when this was written; ``--extra-modes`` runs them
    on the CPU, which exercises the same code)."""
    return [Mode(device, amp=torch.bfloat16), Mode(device, amp=torch.bfloat16, channels_last=True),
            Mode(device, amp=torch.bfloat16, channels_last=True, compile=True)]


# --- segmentation: ours vs smp with the same encoder --------------------------------------------


def seg_models(num_classes: int = 21) -> dict[str, nn.Module]:
    import segmentation_models_pytorch as smp

    enc = dict(encoder_name="tu-efficientnet_b4", encoder_weights=None, classes=num_classes)
    return {
        "efficientdet-d4-seg (ours)": create_model("efficientdet-d4-seg", tasks=("seg",)),
        "smp DeepLabV3+ B4": smp.DeepLabV3Plus(**enc),
        "smp FPN B4": smp.FPN(**enc),
    }


def _logits(out):
    return out["seg"] if isinstance(out, dict) else out


def gmacs(model: nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, 3, size, size))
    ops = ("convolution", "mm", "addmm", "bmm")
    return sum(v for op, v in counter.get_flop_counts()["Global"].items() if op.__name__.split(".")[0] in ops) / 2e9


def run_seg(args, log) -> list[Row]:
    """Params, GMACs, inference and training-step time of d4-seg and smp's B4 models (CE loss)."""
    size, rows = args.seg_size, []
    models = seg_models()
    no_drop_path(*models.values())
    info = {k: {"params_M": sum(p.numel() for p in m.parameters()) / 1e6, "gmacs": gmacs(m, size)}
            for k, m in models.items()}
    ours = "efficientdet-d4-seg (ours)"
    variants = dict(models)
    variants[ours + " fused"] = fuse_for_inference(models[ours])  # inference only
    if args.ref_channels_last:  # smp in the layout ours runs in on CPU
        for k, m in models.items():
            if k != ours:
                variants[k + " channels_last"] = copy.deepcopy(m).to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, size, size)
    xb = torch.randn(args.seg_batch, 3, size, size)
    yb = torch.randint(0, 21, (args.seg_batch, size, size))

    def layout(k, t):
        return t.contiguous(memory_format=torch.channels_last) if k.endswith("channels_last") else t

    def infer(k, m):
        xx = layout(k, x)

        def run():
            with torch.inference_mode():
                return _logits(m.eval()(xx))
        return run

    def train(k, m):
        opt, xx = _sgd(m), layout(k, xb)

        def run():
            m.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(_logits(m(xx)), yb, ignore_index=255).backward()
            opt.step()
        return run

    base = lambda k: k.replace(" fused", "").replace(" channels_last", "")  # noqa: E731
    for kind, make, batch in (("infer", infer, 1), ("train", train, args.seg_batch)):
        fns = {k: make(k, m) for k, m in variants.items() if kind == "infer" or not k.endswith("fused")}
        raw = interleaved(fns, args.seg_reps, 1)
        case = f"seg {kind} {size}² b{batch} [cpu fp32]"
        for k, v in raw.items():
            rows.append(Row(case, k, batch, summarise(v, CPU_TIMES.get(k)), extra=dict(info[base(k)])))
    for r in rows:
        log(f"  {r.case}: " + format_row(r) + f"  params {r.extra['params_M']:.1f}M  {r.extra['gmacs']:.1f} GMACs")
    return rows


def run_data(args, log) -> list[Row]:
    """Decode + augmentation throughput (one process), from benchmarks/data_throughput.py."""
    sys.path.insert(0, str(Path(__file__).parent))
    from data_throughput import rate

    from multitask_edet.datasets import build_dataset, write_shapes
    from multitask_edet.datasets.transforms import train_transforms

    rows = []
    with tempfile.TemporaryDirectory() as d:
        write_shapes(d, num_train=args.data_images, num_val=1, image_size=500)
        for tasks in (("det",), ("det", "seg")):
            ds = build_dataset("shapes", d, "train", tasks)
            ds.transform = train_transforms(args.size or 512, ("boxes", "mask") if "seg" in tasks else ("boxes",))
            r = rate(ds, args.data_images, 2)
            rows.append(Row(f"data train {args.size or 512}² ({'+'.join(tasks)})", "pipeline", 1,
                            {"median": 1.0 / r}, extra={"images_per_s": r}))
    for r in rows:
        log(f"  {r.case}: {r.extra['images_per_s']:.1f} images/s per worker process")
    return rows


# --- report ----------------------------------------------------------------------------------


def format_row(r: Row) -> str:
    t = r.times
    s = f"{r.impl:<28} median {t['median'] * 1e3:8.1f} ms  IQR {t['q1'] * 1e3:7.1f}–{t['q3'] * 1e3:7.1f}"
    s += f"  min–max {t['min'] * 1e3:7.1f}–{t['max'] * 1e3:7.1f}  {r.batch / t['median']:6.2f} img/s"
    if "ratio" in r.extra:
        s += f"  ours/effdet {r.extra['ratio']:.3f} (paired {r.extra['paired_ratio']:.3f}"
        s += f", cpu {r.extra['cpu_ratio']:.3f})" if "cpu_ratio" in r.extra else ")"
    if r.memory:
        s += f"  mem +{r.memory['step'] / 2**20:.0f} MiB"
    return s


def markdown(rows: list[Row]) -> str:
    out, case = [], None
    for r in rows:
        if not r.times:
            continue
        if "images_per_s" in r.extra:  # data pipeline: a rate, not a timing table
            out += ["", f"**{r.case}**: {r.extra['images_per_s']:.1f} images/s per worker process"]
            case = None
            continue
        if r.case != case:
            case = r.case
            out += ["", f"**{case}**", "",
                    "| impl | median ms | IQR ms | min–max ms | img/s | ratio vs effdet (paired) | step memory | max abs Δ |",
                    "|---|---|---|---|---|---|---|---|"]
        t = r.times
        ratio = f"{r.extra['ratio']:.3f} ({r.extra['paired_ratio']:.3f})" if "ratio" in r.extra else ""
        mem = f"{r.memory['step'] / 2**20:.0f} MiB" if r.memory else ""
        chk = f"{r.check:.1e}" if r.check is not None else ""
        extra = "".join(f" {k}={v:.2f}" for k, v in r.extra.items() if k in ("params_M", "gmacs"))
        out.append(f"| {r.impl}{extra} | {t['median'] * 1e3:.1f} | {t['q1'] * 1e3:.1f}–{t['q3'] * 1e3:.1f} | "
                   f"{t['min'] * 1e3:.1f}–{t['max'] * 1e3:.1f} | {r.batch / t['median']:.2f} | {ratio} | {mem} | {chk} |")
    return "\n".join(out)


def environment() -> str:
    import importlib.metadata as md

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    vers = ", ".join(f"{p} {md.version(p)}" for p in ("torch", "timm", "effdet", "segmentation_models_pytorch"))
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"CPU {cpu} ({os.cpu_count()} cores visible), torch threads {torch.get_num_threads()}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, GPU: {gpu}; "
            f"{vers}; load average {os.getloadavg()[0]:.1f} / {os.getloadavg()[1]:.1f} / {os.getloadavg()[2]:.1f}")


def _csv(kind):
    return lambda s: [kind(v) for v in s.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=_csv(str), default=["infer", "train"], help="infer,train,seg,data")
    p.add_argument("--variants", type=_csv(str), default=["d0"], help="d0,d1,d2")
    p.add_argument("--paddings", type=_csv(str), default=["pytorch", "same"])
    p.add_argument("--size", type=int, default=None, help="input size (default: the variant's native one)")
    p.add_argument("--infer-batches", type=_csv(int), default=[1, 8])
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--reps", type=int, default=15, help="timed repetitions per inference case")
    p.add_argument("--train-reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ref-channels-last", action="store_true",
                   help="also time effdet (and smp) in channels_last, the layout ours uses on CPU")
    p.add_argument("--no-memory", action="store_true", help="skip the training-memory subprocesses")
    p.add_argument("--extra-modes", action="store_true", help="without a GPU: bf16/channels_last/compile on CPU")
    p.add_argument("--seg-size", type=int, default=512)
    p.add_argument("--seg-batch", type=int, default=2)
    p.add_argument("--seg-reps", type=int, default=3)
    p.add_argument("--data-images", type=int, default=32)
    p.add_argument("--check-only", action="store_true", help="correctness checks only, no timing")
    p.add_argument("--tiny", action="store_true", help="a tiny test_efficientnet network (for tests)")
    p.add_argument("--json", type=Path, help="write all rows here")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run(args, log=print) -> list[Row]:
    torch.set_num_threads(args.threads)
    log(environment())
    rows: list[Row] = []
    modes = [Mode()]
    if torch.cuda.is_available() and not args.check_only:
        modes += [Mode("cuda")] + extra_modes("cuda")
    elif args.extra_modes and not args.check_only:
        modes += extra_modes("cpu")
    for variant in args.variants:
        size = args.size or NATIVE_SIZE[variant]
        for padding in args.paddings:
            for mode in modes:
                if "infer" in args.cases:
                    rows += run_inference(args, variant, padding, size, mode, log)
                if "train" in args.cases:
                    rows += run_training(args, variant, padding, size, mode, log)
    if "seg" in args.cases and not args.check_only:
        rows += run_seg(args, log)
    if "data" in args.cases and not args.check_only:
        rows += run_data(args, log)
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return
    rows = run(args)
    table = markdown(rows)
    if table:
        print(table)
    if args.markdown:
        args.markdown.write_text(environment() + "\n" + table + "\n")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1, default=str))


if __name__ == "__main__":
    main()
