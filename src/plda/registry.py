"""Registries: the backbones, stage-1 methods and refiners the toolkit can build, each entered
where it is defined::

    from plda.registry import BACKBONES

    @BACKBONES.register("my_net", low_level="stage2")
    class MyNet(Backbone): ...

The config schema, the CLI's choices, the segmentation model's low-level feature and the
benchmark scripts read the names from here. A registry's built-in entries are the modules of
one package, imported (torch with them) the first time a name is looked up, so reading this
module stays cheap. Entries of one's own come from any importable module: list it under
``imports:`` in a preset (``plda.config``), or import it before building the config.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from plda.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """One registered name: the object (class or factory), keyword arguments it is called with,
    and free metadata (a backbone's ``low_level`` feature, a refiner's description)."""

    name: str
    obj: Any
    kwargs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def build(self, *args, **kwargs):
        return self.obj(*args, **self.kwargs, **kwargs)


class Registry:
    """Names → :class:`Entry`. ``package``: the package whose modules define the built-ins."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, *, kwargs: dict | None = None,
                 **meta) -> Callable[[Any], Any]:
        """Decorator entering the decorated class or function under ``name``. Entering the same
        name again from the same place (a module imported twice) replaces the entry; from
        another place it is an error."""
        if not name or not isinstance(name, str):
            raise ConfigError(f"{self.kind} registry: a name must be a non-empty string, "
                              f"got {name!r}")

        def decorate(obj):
            old = self._entries.get(name)
            if old is not None and _origin(old.obj) != _origin(obj):
                raise ConfigError(f"{self.kind} {name!r} is registered twice: by "
                                  f"{_origin(old.obj)} and by {_origin(obj)}")
            self._entries[name] = Entry(name, obj, dict(kwargs or {}), dict(meta))
            return obj

        return decorate

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register toys clean up with it)."""
        self._entries.pop(name, None)

    def _load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> tuple[str, ...]:
        self._load_builtins()
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def get(self, name: str) -> Entry:
        """The entry of ``name``; a ConfigError naming the valid choices when there is none."""
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; expected one of "
                              f"{', '.join(self.names())} (or register your own: "
                              f"plda.registry)")
        return self._entries[name]

    def build(self, name: str, *args, **kwargs):
        return self.get(name).build(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


def _origin(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


BACKBONES = Registry("backbone", "plda.models.backbones")
METHODS = Registry("stage-1 method", "plda.methods")
REFINERS = Registry("refiner", "plda.refinement")


def import_modules(modules, where: str = "imports") -> None:
    """Import each module named (a config's ``imports:``), so the entries it registers exist
    before the config's names are checked."""
    for name in modules:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"config key '{where}': expected a list of module names, got "
                              f"{name!r}")
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"config key '{where}': cannot import module {name!r} ({exc}); "
                              "expected an importable module (on PYTHONPATH or installed)"
                              ) from exc


__all__ = ["BACKBONES", "Entry", "METHODS", "REFINERS", "Registry", "import_modules"]
