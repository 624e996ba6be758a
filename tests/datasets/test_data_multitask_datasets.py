"""The registered multi-task datasets (bdd100k, cityscapes, coco-panoptic) on the generated samples in their
real layouts: through build_dataset, the transforms, the detection evaluator, `data check` and `data sample`."""
import pickle

import numpy as np
import pytest
import torch

from multitask_edet.cli import main
from multitask_edet.datasets import DATASETS, build_dataset, collate
from multitask_edet.datasets.check import check_dataset
from multitask_edet.datasets.format_samples import write_format_sample
from multitask_edet.datasets.testing import truncate_file
from multitask_edet.datasets.transforms import eval_transforms, train_transforms
from multitask_edet.errors import ConfigError
from multitask_edet.tasks.detection.evaluator import DetectionEvaluator

# name → (sample format, annotations: kinds)
CASES = {
    "bdd100k": ("bdd100k", {"det": "boxes", "drivable": "mask", "lane": "mask"}),
    "cityscapes": ("cityscapes", {"det": "boxes", "seg": "mask"}),
    "coco-panoptic": ("coco-panoptic", {"det": "boxes", "seg": "mask"}),
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    out = {}
    for name, (fmt, _) in CASES.items():
        root = tmp_path_factory.mktemp(name)
        write_format_sample(fmt, root, n_train=3, n_val=4, seed=2, image_size=96)
        out[name] = root
    return out


def test_registered_with_their_annotations():
    for name, (_, annotations) in CASES.items():
        entry = DATASETS.get(name)
        assert entry.adapter.ANNOTATIONS == annotations and entry.annotations() == tuple(annotations)


@pytest.mark.parametrize("name", CASES)
def test_every_annotation_goes_through_the_transforms_and_collate(roots, name):
    annotations = CASES[name][1]
    ds = build_dataset(name, roots[name], "val", list(annotations), train_transforms((64, 96), list(annotations.values())))
    assert len(ds) == 4
    batch = collate([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 64, 96)
    for a, kind in annotations.items():
        first = batch[a][0]
        if kind == "mask":
            assert first.shape == (64, 96) and first.dtype == torch.int64
            values = set(torch.unique(first).tolist()) - {255}
            assert values <= set(range(len(ds.class_names[a])))
        else:
            assert first["boxes"].shape[1] == 4 and first["labels"].max() < len(ds.class_names[a])
    ev = build_dataset(name, roots[name], "val", list(annotations), eval_transforms((64, 96)))
    meta = ev[0]["meta"]
    assert set(meta["orig_masks"]) == {a for a, k in annotations.items() if k == "mask"}
    assert pickle.loads(pickle.dumps(ev)).load_sample(3)["file_name"] == ev.load_sample(3)["file_name"]  # for workers


@pytest.mark.parametrize("name", CASES)
def test_ground_truth_boxes_as_predictions_score_ap_1(roots, name):
    """box_gt, cat_ids and the samples' boxes agree: the samples' own (non-ignored) boxes score AP 1."""
    ds = build_dataset(name, roots[name], "val", "det")
    ev = DetectionEvaluator.from_dataset(ds)
    ev.reset()
    n_boxes = 0
    for i in range(len(ds)):
        s = ds.load_sample(i)
        keep = ~s["det"]["ignore"]
        boxes = s["det"]["boxes"][keep]
        ev.add(s["image_id"], boxes, np.linspace(0.9, 0.5, len(boxes)), s["det"]["labels"][keep])
        n_boxes += len(boxes)
    assert n_boxes >= 3
    m = ev.compute()
    assert m["AP50"] == pytest.approx(1.0) and m["AP"] == pytest.approx(1.0)
    # and a shifted box stops being a hit: the comparison is real
    ev.add(ds.image_ids[0], np.array([[0.0, 0.0, 5.0, 5.0]]), [0.99], [0])
    assert ev.compute()["AP"] < 1.0


@pytest.mark.parametrize("name", CASES)
def test_data_check_counts_every_annotation_and_names_a_broken_file(roots, name, tmp_path):
    rep = check_dataset(name, roots[name], ("train", "val"), list(CASES[name][1]))
    assert rep.ok and [s.images for s in rep.splits] == [3, 4]
    val = rep.splits[1]
    assert sum(val.boxes["det"].objects.values()) + sum(val.boxes["det"].ignored.values()) > 0
    for a, kind in CASES[name][1].items():
        if kind == "mask":
            assert sum(val.mask_pixels[a].values()) > 0
    # a truncated image in a fresh copy
    root = tmp_path / "copy"
    write_format_sample(CASES[name][0], root, n_train=1, n_val=2, seed=2, image_size=96)
    broken = build_dataset(name, root, "val", "det").file_name(1)
    truncate_file(broken, 0.3)
    rep = check_dataset(name, root, "val", "det")
    assert [p.file for p in rep.problems] == [broken] and "corrupt" in rep.problems[0].message


@pytest.mark.parametrize("fmt, folder, dataset", [("bdd100k", "bdd100k", "bdd100k"),
                                                  ("bdd100k-repacked", "bdd100k", "bdd100k"),
                                                  ("cityscapes", "cityscapes", "cityscapes"),
                                                  ("coco-panoptic", "coco", "coco-panoptic")])
def test_cli_data_sample_writes_a_layout_that_data_check_accepts(tmp_path, capsys, fmt, folder, dataset):
    assert main(["data", "sample", str(tmp_path), "--format", fmt, "--num-train", "2", "--num-val", "1",
                 "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert f"--dataset {dataset} --data-root {tmp_path}" in out and (tmp_path / folder).is_dir()
    assert main(["data", "check", "--dataset", dataset, "--data-root", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "split train: 2 images, 2 ok" in text and "split val: 1 images, 1 ok" in text and "no problems found" in text
    if fmt == "bdd100k-repacked":  # the re-packed masks are binary: that is what the adapter reads by default
        assert "drivable mask pixels: background" in text and "direct" not in text


def test_cli_data_check_passes_adapter_options(roots, capsys):
    args = ["data", "check", "--dataset", "bdd100k", "--data-root", str(roots["bdd100k"]), "--split", "val",
            "--annotations", "det"]
    assert main(args + ["--option", "class_map=vehicle"]) == 0
    assert "det objects: vehicle " in capsys.readouterr().out
    assert main(args + ["--option", "clas_map=vehicle"]) == 1
    assert "unknown option(s) clas_map; valid options:" in capsys.readouterr().out


def test_sample_format_names_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="valid formats: shapes, bdd100k"):
        write_format_sample("kitti", tmp_path)
