"""The README's Python examples are the files in examples/, and they run unchanged.

README.md marks each example block with ``<!-- example: examples/NAME.py -->`` right before
its ```python fence; the block must equal the file byte for byte (so the README cannot drift
from code that is tested). Each file then runs as a user would run it, in a fresh process
(its head/task registrations must not leak into other tests), in an empty folder.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = ("examples/joint_api.py", "examples/custom_head.py", "examples/onnx_deploy.py")
BLOCK = re.compile(r"<!-- example: (examples/[\w./-]+\.py) -->\s*```python\n(.*?)```", re.S)


def readme_blocks() -> dict[str, str]:
    readme = REPO / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    return {path: code for path, code in BLOCK.findall(text)}


def test_readme_example_blocks_equal_the_files():
    blocks = readme_blocks()
    if not blocks:
        pytest.skip("README.md has no '<!-- example: ... -->' blocks yet")
    assert sorted(blocks) == sorted(EXAMPLES), "README must show every example, each once"
    for path, code in blocks.items():
        assert code == (REPO / path).read_text(), f"README block of {path} differs from the file"


def run_example(path: str, workdir: Path, cache: Path, *args: str) -> str:
    env = dict(os.environ, MTEDET_CACHE=str(cache), OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / path), *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"{path} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _figure(text: str, name: str) -> float:
    """The value the example prints last for ``name`` (the report tables above use percent)."""
    found = re.findall(rf"{name} (\d+\.\d+)", text)
    assert found, f"no '{name} <value>' in the output:\n{text[-2000:]}"
    return float(found[-1])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    # one shapes dataset for every test of the session that uses this folder (generation is atomic)
    d = tmp_path_factory.getbasetemp() / "mtedet-cache"
    d.mkdir(exist_ok=True)
    return d


@pytest.mark.slow
def test_joint_api_example_runs(tmp_path, cache):
    out = run_example("examples/joint_api.py", tmp_path, cache)
    assert 0.0 <= _figure(out, "AP50") <= 1.0 and 0.0 <= _figure(out, "mIoU") <= 1.0
    run = tmp_path / "runs" / "example-joint"
    assert (run / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    config = (run / "config.yaml").read_text()
    assert "loss_weighting: uncertainty" in config and "backbone.body.conv_stem" in config
    # per-task losses and the learned weights are logged every step
    metrics = (run / "metrics.jsonl").read_text()
    assert '"weight/det"' in metrics and '"log_var/seg"' in metrics
    assert re.search(r"\['(circle|square|triangle|star|cross)'", out)  # predictions carry class names


@pytest.mark.slow
def test_custom_head_example_runs(tmp_path, cache):
    out = run_example("examples/custom_head.py", tmp_path, cache)
    assert 0.0 <= _figure(out, "AP50") <= 1.0
    assert 0.0 <= _figure(out, "centre F1") <= 1.0
    run = tmp_path / "runs" / "example-centres"
    metrics = (run / "metrics.jsonl").read_text()
    assert '"loss/centres/focal"' in metrics and '"weight/centres"' in metrics
    assert "centres: F1" in out  # the custom evaluator's report is printed with the det table


def test_onnx_deploy_example_draws_an_end_to_end_export_on_a_jpeg(tmp_path, cache):
    import numpy as np
    from PIL import Image

    import multitask_edet as mt
    from multitask_edet.engine.export import export_onnx

    names = {"det": ["circle", "square", "triangle", "star", "cross"], "seg": ["background", "shape", "edge"]}
    mt.create_model("test-efficientdet-seg", class_names=names).save_pretrained(tmp_path / "model")
    export_onnx(tmp_path / "model", tmp_path / "model.onnx", end_to_end=True)
    rng = np.random.default_rng(0)
    photo = (rng.random((90, 160, 3)) * 255).astype(np.uint8)  # wider than tall: letterboxed with padding
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)
    printed = run_example("examples/onnx_deploy.py", tmp_path, cache, "model.onnx", "photo.jpg", "out.png")
    assert "det_boxes (100, 4)" in printed and "seg_mask (128, 128)" in printed
    with Image.open(tmp_path / "photo.jpg") as src, Image.open(tmp_path / "out.png") as drawn:
        assert drawn.size == src.size == (160, 90)
        changed = np.abs(np.asarray(drawn, dtype=int) - np.asarray(src, dtype=int)).sum(-1) > 0
    assert changed.mean() > 0.5  # the mask is blended over the whole photo, boxes drawn on it
    red = (np.asarray(Image.open(tmp_path / "out.png"))[..., :3] == (255, 0, 0)).all(-1)
    assert red.sum() > 100  # box outlines
