"""``model.checkpoint=effdet:NAME`` / URL: resolution, torch.hub's cache and hash check, conversion on load.

No download: names are resolved only, then local files go through the same torch.hub call
(a ``file://`` URL, or a file placed in a temporary torch.hub cache under the release name).
"""
import hashlib
import json
import re

import pytest
import torch

from multitask_edet.compat.effdet_weights import (
    EFFDET_WEIGHTS, load_remote_checkpoint, resolve_effdet_weights,
)
from multitask_edet.errors import CheckpointError, ConfigError, WeightsUnavailableError
from multitask_edet.models.factory import create_model


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    d = tmp_path / "torch" / "hub" / "checkpoints"
    d.mkdir(parents=True)
    return d


def test_names_resolve_to_release_urls_and_hash_prefixes():
    w = resolve_effdet_weights("effdet:tf_efficientdet_d0")
    assert w.url == "https://github.com/rwightman/efficientdet-pytorch/releases/download/v0.1/tf_efficientdet_d0_34-f153e0cf.pth"
    assert w.hash_prefix == "f153e0cf" and w.model == "tf_efficientdet-d0"
    assert resolve_effdet_weights("tf_efficientdet-d7x").hash_prefix == "f390b87c"  # our naming works too
    assert resolve_effdet_weights("efficientdet_d1").model == "efficientdet-d1"
    ap = resolve_effdet_weights("tf_efficientdet_d3_ap")
    assert ap.model == "tf_efficientdet-d3" and ap.mean == (0.5, 0.5, 0.5)
    assert {f"tf_efficientdet_d{i}" for i in [*range(8), "7x"]} <= set(EFFDET_WEIGHTS)
    for w in EFFDET_WEIGHTS.values():  # every entry: a hash torch.hub can check, a variant we build
        assert re.fullmatch(r"[0-9a-f]{8}", w.hash_prefix)
        from multitask_edet.config import MODEL_CONFIGS

        assert w.model in MODEL_CONFIGS
    with pytest.raises(ConfigError, match="tf_efficientdet_d0"):
        resolve_effdet_weights("effdet:nope")


def _effdet_d0_file(path):
    effdet = pytest.importorskip("effdet")
    torch.manual_seed(0)
    net = effdet.create_model("tf_efficientdet_d0", pretrained=False, pretrained_backbone=False, num_classes=90)
    sd = net.model.state_dict() if hasattr(net, "model") else net.state_dict()
    torch.save(sd, path)
    return sd


def test_effdet_name_loads_the_cached_release_file_and_converts_it(hub_cache):
    w = resolve_effdet_weights("tf_efficientdet_d0")
    sd = _effdet_d0_file(hub_cache / w.file)  # what a download would have left in torch.hub's cache
    model = create_model("tf_efficientdet-d0", checkpoint="effdet:tf_efficientdet_d0")
    assert torch.equal(model.backbone.body.conv_stem.weight, sd["backbone.conv_stem.weight"])
    assert torch.equal(model.heads["det"].cls_net.predict.conv_pw.weight, sd["class_net.predict.conv_pw.weight"])
    from multitask_edet.models.factory import coco_detector

    det, names = coco_detector("tf_efficientdet_d0")  # what `mtedet predict --weights coco` will run
    assert not det.training and len(names) == 90 and names[0] == "person" and names[11] == ""  # COCO id 12 is unused
    assert torch.equal(det.backbone.body.conv_stem.weight, sd["backbone.conv_stem.weight"])


def test_file_url_goes_through_torch_hub_with_the_hash_checked(tmp_path, hub_cache):
    src = tmp_path / "src.pth"
    torch.save({"w": torch.arange(6.0)}, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    good = tmp_path / f"weights-{digest[:8]}.pth"
    good.write_bytes(src.read_bytes())
    sd = load_remote_checkpoint(good.as_uri())
    assert torch.equal(sd["w"], torch.arange(6.0)) and (hub_cache / good.name).is_file()  # copied into the cache
    bad = tmp_path / "weights-deadbeef.pth"
    bad.write_bytes(src.read_bytes())
    with pytest.raises(CheckpointError, match="invalid hash value"):
        load_remote_checkpoint(bad.as_uri())
    assert not (hub_cache / bad.name).exists()


def test_unreachable_and_not_cached_is_a_one_line_error_pointing_to_convert_effdet(tmp_path, hub_cache):
    with pytest.raises(WeightsUnavailableError) as e:
        load_remote_checkpoint((tmp_path / "absent-0123abcd.pth").as_uri())  # as a download that cannot happen
    msg = str(e.value)
    assert "\n" not in msg and str(hub_cache) in msg and "mtedet convert-effdet" in msg


def test_published_detector_is_a_model_source_for_predict(tmp_path, hub_cache, capsys):
    """`mtedet predict --model tf_efficientdet-d0 --weights coco`: load_for_inference("effdet:…") from
    torch.hub's cache (seeded here as a download would leave it), COCO names, no training."""
    from PIL import Image

    from multitask_edet.cli import main
    from multitask_edet.engine.builders import load_for_inference

    w = resolve_effdet_weights("tf_efficientdet_d0")
    sd = _effdet_d0_file(hub_cache / w.file)
    trained = load_for_inference("effdet:tf_efficientdet-d0", {"det": {"postprocess": {"max_detections": 7}}})
    model = trained.model
    assert trained.config is None and not model.training
    assert torch.equal(model.heads["det"].box_net.predict.conv_pw.weight, sd["box_net.predict.conv_pw.weight"])
    names = trained.class_names["det"]
    assert len(names) == 90 and names[0] == "person" and names[89] == "toothbrush" and sum(bool(n) for n in names) == 80
    assert trained.tasks["det"].config.postprocess.max_detections == 7
    with pytest.raises(ConfigError, match="only its det options"):
        load_for_inference("effdet:tf_efficientdet_d0", {"seg": {"flip_test": True}})

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = torch.Generator().manual_seed(0)
    Image.fromarray(torch.randint(0, 255, (96, 160, 3), generator=rng, dtype=torch.uint8).numpy()).save(photos / "a.jpg")
    out = tmp_path / "preds"
    argv = ["predict", "--model", "tf_efficientdet-d0", "--weights", "coco", str(photos), "--out", str(out),
            "--device", "cpu", "--score-threshold", "0", "--no-overlay", "--set", "det.postprocess.max_detections=5"]
    assert main(argv) == 0, capsys.readouterr().err
    record = json.loads((out / "a.json").read_text())
    dets = record["det"]
    assert len(dets) == 5 and all(d["class"] == names[d["label"]] for d in dets)
    assert all(0 <= d["box"][0] <= d["box"][2] <= 160 and 0 <= d["box"][1] <= d["box"][3] <= 96 for d in dets)
    capsys.readouterr()
    assert main(["predict", "--model", "tf_efficientdet-d0", str(photos), "--out", str(out)]) == 2  # no --weights
    assert "--weights coco" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", "x.pt", "--model", "tf_efficientdet-d0", "--weights", "coco", str(photos),
                 "--out", str(out)]) == 2
    assert "not both" in capsys.readouterr().err


def test_predict_coco_offline_is_one_line_exit_2_and_writes_nothing(tmp_path):
    """HF_HUB_OFFLINE=1 and an empty torch.hub cache: no download attempted, the one-line error."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "preds"
    cmd = [sys.executable, "-m", "multitask_edet", "predict", "--model", "tf_efficientdet-d0", "--weights", "coco",
           str(tmp_path), "--out", str(out), "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("mtedet predict: error:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    msg = lines[0]
    assert "tf_efficientdet_d0_34-f153e0cf.pth" in msg and str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    assert "HF_HUB_OFFLINE=1" in msg and "mtedet convert-effdet" in msg
    assert not out.exists()
