"""Registries: the backbones, stage-1 methods and refiners the toolkit can build, each entered
where it is defined::

    from plda.registry import BACKBONES

    @BACKBONES.register("my_net", low_level="stage2")
    class MyNet(Backbone): ...

The config schema, the CLI's choices, the segmentation model's low-level feature and the
benchmark scripts read the names from here. A registry's built-in entries are the modules of
one package. Their names and literal metadata are read from the modules' source (the
``@REGISTRY.register(...)`` decorators), so checking a config or listing the choices imports
no torch; the modules themselves are imported the first time an entry's object is needed
(``get``, ``build``). Entries of one's own come from any importable module: list it under
``imports:`` in a preset (``plda.config``), or import it before building the config.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
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

    def __init__(self, kind: str, package: str, variable: str) -> None:
        self.kind = kind
        self.package = package
        self.variable = variable  # the name the package's modules decorate with
        self._entries: dict[str, Entry] = {}
        self._loaded = False
        self._declared_cache: dict[str, dict] | None = None

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

    def _declared(self) -> dict[str, dict]:
        """The built-in names and their literal metadata as the package's modules declare them,
        read from their source without importing them: modules in ``pkgutil`` order, a module's
        declarations in source order, a decorator list from the bottom up."""
        if self._declared_cache is None:
            found: dict[str, dict] = {}
            for info in pkgutil.iter_modules(self._package_path()):
                path = Path(info.module_finder.path) / f"{info.name}.py"
                if not path.is_file():
                    path = Path(info.module_finder.path) / info.name / "__init__.py"
                tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
                for node in ast.walk(tree):
                    if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                        for decorator in reversed(node.decorator_list):
                            found.update(self._declaration(decorator))
            self._declared_cache = found
        return self._declared_cache

    def _package_path(self) -> list[str]:
        """The package's folders, found without importing it (``find_spec`` of a sub-package
        would import its parents, torch with them)."""
        if self.package in sys.modules:
            return list(sys.modules[self.package].__path__)
        top, *rest = self.package.split(".")
        spec = importlib.util.find_spec(top)
        return [str(Path(folder, *rest)) for folder in spec.submodule_search_locations]

    def _declaration(self, node: ast.expr) -> dict[str, dict]:
        """``{name: meta}`` when ``node`` is ``@<variable>.register("name", ...)``."""
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "register" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == self.variable and node.args):
            return {}
        name = ast.literal_eval(node.args[0])
        meta = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords
                if kw.arg not in (None, "kwargs")}
        return {name: meta}

    def names(self) -> tuple[str, ...]:
        """Every name: the built-ins in their modules' order (read, not imported), then entries
        of one's own in the order they were registered."""
        declared = self._declared()
        return (*declared, *(n for n in self._entries if n not in declared))

    def meta(self, name: str) -> dict:
        """The metadata of ``name`` (a built-in's read from its declaration, not imported)."""
        if name in self._entries:
            return self._entries[name].meta
        declared = self._declared()
        return declared[name] if name in declared else self.get(name).meta

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def get(self, name: str) -> Entry:
        """The entry of ``name``; a ConfigError naming the valid choices when there is none."""
        self._load_builtins()
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


BACKBONES = Registry("backbone", "plda.models.backbones", "BACKBONES")
METHODS = Registry("stage-1 method", "plda.methods", "METHODS")
REFINERS = Registry("refiner", "plda.refinement", "REFINERS")


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
