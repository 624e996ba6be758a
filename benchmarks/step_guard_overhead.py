"""What undoable training steps cost: engine/step_guard.py next to a whole training step.

Every step the trainer copies the optimizer's parameters, the model's buffers and the
optimizer state (``StepGuard.save``) and tests the BatchNorm statistics, the gradients and
the updated weights for NaN/inf. This script times exactly those calls on a real network with
SGD momentum state, next to one full training step of that network (forward, detection loss,
backward, SGD step), interleaved so that both see the same machine load.

    .venv/bin/python benchmarks/step_guard_overhead.py --model efficientdet-d0 --image-size 512 --reps 9
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from multitask_edet.datasets.base import normalize_images
from multitask_edet.engine.step_guard import StepGuard, all_finite
from multitask_edet.models.factory import build_model_tasks, create_model


def _batch(n: int, size: int, num_classes: int) -> dict:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    boxes = [torch.tensor([[size * 0.1, size * 0.2, size * 0.6, size * 0.7], [size * 0.5, size * 0.5, size * 0.9, size * 0.8]])
             for _ in range(n)]
    labels = [torch.tensor([1, num_classes - 1]) for _ in range(n)]
    det = [{"boxes": b, "labels": lb, "ignore": torch.zeros(2, dtype=torch.bool)} for b, lb in zip(boxes, labels)]
    return {"images": images, "det": det, "meta": [None] * n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientdet-d0")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    model = create_model(args.model, tasks=("det",)).to(dev).train()
    task = build_model_tasks(model.config)["det"]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    guard = StepGuard(model, opt)
    batch = _batch(args.batch_size, args.image_size, task.num_classes)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step() -> list[torch.Tensor]:
        images = normalize_images(batch["images"], model.config.mean, model.config.std, dev)
        loss = sum(task.loss(model(images)["det"], batch).values())
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        opt.step()
        return grads

    def guarded_calls(grads) -> None:
        guard.save()
        guard.buffers_finite()
        all_finite(grads)
        guard.params_finite()

    grads = step()  # momentum buffers exist from here on, as in a running training
    guarded_calls(grads)
    step_ms, guard_ms = [], []
    for _ in range(args.reps):
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        grads = step()
        sync()
        t1 = time.perf_counter()
        guarded_calls(grads)
        sync()
        t2 = time.perf_counter()
        step_ms.append((t1 - t0) * 1e3)
        guard_ms.append((t2 - t1) * 1e3)
    n_params = sum(p.numel() for p in model.parameters())
    s, g = statistics.median(step_ms), statistics.median(guard_ms)
    print(f"{args.model} {args.image_size}² batch {args.batch_size} on {dev} ({torch.get_num_threads()} threads), "
          f"{n_params / 1e6:.2f}M parameters, {args.reps} reps")
    print(f"training step   median {s:8.1f} ms  (min {min(step_ms):.1f}, max {max(step_ms):.1f})")
    print(f"guard per step  median {g:8.1f} ms  (min {min(guard_ms):.1f}, max {max(guard_ms):.1f})")
    print(f"overhead        {100 * g / s:.1f}% of a step")


if __name__ == "__main__":
    main()
