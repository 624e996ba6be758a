"""effdet (rwightman/efficientdet-pytorch) state dicts → ours.

The networks are the same (paper §3–4); only module names differ, plus one redundancy:
effdet's TF-ported models keep a bias on convolutions that BatchNorm follows. Such a bias
is folded into the BN's running mean (``BN(x + b)`` with mean μ equals ``BN(x)`` with mean
``μ − b``, in training mode too since batch statistics absorb it), so our model never
carries it.

Name map (r = BiFPN repeat, i = node, j = position of an input in the node, k = repeat):

- ``backbone.*``                                   → ``backbone.body.*``
- ``fpn.resample.{level index}.conv.{conv,bn}``    → ``backbone.extra.{n}.proj.{conv,bn}``
- ``fpn.cell.r.fnode.i.combine.resample.{offset}.conv.{conv,bn}``
                                                   → ``neck.layers.r.nodes.i.inputs.j.proj.{conv,bn}``
- ``fpn.cell.r.fnode.i.combine.edge_weights``      → ``neck.layers.r.nodes.i.fuse.weight``
- ``fpn.cell.r.fnode.i.after_combine.conv.*``      → ``neck.layers.r.nodes.i.conv.*``
- ``{class,box}_net.conv_rep.k.*``                 → ``heads.<det>.{cls,box}_net.convs.k.*``
- ``{class,box}_net.bn_rep.k.level.bn.*``          → ``heads.<det>.{cls,box}_net.bns.level.k.*``
  (or ``bn_rep.level.k.*`` after effdet's ``toggle_head_bn_level_first``)
- ``{class,box}_net.predict.*``                    → ``heads.<det>.{cls,box}_net.predict.*``

(``<det>``: the model's detection task, ``det`` unless it is named otherwise)

effdet's ``efficientdet_d4``/``_d5`` use TF SAME padding in the BiFPN and heads with a
PyTorch-padded backbone: for identical outputs build ours with ``neck={"padding": "same"}``.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..config import MODEL_CONFIGS
from ..errors import CheckpointError, ConfigError
from ..state_dict import key_report, read_state_dict

_EFFDET_PREFIXES = ("fpn.cell.", "class_net.", "box_net.")
_NET = {"class": "cls_net", "box": "box_net"}


def is_effdet_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(_EFFDET_PREFIXES) for k in sd)


def resolve_model_name(name: str) -> str:
    """Our variant name for ``name``; effdet's names (``tf_efficientdet_d0``) are accepted."""
    if name in MODEL_CONFIGS:
        return name
    ours = name.replace("efficientdet_", "efficientdet-", 1)
    if ours in MODEL_CONFIGS:
        return ours
    raise ConfigError(f"unknown model {name!r}; valid names: {', '.join(MODEL_CONFIGS.names())}")


def effdet_num_classes(sd: dict[str, torch.Tensor], num_anchors: int = 9) -> int:
    w = sd.get("class_net.predict.conv_pw.weight")
    if w is None:
        raise CheckpointError("not an effdet detector state dict: class_net.predict.conv_pw.weight is missing")
    return w.shape[0] // num_anchors


def convert_effdet_state_dict(sd: dict[str, torch.Tensor], model: nn.Module, head: str = "det") -> dict[str, torch.Tensor]:
    """Rename (and fold redundant biases of) an effdet detector state dict for ``model``.

    ``model`` is our model to convert into (it may live on the meta device: only its structure
    is read); ``head`` names its detection task. Raises CheckpointError listing any missing or
    unexpected keys and shape mismatches.
    """
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    if head not in model.heads:
        raise CheckpointError(f"an effdet checkpoint holds a detector: the model has no task {head!r} to convert into")
    n_body = len(model.backbone.levels) - len(model.backbone.extra)
    nodes = model.neck.topology
    n_levels = len(model.heads[head].levels)

    out: dict[str, torch.Tensor] = {}
    folds: list[tuple[str, torch.Tensor]] = []  # (our BN prefix, bias to fold into its mean)
    unexpected: list[str] = []

    def fpn_input(r: int, i: int, offset: int) -> str:
        if i >= len(nodes) or offset not in nodes[i].inputs:
            raise KeyError
        return f"neck.layers.{r}.nodes.{i}.inputs.{nodes[i].inputs.index(offset)}.proj"

    for key, value in sd.items():
        try:
            new = _rename(key, value, n_body, n_levels, fpn_input, folds, f"heads.{head}")
        except KeyError:
            new = None
        if new is None:
            unexpected.append(key)
        elif new:  # "" = folded into a BN above
            out[new] = value

    missing_bn = []
    for bn, bias in folds:
        mean_key = f"{bn}.running_mean"
        if mean_key not in out:
            missing_bn.append(mean_key)
            continue
        out[mean_key] = out[mean_key] - bias.to(out[mean_key].dtype)

    own = model.state_dict()
    missing = [k for k in own if k not in out]
    unexpected += [k for k in out if k not in own]
    wrong = [f"{k} {tuple(out[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in out and out[k].shape != own[k].shape]
    if missing or unexpected or wrong or missing_bn:
        raise CheckpointError(
            f"effdet state dict does not fit {getattr(model.config, 'name', 'the model')} "
            f"(check the variant and the detection task's num_classes): {key_report(missing, unexpected)}"
            + (f"; shape mismatches (checkpoint vs model): {', '.join(wrong[:10])}" if wrong else "")
            + (f"; no BN to fold a bias into: {', '.join(missing_bn[:10])}" if missing_bn else "")
        )
    return out


def _rename(key, value, n_body, n_levels, fpn_input, folds, head):
    """Our name for ``key``; "" if it is a bias folded into a BN (noted in ``folds``); None if unknown."""
    if key.startswith("backbone."):
        return "backbone.body." + key[len("backbone."):]

    m = re.fullmatch(r"fpn\.resample\.(\d+)\.conv\.(conv|bn)\.(\w+)", key)
    if m:
        idx, part, leaf = int(m[1]), m[2], m[3]
        base = f"backbone.extra.{idx - n_body}.proj"
        return _conv_bn(key, base, part, leaf, value, folds)

    m = re.fullmatch(r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.resample\.(\d+)\.conv\.(conv|bn)\.(\w+)", key)
    if m:
        base = fpn_input(int(m[1]), int(m[2]), int(m[3]))
        return _conv_bn(key, base, m[4], m[5], value, folds)

    m = re.fullmatch(r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.combine\.edge_weights", key)
    if m:
        return f"neck.layers.{m[1]}.nodes.{m[2]}.fuse.weight"

    m = re.fullmatch(r"fpn\.cell\.(\d+)\.fnode\.(\d+)\.after_combine\.conv\.(conv_dw|conv_pw|bn)\.(\w+)", key)
    if m:
        base = f"neck.layers.{m[1]}.nodes.{m[2]}.conv"
        if m[3] == "conv_pw" and m[4] == "bias":
            folds.append((f"{base}.bn", value))
            return ""
        return f"{base}.{m[3]}.{m[4]}"

    m = re.fullmatch(r"(class|box)_net\.conv_rep\.(\d+)\.(conv_dw|conv_pw)\.(\w+)", key)
    if m:
        net, k = f"{head}.{_NET[m[1]]}", int(m[2])
        if m[3] == "conv_pw" and m[4] == "bias":
            # one shared conv, one BN per level: the bias goes into each level's BN
            folds.extend((f"{net}.bns.{level}.{k}", value) for level in range(n_levels))
            return ""
        return f"{net}.convs.{k}.{m[3]}.{m[4]}"

    m = re.fullmatch(r"(class|box)_net\.bn_rep\.(\d+)\.(\d+)\.bn\.(\w+)", key)  # repeat first
    if m:
        return f"{head}.{_NET[m[1]]}.bns.{m[3]}.{m[2]}.{m[4]}"
    m = re.fullmatch(r"(class|box)_net\.bn_rep\.(\d+)\.(\d+)\.(\w+)", key)  # level first
    if m:
        return f"{head}.{_NET[m[1]]}.bns.{m[2]}.{m[3]}.{m[4]}"

    m = re.fullmatch(r"(class|box)_net\.predict\.(conv_dw|conv_pw)\.(\w+)", key)
    if m:
        return f"{head}.{_NET[m[1]]}.predict.{m[2]}.{m[3]}"
    return None


def _conv_bn(key, base, part, leaf, value, folds):
    if part == "conv" and leaf == "bias":
        folds.append((f"{base}.bn", value))
        return ""
    return f"{base}.{part}.{leaf}"


def convert_effdet_checkpoint(src: str | Path, dst: str | Path, model: nn.Module, head: str = "det") -> dict[str, torch.Tensor]:
    """Read an effdet checkpoint, convert it into ``model``'s layout and write safetensors to ``dst``."""
    from safetensors.torch import save_file

    sd = read_state_dict(src)
    if not is_effdet_state_dict(sd):
        raise CheckpointError(f"{src} is not an effdet detector checkpoint (no fpn.cell.* / class_net.* keys)")
    out = convert_effdet_state_dict(sd, model, head)
    out = {k: v.detach().contiguous().clone() for k, v in out.items()}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "multitask_edet", "model": str(getattr(model.config, "name", "")), "source": f"effdet:{Path(src).name}"}
    save_file(out, str(dst), metadata=meta)
    return out
