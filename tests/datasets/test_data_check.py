import json

from multitask_edet.datasets.check import check_dataset, format_report
from multitask_edet.datasets.testing import H, W, truncate_file


def test_clean_tree_summary(voc_tree):
    rep = check_dataset("voc2012", voc_tree.root, ("train", "val"), ("det", "seg"))
    assert rep.ok and rep.problems == []
    train, val = rep.splits
    assert (train.images, train.ok) == (3, 3) and (val.images, val.ok) == (2, 2)
    assert train.boxes["det"].objects == {"car": 1, "cat": 1, "dog": 1, "person": 1}
    assert train.boxes["det"].ignored == {"bottle": 1}
    assert sum(train.mask_pixels["seg"].values()) == 3 * H * W
    assert train.mask_pixels["seg"]["ignore"] > 0 and train.mask_pixels["seg"]["cat"] > 0
    text = format_report(rep)
    assert "split train: 3 images, 3 ok" in text and "bottle 1 (+1 ignored)" not in text
    assert "bottle 0 (+1 ignored)" in text and "no problems found" in text
    json.dumps(rep.to_dict())  # the CLI can write it as JSON


def test_every_problem_is_reported_with_its_file(voc_tree):
    truncate_file(voc_tree.voc_dir / "JPEGImages" / "2012_000001.jpg", 0.3)
    truncate_file(voc_tree.voc_dir / "Annotations" / "2012_000002.xml")
    xml = voc_tree.voc_dir / "Annotations" / "2012_000003.xml"
    xml.write_text(xml.read_text().replace("<xmax>50</xmax>", "<xmax>90</xmax>"))
    rep = check_dataset("voc2012", voc_tree.root, "train", "det")
    assert not rep.ok and rep.splits[0].ok == 1
    files = sorted(p.file.rsplit("/", 1)[-1] for p in rep.problems)
    assert files == ["2012_000001.jpg", "2012_000002.jpg", "2012_000003.jpg"]
    messages = " ".join(p.message for p in rep.problems)
    assert "2012_000001.jpg is corrupt" in messages
    assert "2012_000002.xml is not valid XML" in messages
    assert "2012_000003.xml: cat box" in messages
    text = format_report(rep)
    assert "problems (3):" in text and "2012_000002.xml" in text


def test_unreadable_annotation_file_is_a_split_problem(coco_tree):
    truncate_file(coco_tree.ann_file)
    rep = check_dataset("coco", coco_tree.root, ["val"], "det")
    assert len(rep.problems) == 1 and "instances_val2017.json is not valid JSON" in rep.problems[0].message
    missing = check_dataset("coco", coco_tree.root, ["train"], "det")
    assert "looked for" in missing.problems[0].message


def test_coco_summary_and_workers(coco_tree):
    rep = check_dataset("coco", coco_tree.root, "val", ("det", "seg"), workers=1)
    s = rep.splits[0]
    assert rep.ok and s.images == 4 and s.boxes["det"].empty_images == 1
    assert s.boxes["det"].objects == {"person": 1, "car": 2, "train": 1, "bench": 1, "dog": 1}
    assert s.boxes["det"].ignored == {"person": 1}
    assert s.mask_pixels["seg"]["ignore"] == 30 * 24 - 8 * 8
