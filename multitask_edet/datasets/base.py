"""The one sample schema every dataset adapter yields, and the batch collate.

A dataset supplies named *annotations*, each of one kind: ``"boxes"`` (detection boxes) or
``"mask"`` (a class index per pixel). The adapter lists them in ``annotations`` (name → kind)
and ``class_names`` (name → class names); COCO and VOC supply ``det`` (boxes) and ``seg``
(mask), BDD100K ``det``, ``drivable`` and ``lane``. A task reads the annotation its
``source`` names (tasks/base.py).

Sample (a dict), as an adapter returns it (before transforms):

    image       uint8 ndarray (H, W, 3), RGB
    image_id    int (COCO id, or the index of the image in a VOC split)
    file_name   str, path of the image (for error messages and predictions)
    orig_size   (H, W) of the image on disk
    dataset     str, the dataset's name
    <name>      one entry per annotation the sample carries:
                boxes kind → {"boxes":  float32 (N, 4) xyxy, pixels, 0-based, continuous coords,
                              "labels": int64 (N,) contiguous 0-based class ids,
                              "ignore": bool (N,) True = crowd / difficult region: anchors whose
                                        best match is such a box are neither positive nor negative}
                mask kind  → uint8 (H, W) class index per pixel, 255 = ignore/void

A sample that lacks an annotation has no key for it; the task reading it then skips the
sample in its loss (what makes mixed-dataset training work).

After the transforms (datasets/transforms.py) the same keys hold torch tensors at the network
input size: ``image`` uint8 (3, H, W); a boxes entry's tensors in input pixels; a mask entry
int64 (H, W). ``meta`` (dict) is added with what is needed to map predictions back:
image_id, file_name, orig_size (H, W), scale (input pixels per original pixel, one factor for
both axes), pad (top, left) in input pixels, dataset name, and for evaluation
``orig_masks`` (annotation name → uint8 mask at the original size).

``collate`` stacks images into (B, 3, H, W) uint8 and keeps every other key as a list of
per-sample values with ``None`` where a sample lacks the key; each task stacks what it needs.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

#: ImageNet statistics (0–1 scale, timm's convention): the default input normalisation
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (B, 3, H, W) → ``(x / 255 - mean) / std`` as float on ``device``.

    ``mean``/``std`` are per channel on the 0–1 scale (timm's ``pretrained_cfg`` convention);
    the model carries the ones its backbone was trained with (``ModelConfig.mean/std``). Images
    travel as uint8 (4× less host→device traffic) and are normalised on the device.
    """
    x = images.to(device=device, non_blocking=True) if device is not None else images
    m = torch.tensor([255.0 * v for v in mean], device=x.device, dtype=dtype).view(1, 3, 1, 1)
    s = torch.tensor([255.0 * v for v in std], device=x.device, dtype=dtype).view(1, 3, 1, 1)
    x = (x.to(dtype) - m) / s
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
