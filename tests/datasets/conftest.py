import pytest

from multitask_edet.datasets.testing import write_coco_tree, write_sbd_tree, write_voc_tree


@pytest.fixture
def coco_tree(tmp_path):
    return write_coco_tree(tmp_path / "coco")


@pytest.fixture
def voc_tree(tmp_path):
    return write_voc_tree(tmp_path / "data")


@pytest.fixture
def sbd_mat(voc_tree):
    return write_sbd_tree(voc_tree.root, voc_tree, fmt="mat")


@pytest.fixture
def sbd_aug(voc_tree):
    return write_sbd_tree(voc_tree.root, voc_tree, fmt="aug")
