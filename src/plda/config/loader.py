"""Typed configuration: dataclass schemas, YAML presets that extend each other, CLI overrides.

A preset is a YAML mapping. ``extends: other.yaml`` (a path relative to the preset, or a
built-in preset name) — or a list of them — is loaded first and the preset's keys are merged
over it, recursively for mappings. Command-line overrides ``a.b.c=value`` are applied last;
values are parsed as YAML (``train.lr=0.02``, ``cam.scales=[0.5,1.0]``, ``model.pretrained=null``).

The merged mapping is then checked against the dataclass schema: an unknown key or a value of
the wrong type is a :class:`~plda.errors.ConfigError` that names the full key, the expected
type and the valid choices.
"""

from __future__ import annotations

import dataclasses
import math
import difflib
import types
from pathlib import Path
from typing import (Annotated, Any, Literal, Mapping, TypeVar, Union, get_args, get_origin,
                    get_type_hints)

import yaml

from plda.errors import ConfigError
from plda.utils.io import atomic_write_text, read_text_file

T = TypeVar("T")

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
_MAX_EXTENDS_DEPTH = 16


def list_presets() -> list[str]:
    """Names of the built-in presets (``src/plda/configs/*.yaml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(ref: str | Path, base_dir: Path | None = None) -> Path:
    """Find a preset file: an existing path (absolute or relative to ``base_dir``/cwd), or a
    built-in preset name with or without ``.yaml``."""
    ref_s = str(ref)
    candidates = []
    p = Path(ref_s)
    if base_dir is not None and not p.is_absolute():
        candidates.append(base_dir / p)
    candidates.append(p)
    name = p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml"
    candidates.append(PRESET_DIR / name)
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise ConfigError(
        f"config {ref_s!r} not found (looked in {', '.join(str(c) for c in candidates)}); "
        f"built-in presets: {', '.join(list_presets()) or 'none'}"
    )


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(read_text_file(path, "config", ConfigError))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """Merge ``over`` onto ``base``; nested mappings merge, everything else replaces."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml_with_extends(path: str | Path, _depth: int = 0, _seen: tuple = ()) -> dict:
    """Read a preset and everything it extends, merged (later wins)."""
    path = resolve_preset(path)
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"circular 'extends' in config presets: {chain}")
    if _depth > _MAX_EXTENDS_DEPTH:
        raise ConfigError(f"{path}: 'extends' nested deeper than {_MAX_EXTENDS_DEPTH}")
    data = _read_yaml(path)
    parents = data.pop("extends", None)
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: 'extends' must be a preset name/path or a list of them")
    merged: dict = {}
    for parent in parents:
        parent_path = resolve_preset(parent, base_dir=path.parent)
        merged = deep_merge(merged, load_yaml_with_extends(parent_path, _depth + 1, (*_seen, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=0.02'`` → ``(['train', 'lr'], 0.02)`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    out = dict(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(
                        f"override {text!r}: {'.'.join(parts[: i + 1])} is not a section")
                child = dict(child)
            else:
                child = dict(child)
            node[part] = child
            node = child
        node[parts[-1]] = value
    return out


# ---------------------------------------------------------------- schema validation

def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    registry = _registry_of(tp)
    if registry is not None:
        return f"a registered {registry.kind} name"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (list, tuple):
        args = get_args(tp)
        inner = _type_name(args[0]) if args else "any"
        return f"list of {inner}"
    return getattr(tp, "__name__", str(tp))


def _registry_of(tp: Any):
    """The registry an ``Annotated[str, REGISTRY]`` field takes its names from, else None."""
    if get_origin(tp) is not Annotated:
        return None
    from plda.registry import Registry

    return next((m for m in tp.__metadata__ if isinstance(m, Registry)), None)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to the annotation ``tp``; raise ConfigError naming ``key``."""
    origin = get_origin(tp)

    def bad(extra: str = "") -> ConfigError:
        return ConfigError(
            f"config key '{key}': expected {_type_name(tp)}, got {value!r}"
            f" ({type(value).__name__}){extra}")

    if tp is Any:
        return value
    registry = _registry_of(tp)
    if registry is not None:
        if not isinstance(value, str) or value not in registry:
            raise ConfigError(f"config key '{key}': {value!r} is not a valid choice; "
                              f"valid choices: {', '.join(repr(c) for c in registry.names())} "
                              f"(a {registry.kind} of one's own: register it, plda.registry, "
                              "and list its module under 'imports')")
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not a valid choice; "
                              f"valid choices: {', '.join(repr(c) for c in choices)}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise bad()
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise bad(" — expected a mapping (section)")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad()
        args = get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"config key '{key}': expected {len(args)} values, "
                                  f"got {len(value)} ({value!r})")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad()
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        if not math.isfinite(value):
            raise bad(" — expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad()


def from_dict(cls: type[T], data: Mapping, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, validating every key and type."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section '{prefix or '<root>'}' must be a mapping, "
                          f"got {type(data).__name__}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            valid = sorted(fields)
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = f"section '{prefix}'" if prefix else "the top level"
            raise ConfigError(f"unknown config key '{full}'{hint}; valid keys in {where}: "
                              f"{', '.join(valid)}")
        factory = fields[key].default_factory
        if isinstance(value, Mapping) and factory not in (dataclasses.MISSING, hints[key]):
            # A section given in part keeps the other values of its field's default (which may
            # differ from the section class's own defaults, e.g. refine.irn.train).
            default = factory()
            if dataclasses.is_dataclass(default):
                value = deep_merge(to_dict(default), value)
        kwargs[key] = _convert(value, hints[key], full)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config section '{prefix or '<root>'}': {exc}") from exc
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass → plain dict/list/scalars (tuples become lists), for YAML/JSON/checkpoints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_config(cls: type[T], preset: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load ``preset`` (with its ``extends`` chain; ``None`` = the schema defaults), apply
    ``overrides``, validate against ``cls``."""
    data = load_yaml_with_extends(preset) if preset is not None else {}
    data = apply_overrides(data, list(overrides))
    imports = data.get("imports") if isinstance(data, Mapping) else None
    if imports:  # modules that register backbones, methods or refiners of one's own
        from plda.registry import import_modules

        if not isinstance(imports, (list, tuple)):
            raise ConfigError(f"config key 'imports': expected a list of module names, got "
                              f"{imports!r}")
        import_modules(imports)
    if preset is None:
        return from_dict(cls, data)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        # The key alone does not say which file of a long 'extends' chain to open.
        origin = "its overrides" if overrides else "the files it extends"
        raise ConfigError(f"{exc} (in config {preset} or {origin})") from None


class _Dumper(yaml.SafeDumper):
    """Sections in block style, lists of scalars inline (``scales: [0.5, 1.0]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_config(obj: Any) -> str:
    return yaml.dump(to_dict(obj), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def save_config(obj: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, dump_config(obj))


__all__ = [
    "PRESET_DIR", "apply_overrides", "deep_merge", "dump_config", "from_dict", "list_presets",
    "load_config", "load_yaml_with_extends", "parse_override", "resolve_preset", "save_config",
    "to_dict",
]
