"""Backbone: a timm feature extractor → pyramid levels P_min … P_max (paper §4.1, Fig. 3).

Any timm model that supports ``features_only`` works; the levels it provides are read from
its ``feature_info`` (stride 2**L → level L), never from a table of channel counts. Levels
above the backbone's coarsest feature (P6, P7, and P8 for D7x) are made by "resampling"
the level below: a 1×1 conv + BN when its width differs from the BiFPN's, then a 3×3
stride-2 max-pool — the reference structure, so converted weights map one to one.

Pretrained weights come the ecosystem's way: ``timm.create_model(name, pretrained=True,
features_only=True)`` reads them from the Hugging Face Hub through its cache (``HF_HOME``;
``HF_HUB_OFFLINE=1`` forbids the network), and a local file goes through the very same call
with ``pretrained_cfg_overlay=dict(file=PATH)``. A file in efficientnet_pytorch / smp naming
is converted first (compat/efficientnet_pytorch.py). Weights that cannot be had are an error
naming the ways out, never a silent random initialisation.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, WeightsUnavailableError
from ..state_dict import key_report, read_state_dict
from .layers import resample, use_adaptive_silu

log = logging.getLogger(__name__)


def _feature_levels(name: str) -> dict[int, int]:
    """{pyramid level: timm out_index} of every feature the model can return."""
    if not timm.is_model(name.split(".")[0]):  # "name.pretrained_tag" is valid too
        raise ConfigError(f"backbone {name!r} is not a timm model; see timm.list_models()")
    # Built on the meta device: reading feature_info costs no memory and little time.
    with torch.device("meta"):
        probe = timm.create_model(name, features_only=True, pretrained=False)
    levels = {}
    for i, red in enumerate(probe.feature_info.reduction()):
        level = int(round(math.log2(red)))
        if 2**level == red:
            levels[level] = probe.feature_info.out_indices[i]
    return levels


class Backbone(nn.Module):
    """``forward(images) → [P_min, …, P_max]`` (fine to coarse); ``levels`` and ``channels`` say what."""

    #: On CPU, images are turned channels_last (NHWC) here, so the whole network runs in it:
    #: oneDNN convolutions reorder NCHW activations at every layer otherwise, and D0 runs
    #: 25–35% faster in NHWC (benchmarks/RESULTS.md). Values are unchanged. On GPUs the
    #: layout is the caller's choice (the engine's ``model.channels_last``).
    channels_last_on_cpu: bool = True

    def __init__(
        self,
        name: str,
        min_level: int,
        max_level: int,
        out_channels: int,
        padding: str = "pytorch",
        drop_path_rate: float = 0.0,
        weights: str | None = None,
        pretrained: bool = False,
        pretrained_tag: str | None = None,
    ):
        super().__init__()
        available = _feature_levels(name)
        if min_level not in available:
            raise ConfigError(
                f"backbone {name!r} has no stride-{2**min_level} feature for level P{min_level}; "
                f"its levels are {sorted(available)} — raise min_level or pick another backbone"
            )
        top = min_level
        while top + 1 in available and top + 1 <= max_level:
            top += 1
        kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
        self.body, self.weights_source = create_body(
            name,
            out_indices=tuple(available[lv] for lv in range(min_level, top + 1)),
            pretrained=pretrained,
            pretrained_tag=pretrained_tag,
            weights=weights,
            **kwargs,
        )
        use_adaptive_silu(self.body)  # timm's in-place SiLUs clone their input under autograd
        channels = list(self.body.feature_info.channels())
        # Levels above the backbone's top: each made from the one below.
        self.extra = nn.ModuleList()
        for level in range(top + 1, max_level + 1):
            self.extra.append(resample(channels[-1], out_channels, level - 1, level, padding))
            channels.append(out_channels)
        self.levels = tuple(range(min_level, max_level + 1))
        self.channels = tuple(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.channels_last_on_cpu and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        feats = list(self.body(x))
        for m in self.extra:
            feats.append(m(feats[-1]))
        return feats


def check_backbone_weights(body: nn.Module, sd: dict[str, torch.Tensor], path: str | Path) -> None:
    """Every tensor of the feature extractor ``body`` must come from ``sd`` (a classifier checkpoint).

    Keys of modules that ``features_only`` drops (classifier, last conv) are expected in such a
    file and skipped; any other mismatch is an error listing the keys. timm loads a
    ``features_only`` EfficientNet non-strictly, so this check is what keeps a checkpoint with
    other names from leaving the backbone silently at its random initialisation.
    """
    own = body.state_dict()
    top_modules = {k.split(".")[0] for k in own}
    unexpected = [k for k in sd if k not in own and k.split(".")[0] in top_modules]
    missing = [k for k in own if k not in sd]
    wrong = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        shapes = f"; wrong shapes: {', '.join(wrong[:10])}" if wrong else ""
        raise CheckpointError(
            f"backbone weights {path} do not fit {type(body).__name__}: "
            f"{key_report(missing, unexpected)}{shapes} — is it a checkpoint of this backbone?"
        )


def _read_backbone_file(path: str | Path, name: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """(timm checkpoint file, its state dict) for ``model.backbone.weights``.

    A file in efficientnet_pytorch / smp naming is converted to timm's names once and cached
    (compat/efficientnet_pytorch.py); a timm checkpoint is used as it is.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone weights file {path} does not exist (model.backbone.weights)")
    sd = read_state_dict(path)  # a CheckpointError that says how the file is bad
    from ..compat.efficientnet_pytorch import converted_backbone_file, is_efficientnet_pytorch_state_dict

    if is_efficientnet_pytorch_state_dict(sd):
        converted = converted_backbone_file(path, name.split(".")[0])
        log.info("backbone weights %s are in efficientnet_pytorch naming: converted for timm into %s", path, converted)
        return converted, read_state_dict(converted)
    return path, sd


def pretrained_source(name: str, pretrained_tag: str | None = None) -> tuple[str, dict]:
    """(timm model name, pretrained_cfg_overlay) for the Hub weights of ``name``.

    ``pretrained_tag``: a timm tag of this architecture (``aa_in1k``), or ``ARCH.TAG`` for weights
    published for another timm architecture with the same tensors (``tf_efficientnet_b6.aa_in1k``
    for ``efficientnet_b6``, for which timm publishes none). None = timm's default tag.
    """
    arch, full = name.split(".")[0], _weights_name(name, pretrained_tag)
    if full.split(".")[0] != arch:  # another architecture's weights
        cfg = _pretrained_cfg(full)
        if cfg is None or not cfg.hf_hub_id:
            raise ConfigError(f"model.backbone.pretrained_tag {pretrained_tag!r} names no timm weights on the Hugging Face Hub")
        return arch, {"hf_hub_id": cfg.hf_hub_id}
    cfg = _pretrained_cfg(full)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(arch) if "." in t]
        raise ConfigError(
            f"timm publishes no pretrained weights {full!r}"
            + (f"; tags of {arch}: {', '.join(tags)}" if tags else f" (none at all for {arch})")
            + " — set model.backbone.pretrained_tag, give a file with model.backbone.weights=PATH, "
            "or set model.backbone.pretrained=false to train from scratch"
        )
    return full, {}


def _weights_name(name: str, pretrained_tag: str | None) -> str:
    """The timm name (``arch.tag``) whose pretrained config describes the weights to load."""
    if pretrained_tag and "." in pretrained_tag:
        return pretrained_tag
    return f"{name.split('.')[0]}.{pretrained_tag}" if pretrained_tag else name


def _pretrained_cfg(name: str):
    """timm's pretrained config of ``arch[.tag]``; None for an unknown tag (timm raises)."""
    try:
        return timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        return None


def create_body(
    name: str,
    out_indices: tuple[int, ...],
    pretrained: bool = False,
    pretrained_tag: str | None = None,
    weights: str | Path | None = None,
    **kwargs,
) -> tuple[nn.Module, str]:
    """timm's ``features_only`` model of ``name`` and where its weights came from.

    ``weights=PATH`` (whatever ``pretrained`` says: a file was asked for) or ``pretrained`` (the
    Hub, through its cache) both go through ``timm.create_model(..., pretrained=True)``;
    neither → random initialisation, said so in the returned source.
    """
    common = dict(features_only=True, out_indices=out_indices, **kwargs)
    if weights:
        file, sd = _read_backbone_file(weights, name)
        with torch.device("meta"):  # the keys to check against, before anything is loaded
            check_backbone_weights(timm.create_model(name, pretrained=False, **common), sd, weights)
        body = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, **common)
        source = f"file {weights}" + (f" (converted to timm naming: {file})" if Path(file) != Path(weights) else "")
    elif pretrained:
        full, overlay = pretrained_source(name, pretrained_tag)
        hub_id = overlay.get("hf_hub_id") or timm.models.get_pretrained_cfg(full).hf_hub_id
        try:
            body = timm.create_model(full, pretrained=True, pretrained_cfg_overlay=overlay or None, **common)
        except Exception as e:
            if not _is_offline_miss(e):
                raise
            raise WeightsUnavailableError(_offline_message(name, hub_id)) from None
        source = f"hf-hub:{hub_id}" if hub_id else f"timm:{full}"
    else:
        body = timm.create_model(name, pretrained=False, **common)
        source = "random initialisation (model.backbone.pretrained=false)"
    log.info("backbone %s: weights from %s", name, source)
    return body, source


def _is_offline_miss(e: BaseException) -> bool:
    """huggingface_hub's "not in the cache and the Hub cannot be reached" (offline or no network)."""
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # older huggingface_hub
        from huggingface_hub.utils import LocalEntryNotFoundError  # type: ignore[no-redef]
    return isinstance(e, LocalEntryNotFoundError)


def _offline_message(name: str, hub_id: str | None) -> str:
    from huggingface_hub import constants

    offline = " with HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else ""
    return (
        f"pretrained weights of backbone {name} (Hugging Face Hub {hub_id}, model.safetensors) are not in the "
        f"Hub cache {constants.HF_HUB_CACHE} and the Hub cannot be reached{offline}: run once with network access, put the file "
        f"in that cache, pass --set model.backbone.weights=PATH (a timm or efficientnet_pytorch checkpoint), or "
        f"--set model.backbone.pretrained=false to train from scratch knowingly"
    )


def backbone_input_stats(name: str, pretrained_tag: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the 0–1 scale that the backbone's pretrained weights expect (timm's pretrained cfg).

    ImageNet's statistics for the EfficientNets, 0.5 for the ``*_lite*`` ones. Read from timm's
    registry, without building the model or touching the network; ImageNet's when timm has no
    pretrained config for the model.
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"backbone {name!r} is not a timm model; see timm.list_models()")
    cfg = _pretrained_cfg(_weights_name(name, pretrained_tag))
    if cfg is None:
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
