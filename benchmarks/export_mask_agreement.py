"""How often the end-to-end ONNX graph's segmentation masks equal ``mtedet predict``'s, per pixel.

    PYTHONPATH=. .venv/bin/python benchmarks/export_mask_agreement.py            # 24 images, 3 and 21 classes
    PYTHONPATH=. .venv/bin/python benchmarks/export_mask_agreement.py --images 48 --markdown out.md

Images of random sizes (each side 23–700 px, smooth colour fields with noise, PNG and JPEG) go
through ``mtedet predict``'s path (engine/predict.py ``predict_images``: scores resampled to every
original pixel, then argmax) and through the ``mtedet export --end-to-end`` graph in onnxruntime
(letterboxed by engine/export.py ``letterbox``, batches of 1 and 3). Compared per pixel of every
original image:

- **mask_original**: the graph's mask at the original size (tasks/segmentation/inference.py
  ``original_masks``); everything beyond the image in its batch plane must be 255.
- **mask, resized**: what a deployer had to do before the graph returned the original size: crop
  the input-size mask to the scaled image and resize it to the original (nearest neighbour).

The tiny ``test-efficientdet`` with lively random weights (tests/engine/test_export_end_to_end.py
``lively``: default-initialised weights give nearly constant masks, which would agree trivially),
with 3 and 21 classes, with and without flip test-time augmentation.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/

from multitask_edet import create_model  # noqa: E402
from multitask_edet.datasets.io import read_image  # noqa: E402
from multitask_edet.datasets.testing import save_image  # noqa: E402
from multitask_edet.engine.builders import load_for_inference  # noqa: E402
from multitask_edet.engine.export import export_onnx, letterbox  # noqa: E402
from multitask_edet.engine.predict import predict_images  # noqa: E402
from tests.engine.test_export_end_to_end import lively  # noqa: E402


def write_images(root: Path, n: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(23, 701, 2))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), np.sin(4 * (xx + yy))], -1) * 90 + 128
        image = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        files.append(root / (f"img{i}.jpg" if i % 2 else f"img{i}.png"))
        save_image(files[-1], image)
    return files


def graph_masks(path: Path, files: list[Path], batch: int, size: tuple[int, int]) -> list[dict[str, np.ndarray]]:
    """Per image {"mask", "mask_original"} from onnxruntime, in batches of ``batch``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = []
    for start in range(0, len(files), batch):
        inputs = [letterbox(read_image(f), size) for f in files[start:start + batch]]
        feeds = {"images": np.stack([x for x, _ in inputs]), "orig_sizes": np.array([s for _, s in inputs])}
        mask, original = sess.run(["mask", "mask_original"], feeds)
        out += [{"mask": mask[i], "mask_original": original[i]} for i in range(len(inputs))]
    return out


def resized(mask: np.ndarray, h0: int, w0: int, size: tuple[int, int]) -> np.ndarray:
    """The input-size mask cropped to the scaled image and nearest-resized to (h0, w0)."""
    scale = min(size[0] / h0, size[1] / w0)
    crop = mask[: round(h0 * scale), : round(w0 * scale)]
    rows = np.minimum(((np.arange(h0) + 0.5) * crop.shape[0] / h0).astype(int), crop.shape[0] - 1)
    cols = np.minimum(((np.arange(w0) + 0.5) * crop.shape[1] / w0).astype(int), crop.shape[1] - 1)
    return crop[rows][:, cols]


def compare(model_dir: Path, onnx: Path, files: list[Path], batch: int, overrides) -> dict[str, tuple[int, int, float]]:
    """{way: (differing pixels, pixels, worst image's share of equal pixels)}."""
    trained = load_for_inference(model_dir, overrides)
    size = tuple(trained.image_size)
    counts = {"mask_original": [0, 0, 1.0], "mask, resized": [0, 0, 1.0]}
    for got, (_, preds) in zip(graph_masks(onnx, files, batch, size), predict_images(trained, files, batch_size=batch)):
        ref = preds["seg"].numpy()
        h0, w0 = ref.shape
        original = got["mask_original"]
        if not ((original[h0:] == 255).all() and (original[:, w0:] == 255).all()):
            raise SystemExit("mask_original has classes beyond the image: the graph is wrong")
        for way, mask in (("mask_original", original[:h0, :w0]), ("mask, resized", resized(got["mask"], h0, w0, size))):
            equal = mask == ref
            c = counts[way]
            c[0] += int((~equal).sum())
            c[1] += ref.size
            c[2] = min(c[2], float(equal.mean()))
    return {k: tuple(v) for k, v in counts.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    lines = ["| classes | flip_test | batch | way | differing pixels | equal | worst image |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_images(tmp, args.images, args.seed)
        print("original sizes:", [read_image(f).shape[:2] for f in files], flush=True)
        for classes in (3, 21):
            for flip in (False, True):
                model_dir = tmp / f"seg{classes}"
                names = {"seg": [f"class{k}" for k in range(classes)]}
                lively(create_model("test-efficientdet", tasks=["seg"], class_names=names)).save_pretrained(model_dir)
                overrides = {"seg": {"flip_test": True}} if flip else None
                export_onnx(model_dir, tmp / "seg.onnx", end_to_end=True, overrides=overrides)
                for batch in (1, 3):
                    for way, (diff, total, worst) in compare(model_dir, tmp / "seg.onnx", files, batch, overrides).items():
                        lines.append(f"| {classes} | {flip} | {batch} | {way} | {diff} of {total} | "
                                     f"{1 - diff / total:.6%} | {worst:.4%} |")
                        print(lines[-1], flush=True)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
