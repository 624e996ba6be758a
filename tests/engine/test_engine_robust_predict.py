"""`mtedet predict` on awkward inputs: unreadable files are listed, not fatal; extreme shapes predict."""
from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from multitask_edet.cli import main
from multitask_edet.datasets.testing import truncate_file


def _predict(trained_run, inputs, out, *extra):
    return main(["predict", "--checkpoint", str(trained_run / "last.pt"), *map(str, inputs), "--out", str(out),
                 "--device", "cpu", *extra])


def test_item14_predict_skips_unreadable_files_and_lists_them(trained_run, shapes_root, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    good = sorted((shapes_root / "VOC" / "JPEGImages").glob("val_*.jpg"))[:3]
    for p in good:
        shutil.copy(p, folder / p.name)
    truncated = folder / "b_truncated.jpg"
    shutil.copy(good[0], truncated)
    truncate_file(truncated, 0.3)
    empty = folder / "c_empty.png"
    empty.write_bytes(b"")
    not_an_image = folder / "d_notes.jpg"
    not_an_image.write_text("these are notes, not a photo")
    out = tmp_path / "pred"
    # batches of 2: every bad file shares its batch with good ones, whose predictions must not be lost
    assert _predict(trained_run, [folder], out, "--batch-size", "2") == 0
    captured = capsys.readouterr()
    assert "wrote predictions for 3 image(s)" in captured.out
    for p in good:
        assert json.loads((out / f"{p.stem}.json").read_text())["file"] == str(folder / p.name)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted"] == 3 and sorted(summary["files"]) == sorted(str(folder / p.name) for p in good)
    reasons = {u["file"]: u["reason"] for u in summary["unreadable"]}
    assert set(reasons) == {str(truncated), str(empty), str(not_an_image)}
    assert "corrupt or truncated" in reasons[str(truncated)] and "empty (0 bytes)" in reasons[str(empty)]
    assert "3 file(s) could not be read" in captured.err and str(not_an_image) in captured.err
    assert "Traceback" not in captured.err

    # nothing readable at all: a one-line error (exit 2), the files still listed in summary.json
    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    for p in (truncated, empty):
        shutil.copy(p, bad_only / p.name)
    assert _predict(trained_run, [bad_only], tmp_path / "none") == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mtedet predict: error:")]
    assert len(err_lines) == 1 and "none of the 2 image file(s) could be read" in err_lines[0]
    assert len(json.loads((tmp_path / "none" / "summary.json").read_text())["unreadable"]) == 2


def test_item14_predict_handles_extreme_aspect_ratios(trained_run, tmp_path):
    folder = tmp_path / "thin"
    folder.mkdir()
    shapes = {"wide": (3, 1000), "tall": (1000, 3), "dot": (1, 1)}
    for name, (h, w) in shapes.items():
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    out = tmp_path / "pred"
    assert _predict(trained_run, [folder], out, "--score-threshold", "0") == 0
    for name, (h, w) in shapes.items():
        rec = json.loads((out / f"{name}.json").read_text())
        assert (rec["width"], rec["height"]) == (w, h)
        with Image.open(out / rec["seg"]["mask"]) as m:
            assert m.size == (w, h) and np.asarray(m).max() <= 5  # a class for every pixel, none void
        for det in rec["det"]:
            x0, y0, x1, y1 = det["box"]
            assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
        with Image.open(out / rec["overlay"]) as o:
            assert o.size == (w, h)
