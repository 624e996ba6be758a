"""Joint-trunk training: loss weighting, freezing, parameter groups and mixed datasets."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from multitask_edet.datasets.mixed import (
    MixedBatchSampler,
    MixedDataset,
    interleave_schedule,
    parse_dataset_spec,
)
from multitask_edet.engine.param_groups import (
    apply_freeze,
    build_param_groups,
    drop_absent_task_grads,
    frozen_tasks,
)
from multitask_edet.engine.weighting import DynamicWeightAveraging, build_weighting, sum_task_losses
from multitask_edet.errors import ConfigError


# --------------------------------------------------------------------------------------
# loss weighting
# --------------------------------------------------------------------------------------
def test_fixed_weights_sum_and_log():
    w = build_weighting("fixed", ["det", "seg"], {"det": 2.0, "seg": 0.5})
    total, log = w({"det": torch.tensor(3.0), "seg": torch.tensor(4.0)})
    assert total.item() == pytest.approx(2 * 3 + 0.5 * 4)
    assert log == {"loss/det": 3.0, "weight/det": 2.0, "loss/seg": 4.0, "weight/seg": 0.5}


def test_absent_task_contributes_nothing_but_stays_in_graph():
    w = build_weighting("fixed", ["det", "seg"])
    seg = torch.tensor(5.0, requires_grad=True)
    total, log = w({"det": torch.tensor(1.0), "seg": seg}, present={"det"})
    assert total.item() == 1.0 and "loss/seg" not in log
    total.backward()
    assert seg.grad is not None and seg.grad.item() == 0.0


def test_sum_task_losses_sums_named_parts():
    losses, log = sum_task_losses({"det": {"cls": torch.tensor(1.5), "box": torch.tensor(0.25)}})
    assert losses["det"].item() == pytest.approx(1.75)
    assert log == {"loss/det/cls": 1.5, "loss/det/box": 0.25}


def test_unknown_weighting_and_task_are_config_errors():
    with pytest.raises(ConfigError, match="fixed"):
        build_weighting("magic", ["det"])
    with pytest.raises(ConfigError, match="unknown task"):
        build_weighting("fixed", ["det"], {"seg": 1.0})


def test_uncertainty_value_and_log_var_gradients():
    w = build_weighting("uncertainty", ["det", "seg"], kinds={"seg": "regression"})
    with torch.no_grad():
        w.log_vars["det"].fill_(math.log(2.0))
        w.log_vars["seg"].fill_(0.0)
    L = {"det": torch.tensor(3.0), "seg": torch.tensor(4.0)}
    total, log = w(L)
    # det (classification): exp(-s) L + s/2; seg (regression): exp(-s) L / 2 + s/2
    expected = 3.0 / 2.0 + math.log(2.0) / 2 + 4.0 / 2 + 0.0
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    # d/ds = -c exp(-s) L + 1/2
    assert w.log_vars["det"].grad.item() == pytest.approx(-3.0 / 2.0 + 0.5, rel=1e-6)
    assert w.log_vars["seg"].grad.item() == pytest.approx(-0.5 * 4.0 + 0.5, rel=1e-6)
    assert log["weight/det"] == pytest.approx(0.5) and log["log_var/seg"] == 0.0


def test_uncertainty_log_vars_converge_to_optimum_and_are_optimised():
    w = build_weighting("uncertainty", ["det", "seg"])
    (group,) = w.param_groups(lr=0.1)
    assert group["weight_decay"] == 0.0 and len(group["params"]) == 2
    opt = torch.optim.SGD(w.param_groups(lr=0.2))
    for _ in range(400):
        opt.zero_grad()
        total, _ = w({"det": torch.tensor(4.0), "seg": torch.tensor(0.25)})
        total.backward()
        opt.step()
    # optimum of c exp(-s) L + s/2 with c = 1: exp(s) = 2 L
    assert w.log_vars["det"].item() == pytest.approx(math.log(8.0), abs=1e-3)
    assert w.log_vars["seg"].item() == pytest.approx(math.log(0.5), abs=1e-3)


def test_uncertainty_absent_task_log_var_gets_zero_grad():
    w = build_weighting("uncertainty", ["det", "seg"])
    total, _ = w({"det": torch.tensor(1.0), "seg": torch.tensor(0.0)}, present=["det"])
    assert total.item() == pytest.approx(1.0)
    total.backward()
    assert w.log_vars["seg"].grad.item() == 0.0


def test_dwa_weights_on_hand_made_history():
    w = build_weighting("dwa", ["det", "seg"], temperature=2.0)
    history = [(4.0, 2.0), (2.0, 2.0), (1.0, 2.0)]  # det halves each epoch, seg is stuck
    for det, seg in history[:2]:
        for _ in range(3):
            w({"det": torch.tensor(det), "seg": torch.tensor(seg)})
        w.step_epoch()
    # ratios r = (2/4, 2/2): w = 2 softmax(r / 2)
    e_det, e_seg = math.exp(0.5 / 2), math.exp(1.0 / 2)
    assert w.weights()["det"] == pytest.approx(2 * e_det / (e_det + e_seg))
    assert w.weights()["seg"] == pytest.approx(2 * e_seg / (e_det + e_seg))
    total, log = w({"det": torch.tensor(1.0), "seg": torch.tensor(2.0)})
    assert total.item() == pytest.approx(w.weights()["det"] * 1 + w.weights()["seg"] * 2)
    assert log["weight/seg"] > log["weight/det"]  # the slower task gets more weight


def test_dwa_first_windows_are_uniform_and_state_resumes():
    w = build_weighting("dwa", ["det", "seg"], {"det": 2.0}, window=2)
    assert w.weights() == {"det": 2.0, "seg": 1.0}
    for v in (1.0, 1.0, 0.5, 0.5):
        w({"det": torch.tensor(v), "seg": torch.tensor(1.0)})
    assert w.weights()["det"] < 2.0 < 2 * w.weights()["seg"] + 1e-9
    w2 = build_weighting("dwa", ["det", "seg"], {"det": 2.0}, window=2)
    w2.load_state_dict(w.state_dict())
    assert w2.weights() == w.weights()
    assert DynamicWeightAveraging.dwa_weights(
        torch.tensor([1.0, float("nan")]), torch.tensor([2.0, 1.0]), 2.0
    ).sum().item() == pytest.approx(2.0)


def test_dwa_not_updated_in_eval_mode():
    w = build_weighting("dwa", ["det", "seg"], window=1).eval()
    for v in (1.0, 0.1, 0.01):
        w({"det": torch.tensor(v), "seg": torch.tensor(1.0)})
    assert w.weights() == {"det": 1.0, "seg": 1.0}


# --------------------------------------------------------------------------------------
# freezing and parameter groups (a toy model with the trunk's attribute layout)
# --------------------------------------------------------------------------------------
class ToyJoint(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.neck = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.heads = nn.ModuleDict({"det": nn.Conv2d(4, 2, 1), "seg": nn.Conv2d(4, 3, 1)})

    def forward(self, x):
        f = self.neck(self.backbone(x))
        return {t: h(f) for t, h in self.heads.items()}


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _train_steps(model, opt, steps=4, tasks=("det", "seg"), absent=()):
    for _ in range(steps):
        model.train()
        out = model(torch.randn(2, 3, 8, 8))
        loss = sum(out[t].square().mean() * (0.0 if t in absent else 1.0) for t in tasks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        drop_absent_task_grads(model, absent)
        opt.step()


def test_freeze_backbone_is_bit_identical_including_bn_stats():
    model = ToyJoint()
    assert apply_freeze(model, ["backbone"]) == ["backbone"]
    before = _snapshot(model.backbone)
    neck_before = _snapshot(model.neck)
    groups = build_param_groups(model, 0.1, 1e-2)
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    _train_steps(model, opt)
    after = _snapshot(model.backbone)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.backbone[1].training  # kept in eval despite model.train()
    assert not torch.equal(neck_before["0.weight"], model.neck[0].weight)


def test_frozen_head_task_is_reported_and_unknown_part_lists_valid():
    model = ToyJoint()
    apply_freeze(model, ["seg"])
    assert frozen_tasks(model, ["seg"]) == ["seg"]
    # a head whose parameters were all frozen earlier counts too
    assert frozen_tasks(model, ["heads.det"]) == ["det", "seg"]
    assert frozen_tasks(ToyJoint(), ["heads.det", "backbone"]) == ["det"]
    with pytest.raises(ConfigError, match="valid parts: backbone, neck, heads.det"):
        apply_freeze(model, ["bakbone"])


def test_param_groups_lr_mult_and_no_decay():
    model = ToyJoint()
    apply_freeze(model, ["heads.seg"])
    groups = build_param_groups(model, 0.2, 1e-3, lr_mult={"backbone": 0.1, "det": 10})
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone/decay"]["lr"] == pytest.approx(0.02)
    assert by_name["backbone/no_decay"]["weight_decay"] == 0.0  # BN + bias
    assert by_name["heads.det/decay"]["lr"] == pytest.approx(2.0)
    assert by_name["default/decay"]["weight_decay"] == 1e-3
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == sum(1 for p in model.parameters() if p.requires_grad)
    assert not any(p is model.heads["seg"].weight for g in groups for p in g["params"])


def test_absent_task_head_unchanged_under_momentum_and_weight_decay():
    model = ToyJoint()
    opt = torch.optim.SGD(build_param_groups(model, 0.1, 1e-2), lr=0.1, momentum=0.9)
    _train_steps(model, opt, steps=2)  # builds momentum for every parameter
    seg_before = _snapshot(model.heads["seg"])
    _train_steps(model, opt, steps=3, absent=("seg",))
    assert all(torch.equal(seg_before[k], model.heads["seg"].state_dict()[k]) for k in seg_before)
    # without dropping the grads, momentum and decay would have moved it
    zero_grad_model = ToyJoint()
    zero_grad_model.load_state_dict(model.state_dict())
    opt2 = torch.optim.SGD(build_param_groups(zero_grad_model, 0.1, 1e-2), lr=0.1, momentum=0.9)
    _train_steps(zero_grad_model, opt2, steps=1)
    w = zero_grad_model.heads["seg"].weight.detach().clone()
    out = zero_grad_model(torch.randn(2, 3, 8, 8))
    opt2.zero_grad()
    (out["det"].mean() + 0 * out["seg"].sum()).backward()
    opt2.step()
    assert not torch.equal(w, zero_grad_model.heads["seg"].weight)


# --------------------------------------------------------------------------------------
# mixed datasets
# --------------------------------------------------------------------------------------
class _ListDataset(torch.utils.data.Dataset):
    """A source that, like every adapter, loads only the annotation it was asked for."""

    def __init__(self, n, task, kind, classes):
        self.n, self.task = n, task
        self.annotations = {task: kind}
        self.class_names = {task: classes}

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        s = {"image": torch.zeros(3, 4, 4, dtype=torch.uint8), "meta": {"i": i, "src": self.task}}
        if self.annotations[self.task] == "boxes":
            s[self.task] = {"boxes": torch.zeros(1, 4), "labels": torch.zeros(1, dtype=torch.long),
                            "ignore": torch.zeros(1, dtype=torch.bool)}
        else:
            s[self.task] = torch.zeros(4, 4, dtype=torch.long)
        return s


def test_interleave_schedule_ratio_is_exact():
    sched = interleave_schedule([3, 1], 400)
    assert sched.count(0) == 300 and sched.count(1) == 100
    # smooth: every window of 4 has exactly one batch of the minority source
    assert all(sched[i : i + 4].count(1) == 1 for i in range(0, 400, 4))
    assert interleave_schedule([1, 0], 5) == [0] * 5


def test_mixed_dataset_indexes_its_sources_and_keeps_class_sets():
    ds = MixedDataset({"det": _ListDataset(5, "det", "boxes", ["a", "b"]), "seg": _ListDataset(3, "seg", "mask", ["bg", "x"])})
    assert len(ds) == 8 and ds.class_names == {"det": ["a", "b"], "seg": ["bg", "x"]}
    assert ds.annotations == {"det": "boxes", "seg": "mask"}
    det_sample, seg_sample = ds[4], ds[5]
    assert "seg" not in det_sample and "det" in det_sample and det_sample["meta"]["src"] == "det"
    assert "det" not in seg_sample and "seg" in seg_sample
    assert seg_sample["meta"]["i"] == 0


def test_mixed_sampler_ratio_sources_and_determinism():
    sizes = [40, 12]
    s = MixedBatchSampler(sizes, batch_size=4, ratio=[1, 3], seed=7, rank=0, world_size=1, epoch_batches=40)
    batches = s.batches()
    src = [0 if max(b) < 40 else 1 for b in batches]
    assert all((max(b) < 40) == (min(b) < 40) for b in batches)  # one source per batch
    assert src.count(1) == 30 and src.count(0) == 10
    assert batches == MixedBatchSampler(sizes, 4, [1, 3], seed=7, rank=0, world_size=1, epoch_batches=40).batches()
    assert batches != MixedBatchSampler(sizes, 4, [1, 3], seed=8, rank=0, world_size=1, epoch_batches=40).batches()
    s.set_epoch(1)
    assert s.batches() != batches  # a new order every epoch
    # the small source is cycled: every index appears before any repeats
    seg = [i for b, k in zip(batches, src) if k == 1 for i in b]
    assert sorted(seg[:12]) == list(range(40, 52))


def test_mixed_sampler_resume_and_ranks_are_disjoint():
    kw = dict(batch_size=2, ratio=[1, 1], seed=3, world_size=2)
    r0 = MixedBatchSampler([10, 8], rank=0, **kw)
    r1 = MixedBatchSampler([10, 8], rank=1, **kw)
    assert len(r0) == len(r1) == 4
    b0, b1 = r0.batches(), r1.batches()
    for x, y in zip(b0, b1):
        assert (max(x) < 10) == (max(y) < 10)  # same source at the same step on every rank
        assert not set(x) & set(y)
    resumed = MixedBatchSampler([10, 8], rank=0, **kw)
    resumed.load_state_dict({"epoch": 0, "start": 2})
    assert list(resumed) == b0[2:] and len(resumed) == 2


def test_parse_dataset_spec():
    assert parse_dataset_spec("coco+voc2012", ["det", "seg"]) == {"det": "coco", "seg": "voc2012"}
    assert parse_dataset_spec("seg=voc2012+det=coco", ["det", "seg"]) == {"seg": "voc2012", "det": "coco"}
    assert parse_dataset_spec("shapes", ["det", "seg"]) == {"det": "shapes", "seg": "shapes"}
    with pytest.raises(ConfigError, match="one dataset per task"):
        parse_dataset_spec("coco+voc2012+x", ["det", "seg"])


# --------------------------------------------------------------------------------------
# the real trunk, tasks and trainer step
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def joint_parts(tmp_path_factory):
    """A det+seg test model, its tasks, and one real batch (boxes and masks) of shapes."""
    from multitask_edet.datasets import build_dataset, write_shapes
    from multitask_edet.datasets.base import collate
    from multitask_edet.datasets.transforms import train_transforms

    root = write_shapes(tmp_path_factory.mktemp("shapes"), num_train=4, num_val=1, image_size=64)
    ds = build_dataset("shapes", root, "train", ("det", "seg"), train_transforms(64, ("boxes", "mask"), scale_range=(1, 1)))
    return ds.class_names, collate([ds[i] for i in range(4)])


def _joint_trainer(class_names, freeze=(), momentum=0.9, weight_decay=1e-2, weighting="fixed"):
    from multitask_edet.engine.trainer import Trainer
    from multitask_edet.models.factory import build_model_tasks, create_model

    torch.manual_seed(0)
    model = create_model("test-efficientdet", tasks=("det", "seg"), image_size=(64, 64), neck={"max_level": 5},
                         det={"num_classes": len(class_names["det"]), "levels": (3, 4, 5)},
                         seg={"num_classes": len(class_names["seg"])})
    tasks = build_model_tasks(model.config, class_names)
    apply_freeze(model, freeze)
    loss_tasks = [t for t in tasks if t not in frozen_tasks(model, freeze)]
    w = build_weighting(weighting, loss_tasks)
    opt = torch.optim.SGD(build_param_groups(model, 0.05, weight_decay) + w.param_groups(0.05), lr=0.05, momentum=momentum)
    return Trainer(model, tasks, opt, loader=None, device=torch.device("cpu"), max_steps=10, weighting=w,
                   loss_tasks=loss_tasks), model


def _without(batch, keys):
    return {k: ([None] * len(v) if k in keys else v) for k, v in batch.items()}


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_batch_without_seg_labels_leaves_seg_head_bit_identical(joint_parts, weighting, one_thread):
    class_names, batch = joint_parts
    trainer, model = _joint_trainer(class_names, weighting=weighting)
    trainer.run_step(batch)  # both tasks: momentum buffers now exist for every parameter
    seg_before = _snapshot(model.heads["seg"])
    det_before = _snapshot(model.heads["det"])
    log_var = trainer.weighting.log_vars["seg"].detach().clone() if weighting == "uncertainty" else None
    for _ in range(2):
        trainer.run_step(_without(batch, ("seg",)))
    assert "loss/seg" not in trainer.step_metrics and "weight/det" in trainer.step_metrics
    after = model.heads["seg"].state_dict()
    assert all(torch.equal(seg_before[k], after[k]) for k in seg_before)
    assert not torch.equal(det_before["cls_net.predict.conv_pw.weight"], model.heads["det"].cls_net.predict.conv_pw.weight)
    if log_var is not None:
        assert torch.equal(log_var, trainer.weighting.log_vars["seg"].detach())


def test_frozen_seg_head_contributes_no_loss_and_trunk_freeze_is_exact(joint_parts, one_thread):
    class_names, batch = joint_parts
    trainer, model = _joint_trainer(class_names, freeze=["backbone", "seg"])
    assert trainer.loss_tasks == ["det"]
    frozen_before = {**{f"b.{k}": v for k, v in _snapshot(model.backbone).items()},
                     **{f"s.{k}": v for k, v in _snapshot(model.heads["seg"]).items()}}
    neck_before = _snapshot(model.neck)
    for _ in range(3):
        trainer.run_step(batch)
    assert trainer.step_applied and not any(k.startswith(("loss/seg", "weight/seg")) for k in trainer.step_metrics)
    frozen_after = {**{f"b.{k}": v for k, v in model.backbone.state_dict().items()},
                    **{f"s.{k}": v for k, v in model.heads["seg"].state_dict().items()}}
    assert all(torch.equal(frozen_before[k], frozen_after[k]) for k in frozen_before)  # incl. BN running stats
    assert not all(torch.equal(neck_before[k], model.neck.state_dict()[k]) for k in neck_before)


@pytest.mark.slow
def test_mixed_datasets_from_the_api(tmp_path, one_thread):
    """Detection batches from shapes, segmentation batches from VOC 2012: each task keeps
    its own classes and is evaluated on its own data; no batch carries both losses."""
    import json

    from multitask_edet import Experiment
    from multitask_edet.datasets import write_shapes
    from multitask_edet.datasets.testing import write_voc_tree

    write_shapes(tmp_path / "shapes", num_train=6, num_val=2, image_size=64)
    write_voc_tree(tmp_path)
    exp = Experiment("smoke-shapes", dataset={"det": "shapes", "seg": "voc2012"}, data_root=tmp_path,
                     mix_ratio={"det": 1, "seg": 1}, max_steps=4, batch_size=2, output=tmp_path / "run",
                     log={"every_steps": 1})
    result = exp.train()
    assert set(result.metrics) == {"det", "seg"}
    assert "IoU/aeroplane" in result.metrics["seg"]  # VOC's 21 classes for seg ...
    assert exp.load().class_names["det"] == ["circle", "square", "triangle", "star", "cross"]  # ... shapes' for det
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "loss" in s]
    assert len(steps) == 4
    assert [("loss/det" in s, "loss/seg" in s) for s in steps] == [(True, False), (False, True)] * 2
