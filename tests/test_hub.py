"""Sharing (multitask_edet/hub.py): save_pretrained → from_pretrained, Hub repository ids offline,
push_to_hub through huggingface_hub — no network: the Hub side is a folder or a fake client."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._pytree import tree_leaves as _flat

import multitask_edet as mt
from multitask_edet.errors import CheckpointError
from multitask_edet.hub import push

REPO = Path(__file__).resolve().parents[1]
NAMES = {"det": ["cat", "dog"], "road": ["background", "road", "lane"]}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return mt.create_model(
        "test-efficientdet", tasks={"det": {"postprocess": {"iou_threshold": 0.6}}, "road": {"type": "seg", "channels": 8}},
        class_names=NAMES, backbone={"drop_path_rate": 0.0}, image_size=(128, 256),
    ).eval()


def test_save_pretrained_round_trip_gives_the_same_model_and_metadata(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    info = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg = info["model_config"]
    # everything needed to rebuild: every task's type and options, classes, input size and normalisation
    assert cfg["tasks"]["road"]["type"] == "seg" and cfg["tasks"]["road"]["channels"] == 8
    assert cfg["tasks"]["det"]["postprocess"]["iou_threshold"] == 0.6 and cfg["tasks"]["det"]["num_classes"] == 2
    assert info["class_names"] == NAMES and cfg["image_size"] == [128, 256]
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["std"] == [0.229, 0.224, 0.225]
    assert info["format"] == "mtedet-pretrained" and "experiment" not in info

    loaded = mt.from_pretrained(tmp_path / "m")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == model.config and loaded.class_names == NAMES
    x = torch.randn(2, 3, 128, 256)
    for a, b in zip(_flat(model(x)), _flat(loaded(x))):
        assert torch.equal(a, b)
    # the class method of the model and the package function are the same loader
    again = mt.MultiTaskEfficientDet.from_pretrained(str(tmp_path / "m"))
    assert torch.equal(_flat(again(x))[-1], _flat(model(x))[-1])
    tasks = mt.build_model_tasks(loaded.config, loaded.class_names)
    assert tasks["road"].class_names == NAMES["road"] and tasks["det"].config.postprocess.iou_threshold == 0.6


def test_model_card_shows_tasks_classes_and_metrics(model, tmp_path):
    model.release_info = {"metrics": {"det": {"AP": 0.5, "APl": -1.0, "AR1": float("nan")}, "road": {"mIoU": 0.75}},
                          "step": 12}
    try:
        model.save_pretrained(tmp_path / "m")
    finally:
        model.release_info = {}
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: multitask_edet")
    assert "| road | seg | background, road, lane |" in card and "| det | det | cat, dog |" in card
    assert "| det | AP | 0.5000 |" in card and "| road | mIoU | 0.7500 |" in card and "at step 12" in card
    # pycocotools' -1 ("no object of that size") and NaN are no scores: neither card nor config shows them
    assert "APl" not in card and "AR1" not in card
    assert json.loads((tmp_path / "m" / "config.json").read_text())["metrics"] == {"det": {"AP": 0.5}, "road": {"mIoU": 0.75}}


def test_a_weights_file_alone_is_a_model_source(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    alone = tmp_path / "alone.safetensors"
    shutil.copy(tmp_path / "m" / "model.safetensors", alone)
    loaded = mt.from_pretrained(alone)
    assert loaded.class_names == NAMES and loaded.config == model.config


def test_backbone_init_file_of_the_training_is_not_needed(tmp_path):
    init = tmp_path / "b.pth"
    net = mt.create_model("test-efficientdet")
    torch.save({k[len("backbone.body."):]: v for k, v in net.state_dict().items() if k.startswith("backbone.body.")}, init)
    model = mt.create_model("test-efficientdet", backbone_weights=str(init))
    model.save_pretrained(tmp_path / "m")
    init.unlink()  # gone, as on the machine of whoever downloads the model
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_config"]["backbone"]["weights"] is None
    assert mt.from_pretrained(tmp_path / "m").config.backbone.weights is None


def fake_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """A repository in the layout of the Hub cache (what hf_hub_download leaves behind)."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def test_repo_id_loads_from_the_hub_cache_offline(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    fake_hub_cache(tmp_path / "cache", "someone/tiny-det-seg", tmp_path / "m")
    loaded = mt.from_pretrained("someone/tiny-det-seg", cache_dir=tmp_path / "cache", local_files_only=True)
    x = torch.randn(1, 3, 128, 256)
    assert torch.equal(_flat(loaded(x))[0], _flat(model(x))[0])


def test_repo_id_not_in_an_offline_cache_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"someone/missing.*config\.json.*not in the cache"):
        mt.from_pretrained("someone/missing", cache_dir=tmp_path / "empty", local_files_only=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        mt.from_pretrained(tmp_path / "no" / "such" / "folder")


def cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(home), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "multitask_edet", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_cli_with_a_repo_id_offline_and_an_empty_cache_exits_2_with_one_line(tmp_path):
    home = tmp_path / "hf"
    proc = cli("predict", "--checkpoint", "someone/missing", str(tmp_path), "--out", str(tmp_path / "p"), home=home)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "someone/missing" in lines[0] and "config.json" in lines[0] and str(home) in lines[0]
    assert "HF_HUB_OFFLINE" in lines[0]


def test_push_to_hub_uploads_the_pretrained_folder(model, tmp_path, monkeypatch):
    uploaded: dict = {}

    class FakeApi:
        def __init__(self, token=None):
            uploaded["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False, **kw):
            uploaded["repo"], uploaded["private"] = repo_id, private
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kw):
            shutil.copytree(folder_path, tmp_path / "remote")
            return f"https://hub.example/{repo_id}/commit/1"

    import huggingface_hub.hub_mixin as hub_mixin

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    url = push(model, "someone/tiny", private=True, token="t0k")
    assert url.endswith("/commit/1") and uploaded == {"token": "t0k", "repo": "someone/tiny", "private": True}
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert mt.from_pretrained(tmp_path / "remote").config == model.config


def test_cli_push_offline_is_one_clear_error(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    proc = cli("push", str(tmp_path / "m"), "someone/tiny", home=tmp_path / "hf")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "could not push to the Hugging Face Hub repository someone/tiny" in proc.stderr
