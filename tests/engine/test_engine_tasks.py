"""The task contract end to end: a user's task from a recipe file, several tasks of one type,
test-time augmentation wherever a task predicts, one evaluation path, a package without cycles."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multitask_edet.cli import main

REPO = Path(__file__).resolve().parents[2]


def _last_eval(run: Path) -> dict:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["type"] == "eval"][-1]


@pytest.mark.slow
def test_user_task_from_a_recipe_file_trains_exports_and_predicts(shapes_root, tmp_path, capsys):
    run = tmp_path / "centres"
    args = ["train", "--config", str(REPO / "examples" / "centres.yaml"), "--data-root", str(shapes_root),
            "--output", str(run), "--device", "cpu", "--max-steps", "4", "--batch-size", "2",
            "--set", "centres.sigma=0.3", "--set", "log.tensorboard=false", "--set", "log.every_steps=1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "centres: F1" in printed and "AP50" in printed  # its evaluator's report, beside detection's
    config = (run / "config.yaml").read_text()
    assert re.search(r"^centres:\n  sigma: 0.3$", config, re.M)  # the task's own section, from --set
    assert "custom_head.py" in config  # the plugin that registers its type travels with the run
    assert "F1" in json.dumps(_last_eval(run)) and '"loss/centres/focal"' in (run / "metrics.jsonl").read_text()

    # ONNX: its output named after the task, checked against PyTorch with onnxruntime
    onnx = tmp_path / "centres.onnx"
    assert main(["export", "--checkpoint", str(run / "last.pt"), str(onnx)]) == 0
    desc = json.loads(onnx.with_suffix(".json").read_text())
    assert "centres_output" in desc["outputs"] and desc["max_abs_diff"] <= 1e-4
    assert desc["tasks"]["centres"]["type"] == "centres"

    # prediction records hold its points in the image's own pixels
    image = sorted((shapes_root / "VOC" / "JPEGImages").glob("val_*.jpg"))[0]
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run / "model.safetensors"), str(image), "--out", str(out),
                 "--device", "cpu", "--score-threshold", "0"]) == 0
    rec = json.loads((out / f"{image.stem}.json").read_text())
    assert set(rec) >= {"det", "centres"} and set(rec["centres"]) == {"points", "scores"}
    w, h = Image.open(image).size
    assert all(-8 <= x <= w + 8 and -8 <= y <= h + 8 for x, y in rec["centres"]["points"])


class _TwoMasks:
    """A dataset plugin: the shapes sample with a second mask annotation, "fg" (object vs background)."""

    @staticmethod
    def build(root, split, annotations, transform=None, **options):
        from multitask_edet.datasets.dataset import AnnotatedDataset
        from multitask_edet.datasets.sample import build_shapes

        class TwoMasks(AnnotatedDataset):
            ANNOTATIONS = {"det": "boxes", "seg": "mask", "fg": "mask"}

            def __init__(self):
                super().__init__(name="two-masks", annotations=annotations, transform=transform)
                base = [a for a in self.annotations if a != "fg"]
                self.base = build_shapes(root, split, list(dict.fromkeys(base + ["seg"])))
                self.class_names = {**self.base.class_names, "fg": ["background", "object"]}
                self.cat_ids, self.image_ids = self.base.cat_ids, self.base.image_ids

            def file_name(self, i):
                return self.base.file_name(i)

            def _load(self, i):
                s = self.base.load_sample(i)
                if "fg" in self.annotations:
                    s["fg"] = np.where(s["seg"] == 255, 255, s["seg"] > 0).astype(np.uint8)
                if "seg" not in self.annotations:
                    del s["seg"]
                return s

            def _box_gt_dict(self, annotation):
                return self.base._box_gt_dict(annotation)

        return TwoMasks()


@pytest.mark.slow
def test_det_and_two_segmentation_tasks_of_one_type_train_and_report_separately(shapes_root, tmp_path, tiny_args, capsys):
    from multitask_edet.datasets import DATASETS, register_dataset

    register_dataset("test-two-masks", _TwoMasks.build, override=True)
    try:
        run = tmp_path / "three"
        args = tiny_args(shapes_root, run, "det,seg,fg", "--set", "fg.type=seg", "--set", "fg.repeats=2",
                         "--set", "fg.loss.weights={ce: 1.0, dice: 0.5}")
        args[args.index("shapes")] = "test-two-masks"
        assert main(args) == 0
    finally:
        DATASETS.unregister("test-two-masks")
    printed = capsys.readouterr().out
    # one mIoU table per segmentation task, each with its own classes
    assert printed.count("mIoU ") >= 2 and "object" in printed and "circle" in printed
    final = _last_eval(run)
    assert {"det/AP50", "seg/mIoU", "fg/mIoU"} <= set(final)  # the joint recipe scores det by the VOC protocol
    assert 0 <= final["fg/mIoU"] <= 1 and final["fg/mIoU"] != final["seg/mIoU"]
    metrics = (run / "metrics.jsonl").read_text()
    assert '"loss/fg/fg_ce"' in metrics and '"loss/fg/fg_dice"' in metrics and '"loss/seg/seg_ce"' in metrics
    from multitask_edet.engine.checkpoint import load_weights

    sd, info = load_weights(run / "model.safetensors")
    tasks = info["model_config"]["tasks"]
    assert tasks["fg"]["type"] == "seg" and tasks["fg"]["num_classes"] == 2 and tasks["fg"]["repeats"] == 2
    assert tasks["seg"]["num_classes"] == 6 and sd["heads.fg.classifier.weight"].shape[0] == 2


@pytest.mark.slow
def test_flip_test_runs_wherever_segmentation_predicts(trained_run, shapes_root, tmp_path, capsys):
    from multitask_edet import Experiment

    ckpt = str(trained_run / "last.pt")
    miou = {}
    for flip in ("false", "true"):
        out = tmp_path / f"eval-{flip}"
        assert main(["eval", "--checkpoint", ckpt, "--device", "cpu", "--output", str(out),
                     "--set", f"seg.flip_test={flip}"]) == 0
        miou[flip] = json.loads((out / "metrics.json").read_text())["metrics"]["seg"]["mIoU"]
    assert miou["true"] != miou["false"]  # the mirrored pass ran and changed the predictions

    # the Python API: the same numbers as `mtedet eval`, with and without the flip
    plain = Experiment.from_checkpoint(ckpt).evaluate(verbose=False)
    assert plain["seg"]["mIoU"] == miou["false"]
    flipped = Experiment.from_checkpoint(ckpt, seg={"flip_test": True}).evaluate(verbose=False)
    assert flipped["seg"]["mIoU"] == miou["true"]

    images = [str(p) for p in sorted((shapes_root / "VOC" / "JPEGImages").glob("val_*.jpg"))]
    masks = {}
    for flip in ("false", "true"):
        out = tmp_path / f"pred-{flip}"
        assert main(["predict", "--checkpoint", ckpt, *images, "--out", str(out), "--device", "cpu", "--no-overlay",
                     "--set", f"seg.flip_test={flip}"]) == 0
        masks[flip] = [np.asarray(Image.open(p)) for p in sorted(out.glob("*_seg_mask.png"))]
    assert len(masks["true"]) == len(images)
    assert any(not np.array_equal(a, b) for a, b in zip(masks["true"], masks["false"]))


@pytest.mark.slow
def test_experiment_evaluate_equals_mtedet_eval(trained_run, tmp_path, capsys):
    from multitask_edet import Experiment

    out = tmp_path / "ev"
    assert main(["eval", "--checkpoint", str(trained_run / "best.pt"), "--device", "cpu", "--output", str(out)]) == 0
    cli = json.loads((out / "metrics.json").read_text())["metrics"]
    api = Experiment.from_checkpoint(trained_run / "best.pt").evaluate(verbose=False)
    assert api == cli  # every metric of every task, exactly


def _import_graph(package: Path) -> dict[str, set[str]]:
    """Module → the package modules it imports (anywhere in the file), plus the parent packages
    whose ``__init__`` an import runs first."""
    mods = {}
    for p in package.rglob("*.py"):
        parts = p.relative_to(package.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for t in names:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != m:
                    graph[m].add(t)
                    parents = (".".join(t.split(".")[:k]) for k in range(1, t.count(".") + 1))
                    graph[m].update(q for q in parents if q != m and not m.startswith(q + "."))
    return graph


def test_package_has_no_import_cycle():
    graph = _import_graph(REPO / "multitask_edet")
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert "multitask_edet.engine.builders" in graph and graph["multitask_edet.engine.run"]  # the graph was read


def test_code_cites_no_document_outside_the_repository():
    bad = re.compile(r"DESIGN\.md|FACTS\.md|[Ii]ssue \d+")
    hits = [f"{p.relative_to(REPO)}:{i}" for p in (REPO / "multitask_edet").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert not hits, hits
