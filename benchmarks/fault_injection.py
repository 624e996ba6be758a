"""Fault injection: ``kill -9`` at random moments of short training runs, then resume each.

For every run: start ``mtedet train`` (tiny model, generated shapes data, CPU, fixed seed,
``last.pt`` written after every step so that kills land in saves too), ``kill -9`` it at a
random moment, then continue it — with ``--resume`` when a ``last.pt`` exists, else by
running the same command again.

The kill moments follow the run's progress, not the clock: an uninterrupted reference run
is cut into phases (from config.yaml's appearance to the first step's log line, from each
step's line to the next, from the last line to the process's end: final evaluation, best.pt,
model.safetensors), and each killed run draws a phase uniformly, waits for that phase to begin
and then for a uniform fraction of the phase's reference duration. On a loaded machine a
clock-based moment drifts past the end of the run (the run has finished before the kill);
this way every phase, the first step and the final saves included, is hit as often as any
other. It passes when

- every run completes (exit 0) after one kill,
- no temporary file (``.<name>.<random>.tmp``) remains in any run folder at the end,
- every run's final weights (model and EMA in ``last.pt``) equal an uninterrupted run's.

    .venv/bin/python benchmarks/fault_injection.py --runs 20 --seed 0 --work /tmp/fault-injection

The kill moments come from ``--seed``; the table says, per run, the phase and the seconds into
it at which the kill came, which step the run had saved by then, the temporary files the kill
left, how the run was continued, and the largest weight difference to the uninterrupted run.
Exit code 0 when everything passed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
TOLERANCE = 1e-5


def train_args(data: Path, out: Path) -> list[str]:
    return [
        "train", "--task", "det,seg", "--dataset", "shapes", "--data-root", str(data), "--model", "test-efficientdet",
        "--image-size", "128", "--batch-size", "2", "--epochs", "3", "--workers", "0", "--device", "cpu",
        "--seed", "0", "--output", str(out),
        "--set", "log.tensorboard=false", "--set", "log.every_steps=1", "--set", "train.warmup_epochs=0.5",
        "--set", "train.base_lr=0.02", "--set", "train.base_batch=2", "--set", "train.checkpoint_every_steps=1",
        "--set", "eval.every_epochs=0", "--set", "eval.max_images=2",
        "--set", "model.backbone.pretrained=false",  # the default recipe starts from ImageNet weights (Hub)
    ]  # fmt: skip


def env() -> dict[str, str]:
    return dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def run(argv: list[str], log: Path) -> int:
    with open(log, "a") as f:
        return subprocess.run([sys.executable, "-m", "multitask_edet", *argv], env=env(), stdout=f,
                              stderr=subprocess.STDOUT).returncode


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP_FILE.match(p.name)) if folder.is_dir() else []


def saved_step(folder: Path) -> int | None:
    try:
        return int(torch.load(folder / "last.pt", weights_only=True)["state"]["step"])
    except Exception:  # noqa: BLE001 — absent (or, if the atomic save failed us, unreadable)
        return None


def max_weight_diff(a: Path, b: Path) -> float:
    ca, cb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    diff = 0.0
    for part in ("model", "ema"):
        for k, v in cb[part].items():
            diff = max(diff, float((ca[part][k].double() - v.double()).abs().max()) if v.numel() else 0.0)
    return diff


def steps_logged(folder: Path) -> int:
    """Training steps whose log line is in metrics.jsonl (written after the step's checkpoint)."""
    try:
        return sum('"type": "train"' in line for line in (folder / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def reached(folder: Path, phase: int) -> bool:
    """Phase 0 starts when config.yaml appears (the run has decided to go ahead); phase k at step k's log line."""
    return (folder / "config.yaml").exists() if phase == 0 else steps_logged(folder) >= phase


def reference(data: Path, work: Path) -> tuple[Path, list[float]]:
    """An uninterrupted run; returns its folder and the seconds each phase took (see the module docstring)."""
    out = work / "reference"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen([sys.executable, "-m", "multitask_edet", *train_args(data, out)], env=env(),
                            stdout=open(work / "reference.log", "w"), stderr=subprocess.STDOUT)
    starts: list[float] = []
    while proc.poll() is None:
        while reached(out, len(starts)):
            starts.append(time.perf_counter())
        time.sleep(0.002)
    end = time.perf_counter()
    if proc.returncode != 0 or not starts:
        sys.exit(f"the uninterrupted run failed; see {work / 'reference.log'}")
    return out, [b - a for a, b in zip(starts, [*starts[1:], end])]


def one_run(i: int, data: Path, work: Path, phases: list[float], rng: random.Random, ref: Path) -> dict:
    out = work / f"run-{i:02d}"
    shutil.rmtree(out, ignore_errors=True)
    log = work / f"run-{i:02d}.log"
    log.write_text("")
    phase = rng.randrange(len(phases))
    delay = rng.uniform(0.0, phases[phase])
    proc = subprocess.Popen([sys.executable, "-m", "multitask_edet", *train_args(data, out)], env=env(),
                            stdout=open(log, "a"), stderr=subprocess.STDOUT)
    while not reached(out, phase) and proc.poll() is None:
        time.sleep(0.002)
    time.sleep(delay)
    finished_first = proc.poll() is not None
    if not finished_first:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rec = {"run": i, "phase": phase, "kill_after_s": round(delay, 3), "finished_before_kill": finished_first,
           "saved_step_at_kill": saved_step(out), "temp_files_after_kill": temp_files(out)}
    if finished_first:
        rec["continued_with"], code = "nothing (it had finished)", proc.returncode
    elif (out / "last.pt").exists():
        rec["continued_with"], code = "--resume", run([*train_args(data, out), "--resume"], log)
    else:
        rec["continued_with"], code = "the same command again", run(train_args(data, out), log)
    rec["exit_code"] = code
    rec["temp_files_at_end"] = temp_files(out)
    rec["max_weight_diff"] = max_weight_diff(out / "last.pt", ref / "last.pt") if code == 0 else None
    rec["ok"] = (code == 0 and not rec["temp_files_at_end"] and rec["max_weight_diff"] is not None
                 and rec["max_weight_diff"] <= TOLERANCE)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--work", default="/tmp/mtedet-fault-injection", help="scratch folder (data, runs, logs)")
    ap.add_argument("--json", help="also write the per-run records here")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from multitask_edet.datasets import write_shapes

    data = write_shapes(work / "shapes", num_train=8, num_val=4, image_size=64)
    ref, phases = reference(data, work)
    print(f"uninterrupted run: {sum(phases):.1f} s from config.yaml to its end, in {len(phases)} phases: "
          f"before step 1 {phases[0]:.2f} s, steps 1-{len(phases) - 2} median "
          f"{sorted(phases[1:-1])[(len(phases) - 2) // 2]:.2f} s each, after the last step {phases[-1]:.2f} s")
    rng = random.Random(args.seed)
    records = []
    print(f"{'run':>3} {'phase':>5} {'kill s':>7} {'saved':>5} {'tmp left by kill':>16} {'continued with':<24} "
          f"{'exit':>4} {'tmp at end':>10} {'max |Δw|':>9}  ok")
    for i in range(args.runs):
        r = one_run(i, data, work, phases, rng, ref)
        records.append(r)
        diff = "-" if r["max_weight_diff"] is None else f"{r['max_weight_diff']:.1e}"
        print(f"{i:>3} {r['phase']:>5} {r['kill_after_s']:>7.2f} {str(r['saved_step_at_kill']):>5} "
              f"{len(r['temp_files_after_kill']):>16} "
              f"{r['continued_with']:<24} {r['exit_code']:>4} {len(r['temp_files_at_end']):>10} {diff:>9}  "
              f"{'yes' if r['ok'] else 'NO'}", flush=True)
    resumed = sum(r["exit_code"] == 0 for r in records)
    clean = sum(not r["temp_files_at_end"] for r in records)
    equal = sum(r["max_weight_diff"] is not None and r["max_weight_diff"] <= TOLERANCE for r in records)
    in_save = sum(bool(r["temp_files_after_kill"]) for r in records)
    finished = sum(r["finished_before_kill"] for r in records)
    print(f"\n{resumed}/{len(records)} runs completed after the kill ({finished} had finished before it); "
          f"{clean}/{len(records)} folders without temporary files at the end ({in_save} kills landed in a save); "
          f"{equal}/{len(records)} final weights equal the uninterrupted run's (max |Δw| ≤ {TOLERANCE:g})")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
