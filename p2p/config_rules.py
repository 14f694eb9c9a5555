"""The rules a config field carries and how a raw params value is checked against them, for
`p2p.config`: `num(...)` (a numeric range, `Range`), `choice(...)` (a registry's names,
`Names`), the type coercion of a YAML value to a field's type (`coerce`) and `ConfigError`.
`p2p.config` re-exports them.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from p2p.errors import P2PError


class ConfigError(P2PError, ValueError):
    """A params file or override is invalid; the message names the key."""


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric key: an interval (each end open or closed) or a set.

    Every int/float field of the groups below declares one with `num(...)`; `_Group` checks
    them all in one place when a group is built. Floats must also be finite (no nan/inf).
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # True: lo itself is not allowed
    hi_open: bool = False
    choices: tuple[int, ...] = ()

    def __contains__(self, v: float) -> bool:
        if self.choices:
            return v in self.choices
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        if self.choices:
            return " or ".join(map(str, self.choices))
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"{left}{self.lo:g}, {self.hi:g}{right}"


def num(
    default: float,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    one_of: tuple[int, ...] = (),
) -> Any:
    """A numeric field with its allowed range: `lr: float = num(2e-4, gt=0)`."""
    rng = Range(
        lo=gt if gt is not None else ge,
        hi=lt if lt is not None else le,
        lo_open=gt is not None,
        hi_open=lt is not None,
        choices=one_of,
    )
    return field(default=default, metadata={"range": rng})


class Names:
    """The names of a registry, read each time they are needed (so a registry that is costly to
    import is imported only then, and entries added later count). A container for `choice`
    fields and argparse `choices=`."""

    def __init__(self, registry: Callable[[], Iterable[str]]) -> None:
        self._registry = registry

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._registry()))

    def __contains__(self, name: object) -> bool:
        return name in self._registry()


def choice(default: str, names: Names) -> Any:
    """A string field whose values are the names of a registry: `generator: str =
    choice("unet", GENERATOR_NAMES)`; checked with the ranges (a one-line ConfigError)."""
    return field(default=default, metadata={"choices": names})


def coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` (from YAML or an override) as a field of type `tp`; ConfigError naming `key`."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return coerce(args[0], value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "2e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value  # pragma: no cover
