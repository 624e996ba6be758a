"""The confusion matrix summed over 2 gloo processes equals the single-process one."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pytest

from multitask_edet.tasks.segmentation import PaperSegMetrics, SegmentationEvaluator

C = 5


def make_data():
    g = torch.Generator().manual_seed(3)
    data = []
    for h, w in ((9, 7), (4, 11), (6, 6), (13, 3), (5, 5)):
        gt = torch.randint(0, C, (h, w), generator=g)
        gt[torch.rand(h, w, generator=g) < 0.15] = 255
        pred = torch.randint(0, C, (h, w), generator=g)
        data.append((pred.to(torch.uint8), gt.to(torch.uint8)))
    return data


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ev = SegmentationEvaluator(C)
        paper = PaperSegMetrics("hybridnets", C, 1, "c1")
        for pred, gt in make_data()[rank::world]:
            ev.accumulate(pred, gt)
            paper.update([pred], [gt])
        for _ in range(2):  # idempotent: a second call must not add the counts twice
            ev.sync()
            paper.sync()
        if rank == 0:
            torch.save({"cm": ev.confusion_matrix, "metrics": ev.compute(), "paper": paper.compute()}, out_file)
    finally:
        dist.destroy_process_group()


def test_sync_over_two_processes_equals_single_process(tmp_path):
    out = tmp_path / "result.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    ref = SegmentationEvaluator(C)
    for pred, gt in make_data():
        ref.accumulate(pred, gt)
    assert torch.equal(got["cm"], ref.confusion_matrix)
    assert got["metrics"] == ref.compute()
    paper = PaperSegMetrics("hybridnets", C, 1, "c1")
    for pred, gt in make_data():
        paper.update([pred], [gt])
    assert got["paper"] == pytest.approx(paper.compute(), rel=1e-12)
    # each process alone saw only part of the pixels
    half = SegmentationEvaluator(C)
    for pred, gt in make_data()[0::2]:
        half.accumulate(pred, gt)
    assert half.confusion_matrix.sum() < ref.confusion_matrix.sum()


def test_sync_without_distributed_is_a_no_op():
    ev = SegmentationEvaluator(C)
    pred, gt = make_data()[0]
    ev.accumulate(pred, gt)
    before = ev.confusion_matrix.clone()
    ev.sync()
    assert torch.equal(ev.confusion_matrix, before)
