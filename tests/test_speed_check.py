"""The speed benchmark's correctness check (benchmarks/speed.py --check-only) on a tiny network.

No timing is asserted: only that the comparison the benchmark makes before timing — effdet
and ours on the same converted weights and inputs — holds, and that it would catch a
difference.
"""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("effdet")

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed_benchmark", SPEED)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_check_only_agrees_with_effdet_for_both_paddings(speed):
    args = speed.parse_args(["--check-only", "--tiny", "--size", "128", "--infer-batches", "2", "--train-batch", "2",
                             "--threads", str(torch.get_num_threads())])
    rows = speed.run(args, log=lambda *_: None)
    cases = {r.case for r in rows}
    assert {c.split()[0] for c in cases} == {"infer", "train"}
    assert any("tf_efficientdet_d0" in c for c in cases) and any(" efficientdet_d0" in c for c in cases)
    impls = {r.impl for r in rows if r.case.startswith("infer")}
    assert impls == {"ours", "ours fused"}
    for r in rows:
        assert r.check is not None and 0 <= r.check <= speed.TOL, (r.case, r.impl, r.check)
    train = [r for r in rows if r.case.startswith("train")]
    assert set(train[0].extra) == {"loss_total", "loss_cls", "loss_box", "grad_rel"}


def test_check_catches_a_wrong_weight(speed):
    ref, ours = speed.build_pair("d0", "pytorch", 128, tiny=True)
    with torch.no_grad():
        ours.heads["det"].cls_net.predict.conv_pw.bias[0] += 1e-2
    x = speed.make_batch(1, 128, 5)[0]["images"]
    diffs = speed.check_inference(speed.inference_fns(ref, ours, x, speed.Mode()))
    assert diffs["ours"] > 5e-3 and diffs["ours fused"] > 5e-3


def test_training_check_catches_a_different_loss(speed):
    ref, ours = speed.build_pair("d0", "pytorch", 128, tiny=True)
    batch, target = speed.make_batch(2, 128, 5)
    same = speed.check_training(ref, ours, batch, target, speed.Mode())
    assert max(same.values()) <= speed.TOL
    target["cls"][0] = target["cls"][0] % 5 + 1  # effdet learns other classes for image 0's boxes
    target["bbox"][1] += 8.0  # and boxes shifted by 8 px for image 1
    diff = speed.check_training(ref, ours, batch, target, speed.Mode())
    # each of the three measures is over the tolerance: the benchmark would refuse to time
    assert diff["loss_total"] > speed.TOL and diff["loss_box"] > speed.TOL and diff["grad_rel"] > 1e-2
