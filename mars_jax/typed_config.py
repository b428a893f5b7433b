"""Typed config sections: frozen dataclasses built from ``ml_collections`` sections.

Every section of an experiment config (model, loss, optim, input, data, checkpoint, log, ...)
is a ``Section`` subclass. One validation style for all of them:

  * ``Section.from_dict(values)`` refuses unknown keys, naming the section, the key and the
    nearest known keys (a typo is an error, never a silent default), builds nested sections
    from mappings and turns lists into tuples;
  * ``validate()`` (called on construction) uses the ``require*`` helpers, whose messages
    read ``"<section> config: <field> must be <rule>, got <value>"``.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Section")


class ConfigError(ValueError):
    """A config section holds an unknown key or a bad value."""


def unknown_keys_message(section: str, unknown: Iterable[str], known: Iterable[str]) -> str:
    known, unknown = sorted(known), sorted(unknown)
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
        if close:
            hints.append(f"{key!r}: did you mean {' or '.join(map(repr, close))}?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    return f"{section} config: unknown keys {unknown}{hint}; known keys: {known}"


def check_known_keys(cls: type, values: Mapping[str, Any], section: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(unknown_keys_message(section, unknown, known))


@dataclasses.dataclass(frozen=True)
class Section:
    """Base of every typed config section; subclasses set ``SECTION`` and ``validate``."""

    SECTION: ClassVar[str] = "config"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Checks the values; subclasses call the ``require*`` helpers."""

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls: type[T], values: Mapping[str, Any] | None) -> T:
        values = dict(values or {})
        check_known_keys(cls, values, cls.SECTION)
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in values
                         and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if missing:
            raise ConfigError(f"{cls.SECTION} config: missing keys {missing}; it needs "
                              f"{sorted(f.name for f in dataclasses.fields(cls))}")
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.name not in values:
                continue
            value = values[field.name]
            nested = _section_type(hints.get(field.name))
            if nested is not None and isinstance(value, Mapping):
                values[field.name] = nested.from_dict(value)
            elif isinstance(value, list):
                values[field.name] = tuple(value)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (v.to_dict() if isinstance(v := getattr(self, f.name), Section) else v)
                for f in dataclasses.fields(self)}

    # -- validation helpers ---------------------------------------------------------------
    def fail(self, field: str, rule: str) -> typing.NoReturn:
        raise ConfigError(f"{self.SECTION} config: {field} must be {rule}, got "
                          f"{getattr(self, field)!r}")

    def require(self, ok: bool, field: str, rule: str) -> None:
        if not ok:
            self.fail(field, rule)

    def require_one_of(self, field: str, choices: Iterable[Any]) -> None:
        choices = tuple(choices)
        self.require(getattr(self, field) in choices, field, f"one of {choices}")

    def require_positive(self, *fields: str) -> None:
        for field in fields:
            value = getattr(self, field)
            self.require(isinstance(value, int | float) and not isinstance(value, bool)
                         and value > 0, field, "positive")

    def require_non_negative(self, *fields: str) -> None:
        for field in fields:
            value = getattr(self, field)
            self.require(isinstance(value, int | float) and not isinstance(value, bool)
                         and value >= 0, field, ">= 0")

    def require_dtype(self, field: str, *, optional: bool = False) -> None:
        import jax.numpy as jnp

        value = getattr(self, field)
        if value is None and optional:
            return
        try:
            jnp.dtype(value)
        except TypeError:
            self.fail(field, "a dtype name such as 'float32' or 'bfloat16'")


def _section_type(hint: Any) -> type[Section] | None:
    """The Section class of a field annotation (``Spec`` or ``Spec | None``), if any."""
    candidates = typing.get_args(hint) or (hint,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None
