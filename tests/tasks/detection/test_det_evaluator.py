"""Evaluator: COCO AP identical to pycocotools on the written JSON, class ids, VOC AP."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from multitask_edet.errors import ConfigError
from multitask_edet.tasks.detection import DetEvalConfig, DetectionEvaluator, DetectionTask
from multitask_edet.tasks.detection.evaluator import voc_average_precision

CAT_IDS = [1, 3, 7]  # native ids with gaps ↔ contiguous 0, 1, 2
NAMES = ["cat", "dog", "bird"]


def _coco(images, anns):
    gt = {"images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i, (w, h) in images.items()],
          "categories": [{"id": c, "name": n} for c, n in zip(CAT_IDS, NAMES)], "annotations": []}
    for k, (img, cat, box, crowd) in enumerate(anns, start=1):
        gt["annotations"].append({"id": k, "image_id": img, "category_id": cat, "bbox": box,
                                  "area": box[2] * box[3], "iscrowd": int(crowd), "ignore": int(crowd)})
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class _Dataset:
    def __init__(self, coco, name="coco"):
        self._coco, self.name = coco, name
        self.cat_ids = CAT_IDS
        self.class_names = {"det": NAMES}
        self.annotations = {"det": "boxes"}

    def box_gt(self, annotation):
        assert annotation == "det"
        return self._coco


def _gt():
    images = {10: (200, 100), 20: (300, 300), 30: (64, 64)}
    anns = [(10, 1, [10, 10, 50, 40], False), (10, 7, [100, 20, 60, 60], False),
            (20, 3, [30, 30, 100, 120], False), (20, 3, [150, 150, 40, 40], False),
            (20, 1, [0, 200, 120, 90], True),  # crowd region
            (30, 7, [5, 5, 20, 20], False)]
    return _coco(images, anns)


def _predictions(seed=0):
    rng = np.random.default_rng(seed)
    preds = {
        10: ([[12, 11, 61, 52], [101, 22, 158, 79], [0, 0, 30, 30]], [0.9, 0.8, 0.3], [0, 2, 1]),
        20: ([[31, 28, 128, 152], [148, 152, 190, 189], [10, 210, 60, 260], [150, 150, 190, 190]],
             [0.95, 0.6, 0.7, 0.5], [1, 1, 0, 1]),
        30: ([[4, 6, 26, 24], [30, 30, 60, 60]], [0.4, 0.45], [2, 2]),
    }
    out = {}
    for img, (b, s, l) in preds.items():
        b = np.asarray(b, dtype=np.float32) + rng.uniform(-1, 1, (len(b), 4)).astype(np.float32)
        out[img] = {"boxes": torch.from_numpy(b), "scores": torch.tensor(s), "labels": torch.tensor(l)}
    return out


def _feed(ev, preds):
    ids = sorted(preds)
    ev.update([preds[i] for i in ids], {"meta": [{"image_id": i} for i in ids]})


def test_coco_ap_equals_pycocotools_on_written_json(tmp_path):
    gt = _gt()
    task = DetectionTask(class_names=NAMES)
    ev = task.evaluator(_Dataset(gt), tmp_path)
    assert ev.protocol == "coco" and ev.main_metric == "AP"
    _feed(ev, _predictions())
    metrics = ev.compute()

    results = json.loads((tmp_path / "det_results.json").read_text())
    assert len(results) == 9
    with contextlib.redirect_stdout(io.StringIO()):
        direct = COCOeval(gt, gt.loadRes(str(tmp_path / "det_results.json")), "bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    for key, value in zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], direct.stats[:6]):
        assert metrics[key] == pytest.approx(value, abs=1e-12)
    assert 0.3 < metrics["AP"] < metrics["AP50"] <= 1.0
    assert set(ev.per_class) == set(NAMES)
    assert "AP50" in ev.report() and "bird" in ev.report()


def test_class_ids_round_trip_to_native_ids(tmp_path):
    ev = DetectionEvaluator(_gt(), CAT_IDS, NAMES, tmp_path)
    ev.update([{"boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0]]), "scores": torch.tensor([0.5]),
                "labels": torch.tensor([2])}], {"meta": [{"image_id": 30}]})
    ev.compute()
    (rec,) = json.loads((tmp_path / "det_results.json").read_text())
    assert rec["category_id"] == 7 and rec["image_id"] == 30
    assert rec["bbox"] == pytest.approx([1.0, 2.0, 10.0, 20.0])  # xyxy → xywh
    assert ev.label_of_cat[rec["category_id"]] == 2
    # a mapping works as well as a list
    ev2 = DetectionEvaluator(_gt(), {0: 1, 1: 3, 2: 7}, NAMES)
    assert ev2.cat_ids == ev.cat_ids
    with pytest.raises(ConfigError, match="num_classes"):
        ev.add(30, torch.zeros(1, 4), torch.ones(1), torch.tensor([5]))
        ev.compute()


def test_only_seen_images_are_scored_and_empty_is_zero():
    ev = DetectionEvaluator(_gt(), CAT_IDS, NAMES)
    assert ev.compute()["AP"] == 0.0
    preds = _predictions()
    _feed(ev, {30: preds[30]})
    # image 30 alone: its one bird is found at rank 2 (after a 0.45 false positive) → AP50 0.5;
    # were the bird of unseen image 10 counted, recall would stop at 0.5 and AP50 be 0.25
    m = ev.compute()
    assert m["AP50"] == pytest.approx(0.5)


def test_voc_ap_hand_computed():
    # 1 class; image 1 holds a difficult box and a normal one, image 2 one box
    images = {1: (100, 100), 2: (100, 100)}
    anns = [(1, 1, [0, 0, 20, 20], True), (1, 1, [50, 50, 20, 20], False), (2, 1, [10, 10, 30, 30], False)]
    gt = _coco(images, anns)
    b = lambda *x: torch.tensor([x], dtype=torch.float32)  # noqa: E731
    preds = {
        1: {"boxes": torch.cat([b(0, 0, 20, 20), b(50, 50, 70, 70), b(51, 51, 70, 70)]),
            "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 0, 0])},
        2: {"boxes": torch.cat([b(60, 60, 90, 90), b(10, 10, 40, 40)]),
            "scores": torch.tensor([0.6, 0.5]), "labels": torch.tensor([0, 0])},
    }
    # ranked: 0.9 on the difficult box (neither TP nor FP), 0.8 TP, 0.7 duplicate → FP,
    # 0.6 FP, 0.5 TP; 2 positives → recall .5 at precision 1, recall 1 at precision .5
    for method, expected in [("area", 0.75), ("11point", (6 * 1.0 + 5 * 0.5) / 11)]:
        ev = DetectionEvaluator(gt, CAT_IDS, NAMES, protocol="voc", cfg=DetEvalConfig(voc_ap_method=method))
        assert ev.main_metric == "AP50"
        _feed(ev, preds)
        m = ev.compute()
        assert m["AP50"] == pytest.approx(expected)
        assert ev.per_class["cat"]["VOC AP50"] == pytest.approx(expected)
        # classes without ground truth are left out of the mean; COCOeval numbers come along
        assert np.isnan(ev.per_class["dog"]["VOC AP50"]) and "coco_AP" in m


def test_voc_protocol_chosen_from_dataset_name():
    ev = DetectionTask().evaluator(_Dataset(_gt(), name="voc2007"))
    assert ev.protocol == "voc"


def test_voc_average_precision_curves():
    r = np.array([0.25, 0.5, 0.5, 0.75])
    p = np.array([1.0, 1.0, 0.6667, 0.75])
    assert voc_average_precision(r, p, "area") == pytest.approx(0.5 + 0.25 * 0.75)
    assert voc_average_precision(np.array([]), np.array([]), "area") == 0.0


def test_sync_merges_and_deduplicates(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ev = DetectionEvaluator(_gt(), CAT_IDS, NAMES)
        _feed(ev, _predictions())
        ev.sync()
        assert sorted(ev._preds) == [10, 20, 30]
    finally:
        dist.destroy_process_group()
