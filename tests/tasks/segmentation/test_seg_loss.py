import math

import pytest
import torch
import torch.nn.functional as F

from multitask_edet.errors import ConfigError
from multitask_edet.tasks.segmentation import SegLossConfig, SegmentationLoss, SegmentationTask

V = 255


def logits_and_masks(b=2, c=4, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, h, w, generator=g, requires_grad=True)
    masks = [torch.randint(0, c, (h, w), generator=g) for _ in range(b)]
    return logits, masks


def test_ce_ignores_void_pixels():
    logits, masks = logits_and_masks()
    masks[0][:2] = V
    masks[1][:, 3:] = V
    loss = SegmentationLoss()(logits, masks)["seg_ce"]
    # by hand: mean of -log p(target) over the valid pixels only
    logp = logits.detach().log_softmax(1)
    terms = [-logp[i, m[y, x], y, x] for i, m in enumerate(masks)
             for y in range(6) for x in range(5) if m[y, x] != V]
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    loss.backward()
    assert logits.grad[0, :, :2].abs().max() == 0  # void pixels get no gradient
    assert logits.grad[0, :, 2:].abs().max() > 0


def test_sample_without_mask_contributes_nothing():
    logits, masks = logits_and_masks()
    both = SegmentationLoss()(logits, [masks[0], None])["seg_ce"]
    alone = SegmentationLoss()(logits[:1], [masks[0]])["seg_ce"]
    assert both.item() == pytest.approx(alone.item(), rel=1e-6)
    both.backward()
    assert logits.grad[1].abs().max() == 0


def test_weights_scale_terms():
    logits, masks = logits_and_masks()
    one = SegmentationLoss(SegLossConfig(weights={"ce": 1.0}))(logits, masks)["seg_ce"]
    two = SegmentationLoss(SegLossConfig(weights={"ce": 2.0}))(logits, masks)["seg_ce"]
    assert two.item() == pytest.approx(2 * one.item(), rel=1e-6)


@pytest.mark.parametrize("names", [("dice",), ("lovasz",), ("focal",), ("tversky",), ("ce", "dice"),
                                   ("ce", "dice", "lovasz", "focal", "tversky")])
def test_combinations_are_finite_and_positive(names):
    logits, masks = logits_and_masks()
    masks[0][0] = V
    cfg = SegLossConfig(weights={n: 0.5 for n in names})
    losses = SegmentationLoss(cfg)(logits, masks)
    assert sorted(losses) == sorted(f"seg_{n}" for n in names)
    total = sum(losses.values())
    assert math.isfinite(total.item()) and total.item() > 0
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("names", [("ce",), ("dice",), ("lovasz",), ("focal",), ("tversky",),
                                   ("ce", "dice", "lovasz", "focal", "tversky")])
def test_all_void_masks_give_zero_finite_loss_and_grads(names):
    # smp alone returns NaN (focal) or an empty tensor (Lovász) here
    logits, _ = logits_and_masks()
    masks = [torch.full((6, 5), V, dtype=torch.long)] * 2
    losses = SegmentationLoss(SegLossConfig(weights={n: 1.0 for n in names}))(logits, masks)
    total = sum(losses.values())
    assert total.dim() == 0 and total.item() == 0.0
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().max() == 0


@pytest.mark.parametrize("masks", [None, [None, None]])
def test_batch_without_masks_gives_zero_loss_connected_to_logits(masks):
    logits, _ = logits_and_masks()
    losses = SegmentationLoss(SegLossConfig(weights={"ce": 1.0, "dice": 1.0}))(logits, masks)
    assert set(losses) == {"seg_ce", "seg_dice"}
    total = sum(losses.values())
    assert total.item() == 0.0 and total.requires_grad
    total.backward()
    assert logits.grad is not None and logits.grad.abs().max() == 0


def test_masks_larger_than_logits_supervise_upsampled_logits():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    mask = torch.randint(0, 3, (8, 8))
    got = SegmentationLoss()(logits, [mask])["seg_ce"]
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    assert got.item() == pytest.approx(F.cross_entropy(up, mask[None]).item(), rel=1e-6)


def test_unknown_or_empty_loss_config_is_a_config_error():
    with pytest.raises(ConfigError, match="valid names: ce, dice, lovasz, focal, tversky"):
        SegLossConfig(weights={"ce": 1.0, "tverski": 1.0})
    with pytest.raises(ConfigError, match="tversky_gamma must be > 0"):
        SegLossConfig(weights={"tversky": 1.0}, tversky_gamma=0)
    with pytest.raises(ConfigError, match="focal_alpha must be in"):
        SegLossConfig(weights={"focal": 1.0}, focal_alpha=1.5)
    with pytest.raises(ConfigError, match="seg.loss.wieghts"):
        SegmentationTask({"loss": {"wieghts": {"ce": 1.0}}})
    with pytest.raises(ConfigError, match="empty"):
        SegLossConfig(weights={})
    with pytest.raises(ConfigError, match=">= 0"):
        SegLossConfig(weights={"ce": -1.0})


def test_task_loss_reads_batch_masks():
    logits, masks = logits_and_masks()
    task = SegmentationTask({"loss": {"weights": {"ce": 1.0, "dice": 0.5}}})
    out = task.loss(logits, {"images": torch.zeros(2, 3, 6, 5), "seg": masks})
    ref = SegmentationLoss(SegLossConfig(weights={"ce": 1.0, "dice": 0.5}))(logits, masks)
    assert out.keys() == ref.keys()
    assert all(torch.equal(out[k], ref[k]) for k in out)


def test_tversky_by_hand_with_its_false_positive_and_negative_weights():
    """(mean over classes of 1 - TP / (TP + α·FP + β·FN), soft counts from softmax)^γ."""
    logits, masks = logits_and_masks(b=1, c=2, h=4, w=4)
    masks[0][:] = 0
    masks[0][1, :] = 1  # a thin "lane" row
    p = logits.detach().softmax(1)[0]

    def loss_and_by_hand(alpha, beta):
        cfg = SegLossConfig(weights={"tversky": 1.0}, tversky_alpha=alpha, tversky_beta=beta, tversky_gamma=4 / 3)
        terms = []
        for c in range(2):
            t = (masks[0] == c).float()
            tp, fp, fn = (p[c] * t).sum(), (p[c] * (1 - t)).sum(), ((1 - p[c]) * t).sum()
            terms.append(1 - tp / (tp + alpha * fp + beta * fn))
        return SegmentationLoss(cfg)(logits, masks)["seg_tversky"], torch.stack(terms).mean().item() ** (4 / 3)

    got, by_hand = loss_and_by_hand(0.3, 0.7)
    assert got.item() == pytest.approx(by_hand, rel=1e-4)
    # α weighs the false positives: the same logits with α and β swapped give the swapped value
    other, by_hand = loss_and_by_hand(0.7, 0.3)
    assert other.item() == pytest.approx(by_hand, rel=1e-4)
    assert abs(other.item() - got.item()) > 1e-3


def test_focal_alpha_weighs_positive_and_negative_terms():
    logits, masks = logits_and_masks()
    plain = SegmentationLoss(SegLossConfig(weights={"focal": 1.0}))(logits, masks)["seg_focal"]
    half = SegmentationLoss(SegLossConfig(weights={"focal": 1.0}, focal_alpha=0.5))(logits, masks)["seg_focal"]
    assert half.item() == pytest.approx(plain.item() / 2, rel=1e-5)  # α·t + (1-α)(1-t) = 1/2 everywhere
    low = SegmentationLoss(SegLossConfig(weights={"focal": 1.0}, focal_alpha=0.1))(logits, masks)["seg_focal"]
    assert low.item() != pytest.approx(half.item(), rel=1e-3)
