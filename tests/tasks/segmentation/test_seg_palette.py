import numpy as np
import pytest
import torch
from PIL import Image

from multitask_edet.tasks.segmentation import SegmentationEvaluator, save_palette_png, voc_palette


def test_voc_palette_known_colours():
    p = voc_palette()
    assert p.shape == (256, 3) and p.dtype == np.uint8
    # VOC devkit colours: background, aeroplane, bicycle, person (15), tvmonitor (20), void (255)
    assert p[0].tolist() == [0, 0, 0]
    assert p[1].tolist() == [128, 0, 0]
    assert p[2].tolist() == [0, 128, 0]
    assert p[15].tolist() == [192, 128, 128]
    assert p[20].tolist() == [0, 64, 128]
    assert p[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in p}) == 256


def test_palette_png_round_trip(tmp_path):
    mask = torch.tensor([[0, 1, 2, 20], [15, 255, 3, 0], [7, 7, 7, 7]], dtype=torch.uint8)
    path = save_palette_png(mask, tmp_path / "sub" / "2007_000033.png")
    img = Image.open(path)
    assert img.mode == "P" and img.size == (4, 3)
    assert np.array_equal(np.asarray(img), mask.numpy())
    assert np.array_equal(np.asarray(img.getpalette(), dtype=np.uint8).reshape(-1, 3)[:256], voc_palette())
    # a VOC reader that converts to RGB sees the VOC colours
    assert img.convert("RGB").getpixel((3, 0)) == (0, 64, 128)


def test_palette_png_rejects_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="0..255"):
        save_palette_png(np.array([[0, 300]]), tmp_path / "x.png")


def test_evaluator_writes_original_size_pngs(tmp_path):
    ev = SegmentationEvaluator(21, output_dir=tmp_path)
    preds = [torch.randint(0, 21, (375, 500), dtype=torch.uint8), torch.randint(0, 21, (333, 250), dtype=torch.uint8)]
    metas = [{"file_name": "/data/VOC2012/JPEGImages/2007_000033.jpg", "orig_size": (375, 500)},
             {"file_name": "2007_000042.jpg", "orig_size": (333, 250)}]
    ev.update(preds, {"images": torch.zeros(2, 3, 512, 512, dtype=torch.uint8), "meta": metas, "seg": [None, None]})
    for stem, pred in zip(("2007_000033", "2007_000042"), preds):
        img = Image.open(tmp_path / f"{stem}.png")
        assert img.mode == "P" and img.size == (pred.shape[1], pred.shape[0])
        assert np.array_equal(np.asarray(img), pred.numpy())
