"""EfficientNet weights in ``efficientnet_pytorch`` naming → timm naming, by structure.

``efficientnet_pytorch`` checkpoints, segmentation_models_pytorch's ``efficientnet-b*``
encoders and packages built on them name layers ``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` / ``_depthwise_conv`` / ``_se_reduce`` / ``_project_conv`` …,
``_conv_head``, ``_bn1``, ``_fc``. timm's EfficientNet holds the same tensors as
``conv_stem``, ``bn1``, ``blocks.S.I.conv_pw`` / ``conv_dw`` / ``se.conv_reduce`` /
``conv_pwl`` …, ``conv_head``, ``bn2``, ``classifier``.

The map is derived from the two networks' structure, not from a table of names: block N of
the file is the N-th block of timm's stages (flattened in order), and within a block the
file's layers, in their forward order, are paired with the timm block's layers in theirs.
Every pair is checked by shape; anything left over on either side is an error listing it.
A file without the classifier (an smp encoder) gets timm's freshly initialised classifier
(and head conv when absent): a feature extractor (``features_only``) never uses them.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError

#: forward order of a block's layers in efficientnet_pytorch's MBConvBlock
_BLOCK_ORDER = ("_expand_conv", "_bn0", "_depthwise_conv", "_bn1", "_se_reduce", "_se_expand", "_project_conv", "_bn2")
#: stem and head layers, in forward order around the blocks
_STEM = ("_conv_stem", "_bn0")
_HEAD = ("_conv_head", "_bn1", "_fc")
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"(_conv_stem|_bn0|_conv_head|_bn1|_fc)\.(\w+)$")


def is_efficientnet_pytorch_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    """True for efficientnet_pytorch / smp ``efficientnet-b*`` naming (any prefix, e.g. ``encoder.``)."""
    return any(_BLOCK_KEY.search(k) for k in sd) and any(k.endswith("_conv_stem.weight") for k in sd)


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a common prefix before ``_conv_stem`` (``encoder.`` in an smp model, ``module.`` …)."""
    stem = next(k for k in sd if k.endswith("_conv_stem.weight"))
    prefix = stem[: -len("_conv_stem.weight")]
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _layers_of(module: torch.nn.Module) -> list[str]:
    """Names of the sub-modules that own tensors directly, in registration (= forward) order."""
    out = []
    for name, m in module.named_modules():
        if name and (any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))):
            out.append(name)
    return out


def _source_layers(sd: dict[str, torch.Tensor]) -> tuple[list[str], list[list[str]], list[str]]:
    """(stem layers, per-block layers, head layers) present in the file, each in forward order."""
    blocks: dict[int, set[str]] = {}
    top: set[str] = set()
    for k in sd:
        m = _BLOCK_KEY.match(k)
        if m:
            blocks.setdefault(int(m[1]), set()).add(m[2])
            continue
        m = _TOP_KEY.match(k)
        if m:
            top.add(m[1])
    n = max(blocks) + 1 if blocks else 0
    per_block = [[f"_blocks.{i}.{layer}" for layer in _BLOCK_ORDER if layer in blocks.get(i, ())] for i in range(n)]
    return [s for s in _STEM if s in top], per_block, [h for h in _HEAD if h in top]


def convert_efficientnet_pytorch_state_dict(sd: dict[str, torch.Tensor], backbone: str) -> dict[str, torch.Tensor]:
    """The file's tensors under the names of timm's ``backbone`` (full classifier model).

    Raises CheckpointError listing the file's and the model's unmatched keys and the shape
    mismatches — e.g. a B3 file converted for ``tf_efficientnet_b0``.
    """
    import timm

    if not timm.is_model(backbone):
        raise ConfigError(f"backbone {backbone!r} is not a timm model; see timm.list_models('*efficientnet*')")
    sd = _strip_prefix(sd)
    model = timm.create_model(backbone, pretrained=False)  # small: B7 is 66M params, built once
    own = model.state_dict()
    stem, src_blocks, head = _source_layers(sd)
    dst_blocks = [_layers_of(b) for stage in model.blocks for b in stage]
    dst_block_names = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]

    pairs: list[tuple[str, str]] = list(zip(stem, ["conv_stem", "bn1"]))
    unmatched_src: list[str] = []
    unmatched_dst: list[str] = []
    for i in range(max(len(src_blocks), len(dst_blocks))):
        src = src_blocks[i] if i < len(src_blocks) else []
        dst = [f"{dst_block_names[i]}.{n}" for n in dst_blocks[i]] if i < len(dst_blocks) else []
        pairs += list(zip(src, dst))
        unmatched_src += src[len(dst):]
        unmatched_dst += dst[len(src):]
    top_dst = {"_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    pairs += [(h, top_dst[h]) for h in head]

    out: dict[str, torch.Tensor] = {}
    wrong: list[str] = []
    used: set[str] = set()
    for src, dst in pairs:
        for k, v in sd.items():
            if not k.startswith(src + "."):
                continue
            leaf = k[len(src) + 1:]
            if "." in leaf:
                continue
            target = f"{dst}.{leaf}"
            used.add(k)
            if target not in own:
                unmatched_src.append(k)
            elif own[target].shape != v.shape:
                wrong.append(f"{k} {tuple(v.shape)} -> {target} {tuple(own[target].shape)}")
            else:
                out[target] = v
    unmatched_src += [k for k in sd if k not in used and not k.endswith("num_batches_tracked")]
    # Layers a feature extractor does not use may be absent from an encoder-only file.
    optional = ("conv_head.", "bn2.", "classifier.")
    missing = [k for k in own if k not in out and not k.startswith(optional)]
    missing = [k for k in missing if not k.endswith("num_batches_tracked") and not k.startswith(tuple(f"{d}." for d in unmatched_dst))]
    if wrong or missing or unmatched_src or unmatched_dst:
        parts = []
        if wrong:
            parts.append(f"shape mismatches ({len(wrong)}): {', '.join(wrong[:8])}")
        if missing or unmatched_dst:
            keys = sorted(set(missing) | {f"{d}.*" for d in unmatched_dst})
            parts.append(f"model keys with no tensor in the file ({len(keys)}): {', '.join(keys[:12])}")
        if unmatched_src:
            parts.append(f"file keys with no place in the model ({len(unmatched_src)}): {', '.join(sorted(unmatched_src)[:12])}")
        raise CheckpointError(
            f"efficientnet_pytorch-style weights do not fit timm {backbone!r}: {'; '.join(parts)} "
            "— check --backbone (e.g. tf_efficientnet_b3 for an efficientnet-b3 file, tf_efficientnet_lite0 for lite0)"
        )
    for k, v in own.items():  # unused head layers of an encoder-only file, num_batches_tracked
        out.setdefault(k, v)
    return out


def convert_efficientnet_pytorch_file(src: str | Path, dst: str | Path, backbone: str) -> dict[str, torch.Tensor]:
    """Convert ``src`` (efficientnet_pytorch / smp naming) for timm ``backbone``; write safetensors ``dst``."""
    from safetensors.torch import save_file

    from ..state_dict import read_state_dict

    sd = read_state_dict(src)
    if not is_efficientnet_pytorch_state_dict(sd):
        raise CheckpointError(
            f"{src} is not in efficientnet_pytorch naming (no _conv_stem / _blocks.N.* keys); "
            "a timm checkpoint needs no conversion: pass it as model.backbone.weights directly"
        )
    out = {k: v.detach().contiguous().clone() for k, v in convert_efficientnet_pytorch_state_dict(sd, backbone).items()}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    save_file(out, str(tmp), metadata={"format": "timm", "model": backbone, "source": f"efficientnet_pytorch:{Path(src).name}"})
    os.replace(tmp, dst)
    return out


def cache_dir() -> Path:
    """Where converted weights are kept: ``$MTEDET_CACHE``, else ``~/.cache/mtedet`` (as the shapes sample)."""
    base = os.environ.get("MTEDET_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "mtedet"


def file_sha256(path: str | Path, length: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def converted_backbone_file(src: str | Path, backbone: str) -> Path:
    """A timm-named copy of ``src`` for ``backbone``, converted once and cached by content hash."""
    dst = cache_dir() / "backbones" / f"{backbone}-{file_sha256(src)}.safetensors"
    if not dst.is_file():
        convert_efficientnet_pytorch_file(src, dst, backbone)
    return dst
