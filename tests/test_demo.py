"""``mtedet demo`` end to end, shortened to a few steps (the full run is ``make demo``)."""
from __future__ import annotations

import json
import math

import pytest

from multitask_edet import demo
from multitask_edet.errors import ConfigError


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.getbasetemp() / "mtedet-cache"  # shared with test_examples.py
    d.mkdir(exist_ok=True)
    monkeypatch.setenv("MTEDET_CACHE", str(d))
    return d


def test_demo_recipe_is_the_promised_tiny_joint_model():
    cfg = demo.demo_config("unused", device="cpu")
    assert cfg.tasks == ("det", "seg") and cfg.data.dataset == "shapes"
    assert cfg.model.name == "test-efficientdet" and cfg.data.val_split == "val"
    assert demo.demo_config("unused", max_steps=7).train.max_steps == 7


@pytest.mark.slow
def test_quick_demo_writes_everything_and_untrained_scores_low(tmp_path, cache, one_thread, capsys):
    out = tmp_path / "demo"
    record = demo.run_demo(output=out, device="cpu", max_steps=6)
    printed = capsys.readouterr().out

    for key in ("det/AP50", "seg/mIoU"):
        before = record["headline"]["untrained"][key]
        after = record["headline"]["trained"][key]
        assert 0.0 <= before < 0.1, f"untrained {key} = {before}"
        assert 0.0 <= after <= 1.0 and not math.isnan(after)
    assert record["steps"] == 6 and record["targets"] == demo.TARGETS
    # the printed tables: COCO AP table, per-class IoU table, untrained-vs-trained summary
    assert "AP50" in printed and "mIoU" in printed and "untrained" in printed and "IoU %" in printed
    assert (out / "model.safetensors").is_file() and (out / "last.pt").is_file()
    assert len(record["overlays"]) == demo.OVERLAY_IMAGES and (out / "overlays.png").is_file()
    saved = json.loads((out / "demo.json").read_text())
    assert saved["headline"] == json.loads(json.dumps(record["headline"]))

    # running the demo again replaces its previous run folder instead of refusing
    demo._prepare_output(out)
    assert not out.exists()


def test_demo_never_deletes_a_folder_it_did_not_write(tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a previous demo run"):
        demo._prepare_output(other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_demo_never_deletes_the_folder_of_a_demo_that_is_still_running(tmp_path):
    from multitask_edet.engine.run_folder import RunFolder
    from multitask_edet.errors import RunFolderBusyError

    out = tmp_path / "demo"
    out.mkdir()
    (out / demo.MARKER).write_text("{}")
    with RunFolder(out):  # what the running demo's training holds
        with pytest.raises(RunFolderBusyError, match="in use by PID"):
            demo._prepare_output(out)
        assert (out / demo.MARKER).is_file()
    demo._prepare_output(out)  # once it has ended, a new demo replaces it
    assert not out.exists()

