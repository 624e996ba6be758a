"""Sharing models the way the ecosystem does: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.

A *pretrained folder* — and a Hugging Face Hub repository is one — holds three files:

- ``config.json``: everything needed to rebuild the model without this project's run folder:
  the resolved model config (backbone, BiFPN, every task's full options with its ``type``,
  native input size, input normalisation ``mean``/``std``), the class names of every task and,
  when the model comes from a training run, the run's experiment config, the step and the
  evaluation metrics of these weights;
- ``model.safetensors``: the weights, with the same information in its metadata (so the file
  alone is also a model source: ``mtedet predict --checkpoint model.safetensors``);
- ``README.md``: a model card (tasks, classes, input, metrics, how to use it).

A training run writes the same three files into its folder when it ends (engine/checkpoint.py
``Checkpointer.save_release``), so a run folder *is* a pretrained folder: ``from_pretrained(RUN)``
works and ``mtedet push RUN REPO_ID`` shares it. Downloads go through ``huggingface_hub`` into
its cache (``HF_HOME``); with ``HF_HUB_OFFLINE=1`` only the cache is read, and a repository
that is not there is a one-line ``CheckpointError`` saying what was looked for and where.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from .errors import CheckpointError

FORMAT = "mtedet-pretrained"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"

#: keys of ``model.release_info``: what a model knows of the run that trained it
RELEASE_KEYS = ("experiment", "step", "metrics")


# ---------------------------------------------------------------------------- what is written

def finite_metrics(metrics: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` without the values that are no score: non-finite numbers and
    pycocotools' -1 ("no object of that size in the set")."""
    out: dict[str, dict[str, float]] = {}
    for task, values in (metrics or {}).items():
        kept = {k: float(v) for k, v in dict(values).items()
                if isinstance(v, (int, float)) and math.isfinite(float(v)) and float(v) >= 0}
        if kept:
            out[str(task)] = kept
    return out


def pretrained_info(
    model_config: Mapping[str, Any],
    class_names: Mapping[str, list[str]] | None,
    experiment: Mapping[str, Any] | None = None,
    step: int | None = None,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The content of ``config.json``. The backbone's initial-weights file of the training is
    dropped (the weights come with the model)."""
    from . import __version__

    cfg = json.loads(json.dumps(dict(model_config)))
    cfg.setdefault("backbone", {})["weights"] = None
    info: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "library": "multitask_edet", "library_version": __version__,
        "model_config": cfg, "class_names": {t: list(v) for t, v in (class_names or {}).items()},
    }  # fmt: skip
    if experiment:
        info["experiment"] = dict(experiment)
    if step is not None:
        info["step"] = int(step)
    if metrics:
        info["metrics"] = finite_metrics(metrics)
    return info


def model_info(model: nn.Module) -> dict[str, Any]:
    """``pretrained_info`` of a built MultiTaskEfficientDet (its config, class names, release info)."""
    from .config_utils import to_dict

    release = dict(getattr(model, "release_info", None) or {})
    return pretrained_info(to_dict(model.config), getattr(model, "class_names", None),
                           **{k: release.get(k) for k in RELEASE_KEYS})


def write_pretrained(directory: str | Path, state_dict: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> list[Path]:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into ``directory`` (each atomically)."""
    from .engine.checkpoint import atomic_write, save_safetensors

    d = Path(directory)
    # the metadata keys engine/checkpoint.py load_weights reads ("config" = the experiment config)
    meta = {"format": FORMAT, "class_names": info["class_names"], "model_config": info["model_config"]}
    for key, name in (("experiment", "config"), ("step", "step"), ("metrics", "metrics")):
        if key in info:
            meta[name] = info[key]
    weights = save_safetensors(d / WEIGHTS_FILE, dict(state_dict), meta)
    config = atomic_write(d / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))
    card = atomic_write(d / CARD_FILE, lambda tmp: Path(tmp).write_text(model_card(info)))
    return [weights, config, card]


def model_card(info: Mapping[str, Any]) -> str:
    """README.md of a pretrained folder: Hub metadata, tasks and classes, input, metrics, usage."""
    cfg = info["model_config"]
    tasks = cfg.get("tasks", {})
    types = {opts.get("type") for opts in tasks.values()}
    exp = info.get("experiment") or {}
    data = exp.get("data") or {}
    header = {
        "library_name": "multitask_edet",
        "tags": sorted({"multitask_edet", "efficientdet", "pytorch"} | {"object-detection" for t in types if t == "det"}
                       | {"image-segmentation" for t in types if t == "seg"}),
        "pipeline_tag": "object-detection" if "det" in types else "image-segmentation" if "seg" in types else None,
    }
    if data.get("dataset"):
        header["datasets"] = [data["dataset"]]
    lines = ["---", yaml.safe_dump({k: v for k, v in header.items() if v}, sort_keys=False).strip(), "---", ""]
    h, w = cfg.get("image_size", ("?", "?"))
    lines += [
        f"# {cfg.get('name', 'model')}: {' + '.join(tasks) or 'no task'}",
        "",
        "A multitask_edet model: one EfficientDet trunk (EfficientNet "
        f"backbone `{cfg.get('backbone', {}).get('name')}` + BiFPN) with one head per task (EfficientDet paper, "
        "Tan, Pang & Le, CVPR 2020).",
        "",
        f"Input: RGB, {h}x{w} (images are scaled to fit and padded bottom/right), normalised with mean "
        f"{cfg.get('mean')} and std {cfg.get('std')} on the 0-1 scale (done by the library).",
        "",
        "| task | type | classes |",
        "|---|---|---|",
    ]
    names = info.get("class_names") or {}
    for t, opts in tasks.items():
        cls = names.get(t)
        shown = ", ".join(cls[:20]) + (f", … ({len(cls)} in all)" if len(cls) > 20 else "") if cls else str(opts.get("num_classes", "-"))
        lines.append(f"| {t} | {opts.get('type')} | {shown} |")
    lines += ["", "## Evaluation", ""]
    metrics = info.get("metrics") or {}
    if metrics:
        where = f" on {data.get('dataset')} {data.get('val_split', '')}".rstrip() if data.get("dataset") else ""
        step = f" at step {info['step']}" if "step" in info else ""
        lines += [f"Metrics of these weights{where}{step}, as `mtedet eval` computes them:", "",
                  "| task | metric | value |", "|---|---|---|"]
        lines += [f"| {t} | {k} | {v:.4f} |" for t, m in metrics.items() for k, v in m.items()]
    else:
        lines.append("No evaluation was recorded with these weights.")
    lines += [
        "", "## Use", "",
        "```python",
        "import multitask_edet as mt",
        "",
        'model = mt.from_pretrained("REPO_OR_FOLDER")   # this repository id or a local copy',
        "```",
        "",
        "```bash",
        "mtedet predict --checkpoint REPO_OR_FOLDER photos/ --out preds/      # JSON, masks, overlays",
        "mtedet export --checkpoint REPO_OR_FOLDER --end-to-end model.onnx    # one ONNX graph, NMS inside",
        "```",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- where a model comes from

def _is_repo_id(source: str) -> bool:
    """``owner/name`` as the Hub spells repository ids (not a path, not a file name)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if source.count("/") != 1 or source.startswith((".", "~")) or (os.sep != "/" and os.sep in source):
        return False
    if Path(source).suffix.lower() in (".pt", ".pth", ".safetensors", ".bin", ".onnx", ".json", ".yaml"):
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def locate(
    source: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """The local path of a model source: a folder or file here as it is, or a Hub repository id
    (``owner/name``) whose ``config.json`` and ``model.safetensors`` are fetched into the cache."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    source = str(source)
    if not _is_repo_id(source):
        raise CheckpointError(f"model source {source} does not exist (and is not a Hugging Face Hub repository id "
                              "such as owner/name)")
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    files = []
    try:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            files.append(hf_hub_download(source, name, revision=revision, cache_dir=cache_dir, token=token,
                                         force_download=force_download, local_files_only=local_files_only))
    except (LocalEntryNotFoundError, EntryNotFoundError, HfHubHTTPError, OSError) as e:
        wanted = f"{CONFIG_FILE} and {WEIGHTS_FILE} of the Hugging Face Hub repository {source}"
        cache = cache_dir or constants.HF_HUB_CACHE
        if constants.HF_HUB_OFFLINE or local_files_only:
            why = f"they are not in the cache ({cache}) and downloading is off (HF_HUB_OFFLINE=1 or local_files_only)"
        elif isinstance(e, (LocalEntryNotFoundError, OSError)) and not isinstance(e, HfHubHTTPError):
            why = f"they are not in the cache ({cache}) and the Hub cannot be reached"
        else:
            why = f"the Hub answered: {str(e).splitlines()[0][:200]}"
        raise CheckpointError(f"model source {source} is no file or folder here; looked for {wanted}: {why}") from None
    return Path(files[0]).parent


def read_info(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a pretrained folder; for a folder without one (a run of an older version)
    or a bare ``.safetensors`` file, the same information from the weights' metadata."""
    p = Path(path)
    if p.is_dir() and (p / CONFIG_FILE).is_file():
        try:
            info = json.loads((p / CONFIG_FILE).read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{p / CONFIG_FILE} is not valid JSON ({e})") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise CheckpointError(f"{p / CONFIG_FILE} was not written by multitask_edet's save_pretrained "
                                  f"(no \"format\": \"{FORMAT}\")")
        return info
    from .engine.checkpoint import load_weights

    weights = weights_file(p)
    _, meta = load_weights(weights)
    if not meta.get("model_config"):
        raise CheckpointError(f"{weights} carries no model config: it was not written by multitask_edet")
    return pretrained_info(meta["model_config"], meta.get("class_names"), meta.get("config"), meta.get("step"),
                           meta.get("metrics"))


def weights_file(path: str | Path) -> Path:
    p = Path(path)
    weights = p / WEIGHTS_FILE if p.is_dir() else p
    if not weights.is_file():
        raise CheckpointError(f"{p} holds no {WEIGHTS_FILE}: not a pretrained folder or a run folder that finished")
    return weights


#: libraries whose exceptions mean "the upload failed" (the HTTP client differs between versions)
_NETWORK_MODULES = ("huggingface_hub", "httpx", "httpx2", "requests", "urllib3", "hf_xet")


def push(model: nn.Module, repo_id: str, *, private: bool | None = None, token: str | None = None,
         commit_message: str | None = None) -> str:
    """``model.push_to_hub`` (create the repository if needed, upload the pretrained folder in one
    commit); returns the commit URL. A failure (offline, no token, refused) is one CheckpointError."""
    try:
        return str(model.push_to_hub(repo_id, private=private, token=token,
                                     commit_message=commit_message or "Upload a multitask_edet model"))
    except Exception as e:  # noqa: BLE001 — re-raised unless it comes from the Hub client or the network
        if not isinstance(e, OSError) and type(e).__module__.split(".")[0] not in _NETWORK_MODULES:
            raise
        reason = str(e).splitlines()[0][:200] if str(e) else "no details"
        raise CheckpointError(f"could not push to the Hugging Face Hub repository {repo_id}: "
                              f"{type(e).__name__}: {reason}") from None


__all__ = [
    "CARD_FILE", "CONFIG_FILE", "FORMAT", "WEIGHTS_FILE", "finite_metrics",
    "locate", "model_card", "model_info", "pretrained_info", "push", "read_info", "weights_file", "write_pretrained",
]  # fmt: skip
