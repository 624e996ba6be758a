import pytest
import torch

from multitask_edet.errors import ConfigError
from multitask_edet.tasks.base import TASKS
from multitask_edet.tasks.segmentation import SegmentationConfig, SegmentationTask


def test_registered_as_seg():
    assert TASKS.get("seg") is SegmentationTask
    task = SegmentationTask()
    assert task.name == "seg" and task.source == "seg" and task.annotation == "mask" and task.num_classes == 21
    lane = SegmentationTask({"num_classes": 2}, name="lane")
    assert lane.name == lane.source == "lane" and lane.num_classes == 2


def test_build_head_reads_p2_and_predicts_at_input_size():
    task = SegmentationTask(SegmentationConfig(num_classes=5, channels=8, repeats=1, level=2))
    head = task.build_head(16)
    assert head.levels == (2,)
    out = head([torch.randn(2, 16, 8, 8)])
    assert out.shape == (2, 5, 32, 32)


def test_merge_levels_are_validated_where_they_are_set():
    with pytest.raises(ConfigError, match=r"seg merge_levels \[2, 3\]: give distinct levels coarser than the head's level 2"):
        SegmentationTask({"merge_levels": [2, 3]})
    with pytest.raises(ConfigError, match=r"merge_levels \[3, 3\]"):
        SegmentationConfig(merge_levels=(3, 3))
    with pytest.raises(ConfigError, match=r"e\.g\. \[4, 5, 6\]"):
        SegmentationConfig(level=3, merge_levels=(2,))
    from multitask_edet.models import create_model

    # a level the trunk does not have is refused where the model routes levels to heads
    with pytest.raises(ConfigError, match=r"reads level\(s\) \[8\].*neck.max_level"):
        create_model("test-efficientdet", tasks={"seg": {"merge_levels": [3, 8]}})


@pytest.mark.parametrize("p", [-0.1, 1.0, float("nan")])
def test_dropout_must_be_a_probability_below_one(p):
    with pytest.raises(ConfigError, match="seg dropout"):
        SegmentationConfig(dropout=p)


def test_build_head_with_merge_levels_reads_them_in_order():
    task = SegmentationTask(SegmentationConfig(num_classes=5, channels=8, repeats=1, merge_levels=(3, 4, 5)))
    head = task.build_head(16)
    assert head.levels == (2, 3, 4, 5)
    out = head([torch.randn(2, 16, 16 // 2**i, 16 // 2**i) for i in range(4)])
    assert out.shape == (2, 5, 64, 64)


def test_has_targets():
    task = SegmentationTask()
    batch = {"images": torch.zeros(3, 3, 4, 4), "seg": [torch.zeros(4, 4), None, torch.zeros(4, 4)]}
    assert task.has_targets(batch).tolist() == [True, False, True]
    assert SegmentationTask(name="lane").has_targets(batch).tolist() == [False, False, False]


class FakeDataset:
    class_names = {"det": ["a", "b"], "seg": ["background", "a", "b"]}


def test_evaluator_takes_class_names_from_dataset_and_checks_their_number():
    ev = SegmentationTask(SegmentationConfig(num_classes=3)).evaluator(FakeDataset())
    assert ev.class_names == ["background", "a", "b"] and ev.main_metric == "mIoU"
    with pytest.raises(ConfigError, match="seg.num_classes=3"):
        SegmentationTask(SegmentationConfig(num_classes=21)).evaluator(FakeDataset())
    with pytest.raises(ConfigError, match="seg.num_classes=4"):
        SegmentationTask(SegmentationConfig(num_classes=4), class_names=["x"])
