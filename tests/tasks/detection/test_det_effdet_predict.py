"""End to end against effdet: a converted random effdet model predicts what DetBenchPredict does."""
import pytest
import torch

effdet = pytest.importorskip("effdet")
from effdet.bench import DetBenchPredict  # noqa: E402

from multitask_edet.compat.effdet import convert_effdet_state_dict  # noqa: E402
from multitask_edet.models.factory import build_model_tasks, create_model  # noqa: E402

SIZE = (256, 256)
C = 10


def _random_effdet():
    """tf_efficientdet_d0 with random BN statistics and biases, so that scores spread out."""
    ref = effdet.create_model("tf_efficientdet_d0", pretrained=False, pretrained_backbone=False,
                              image_size=SIZE, num_classes=C)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            if name.endswith(("running_mean", ".bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return ref.eval()


def test_converted_effdet_detections_equal_det_bench_predict():
    ref = _random_effdet()
    model = create_model("tf_efficientdet-d0", tasks=("det",), det={"num_classes": C}).eval()
    model.load_state_dict(convert_effdet_state_dict(ref.state_dict(), model))
    task = build_model_tasks(model.config)["det"]
    bench = DetBenchPredict(ref).eval()

    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    # image 0 was letterboxed at scale 1; image 1 was resized by 0.5 (effdet pads bottom/right only)
    scales, orig_sizes = [1.0, 0.5], [(256, 256), (400, 512)]
    img_info = {"img_scale": torch.tensor([1 / s for s in scales]),
                "img_size": torch.tensor([[w, h] for h, w in orig_sizes], dtype=torch.float)}
    batch = {"images": x, "meta": [{"scale": s, "pad": (0, 0), "orig_size": hw} for s, hw in zip(scales, orig_sizes)]}
    with torch.no_grad():
        ref_det = bench(x, img_info)
        preds = task.postprocess(model(x)["det"], batch)
    for i, p in enumerate(preds):
        assert len(p["scores"]) == 100 and (ref_det[i, :, 4] > 0).all()
        _assert_same_detections(p, ref_det[i], box_tol=1e-4 / scales[i])
    assert p["scores"].std() > 1e-3  # the scores differ: the comparison means something


def _assert_same_detections(pred, ref, box_tol, score_tol=1e-4):
    """Same boxes, scores and classes. Two detections whose sigmoid scores tie to float
    precision may come out in either order (the networks agree to ~1e-6, not bit for bit),
    so each detection is paired with a reference one of equal class, box and score; one
    tied with the last kept score may be swapped for another at the 100-detection cut."""
    ref_boxes, ref_scores, ref_labels = ref[:, :4], ref[:, 4], ref[:, 5].long() - 1  # effdet: 1-based
    assert (pred["scores"][:-1] >= pred["scores"][1:]).all()
    used = torch.zeros(len(ref_scores), dtype=torch.bool)
    for j in range(len(pred["scores"])):
        ok = ((ref_labels == pred["labels"][j]) & ((ref_scores - pred["scores"][j]).abs() <= score_tol)
              & ((ref_boxes - pred["boxes"][j]).abs().amax(1) <= box_tol) & ~used)
        if not ok.any():
            assert (pred["scores"][j] - ref_scores[-1]).abs() <= score_tol, f"detection {j} not in effdet's output"
            continue
        # a counterpart at the same rank is preferred; a swap only between tied scores
        k = j if ok[j] else int(ok.nonzero()[0])
        assert (ref_scores[k] - ref_scores[j]).abs() <= score_tol
        used[k] = True
