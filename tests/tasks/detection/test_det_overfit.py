"""The task's Python API end to end: a tiny model overfits a few drawn images to AP50 ≥ 0.9."""
import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO

from multitask_edet.datasets.base import collate, normalize_images
from multitask_edet.models.factory import build_model_tasks, create_model

SIZE = 128
COLOURS = [(230, 40, 40), (40, 60, 230)]  # class 0 red, class 1 blue
CAT_IDS = [3, 8]  # native ids, to exercise the mapping
STEPS = 60


def _draw(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 140, (SIZE, SIZE, 3), dtype=np.uint8)
    boxes, labels = [], []
    for k in range(int(rng.integers(1, 4))):
        w, h = rng.integers(24, 56, 2)
        for _ in range(50):  # place without overlapping earlier shapes
            x, y = rng.integers(0, SIZE - w), rng.integers(0, SIZE - h)
            if all(x + w <= b[0] or b[2] <= x or y + h <= b[1] or b[3] <= y for b in boxes):
                break
        c = int(rng.integers(0, 2))
        img[y:y + h, x:x + w] = COLOURS[c]
        boxes.append([x, y, x + w, y + h])
        labels.append(c)
    return {
        "image": torch.from_numpy(img).permute(2, 0, 1).contiguous(),
        "det": {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                "ignore": torch.zeros(len(labels), dtype=torch.bool)},
        "meta": {"image_id": 100 + seed, "orig_size": (SIZE, SIZE), "scale": 1.0, "pad": (0, 0)},
    }


class _Shapes:
    name = "shapes"
    cat_ids = CAT_IDS
    class_names = {"det": ["red", "blue"]}
    annotations = {"det": "boxes"}

    def __init__(self, samples):
        self.samples = samples

    def box_gt(self, annotation: str) -> COCO:
        cats = [{"id": c, "name": n} for c, n in zip(CAT_IDS, ["red", "blue"])]
        gt = {"images": [], "annotations": [], "categories": cats}
        for s in self.samples:
            iid = s["meta"]["image_id"]
            gt["images"].append({"id": iid, "width": SIZE, "height": SIZE})
            for b, l in zip(s["det"]["boxes"].tolist(), s["det"]["labels"].tolist()):
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": iid, "category_id": CAT_IDS[l],
                                          "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                                          "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0})
        coco = COCO()
        coco.dataset = gt
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco


def test_tiny_model_overfits_drawn_boxes(tmp_path, one_thread):
    samples = [_draw(s) for s in range(4)]
    batch = collate(samples)
    model = create_model("test-efficientdet", tasks=("det",), det={"num_classes": 2})
    task = build_model_tasks(model.config, {"det": ["red", "blue"]})["det"]
    images = normalize_images(batch["images"], model.config.mean, model.config.std)
    targets = task.build_targets(batch, (SIZE, SIZE), images.device)  # fixed data: label once
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for step in range(STEPS):
        losses = task.loss(model(images)["det"], batch, targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert losses["det_cls"].item() < 0.5

    # BN momentum is 0.01 (paper): re-estimate the running statistics before eval
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model(images)
    model.eval()
    with torch.no_grad():
        preds = task.postprocess(model(images)["det"], batch)
    ev = task.evaluator(_Shapes(samples), tmp_path)
    ev.update(preds, batch)
    metrics = ev.compute()
    assert metrics["AP50"] >= 0.9, ev.report()
    assert (tmp_path / "det_results.json").is_file()
