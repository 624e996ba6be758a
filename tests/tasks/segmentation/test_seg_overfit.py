"""A tiny P2–P7 model trained through the task API overfits a few generated images."""
import numpy as np
import pytest
import torch

from multitask_edet.datasets.base import collate, normalize_images
from multitask_edet.models.factory import build_model_tasks, create_model

SIZE = 128  # the input must be divisible by 2**7 (P7)


def make_sample(rng, h0, w0, top, left):
    """An image with a red rectangle (class 1) and a blue disk (class 2) on noisy grey, padded
    to the input size at (top, left) the way the eval transform pads (mask padding = void)."""
    img = rng.integers(90, 140, (h0, w0, 3))
    mask = np.zeros((h0, w0), np.uint8)
    y0, x0 = rng.integers(5, h0 // 2), rng.integers(5, w0 // 2)
    hh, ww = rng.integers(20, 40, 2)
    mask[y0 : y0 + hh, x0 : x0 + ww] = 1
    cy, cx, r = rng.integers(h0 // 2, h0 - 15), rng.integers(w0 // 2, w0 - 15), rng.integers(10, 15)
    yy, xx = np.mgrid[:h0, :w0]
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
    img[mask == 1] = (220, 40, 40)
    img[mask == 2] = (40, 60, 220)
    img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    mask[0] = 255  # a void row, like VOC's object borders
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[top : top + h0, left : left + w0] = img
    padded = np.full((SIZE, SIZE), 255, np.int64)
    padded[top : top + h0, left : left + w0] = mask
    return {
        "image": torch.from_numpy(image).permute(2, 0, 1),
        "seg": torch.from_numpy(padded),
        "meta": {"orig_size": (h0, w0), "scale": 1.0, "pad": (top, left),
                 "orig_masks": {"seg": torch.from_numpy(mask)}, "file_name": f"shape_{top}_{left}.jpg"},
    }


@pytest.fixture
def one_thread():
    # Tiny convs gain nothing from a second thread, and on a busy machine OpenMP's waiting
    # threads slow this 100-step loop several-fold.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_tiny_p2_model_overfits_to_miou_above_0_9(tmp_path, one_thread):
    rng = np.random.default_rng(0)
    geometries = [(96, 112, 16, 8), (128, 128, 0, 0), (100, 90, 10, 20), (120, 100, 4, 14)]
    batch = collate([make_sample(rng, *g) for g in geometries])
    model = create_model("test-efficientdet", tasks={"seg": {"save_eval_masks": True}})
    assert model.min_level == 2 and model.max_level == 7
    task = build_model_tasks(model.config)["seg"]
    x = normalize_images(batch["images"], model.config.mean, model.config.std)

    def miou(output_dir=None):
        model.eval()
        with torch.no_grad():
            preds = task.postprocess(model(x)["seg"], batch)
        ev = task.evaluator(output_dir=output_dir)
        ev.update(preds, batch)
        return ev.compute()["mIoU"], preds

    before, _ = miou()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(100):
        model.train()
        loss = sum(task.loss(model(x)["seg"], batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after, preds = miou(tmp_path)
    assert before < 0.5
    assert after >= 0.9
    assert [tuple(p.shape) for p in preds] == [g[:2] for g in geometries]
    assert len(list(tmp_path.glob("shape_*.png"))) == 4
