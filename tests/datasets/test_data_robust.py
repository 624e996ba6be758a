"""Damaged annotation files and unusual images, through the real adapters and `mtedet data check`.

Every problem is named with its file and field; `data check` lists them all and never raises.
"""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from multitask_edet.cli import main
from multitask_edet.datasets import build_dataset
from multitask_edet.datasets.testing import write_coco_tree, write_voc_tree
from multitask_edet.errors import DatasetError


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # json writes NaN / Infinity tokens, as Python tools do


def _ann(data, ann_id):
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def _img(data, image_id):
    return next(im for im in data["images"] if im["id"] == image_id)


def _check(capsys, *argv):
    code = main(["data", "check", *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.out


def test_data_check_names_nonfinite_and_mistyped_coco_fields(tmp_path, capsys):
    tree = write_coco_tree(tmp_path / "coco", split="train")

    def damage(d):
        _ann(d, 10)["bbox"] = [float("nan"), 8.0, 32.0, 32.0]
        _img(d, 2)["width"] = "abc"
        _ann(d, 70)["category_id"] = [7]
        _ann(d, 23)["bbox"] = [40.0, 24.0, float("inf"), 8.0]  # image 2 fails first, on its width

    _edit_json(tree.ann_file, damage)
    code, out = _check(capsys, "--dataset", "coco", "--data-root", str(tree.root), "--split", "train")
    assert code == 1 and "no problems found" not in out
    problems = [line for line in out.splitlines() if line.startswith("  [train]")]
    assert len(problems) == 3, out
    by_image = {name: next(p for p in problems if f"of image {name}" in p or f"({name})" in p)
                for name in ("a.jpg", "b.jpg", "d.jpg")}
    assert "annotation 10" in by_image["a.jpg"] and "bbox [nan" in by_image["a.jpg"]
    assert "width 'abc'" in by_image["b.jpg"]
    assert "annotation 70" in by_image["d.jpg"] and "category_id [7]" in by_image["d.jpg"]
    assert all(str(tree.ann_file) in p for p in problems)


def test_nonfinite_voc_coordinates_are_rejected_with_file_and_field(tmp_path, capsys):
    tree = write_voc_tree(tmp_path / "voc")
    xml = tree.voc_dir / "Annotations" / "2012_000003.xml"
    xml.write_text(xml.read_text().replace("<xmin>11</xmin>", "<xmin>nan</xmin>"))
    xml2 = tree.voc_dir / "Annotations" / "2012_000002.xml"
    xml2.write_text(xml2.read_text().replace("<width>64</width>", "<width>inf</width>"))
    code, out = _check(capsys, "--dataset", "voc2012", "--data-root", str(tree.root), "--task", "det",
                       "--split", "train")
    assert code == 1
    assert f"{xml}: object 0 (cat) has <xmin>nan</xmin>" in out
    assert str(xml2) in out and "<width>inf</width>" in out
    ds = build_dataset("voc2012", tree.root, "train", "det")
    with pytest.raises(DatasetError, match="<xmin>nan</xmin>"):
        ds.load_sample(ds.items.index(next(i for i in ds.items if i.xml == xml)))


def test_annotations_pointing_at_unknown_or_duplicate_image_ids_are_reported(tmp_path, capsys):
    tree = write_coco_tree(tmp_path / "coco", split="train")

    def damage(d):
        _ann(d, 20)["image_id"] = 999  # an image that does not exist
        _ann(d, 22)["image_id"] = [2]  # not even an id
        d["images"].append({"id": 5, "file_name": "a.jpg", "width": 64, "height": 48})  # id 5 twice

    _edit_json(tree.ann_file, damage)
    code, out = _check(capsys, "--dataset", "coco", "--data-root", str(tree.root), "--split", "train")
    assert code == 1
    assert "annotation 20 has image_id 999, which is not the id of any image entry" in out
    assert "annotation 22 has image_id [2]" in out
    assert "image id 5 is used by 2 image entries" in out
    assert "split train: 3 images, 3 ok" in out  # image 5 left out, the others checked
    with pytest.raises(DatasetError, match=r"image id 5 is used by 2 .*\(and 3 more .*--on-error skip"):
        build_dataset("coco", tree.root, "train", "det")
    ds = build_dataset("coco", tree.root, "train", "det", on_error="skip")
    assert ds.image_ids == [1, 2, 7] and len(ds.problems) == 4  # 2 annotations, 2 entries with id 5
    gt = ds.box_gt("det")
    assert 999 not in gt.imgToAnns and all(a["id"] not in (20, 22) for a in gt.dataset["annotations"])


# ---------------------------------------------------------------------------- images and masks

def _png16(path, arr):
    """A 16-bit greyscale (2-D) or RGB (H, W, 3) PNG, written by hand (PIL writes no 16-bit RGB)."""
    h, w = arr.shape[:2]
    colour = {2: 0, 3: 2}[arr.ndim]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16bit_png_images_are_scaled_not_clipped(tmp_path):
    tree = write_coco_tree(tmp_path / "coco", split="val")
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).round().astype(np.uint16)
    _png16(tree.img_dir / "c.png", ramp)
    _edit_json(tree.ann_file, lambda d: _img(d, 5).update(file_name="c.png"))
    ds = build_dataset("coco", tree.root, "val", "det")
    image = ds.load_sample(ds.image_ids.index(5))["image"]
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
    expected = np.round(ramp.astype(np.float64) * 255 / 65535)
    assert np.abs(image[..., 0].astype(np.float64) - expected).max() <= 0.5
    assert (image == 255).mean() < 0.01  # clipping made 99% of this ramp 255


def test_rgb_and_16bit_masks_are_reported_for_what_they_are(tmp_path, capsys):
    tree = write_voc_tree(tmp_path / "voc")
    rgb_mask = tree.voc_dir / "SegmentationClass" / "2012_000001.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(rgb_mask)
    deep_mask = tree.voc_dir / "SegmentationClass" / "2012_000002.png"
    _png16(deep_mask, np.full((48, 64), 1000, np.uint16))
    code, out = _check(capsys, "--dataset", "voc2012", "--data-root", str(tree.root), "--task", "seg",
                       "--split", "train")
    assert code == 1 and "corrupt" not in out
    assert f"mask {rgb_mask} is a RGB image" in out
    assert f"mask {deep_mask} is a I;16 (16/32-bit) image holding values 1000..1000" in out


def _exif_rotated_jpeg(path, stored_hw):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img = Image.fromarray(np.full((*stored_hw, 3), 128, np.uint8))
    img.save(path, "JPEG", exif=exif.tobytes())


def test_exif_rotated_photo_annotated_upright_gets_an_exif_message(tmp_path):
    tree = write_coco_tree(tmp_path / "coco", split="val")
    # the JSON says 64x48 (as annotated, upright); the file stores 48x64 pixels plus an EXIF rotation
    _exif_rotated_jpeg(tree.img_dir / "c.jpg", (64, 48))
    ds = build_dataset("coco", tree.root, "val", "det")
    with pytest.raises(DatasetError, match=r"is 48x64 but .* says 64x48.*EXIF orientation tag \(6\).*exif_transpose"):
        ds.load_sample(ds.image_ids.index(5))
    # the same sideways photo annotated in its stored grid (48x64) loads as stored
    _edit_json(tree.ann_file, lambda d: _img(d, 5).update(width=48, height=64))
    ds = build_dataset("coco", tree.root, "val", "det")
    assert ds.load_sample(ds.image_ids.index(5))["image"].shape == (64, 48, 3)
    # and a mask drawn on the upright photo says so too (VOC)
    voc = write_voc_tree(tmp_path / "voc")
    _exif_rotated_jpeg(voc.voc_dir / "JPEGImages" / "2012_000001.jpg", (64, 48))
    xml = voc.voc_dir / "Annotations" / "2012_000001.xml"
    ds = build_dataset("voc2012", voc.root, "train", "det")
    with pytest.raises(DatasetError, match=f"{xml} gives size 64x48.*EXIF orientation tag"):
        ds.load_sample(0)

