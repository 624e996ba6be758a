"""On a GPU: targets, loss and detections equal the CPU's, and training needs no host sync."""
import pytest
import torch

from multitask_edet.tasks.detection import DetectionConfig, DetectionTask, DetLossConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SIZE = (256, 384)
C = 5


def _inputs(B=3):
    g = torch.Generator().manual_seed(0)
    boxes, labels, ignore = [], [], []
    for n in (4, 0, 6)[:B]:
        xy = torch.rand(n, 2, generator=g) * 200
        boxes.append(torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 120 + 4], 1))
        labels.append(torch.randint(0, C, (n,), generator=g))
        ignore.append(torch.arange(n) == 1)  # one crowd box per image that has boxes
    det = [{"boxes": b, "labels": lab, "ignore": ign} for b, lab, ign in zip(boxes, labels, ignore)]
    batch = {"images": torch.zeros(B, 3, *SIZE, dtype=torch.uint8), "det": det,
             "meta": [{"scale": 0.5, "pad": (3, 5), "orig_size": (500, 760)}] * B}
    cls = [torch.randn(B, 9 * C, SIZE[0] >> l, SIZE[1] >> l, generator=g) - 3 for l in range(3, 8)]
    box = [torch.randn(B, 36, SIZE[0] >> l, SIZE[1] >> l, generator=g) * 0.3 for l in range(3, 8)]
    return batch, {"cls": cls, "box": box}


def _to(outputs, device):
    return {k: [t.to(device).requires_grad_() for t in v] for k, v in outputs.items()}


def test_cuda_matches_cpu():
    task = DetectionTask(DetectionConfig(num_classes=C, loss=DetLossConfig(giou_weight=1.0)))
    batch, out = _inputs()
    cpu_t = task.build_targets(batch, SIZE, "cpu")
    gpu_t = task.build_targets(batch, SIZE, "cuda")
    assert torch.equal(cpu_t.cls, gpu_t.cls.cpu())
    assert torch.allclose(cpu_t.box, gpu_t.box.cpu(), atol=1e-5)
    cpu_l = task.loss(out, batch)
    gpu_l = task.loss(_to(out, "cuda"), batch)
    for k in cpu_l:
        assert gpu_l[k].device.type == "cuda"
        assert torch.allclose(cpu_l[k], gpu_l[k].cpu(), rtol=1e-4), k
    cpu_p = task.postprocess(out, batch)
    gpu_p = task.postprocess(_to(out, "cuda"), batch)
    for a, b in zip(cpu_p, gpu_p):
        assert torch.allclose(a["scores"], b["scores"].cpu(), atol=1e-5)
        assert torch.allclose(a["boxes"][:20], b["boxes"][:20].cpu(), atol=1e-3)


def test_training_path_has_no_host_sync():
    task = DetectionTask(DetectionConfig(num_classes=C))
    batch, out = _inputs()
    out = _to(out, "cuda")
    task.anchors(SIZE, "cuda")  # anchors are built (host → device) once, then cached
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = task.loss(out, batch)
        sum(losses.values()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(sum(losses.values())).item()
