"""Strict typed configs: unknown keys and wrong types are errors that name the key."""
from dataclasses import dataclass, field
from typing import Literal

import pytest

from multitask_edet.config_utils import from_dict, merge, parse_overrides, to_dict
from multitask_edet.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    size: tuple[int, int] = (512, 512)
    inner: Inner = field(default_factory=Inner)
    tags: tuple[str, ...] = ()


def test_unknown_key_names_the_path_and_the_valid_keys():
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"inner": {"lrr": 1.0}})
    msg = str(e.value)
    assert "inner.lrr" in msg and "lr, mode" in msg


def test_merge_validates_types_and_literals():
    cfg = merge(Outer(), {"inner": {"lr": 1}, "size": [256, 384], "tags": ["p"]})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.size == (256, 384) and cfg.tags == ("p",)
    with pytest.raises(ConfigError, match="inner.mode"):
        merge(Outer(), {"inner": {"mode": "c"}})
    with pytest.raises(ConfigError, match="size"):
        merge(Outer(), {"size": [1, 2, 3]})
    with pytest.raises(ConfigError, match="name"):
        merge(Outer(), {"name": 3})


def test_overrides_parse_yaml_values_into_nested_dicts():
    d = parse_overrides(["inner.lr=0.08", "inner.mode=b", "size=[256, 384]", "name=run"])
    assert d == {"inner": {"lr": 0.08, "mode": "b"}, "size": [256, 384], "name": "run"}
    assert to_dict(merge(Outer(), d)) == {
        "name": "run", "size": [256, 384], "inner": {"lr": 0.08, "mode": "b"}, "tags": []
    }
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_overrides(["inner.lr"])
