import numpy as np
import pytest
import torch

from multitask_edet.engine.inference import predict_batch
from multitask_edet.tasks.base import Forward
from multitask_edet.tasks.segmentation import SegmentationTask, scores_to_masks
from multitask_edet.tasks.segmentation.inference import mask_to_original, valid_region


def one_hot_logits(labels, num_classes, input_size, top, left, pad_class):
    """Logits (1, C, H, W) that put ``labels`` at (top, left) and ``pad_class`` everywhere else."""
    h, w = input_size
    lab = torch.full((h, w), pad_class, dtype=torch.long)
    lab[top : top + labels.shape[0], left : left + labels.shape[1]] = labels
    return (torch.nn.functional.one_hot(lab, num_classes).permute(2, 0, 1).float() * 10)[None]


def test_padding_is_removed_at_scale_one():
    labels = torch.tensor([[0, 1, 1, 2, 2], [0, 0, 1, 2, 1], [2, 2, 2, 0, 0]])
    logits = one_hot_logits(labels, 4, (8, 8), top=2, left=1, pad_class=3)
    meta = {"orig_size": (3, 5), "scale": 1.0, "pad": (2, 1)}
    (mask,) = scores_to_masks(logits, [meta])
    assert mask.dtype == torch.uint8 and mask.shape == (3, 5)
    assert torch.equal(mask.long(), labels)


def test_downscaled_image_maps_back_to_original_size():
    # Original 3x4 image resized by 2 → 6x8 valid region at the top-left of a 8x8 input.
    # Each original pixel is a constant 2x2 block of logits; bilinear resizing by 1/2 with
    # half-pixel centres samples the block centres, so the labels come back exactly.
    labels = torch.tensor([[1, 0, 2, 2], [1, 1, 0, 2], [0, 2, 1, 1]])
    big = labels.repeat_interleave(2, 0).repeat_interleave(2, 1)
    logits = one_hot_logits(big, 3, (8, 8), top=0, left=0, pad_class=2)
    meta = {"orig_size": (3, 4), "scale": 2.0, "pad": (0, 0)}
    (mask,) = scores_to_masks(logits, [meta])
    assert torch.equal(mask.long(), labels)


def test_valid_region_holds_the_pixels_whose_centres_lie_on_the_image():
    # 5x7 image at scale 0.5 below a 1-row pad spans rows [1, 3.5) and columns [0, 3.5):
    # row centres 1.5, 2.5 and column centres 0.5, 1.5, 2.5 lie on it
    assert valid_region({"orig_size": (5, 7), "scale": 0.5, "pad": (1, 0)}, (8, 8)) == (1, 0, 2, 3)
    assert valid_region(None, (8, 6)) == (0, 0, 8, 6)


def test_mixed_geometries_in_one_batch():
    metas = [{"orig_size": (5, 7), "scale": 0.5, "pad": (1, 0)},
             {"orig_size": (4, 4), "scale": 1.0, "pad": (0, 0)},
             None]
    logits = torch.randn(3, 5, 8, 8)
    masks = scores_to_masks(logits, metas)
    assert [tuple(m.shape) for m in masks] == [(5, 7), (4, 4), (8, 8)]
    assert torch.equal(masks[1].long(), logits[1, :, :4, :4].argmax(0))
    assert torch.equal(masks[2].long(), logits[2].argmax(0))


def test_non_integer_scale_samples_each_original_pixel_at_its_exact_input_position():
    # Class 0's score is the input row coordinate u, class 1's a constant 3.6: bilinear
    # sampling of a linear ramp is exact, so original row y is class 0 iff its centre maps to
    # u = (y + 0.5) * scale + top - 0.5 > 3.6 (row 4: 3.65; a crop of round(9 * 0.7) rows
    # resized to 9 would put it at 3.5).
    scale, top, h0 = 0.7, 1, 9
    u = torch.arange(16, dtype=torch.float32).view(16, 1).expand(16, 4)
    scores = torch.stack([u, torch.full_like(u, 3.6)])[None]
    (mask,) = scores_to_masks(scores, [{"orig_size": (h0, 5), "scale": scale, "pad": (top, 0)}])
    expected = [0 if (y + 0.5) * scale + top - 0.5 > 3.6 else 1 for y in range(h0)]
    assert mask[:, 0].tolist() == expected
    assert (mask == mask[:, :1]).all()


def test_round_trip_through_the_eval_transform():
    # An original label map sent through the real eval transform (upscaled to fit 128 px,
    # padded) and mapped back from one-hot scores is recovered exactly.
    from multitask_edet.datasets.transforms import eval_transforms

    g = torch.Generator().manual_seed(0)
    orig = torch.randint(0, 3, (7, 5), generator=g).repeat_interleave(7, 0).repeat_interleave(9, 1)  # 49 x 45
    sample = {"image": np.zeros((49, 45, 3), np.uint8), "seg": orig.numpy().astype(np.uint8),
              "image_id": 0, "file_name": "x.jpg", "orig_size": (49, 45)}
    out = eval_transforms(128)(sample)
    assert out["meta"]["scale"] == pytest.approx(128 / 49)
    mask_in = out["seg"]
    scores = torch.nn.functional.one_hot(mask_in.clamp(max=3), 4).permute(2, 0, 1).float()[None]
    (back,) = scores_to_masks(scores, [out["meta"]])
    assert back.shape == (49, 45)
    assert torch.equal(back.long(), orig)
    assert torch.equal(mask_to_original(mask_in, out["meta"]).long(), orig)


def test_same_geometry_images_are_resized_together_with_identical_results():
    meta = {"orig_size": (10, 6), "scale": 0.8, "pad": (0, 1)}
    logits = torch.randn(2, 3, 8, 8)
    together = scores_to_masks(logits, [meta, meta])
    alone = [scores_to_masks(logits[i : i + 1], [meta])[0] for i in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(together, alone))


def test_mask_to_original_crops_padding():
    mask = torch.full((6, 6), 255, dtype=torch.long)
    mask[2:5, 1:3] = torch.tensor([[1, 2], [3, 4], [5, 6]])
    out = mask_to_original(mask, {"orig_size": (3, 2), "scale": 1.0, "pad": (2, 1)})
    assert out.tolist() == [[1, 2], [3, 4], [5, 6]]


class PixelModel(torch.nn.Module):
    """Pointwise logits (flip-equivariant) plus an optional column ramp (not equivariant)."""

    def __init__(self, ramp: bool):
        super().__init__()
        self.ramp = ramp
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        a = x[:, 0] * self.w
        if self.ramp:
            a = a + torch.linspace(-3, 3, x.shape[-1])
        return {"seg": torch.stack([a, -a], 1)}


def _predict(task, model, images, batch):
    return predict_batch(model, {"seg": task}, {**batch, "images": images}, torch.device("cpu"))["seg"]


def test_flip_tta_averages_mirrored_probabilities():
    # Logits = normalised red (-2.118 on a black image) + a column ramp -3..3 in output space:
    # not flip-equivariant. Plain: class 0 only where the ramp exceeds 2.118 (last column).
    # Flip TTA averages softmax(x + r) with softmax(x - r) per column, below 0.5 everywhere.
    images = torch.zeros(1, 3, 4, 6, dtype=torch.uint8)
    batch = {"meta": [{"orig_size": (4, 6), "scale": 1.0, "pad": (0, 0)}]}
    ramp = PixelModel(ramp=True)
    plain = _predict(SegmentationTask(), ramp, images, batch)[0]
    flipped = _predict(SegmentationTask({"flip_test": True}), ramp, images, batch)[0]
    assert plain[:, :5].eq(1).all() and plain[:, 5].eq(0).all()
    assert flipped.eq(1).all()
    # on a zero input only the ramp speaks: averaged with its mirror it is exactly a tie
    forward = Forward(ramp, torch.zeros(1, 3, 4, 6))
    probs = (forward()["seg"].softmax(1) + forward(flip=True)["seg"].flip(-1).softmax(1)) / 2
    assert torch.allclose(probs, torch.full_like(probs, 0.5), atol=1e-6)


def test_task_predict_and_postprocess():
    task = SegmentationTask({"flip_test": True})
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    batch = {"meta": [{"orig_size": (6, 8), "scale": 1.0, "pad": (1, 0)}] * 2}
    preds = _predict(task, PixelModel(ramp=False), images, batch)
    # the model says class 0 where the normalised red channel is > 0, i.e. red > ImageNet mean
    expected = (images[:, 0, 1:7].float() <= 0.485 * 255).to(torch.uint8)
    assert torch.equal(torch.stack(preds), expected)
    logits = torch.randn(2, 3, 8, 8)
    direct = task.postprocess(logits, {**batch, "images": images})
    assert torch.equal(direct[1].long(), logits[1, :, 1:7].argmax(0))
