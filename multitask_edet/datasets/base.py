"""The one sample schema every dataset adapter yields, and the batch collate.

Sample (a dict), as an adapter returns it (before transforms):

    image       uint8 ndarray (H, W, 3), RGB
    image_id    int (COCO id, or the index of the image in a VOC split)
    file_name   str, path of the image (for error messages and predictions)
    orig_size   (H, W) of the image on disk
    boxes       float32 (N, 4) xyxy, pixels, 0-based, continuous coords    } only when the
    labels      int64 (N,) contiguous 0-based class ids                    } sample carries
    ignore      bool (N,) True = crowd / difficult region: anchors whose   } detection
                best match is such a box are neither positive nor negative } annotations
    mask        uint8 (H, W) class index per pixel, 255 = ignore/void        only for seg

A task whose annotation a sample lacks finds its key absent; that task's loss is then
skipped for the sample (what makes mixed-dataset training work).

After the transforms (datasets/transforms.py) the same keys hold torch tensors: ``image``
uint8 (3, H, W) at the network input size, ``boxes``/``labels``/``ignore`` tensors in input
pixels, ``mask`` int64 (H, W) at the input size; and ``meta`` (dict) is added with what is
needed to map predictions back: image_id, file_name, orig_size (H, W), scale (input pixels
per original pixel, one factor for both axes), pad (top, left) in input pixels, dataset name.

``collate`` stacks images into (B, 3, H, W) uint8 and keeps every other key as a list of
per-sample values with ``None`` where a sample lacks the key; each task stacks what it needs.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

# ImageNet statistics on the 0..255 scale (what timm/effdet EfficientNets are trained with).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

DET_KEYS = ("boxes", "labels", "ignore")
SEG_KEYS = ("mask",)


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if not samples:
        raise ValueError("collate got an empty list of samples")
    images = torch.stack([s["image"] for s in samples])
    keys: list[str] = []
    for s in samples:
        for k in s:
            if k != "image" and k not in keys:
                keys.append(k)
    batch: dict[str, Any] = {"images": images}
    for k in keys:
        batch[k] = [s.get(k) for s in samples]
    return batch


def normalize_images(
    images: torch.Tensor,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (B, 3, H, W) → normalised float on ``device``.

    Images travel as uint8 (4× less host→device traffic) and are normalised on the device.
    """
    x = images.to(device=device, non_blocking=True) if device is not None else images
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    x = (x.to(dtype) - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def has_key(batch: dict[str, Any], key: str) -> torch.Tensor:
    """Bool (B,) — which samples of the batch carry ``key``."""
    vals = batch.get(key)
    n = batch["images"].shape[0]
    if vals is None:
        return torch.zeros(n, dtype=torch.bool)
    return torch.tensor([v is not None for v in vals], dtype=torch.bool)
