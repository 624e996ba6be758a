"""End-to-end ONNX export (engine/export.py) checked with onnxruntime against ``mtedet predict``.

Every model here is a tiny ``test-efficientdet`` saved with ``save_pretrained`` and read back
through the one model-source resolver, as ``mtedet predict`` and ``mtedet export`` read it. Its
weights are random but *lively* (``lively``): with the default initialisation the tiny trunk's
deep levels carry almost no signal, every score is ~0.01 and the top detections tie to 1e-7,
so "the same detections" would depend on how two libraries break ties. Lively weights spread
the scores out and keep the box regressor's codes at the magnitude of a trained one.

The predictions of ``engine/predict.py predict_images`` (what ``mtedet predict`` writes, before
rounding to JSON) are the reference: the same detections (boxes within 1e-3 px after matching,
same labels, scores within 1e-4), masks at the original size equal on >= 99.9% of every image's
pixels, a user task's outputs equal; batches of 1 and 3, images that are letterboxed (padded and
scaled up or down), and images with no detection.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from multitask_edet import Task, create_model, register_task
from multitask_edet.datasets.io import read_image
from multitask_edet.datasets.testing import save_image
from multitask_edet.engine.builders import load_for_inference
from multitask_edet.engine.export import EndToEnd, export_onnx, letterbox
from multitask_edet.engine.predict import predict_images
from multitask_edet.errors import ConfigError

ort = pytest.importorskip("onnxruntime")

DET_NAMES = ["circle", "square", "triangle", "star", "cross"]
SEG_NAMES = ["background", "ground", "sky"]
#: (height, width) of the test images; the input is 128x128
SIZES = [(128, 128), (96, 128), (128, 80), (64, 48), (300, 200)]


def lively(model: nn.Module, seed: int = 0) -> nn.Module:
    """He-normal convolutions (biases N(0, 0.5)) so the signal survives every level; the class
    predictor shifted to logits around -2 (spread ~1.5), the box predictor scaled to small codes,
    no class of the segmentation classifier favoured by its bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
        for name, m in model.named_modules():
            if name.endswith("cls_net.predict.conv_pw"):
                m.weight.mul_(0.3)
                m.bias.sub_(2.0)
            elif name.endswith("box_net.predict.conv_pw"):
                m.weight.mul_(0.1)
                m.bias.mul_(0.1)
            elif name.endswith("classifier"):
                m.bias.zero_()
    return model


# ---------------------------------------------------------------------------- a user's task

@dataclass(frozen=True)
class PeakConfig:
    level: int = 3
    k: int = 4


class PeakHead(nn.Sequential):
    def __init__(self, in_channels: int, level: int):
        super().__init__(nn.Conv2d(in_channels, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 1, 1))
        self.levels = (level,)

    def forward(self, feats):
        return super().forward(feats[0])


@register_task("test_peaks", override=True)
class PeakTask(Task):
    """The k strongest cells of a heat map on one level, as points in original pixels."""

    Config = PeakConfig

    def build_head(self, in_channels, padding="pytorch"):
        return PeakHead(in_channels, self.config.level)

    def loss(self, outputs, batch):
        return {"zero": outputs.sum() * 0}

    def _peaks(self, logits, stride):
        scores, idx = logits.sigmoid().flatten(1).topk(self.config.k, dim=1)
        w = logits.shape[-1]
        points = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], -1).float().add(0.5).mul(stride)
        return scores, points

    def postprocess(self, logits, batch):
        scores, points = self._peaks(logits, batch["images"].shape[-1] / logits.shape[-1])
        return [{"scores": s, "points": p / meta["scale"]} for s, p, meta in zip(scores, points, batch["meta"])]

    def export_postprocess(self, forward, geometry):
        logits = forward()[self.name]
        scores, points = self._peaks(logits, 2.0**self.config.level)
        return {"scores": scores, "points": points / geometry.scales.view(-1, 1, 1)}

    def evaluator(self, dataset=None, output_dir=None):
        raise NotImplementedError


@register_task("test_no_export", override=True)
class NoExportTask(PeakTask):
    export_postprocess = Task.export_postprocess


# ---------------------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Smooth colour fields with noise (PNG, one JPEG), in sizes that pad and scale both ways."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files = []
    for i, (h, w) in enumerate(SIZES):
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), np.sin(4 * (xx + yy))], -1) * 90 + 128
        img = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        path = root / (f"img{i}.jpg" if i == 1 else f"img{i}.png")
        save_image(path, img)
        files.append(path)
    return files


def pretrained(tmp_path, tasks, seed=0):
    names = {"det": DET_NAMES, "seg": SEG_NAMES}
    model = lively(create_model("test-efficientdet", tasks=tasks,
                                class_names={t: names[t] for t in tasks if t in names}), seed)
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def run_onnx(path, files, batch, image_size=(128, 128)):
    """Per image {output name: array}: the graph run on letterboxed images in batches of ``batch``."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    out = []
    for start in range(0, len(files), batch):
        inputs = [letterbox(read_image(f), image_size) for f in files[start:start + batch]]
        feeds = {"images": np.stack([x for x, _ in inputs]),
                 "orig_sizes": np.array([s for _, s in inputs], dtype=np.int64)}
        got = sess.run(names, feeds)
        out += [{n: g[i] for n, g in zip(names, got)} for i in range(len(inputs))]
    return out


def reference(source, files, batch, overrides=None):
    trained = load_for_inference(source, overrides)
    return [(sample, preds) for sample, preds in predict_images(trained, files, batch_size=batch)]


def assert_same_detections(got, ref, prefix=""):
    n = int(got[f"{prefix}num_detections"])
    boxes, scores, labels = got[f"{prefix}boxes"], got[f"{prefix}scores"], got[f"{prefix}labels"]
    assert n == len(ref["scores"]), f"{n} detections from onnxruntime, {len(ref['scores'])} from mtedet predict"
    assert (labels[n:] == -1).all() and (scores[n:] == 0).all() and (boxes[n:] == 0).all()
    free = list(range(n))
    for box, score, label in zip(ref["boxes"].numpy(), ref["scores"].numpy(), ref["labels"].numpy()):
        match = [j for j in free if labels[j] == label and np.abs(boxes[j] - box).max() <= 1e-3
                 and abs(scores[j] - score) <= 1e-4]
        assert match, f"no onnxruntime detection matches {label} {box} {score}"
        free.remove(match[0])
    assert np.all(np.diff(scores[:n]) <= 0), "detections come best first"


def batch_plane(files, batch):
    """Per image the (Hmax, Wmax) of its batch: the largest original height and width in it."""
    sizes = [read_image(f).shape[:2] for f in files]
    return [tuple(np.max(sizes[i - i % batch: i - i % batch + batch], 0)) for i in range(len(files))]


def original_agreement(got_mask, ref_mask):
    """Share of the original image's pixels where the graph's original-size mask equals predict's;
    beyond the image (the rest of the batch's plane) everything must be 255."""
    h0, w0 = ref_mask.shape
    assert (got_mask[h0:] == 255).all() and (got_mask[:, w0:] == 255).all()
    return float((got_mask[:h0, :w0] == ref_mask.numpy()).mean())


def assert_input_mask(mask, ref_mask, image_size=(128, 128)):
    """The input-size mask: 255 exactly on the letterbox padding; an image that needed no
    rescaling is predict's mask, cropped."""
    h0, w0 = ref_mask.shape
    scale = min(image_size[0] / h0, image_size[1] / w0)
    assert (mask[round(h0 * scale):] == 255).all() and (mask[:, round(w0 * scale):] == 255).all()
    assert (mask[: round(h0 * scale), : round(w0 * scale)] != 255).all()
    if scale == 1:
        assert (mask[:h0, :w0] == ref_mask.numpy()).mean() >= 0.999


# ---------------------------------------------------------------------------- the checks

@pytest.mark.parametrize("batch", [1, 3])
def test_detection_graph_equals_predict(tmp_path, image_files, batch, one_thread):
    src = pretrained(tmp_path, ["det"])
    desc = export_onnx(src, tmp_path / "det.onnx", end_to_end=True)
    check = desc["check"]["det"]  # the export's own check: onnxruntime vs PyTorch on noise images
    assert check["boxes"] <= 1e-3 and check["scores"] <= 1e-4 and check["unmatched_ties"] == 0
    assert list(desc["outputs"]) == ["boxes", "scores", "labels", "num_detections"]
    assert desc["outputs"]["boxes"]["shape"] == ["batch", 100, 4] and desc["inputs"]["images"]["dtype"] == "uint8"
    got = run_onnx(tmp_path / "det.onnx", image_files, batch)
    for g, (sample, preds) in zip(got, reference(src, image_files, batch)):
        assert_same_detections(g, preds["det"])
        h, w = sample["orig_size"]
        assert g["boxes"][:, [0, 2]].max() <= w and g["boxes"][:, [1, 3]].max() <= h  # clipped to the original


def test_images_without_detections(tmp_path, image_files, one_thread):
    src = pretrained(tmp_path, ["det"])
    best = sorted(float(p["det"]["scores"].max()) for _, p in reference(src, image_files, 3))
    threshold = (best[0] + best[1]) / 2  # the weakest image keeps nothing, the others keep some
    over = {"det": {"postprocess": {"score_threshold": threshold}}}
    export_onnx(src, tmp_path / "thr.onnx", end_to_end=True, overrides=over)
    ref = reference(src, image_files, 3, over)
    got = run_onnx(tmp_path / "thr.onnx", image_files, 3)
    counts = [int(g["num_detections"]) for g in got]
    assert 0 in counts and max(counts) > 0
    for g, (_, preds) in zip(got, ref):
        assert_same_detections(g, preds["det"])


def test_soft_nms_graph_equals_predict(tmp_path, image_files, one_thread):
    src = pretrained(tmp_path, ["det"], seed=1)
    over = {"det": {"postprocess": {"nms": "soft_nms", "max_detections": 20}}}
    desc = export_onnx(src, tmp_path / "soft.onnx", end_to_end=True, overrides=over)
    assert desc["outputs"]["boxes"]["shape"] == ["batch", 20, 4]
    for g, (_, preds) in zip(run_onnx(tmp_path / "soft.onnx", image_files, 3), reference(src, image_files, 3, over)):
        assert_same_detections(g, preds["det"])


@pytest.mark.parametrize("batch, seg", [(1, {}), (3, {}), (1, {"merge_levels": [3, 4, 5]}), (3, {"merge_levels": [3, 4, 5]}),
                                        (3, {"head": "semantic-fpn", "merge_levels": [3, 4, 5], "dropout": 0.2})],
                         ids=["1-p2", "3-p2", "1-merge345", "3-merge345", "3-semantic-fpn"])
def test_segmentation_graph_equals_predict(tmp_path, image_files, batch, seg, one_thread):
    src = pretrained(tmp_path, {"seg": seg})
    desc = export_onnx(src, tmp_path / "seg.onnx", end_to_end=True)
    assert desc["outputs"] == {"mask": {"shape": ["batch", 128, 128], "dtype": "uint8"},
                               "mask_original": {"shape": ["batch", "orig_height", "orig_width"], "dtype": "uint8"}}
    assert desc["check"]["seg"] == {"mask": 0.0, "mask_original": 0.0}  # the export's own check on noise images
    got = run_onnx(tmp_path / "seg.onnx", image_files, batch)
    ref = reference(src, image_files, batch)
    for g, plane, (sample, preds) in zip(got, batch_plane(image_files, batch), ref):
        assert tuple(sample["orig_size"]) == preds["seg"].shape
        assert set(np.unique(g["mask_original"])) <= {0, 1, 2, 255}
        assert g["mask_original"].shape == plane
        # scores resampled to the original pixels inside the graph, as predict does: the same mask
        # whether the image was padded only (img1, img2) or scaled up (img3) or down (img4)
        assert original_agreement(g["mask_original"], preds["seg"]) >= 0.999
        assert_input_mask(g["mask"], preds["seg"])


@pytest.mark.parametrize("batch", [1, 3])
def test_detection_and_segmentation_graph_equals_predict(tmp_path, image_files, batch, one_thread):
    src = pretrained(tmp_path, ["det", "seg"])
    over = {"seg": {"flip_test": True}}  # the graph runs the mirrored images too
    desc = export_onnx(src, tmp_path / "joint.onnx", end_to_end=True, overrides=over)
    assert list(desc["outputs"]) == ["det_boxes", "det_scores", "det_labels", "det_num_detections", "seg_mask",
                                     "seg_mask_original"]
    assert desc["tasks"]["seg"]["class_names"] == SEG_NAMES and desc["tasks"]["det"]["class_names"] == DET_NAMES
    got = run_onnx(tmp_path / "joint.onnx", image_files, batch)
    for g, plane, (sample, preds) in zip(got, batch_plane(image_files, batch), reference(src, image_files, batch, over)):
        assert_same_detections(g, preds["det"], prefix="det_")
        assert g["seg_mask_original"].shape == plane
        assert original_agreement(g["seg_mask_original"], preds["seg"]) >= 0.999
        assert_input_mask(g["seg_mask"], preds["seg"])


@pytest.mark.parametrize("batch", [1, 3])
def test_user_task_graph_equals_predict(tmp_path, image_files, batch, one_thread):
    src = pretrained(tmp_path, {"det": {}, "peaks": {"type": "test_peaks", "k": 6}})
    desc = export_onnx(src, tmp_path / "user.onnx", end_to_end=True)
    assert list(desc["outputs"])[-2:] == ["peaks_scores", "peaks_points"]
    got = run_onnx(tmp_path / "user.onnx", image_files, batch)
    for g, (_, preds) in zip(got, reference(src, image_files, batch)):
        assert_same_detections(g, preds["det"], prefix="det_")
        np.testing.assert_allclose(g["peaks_scores"], preds["peaks"]["scores"].numpy(), atol=1e-5)
        np.testing.assert_allclose(g["peaks_points"], preds["peaks"]["points"].numpy(), atol=1e-3)


def test_export_check_matches_detections_and_allows_only_ties():
    from multitask_edet.tasks.detection.export import check_detections

    ref = {"boxes": np.array([[[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40], [0, 0, 0, 0]]], np.float32),
           "scores": np.array([[0.9, 0.5, 0.5 + 2e-6, 0.0]], np.float32), "labels": np.array([[1, 0, 0, -1]]),
           "num_detections": np.array([3])}
    swapped = {k: v.copy() for k, v in ref.items()}
    for k in ("boxes", "scores", "labels"):
        swapped[k][0, [1, 2]] = ref[k][0, [2, 1]]
    assert check_detections(swapped, ref)["unmatched_ties"] == 0  # order does not matter
    other = {k: v.copy() for k, v in ref.items()}
    other["boxes"][0, 2] = [60, 60, 70, 70]  # another box survived a tie: allowed
    assert check_detections(other, ref)["unmatched_ties"] == 1 / 3
    wrong = {k: v.copy() for k, v in ref.items()}
    wrong["scores"][0, 0] = 0.8
    with pytest.raises(ConfigError, match="scores of image 0"):
        check_detections(wrong, ref)
    shifted = {**ref, "boxes": ref["boxes"] + 1}  # every box one pixel off: no tie explains that
    with pytest.raises(ConfigError, match="3 of the 3 exported detections"):
        check_detections(shifted, ref)
    fewer = {**ref, "num_detections": np.array([2])}
    with pytest.raises(ConfigError, match="2 from the graph, 3 from PyTorch"):
        check_detections(fewer, ref)


def test_a_task_without_graph_post_processing_is_a_clear_error(tmp_path):
    src = pretrained(tmp_path, {"peaks": {"type": "test_no_export"}})
    with pytest.raises(ConfigError, match=r"export_postprocess.*without --end-to-end"):
        export_onnx(src, tmp_path / "x.onnx", end_to_end=True)
    assert export_onnx(src, tmp_path / "raw.onnx")["max_abs_diff"] <= 1e-4  # the raw export still works


@pytest.mark.parametrize("seg", [{}, {"merge_levels": [3, 4, 5]}], ids=["p2", "merge345"])
def test_dynamic_size_graph_runs_other_sizes(tmp_path, seg, one_thread):
    src = pretrained(tmp_path, {"det": {}, "seg": seg})
    desc = export_onnx(src, tmp_path / "dyn.onnx", end_to_end=True, dynamic_size=True)
    assert desc["inputs"]["images"]["shape"] == ["batch", 3, "height", "width"]
    assert desc["outputs"]["seg_mask"]["shape"] == ["batch", "height", "width"]
    assert desc["outputs"]["seg_mask_original"]["shape"] == ["batch", "orig_height", "orig_width"]
    trained = load_for_inference(src)
    e2e = EndToEnd(trained.model, trained.tasks).eval()
    sess = ort.InferenceSession(str(tmp_path / "dyn.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(3)
    for size in [(256, 128), (128, 384)]:
        images = torch.randint(0, 256, (2, 3, *size), generator=g, dtype=torch.uint8)
        sizes = torch.tensor([size, (size[0] * 2 + 1, size[1] // 3)])  # fitting, and larger than the input
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": images.numpy(),
                                                                             "orig_sizes": sizes.numpy()})))
        with torch.no_grad():
            ref = e2e.named(images, sizes)
        assert got["seg_mask"].shape == (2, *size)
        assert got["seg_mask_original"].shape == (2, size[0] * 2 + 1, size[1])
        for key in ("seg_mask", "seg_mask_original"):
            assert (got[key] == ref[key].numpy()).mean() >= 0.999
        for i in range(2):
            ref_i = {k: ref[f"det_{k}"][i][: int(ref["det_num_detections"][i])] for k in ("boxes", "scores", "labels")}
            assert_same_detections({k: v[i] for k, v in got.items()}, ref_i, prefix="det_")
    # masks at the original size need GridSample (opset 16): an older opset is a one-line error
    with pytest.raises(ConfigError, match=r"opset 15: .*grid_sampler.*added in version 16.*--opset"):
        export_onnx(src, tmp_path / "old.onnx", end_to_end=True, opset=15)
    # an input that is no multiple of 2**max_level is refused by the model config check, not the graph
    with pytest.raises(ConfigError, match="not divisible by 128"):
        export_onnx(src, tmp_path / "bad.onnx", end_to_end=True, image_size=(100, 128))


def test_cli_export_end_to_end_writes_graph_and_description(tmp_path, capsys):
    from multitask_edet.cli import main

    src = pretrained(tmp_path, ["det", "seg"])
    out = tmp_path / "e2e.onnx"
    assert main(["export", "--checkpoint", str(src), "--end-to-end", str(out),
                 "--set", "det.postprocess.max_detections=7"]) == 0
    printed = capsys.readouterr().out
    assert "inputs: images uint8" in printed and "onnxruntime vs PyTorch, det: boxes" in printed
    assert "onnxruntime vs PyTorch, seg: mask 0, mask_original 0" in printed  # the shares of differing mask pixels
    desc = json.loads(out.with_suffix(".json").read_text())
    assert desc["mode"] == "end-to-end" and desc["outputs"]["det_boxes"]["shape"] == ["batch", 7, 4]
    assert desc["inputs"]["images"]["mean"] == [0.485, 0.456, 0.406]
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"NonMaxSuppression", "TopK", "ArgMax", "GridSample"} <= ops  # NMS, top-k, mask resampling inside
    assert not list(tmp_path.glob("e2e.*.npy"))  # nothing besides the graph is needed
