"""Named plug-ins (scorers, ranking methods, model families) declared as ``"module:object"`` strings that are
imported on first use, as lm-eval-harness registers its tasks. A name can then be checked, listed and put in an
error message without importing torch, and each name is declared in one place: a registry's table, or a file in a
plug-in package (``discover``)."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import ConfigError, RegistryError

T = TypeVar("T")


@dataclass(frozen=True)
class Declaration:
    """Where a name's object lives (``"package.module:object"``); subclasses add what callers may know about the
    name before that module is imported (e.g. which unit kinds a ranking method ranks)."""

    target: str


class Registry(Generic[T]):
    """Names mapped to lazily imported objects: ``get`` imports an entry's module the first time it is asked for."""

    def __init__(self, what: str, entries: Mapping[str, str | Declaration]) -> None:
        self.what = what
        self._entries = {name: e if isinstance(e, Declaration) else Declaration(e) for name, e in entries.items()}
        for name, entry in self._entries.items():
            module, _, attr = entry.target.partition(":")
            if not (module and attr):
                raise RegistryError(f"The {what} {name!r} is registered as {entry.target!r}; a registry entry must "
                                    "read 'package.module:object'.")
        self._loaded: dict[str, T] = {}

    @classmethod
    def discover(cls, what: str, package: str, attr: str, *, support: tuple[str, ...] = ()) -> Registry[T]:
        """One entry per module of ``package``, named after its file and pointing at its ``attr``; ``support``
        names the package's helper modules, which are not entries. Finding the files imports none of them."""
        spec = importlib.util.find_spec(package)
        if spec is None or spec.submodule_search_locations is None:
            raise RegistryError(f"{package} is not a package, so no {what} can be discovered in it.")
        names = sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)
                       if m.name not in support)
        return cls(what, {name: f"{package}.{name}:{attr}" for name in names})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def hint(self, name: str, also: tuple[str, ...] = ()) -> str:
        """The closest registered name and every one (``also``: other accepted words, such as ``all``)."""
        choices = (*also, *self._entries)
        close = difflib.get_close_matches(name, choices, n=1)
        return f"{f'did you mean {close[0]!r}? ' if close else ''}available: {', '.join(choices)}"

    def unknown(self, name: str, label: str | None = None, also: tuple[str, ...] = ()) -> ConfigError:
        """The error for a name not registered; ``label`` (e.g. ``--method``) replaces "The <what>"."""
        return ConfigError(f"{label or f'The {self.what}'} {name!r} is unknown ({self.hint(name, also)}).")

    def check(self, name: str, label: str | None = None) -> None:
        if name not in self._entries:
            raise self.unknown(name, label)

    def declaration(self, name: str) -> Declaration:
        self.check(name)
        return self._entries[name]

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing its module on first use."""
        if name not in self._loaded:
            target = self.declaration(name).target
            module, _, attr = target.partition(":")
            try:
                module_obj = importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module and not module.startswith(f"{exc.name}."):
                    raise  # the module exists but imports something missing: its own error says what
                raise RegistryError(f"The {self.what} {name!r} is registered as {target!r}, and the module "
                                    f"{module} does not exist.") from exc
            if not hasattr(module_obj, attr):
                raise RegistryError(f"The {self.what} {name!r} is registered as {target!r}, and {module} defines "
                                    f"no {attr}.")
            obj: T = getattr(module_obj, attr)
            self._loaded[name] = obj
        return self._loaded[name]
