"""COCO-trained detectors published for effdet, fetched the ecosystem's way (torch.hub's cache).

``model.checkpoint=effdet:tf_efficientdet_d0`` (or any URL of an effdet-layout checkpoint)
downloads through ``torch.hub.load_state_dict_from_url`` into torch.hub's cache
(``$TORCH_HOME/hub/checkpoints``), with the file's hash checked, and the detector is converted
on load by compat/effdet.py. The release files name their SHA-256 prefix
(``…-f153e0cf.pth``), which is torch.hub's convention for ``check_hash``.

Offline, a file already in that cache is used as it is; without it the error says where to
put the file, or how to convert one you have (``mtedet convert-effdet``). ``HF_HUB_OFFLINE=1``,
the switch that keeps timm's backbone weights off the network (models/backbone.py), keeps these
downloads off it too: one offline setting for every weight this library fetches.

``effdet:NAME`` is also a model source of its own (engine/builders.py ``load_for_inference``):
``mtedet predict --model tf_efficientdet-d0 --weights coco`` runs models/factory.py ``coco_detector``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch

from ..errors import CheckpointError, ConfigError, WeightsUnavailableError
from ..state_dict import unwrap_state_dict

_RELEASE = "https://github.com/rwightman/efficientdet-pytorch/releases/download/v0.1/"
#: torch.hub's rule: the hash prefix is the last "-<hex>" before the extension
_HASH = re.compile(r"-([a-f0-9]+)\.")


@dataclass(frozen=True)
class EffdetWeights:
    name: str
    #: release file name; its "-<hex>" suffix is the SHA-256 prefix torch.hub checks
    file: str
    #: our variant these weights convert into
    model: str
    #: input statistics (0–1 scale) the detector was trained with: the AdvProp (_ap) ones use 0.5
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def url(self) -> str:
        return _RELEASE + self.file

    @property
    def hash_prefix(self) -> str:
        return _HASH.search(self.file).group(1)


def _table() -> dict[str, EffdetWeights]:
    files = {  # effdet's published COCO detectors (90 classes), by effdet's names
        "efficientdet_d0": "efficientdet_d0-f3276ba8.pth",
        "efficientdet_d1": "efficientdet_d1-bb7e98fe.pth",
        "tf_efficientdet_d0": "tf_efficientdet_d0_34-f153e0cf.pth",
        "tf_efficientdet_d1": "tf_efficientdet_d1_40-a30f94af.pth",
        "tf_efficientdet_d2": "tf_efficientdet_d2_43-8107aa99.pth",
        "tf_efficientdet_d3": "tf_efficientdet_d3_47-0b525f35.pth",
        "tf_efficientdet_d4": "tf_efficientdet_d4_49-f56376d9.pth",
        "tf_efficientdet_d5": "tf_efficientdet_d5_51-c79f9be6.pth",
        "tf_efficientdet_d6": "tf_efficientdet_d6_52-4eda3773.pth",
        "tf_efficientdet_d7": "tf_efficientdet_d7_53-6d1d7a95.pth",
        "tf_efficientdet_d7x": "tf_efficientdet_d7x-f390b87c.pth",
        "tf_efficientdet_d0_ap": "tf_efficientdet_d0_ap-d0cdbd0a.pth",
        "tf_efficientdet_d1_ap": "tf_efficientdet_d1_ap-7721d075.pth",
        "tf_efficientdet_d2_ap": "tf_efficientdet_d2_ap-a2995c19.pth",
        "tf_efficientdet_d3_ap": "tf_efficientdet_d3_ap-e4a2feab.pth",
        "tf_efficientdet_d4_ap": "tf_efficientdet_d4_ap-f601a5fc.pth",
        "tf_efficientdet_d5_ap": "tf_efficientdet_d5_ap-3673ae5d.pth",
    }
    out = {}
    for name, file in files.items():
        base = name.removesuffix("_ap")
        stats = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)} if name.endswith("_ap") else {}
        out[name] = EffdetWeights(name, file, base.replace("efficientdet_", "efficientdet-", 1), **stats)
    return out


EFFDET_WEIGHTS: dict[str, EffdetWeights] = _table()
PREFIX = "effdet:"


def resolve_effdet_weights(name: str) -> EffdetWeights:
    """``tf_efficientdet_d0`` (effdet's name), ``tf_efficientdet-d0`` (ours) or ``effdet:…`` → its release."""
    key = name.removeprefix(PREFIX).replace("efficientdet-", "efficientdet_")
    if key not in EFFDET_WEIGHTS:
        raise ConfigError(f"no published effdet weights {name!r}; known: {', '.join(EFFDET_WEIGHTS)}")
    return EFFDET_WEIGHTS[key]


def is_remote_checkpoint(spec: str | os.PathLike) -> bool:
    return isinstance(spec, str) and (spec.startswith(PREFIX) or re.match(r"^(https?|file)://", spec) is not None)


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_remote_checkpoint(spec: str, progress: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of ``effdet:NAME`` or a URL, through torch.hub's cache with the hash checked.

    torch.hub checks a file's SHA-256 prefix when it downloads it (the prefix in the file name);
    a file already in the cache is read as it is.
    """
    url = resolve_effdet_weights(spec).url if spec.startswith(PREFIX) else spec
    file = Path(url.split("?")[0]).name
    cached = hub_checkpoint_dir() / file
    if not cached.is_file() and _offline() and not url.startswith("file://"):
        raise WeightsUnavailableError(_unavailable(spec, url, cached, "downloading is off: HF_HUB_OFFLINE=1"))
    try:
        sd = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=progress, check_hash=True,
                                                weights_only=True)
    except (URLError, OSError) as e:
        if cached.is_file():
            raise
        raise WeightsUnavailableError(_unavailable(spec, url, cached, str(getattr(e, "reason", e)))) from None
    except RuntimeError as e:  # torch.hub: "invalid hash value (expected …, got …)"
        raise CheckpointError(f"checkpoint {spec} from {url}: {e}; the partial download was discarded, try again") from None
    except Exception as e:  # a corrupt cached file, pickled code
        raise CheckpointError(f"cannot read checkpoint {cached} (from {url}): {e}; delete it and try again") from None
    return unwrap_state_dict(sd, f"{spec} ({cached})")


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it, but at call time."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _unavailable(spec: str, url: str, cached: Path, why: str) -> str:
    return (
        f"checkpoint {spec} ({url}) is not in torch.hub's cache {cached.parent} and cannot be downloaded ({why}): "
        f"run once with network access, put the file there as {cached.name}, or convert a copy you have with "
        "`mtedet convert-effdet FILE OUT --model NAME` and pass --set model.checkpoint=OUT"
    )
