"""One role setting's declaration: its default, what it means, its type and its allowed values.

roles/defaults.py declares every setting as `S(default, "what it means", type=..., choices=...)`;
a plain value there is a setting too, typed by its default. The types are names a reader knows:

    str  int  float (an int is fine)  bool  list  dict  path (a string naming a file or directory)
    any (no check), and "T|null" where None is allowed (e.g. "int|null").

When `type` is left out it comes from the default (None gives "any"). `choices` lists the values
allowed; a dict of choices is keyed by the host's `runtime_engine` (the quantisations differ per
engine). `problem()` says what is wrong with a value, naming the allowed ones, or returns None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_CHECKS = {
    "str": lambda v: isinstance(v, str),
    "path": lambda v: isinstance(v, str) and bool(v),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list | tuple),
    "dict": lambda v: isinstance(v, dict),
    "any": lambda v: True,
}
ENGINE_SETTING = "runtime_engine"  # what a dict of choices is keyed by


@dataclass(frozen=True)
class S:
    """A setting: default, one line on what it means, type (see the module doc), allowed values."""

    default: Any
    doc: str = ""
    type: str = ""
    choices: tuple | Mapping[str, tuple] | None = None
    example: Any = None  # shown in docs/settings.md when the default does not show a use
    kinds: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self):
        kinds = tuple((self.type or _infer(self.default)).split("|"))
        unknown = [kind for kind in kinds if kind not in _CHECKS and kind != "null"]
        if unknown:
            raise ValueError(f"unknown setting type {unknown[0]!r}; use one of {', '.join(_CHECKS)}, null")
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "type", "|".join(kinds))

    def allowed(self, engine: str | None = None) -> tuple | None:
        """The allowed values (for `engine` when they differ per engine), or None when any of the type."""
        if isinstance(self.choices, Mapping):
            return tuple(self.choices.get(engine, ()))
        return self.choices

    def problem(self, name: str, value: Any, engine: str | None = None) -> str | None:
        """Why `value` is no valid `name`, naming the type or the allowed values; None when it is."""
        if value is None and "null" in self.kinds:
            return None
        if not any(_CHECKS[kind](value) for kind in self.kinds if kind != "null"):
            return f"{name} is {value!r}, which is no {self.type.replace('|', ' or ')}"
        allowed = self.allowed(engine)
        if allowed is None or value in allowed:
            return None
        where = f" with runtime_engine {engine!r}" if isinstance(self.choices, Mapping) else ""
        return f"{name} is {value!r}; allowed{where}: {', '.join(map(repr, allowed))}"


def _infer(default: Any) -> str:
    for kind, python_type in (("bool", bool), ("int", int), ("float", float), ("str", str), ("list", list),
                              ("dict", dict)):
        if isinstance(default, python_type):
            return kind
    return "any"


def declare(settings: Mapping[str, Any]) -> dict[str, S]:
    """Every entry as an S: plain values become settings typed by their default."""
    return {name: value if isinstance(value, S) else S(value) for name, value in settings.items()}
