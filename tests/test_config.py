"""The config system: presets extending presets, overrides, type and key validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from plda.config.loader import (apply_overrides, deep_merge, dump_config, from_dict, load_config,
                                parse_override, save_config, to_dict)
from plda.errors import ConfigError


@dataclass
class Optim:
    lr: float = 0.01
    momentum: float = 0.9
    amp: Literal["none", "bf16", "fp16"] = "none"


@dataclass
class Schema:
    name: str = "run"
    steps: int = 10
    scales: tuple[float, ...] = (1.0,)
    crop: Optional[int] = 448
    flip: bool = True
    optim: Optim = field(default_factory=Optim)


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_without_preset():
    cfg = load_config(Schema)
    assert cfg == Schema()


def test_extends_chain_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", {"steps": 5, "optim": {"lr": 0.1, "momentum": 0.5}})
    write(tmp_path / "mid.yaml", {"extends": "base.yaml", "optim": {"lr": 0.2}})
    child = write(tmp_path / "child.yaml", {"extends": "mid.yaml", "name": "child"})
    cfg = load_config(Schema, child, ["optim.amp=bf16", "scales=[0.5, 1.0, 2]", "crop=null"])
    assert cfg.name == "child"
    assert cfg.steps == 5
    assert cfg.optim.lr == 0.2 and cfg.optim.momentum == 0.5  # nested merge keeps siblings
    assert cfg.optim.amp == "bf16"
    assert cfg.scales == (0.5, 1.0, 2.0) and isinstance(cfg.scales[2], float)
    assert cfg.crop is None


def test_extends_list_later_wins(tmp_path):
    write(tmp_path / "a.yaml", {"steps": 1, "name": "a"})
    write(tmp_path / "b.yaml", {"steps": 2})
    c = write(tmp_path / "c.yaml", {"extends": ["a.yaml", "b.yaml"]})
    cfg = load_config(Schema, c)
    assert (cfg.steps, cfg.name) == (2, "a")


def test_circular_extends_rejected(tmp_path):
    write(tmp_path / "a.yaml", {"extends": "b.yaml"})
    write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(ConfigError, match="circular"):
        load_config(Schema, tmp_path / "a.yaml")


def test_unknown_key_names_key_and_choices():
    with pytest.raises(ConfigError) as exc:
        load_config(Schema, None, ["optim.lrr=0.1"])
    msg = str(exc.value)
    assert "optim.lrr" in msg and "did you mean 'lr'" in msg and "momentum" in msg


def test_wrong_types_rejected():
    with pytest.raises(ConfigError, match="'steps'.*expected int"):
        load_config(Schema, None, ["steps=ten"])
    with pytest.raises(ConfigError, match="'flip'.*expected bool"):
        load_config(Schema, None, ["flip=3"])
    with pytest.raises(ConfigError, match="valid choices: 'none', 'bf16', 'fp16'"):
        load_config(Schema, None, ["optim.amp=fp8"])
    with pytest.raises(ConfigError, match=r"'scales\[1\]'"):
        load_config(Schema, None, ["scales=[1.0, big]"])
    with pytest.raises(ConfigError, match="'optim'.*mapping"):
        load_config(Schema, None, ["optim=3"])


def test_int_accepted_for_float_and_integral_float_for_int():
    cfg = load_config(Schema, None, ["optim.lr=1", "steps=20.0"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.steps == 20 and isinstance(cfg.steps, int)
    with pytest.raises(ConfigError):
        load_config(Schema, None, ["steps=20.5"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.subkey=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("train..lr=1")


def test_missing_preset_lists_builtins(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Schema, tmp_path / "nope.yaml")


def test_invalid_yaml_names_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(Schema, p)


def test_round_trip_through_saved_yaml(tmp_path):
    cfg = load_config(Schema, None, ["optim.lr=0.5", "scales=[0.5,1.5]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(Schema, tmp_path / "config.yaml")
    assert again == cfg
    assert to_dict(cfg)["scales"] == [0.5, 1.5]
    assert "lr: 0.5" in dump_config(cfg)


def test_deep_merge_and_apply_overrides_do_not_mutate():
    base = {"a": {"b": 1, "c": 2}}
    merged = deep_merge(base, {"a": {"b": 3}})
    assert merged == {"a": {"b": 3, "c": 2}} and base == {"a": {"b": 1, "c": 2}}
    out = apply_overrides(base, ["a.c=5", "d.e=x"])
    assert out == {"a": {"b": 1, "c": 5}, "d": {"e": "x"}} and base["a"]["c"] == 2


def test_from_dict_rejects_non_mapping_root():
    with pytest.raises(ConfigError):
        from_dict(Schema, [1, 2])


def test_partial_section_keeps_its_fields_own_defaults():
    """refine.irn.train defaults to IRN's schedule (lr 0.1, batch 32), not TrainConfig's: an
    override of one key must not reset the others to the class defaults."""
    from plda.config import load_run_config

    cfg = load_run_config("voc12_seam_plda_resnet38", ["refine.irn.train.epochs=1", "refine.irn.crop=96"])
    irn = cfg.refine.irn
    assert (irn.train.epochs, irn.train.lr, irn.train.batch_size) == (1, 0.1, 32)
    assert irn.train.reference_optimizer and irn.crop == 96 and irn.fg_threshold == 0.30
    with pytest.raises(ConfigError, match="bg_threshold < fg_threshold"):
        load_run_config("synth_cam", ["refine.irn.bg_threshold=0.5"])
