"""The driving papers' detection recall and mAP@0.5 (paper_metrics.py), by hand, and beside COCO AP."""
import numpy as np
import pytest

from multitask_edet.datasets.dataset import coco_from_dict
from multitask_edet.tasks.detection import DetEvalConfig, DetectionEvaluator
from multitask_edet.tasks.detection.paper_metrics import match_image_class, paper_detection_metrics

A, B, D = [0, 0, 10, 10], [20, 0, 30, 10], [50, 50, 60, 60]
HALF = [20, 0, 30, 20]  # IoU with B exactly 0.5


def _images():
    """Image 1: A, B; detections on A (0.9), A again (0.8), B at IoU 0.5 (0.7).
    Image 2: an ignore box where A is, D; detections on the ignore box (0.95) and far away (0.6)."""
    e = np.zeros(0, np.int64)
    one = (np.array([A, A, HALF], float), np.array([0.9, 0.8, 0.7]), np.zeros(3, np.int64),
           np.array([A, B], float), np.zeros(2, np.int64), np.zeros(2, bool))
    two = (np.array([[0, 0, 10, 9], [80, 80, 90, 90]], float), np.array([0.95, 0.6]), np.zeros(2, np.int64),
           np.array([A, D], float), np.zeros(2, np.int64), np.array([True, False]))
    return [one, two], e


def _trapezoid_101(f):
    x = np.linspace(0, 1, 101)
    y = np.array([f(v) for v in x])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))


def test_matching_thresholds_and_ignore_boxes():
    dets = np.array([A, A, HALF], float)
    assert match_image_class(dets, np.array([A, B], float), np.zeros((0, 4)), "hybridnets").tolist() == [1, 0, 1]
    assert match_image_class(dets, np.array([A, B], float), np.zeros((0, 4)), "yolop").tolist() == [1, 0, 0]
    on_ignore = match_image_class(np.array([A, D], float), np.zeros((0, 4)), np.array([A], float), "hybridnets")
    assert on_ignore.tolist() == [-1, 0]


def test_hybridnets_recall_and_ap_by_hand():
    images, _ = _images()
    metrics, per_class = paper_detection_metrics(images, "hybridnets", ["car"])
    # in score order (the 0.95 one on the ignore box dropped): TP, FP, TP, FP over 3 boxes (A, B, D)
    assert metrics["hybridnets/recall"] == pytest.approx(2 / 3)
    # envelope: 1 up to recall 1/3, 2/3 up to 2/3, then the closing point (1.0, 0) from the last precision 1/2
    expected = _trapezoid_101(lambda r: 1.0 if r < 1 / 3 else (2 / 3 if r < 2 / 3 else 0.5 * (1 - r) * 3))
    assert metrics["hybridnets/mAP50"] == pytest.approx(expected, abs=1e-12)
    assert per_class == {"car": {"recall": pytest.approx(2 / 3), "AP50": pytest.approx(expected)}}


def test_yolop_needs_iou_above_one_half_and_closes_the_curve_at_the_last_recall():
    images, _ = _images()
    metrics, _ = paper_detection_metrics(images, "yolop")
    assert metrics["yolop/recall"] == pytest.approx(1 / 3)  # the IoU-0.5 detection of B is a miss
    end = 1 / 3 + 0.01
    expected = _trapezoid_101(lambda r: 1.0 if r < 1 / 3 else (max(0.0, (end - r) / 0.01 * 0.25) if r < end else 0.0))
    assert metrics["yolop/mAP50"] == pytest.approx(expected, abs=1e-12)


def test_classes_without_ground_truth_are_left_out_and_missed_classes_count_zero():
    box = np.array([A], float)
    one = (box, np.array([0.9]), np.array([0]), box, np.array([0]), np.zeros(1, bool))
    two = (box, np.array([0.8]), np.array([2]), box, np.array([1]), np.zeros(1, bool))  # class 1 missed; 2 has no box
    metrics, per_class = paper_detection_metrics([one, two], "hybridnets", ["a", "b", "c"])
    assert set(per_class) == {"a", "b"} and per_class["b"] == {"recall": 0.0, "AP50": 0.0}
    # a perfect class: the closing point (1.0, 0) shares recall 1 with the last detection, so the last of the 100
    # trapezoids falls to 0 and the code's best AP is 0.995
    assert per_class["a"]["AP50"] == pytest.approx(0.995) and metrics["hybridnets/mAP50"] == pytest.approx(0.4975)
    assert paper_detection_metrics([(box, np.array([0.9]), np.array([0]), np.zeros((0, 4)), np.zeros(0, np.int64),
                                     np.zeros(0, bool))], "yolop") == ({}, {})


def test_evaluator_reports_the_paper_figures_beside_coco_ap():
    anns = [(1, [0, 0, 10, 10], 0), (1, [20, 0, 10, 10], 0), (2, [0, 0, 10, 10], 1), (2, [50, 50, 10, 10], 0)]
    gt = coco_from_dict({
        "images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2)],
        "categories": [{"id": 3, "name": "cat"}],
        "annotations": [{"id": k, "image_id": i, "category_id": 3, "bbox": b, "area": 100, "iscrowd": c, "ignore": c}
                        for k, (i, b, c) in enumerate(anns, start=1)],
    })
    images, _ = _images()

    def run(cfg):
        ev = DetectionEvaluator(gt, [3], ["cat"], cfg=cfg)
        for image_id, (boxes, scores, labels, *_) in zip((1, 2), images):
            ev.add(image_id, boxes, scores, labels)
        return ev, ev.compute()

    plain_ev, plain = run(DetEvalConfig())
    ev, got = run(DetEvalConfig(paper_protocol="hybridnets"))
    assert {k: got[k] for k in plain} == plain  # COCO AP untouched
    assert got["hybridnets/recall"] == pytest.approx(2 / 3)
    assert got["hybridnets/mAP50"] == pytest.approx(paper_detection_metrics(images, "hybridnets")[0]["hybridnets/mAP50"])
    assert ev.per_class["cat"]["paper R"] == pytest.approx(2 / 3) and "paper R" not in plain_ev.per_class["cat"]
    report = ev.report()
    assert "hybridnets protocol (YOLOv5-style matching, 101-point AP; not COCO's): recall 66.67" in report
    assert "hybridnets/recall" not in report.splitlines()[1]
