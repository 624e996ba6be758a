import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from multitask_edet.datasets.base import collate
from multitask_edet.datasets.transforms import (
    DET_SCALE_RANGE,
    SEG_SCALE_RANGE,
    default_scale_range,
    eval_transforms,
    train_transforms,
)

RED = (255, 0, 0)


def make_sample(h=60, w=100, boxes=((20, 10, 50, 40), (70, 30, 95, 55)), with_mask=True, with_det=True):
    """A grey image with red boxes; the mask has class 1 in the first box, 2 in the second."""
    img = np.full((h, w, 3), 90, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for k, box in enumerate(boxes):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        img[y0:y1, x0:x1] = RED
        mask[y0:y1, x0:x1] = k + 1
    s = {"image": img, "image_id": 7, "file_name": "x.jpg", "orig_size": (h, w), "dataset": "toy"}
    if with_det:
        s["det"] = {"boxes": np.asarray(boxes, np.float32), "labels": np.arange(len(boxes), dtype=np.int64),
                    "ignore": np.asarray([False, True][: len(boxes)])}
    if with_mask:
        s["seg"] = mask
    return s


def interior(m):
    """Pixels of ``m`` whose 8 neighbours are in ``m`` too (away from interpolated edges)."""
    return binary_erosion(m, np.ones((3, 3), bool), border_value=1)


def mask_box(mask, value):
    ys, xs = np.nonzero(mask == value)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("seed", range(12))
def test_train_keeps_boxes_masks_and_pixels_aligned(seed):
    t = train_transforms(128, ("boxes", "mask"), scale_range=(0.5, 2.0))
    out = t(make_sample(), seed=seed)
    img, mask = out["image"].numpy().transpose(1, 2, 0), out["seg"].numpy()
    assert img.shape == (128, 128, 3) and mask.shape == (128, 128)
    for box, label in zip(out["det"]["boxes"].numpy(), out["det"]["labels"].tolist()):
        v = label + 1
        # the box (clipped by the crop) is the extent of its mask region, to within a pixel
        np.testing.assert_allclose(mask_box(mask, v), box, atol=1.0)
        inner = interior(mask == v)
        if inner.any():  # red where the mask says so (away from interpolated edges)
            assert (img[inner][:, 0] > 200).all() and (img[inner][:, 1] < 60).all()
    # labels and ignore flags stay paired with their boxes after filtering
    assert out["det"]["ignore"].tolist() == [lbl == 1 for lbl in out["det"]["labels"].tolist()]
    # pixels outside the image are padding: image 0 and mask 255, the same pixels
    assert (img[mask == 255] == 0).all()
    assert (mask[(img == 0).all(2)] == 255).all()


def test_train_flip_and_meta():
    t = train_transforms(128, ("boxes",), scale_range=(1.0, 1.0), hflip=1.0)
    s = make_sample()
    out = t(s, seed=3)
    m = out["meta"]
    assert m["flipped"] is True and m["image_id"] == 7 and m["dataset"] == "toy" and m["orig_size"] == (60, 100)
    scale, (top, left) = m["scale"], m["pad"]
    assert scale == pytest.approx(1.28)
    x = s["det"]["boxes"][:, [0, 2]] * scale + left
    exp = np.stack([128 - x[:, 1], s["det"]["boxes"][:, 1] * scale + top, 128 - x[:, 0], s["det"]["boxes"][:, 3] * scale + top], 1)
    np.testing.assert_allclose(out["det"]["boxes"].numpy(), np.clip(exp, 0, 128), atol=1e-4)


def test_train_is_reproducible_by_seed():
    t = train_transforms(96, ("boxes", "mask"), color_jitter=0.3)
    a, b, c = (t(make_sample(), seed=s) for s in (5, 5, 6))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["seg"], b["seg"])
    assert torch.equal(a["det"]["boxes"], b["det"]["boxes"]) and a["meta"]["scale"] == b["meta"]["scale"]
    assert a["meta"]["scale"] != c["meta"]["scale"] or not torch.equal(a["image"], c["image"])


def test_scale_range_reaches_both_ends():
    t = train_transforms(128, ("boxes",))
    fit = 128 / 100
    scales = [t(make_sample(), seed=s)["meta"]["scale"] / fit for s in range(200)]
    assert min(scales) >= 0.1 - 1e-9 and max(scales) <= 2.0 + 1e-9
    assert min(scales) < 0.3 and max(scales) > 1.8
    assert default_scale_range(("boxes", "mask")) == DET_SCALE_RANGE and default_scale_range("mask") == SEG_SCALE_RANGE


def test_boxes_cropped_away_are_dropped_with_their_labels():
    t = train_transforms(64, ("boxes",), scale_range=(2.0, 2.0), hflip=0.0)
    seen = set()
    for seed in range(40):
        out = t(make_sample(), seed=seed)
        b = out["det"]["boxes"].numpy()
        assert len(b) == len(out["det"]["labels"]) == len(out["det"]["ignore"])
        assert (b[:, 2] - b[:, 0] >= 1).all() and (b[:, 3] - b[:, 1] >= 1).all()
        assert (b >= 0).all() and (b <= 64).all()
        seen.add(len(b))
    assert 0 in seen or 1 in seen  # some crops lose a box


@pytest.mark.parametrize("size", [128, (96, 160), (160, 96)])
def test_eval_meta_maps_boxes_back_exactly(size):
    s = make_sample(h=61, w=103, boxes=((20.5, 10.25, 50, 40), (70, 30, 103, 61)))
    out = eval_transforms(size)(s)
    m = out["meta"]
    H, W = (size, size) if isinstance(size, int) else size
    assert out["image"].shape == (3, H, W)
    assert m["pad"] == (0, 0) and m["scale"] == pytest.approx(min(H / 61, W / 103))
    top, left = m["pad"]
    b = out["det"]["boxes"].numpy().astype(np.float64)
    back = np.stack([(b[:, 0] - left) / m["scale"], (b[:, 1] - top) / m["scale"],
                     (b[:, 2] - left) / m["scale"], (b[:, 3] - top) / m["scale"]], 1)  # fmt: skip
    np.testing.assert_allclose(back, s["det"]["boxes"], atol=1e-4)
    # padding only at the bottom/right: the valid region is the scaled image
    vh, vw = round(61 * m["scale"]), round(103 * m["scale"])
    mask = out["seg"].numpy()
    assert (mask[vh:, :] == 255).all() and (mask[:, vw:] == 255).all()
    assert (mask[:vh, :vw] != 255).all()
    assert (out["image"].numpy()[:, vh:, :] == 0).all()
    assert out["seg"].dtype == torch.int64 and out["det"]["labels"].dtype == torch.int64
    assert out["det"]["ignore"].dtype == torch.bool and out["image"].dtype == torch.uint8
    assert m["orig_masks"]["seg"].dtype == torch.uint8 and tuple(m["orig_masks"]["seg"].shape) == (61, 103)
    assert torch.equal(m["orig_masks"]["seg"], torch.from_numpy(s["seg"]))


def test_eval_mask_is_nearest_neighbour_only():
    s = make_sample(h=50, w=50, boxes=((10, 10, 30, 30), (30, 30, 50, 50)))
    for size in (40, 128, 200):
        m = eval_transforms(size)(s)["seg"].numpy()
        assert set(np.unique(m).tolist()) <= {0, 1, 2, 255}


def test_strong_downscale_is_antialiased_and_aligned():
    # a 1-pixel checkerboard averages to grey instead of aliasing to a solid colour
    img = ((np.indices((400, 400)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2)
    s = {"image": img, "image_id": 0, "file_name": "c.png", "orig_size": (400, 400), "dataset": "toy"}
    out = eval_transforms(64)(s)["image"].numpy()
    assert abs(out.mean() - 127.5) < 10 and out.std() < 20


def test_samples_without_det_or_mask_keep_their_keys_absent():
    t = train_transforms(64, ("boxes", "mask"))
    seg_only = t(make_sample(with_det=False), seed=0)
    det_only = t(make_sample(with_mask=False), seed=0)
    assert "det" not in seg_only and "seg" in seg_only
    assert "seg" not in det_only and "det" in det_only
    ev = eval_transforms(64)(make_sample(with_mask=False))
    assert "orig_masks" not in ev["meta"]
    batch = collate([seg_only, det_only])
    assert batch["images"].shape == (2, 3, 64, 64)
    assert batch["det"][0] is None and batch["seg"][1] is None


def test_every_annotation_is_transformed_whatever_its_name():
    # two box sets and two masks (BDD100K-style: det + drivable + lane) go through one call
    s = make_sample()
    s["signs"] = {"boxes": np.asarray([[60, 5, 90, 25]], np.float32), "labels": np.asarray([0]),
                  "ignore": np.asarray([False])}
    s["lane"] = (s["seg"] == 2).astype(np.uint8)
    out = train_transforms(128, ("boxes", "mask"), scale_range=(1.0, 1.0), hflip=1.0)(s, seed=3)
    valid = out["seg"] != 255  # both masks are padded with 255 alike
    assert torch.equal(valid, out["lane"] != 255) and valid.any()
    assert torch.equal(out["lane"][valid], (out["seg"][valid] == 2).long())  # warped and flipped alike
    scale, (top, left) = out["meta"]["scale"], out["meta"]["pad"]
    x = np.asarray([60.0, 90.0]) * scale + left
    exp = [128 - x[1], 5 * scale + top, 128 - x[0], 25 * scale + top]
    np.testing.assert_allclose(out["signs"]["boxes"].numpy()[0], exp, atol=1e-4)
    assert len(out["det"]["boxes"]) == 2 and out["signs"]["labels"].tolist() == [0]
    ev = eval_transforms(128)(s)
    assert set(ev["meta"]["orig_masks"]) == {"seg", "lane"}


def test_skipped_record_travels_in_meta():
    s = make_sample()
    s["skipped"] = [{"index": 3, "file": "bad.jpg", "reason": "corrupt"}]
    out = eval_transforms(64)(s)
    assert "skipped" not in out and out["meta"]["skipped"][0]["file"] == "bad.jpg"
