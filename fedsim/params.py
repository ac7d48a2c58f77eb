"""Typed, range-checked config schemas: one dataclass per config option, checked in one place.

A schema is a dataclass whose fields are the option's keys, each with its type annotation and a
:func:`spec` (what the key means and which values are allowed). The values themselves live in the
option's YAML file (``configs/<group>/<option>.yaml``), so fields have no defaults unless the
schema belongs to a class built from the config (attacks and defences), where the dataclass is the
option itself. :func:`check` compares a composed config node with its schema and raises one
:class:`~fedsim.errors.ConfigError` line for the first problem:

    strategy.mu=-1: must be >= 0 (FedProx proximal weight)
    partition.alpha='abc': expected a number (Dirichlet concentration of the label split)
    strategy.mux=0.1: no such key; did you mean strategy.mu?
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf

from fedsim.errors import ConfigError

UNSET: Any = dataclasses.MISSING


@dataclass(frozen=True)
class Rule:
    """What a key means and the range or choices it allows (``None``: no bound)."""

    doc: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def problem(self, value: float) -> str | None:
        """Which bound ``value`` breaks, if any."""
        if self.ge is not None and not value >= self.ge:
            return f"must be >= {self.ge:g}"
        if self.gt is not None and not value > self.gt:
            return f"must be > {self.gt:g}"
        if self.le is not None and not value <= self.le:
            return f"must be <= {self.le:g}"
        if self.lt is not None and not value < self.lt:
            return f"must be < {self.lt:g}"
        return None


def spec(
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    default: Any = UNSET,
) -> Any:
    """A schema field: its meaning and bounds; no default (the YAML holds the value) unless given."""
    rule = Rule(doc, ge, gt, le, lt)
    if default is UNSET:
        return dataclasses.field(metadata={"rule": rule})
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"rule": rule})
    return dataclasses.field(default=default, metadata={"rule": rule})


def suggest(key: str, known: list[str]) -> str:
    """``; did you mean X?`` for the closest of ``known`` to ``key``, or nothing."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def shown(value: Any) -> str:
    """A config value as an error message shows it."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return repr(value) if isinstance(value, str) else str(value)


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def type_problem(value: Any, tp: Any) -> str | None:
    """Why ``value`` is not of type ``tp`` (None if it is); numbers must be finite."""
    if tp is Any:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        problems = [type_problem(value, a) for a in options if a is not type(None)]
        return None if any(p is None for p in problems) else f"expected {_type_name(tp)}"
    if origin is Literal:
        return None if value in typing.get_args(tp) else f"expected {_type_name(tp)}"
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple, ListConfig)):
            return f"expected {_type_name(tp)}"
        inner = typing.get_args(tp)[0]
        bad = next((p for p in (type_problem(v, inner) for v in value) if p), None)
        return f"expected {_type_name(tp)}" if bad else None
    if tp is dict or origin is dict:
        return None if isinstance(value, (dict, DictConfig)) else f"expected {_type_name(dict)}"
    if tp is bool:
        return None if isinstance(value, bool) else f"expected {_type_name(bool)}"
    if tp is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"expected {_type_name(int)}"
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected {_type_name(float)}"
        return None if math.isfinite(value) else "expected a finite number"
    if tp is str:
        return None if isinstance(value, str) else f"expected {_type_name(str)}"
    return None


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple, ListConfig)):
        return [v for item in value for v in _numbers(item)]
    return []


def check(prefix: str, schema: type, node: Mapping[str, Any] | DictConfig, ignore: tuple[str, ...] = ()) -> None:
    """Raise a one-line ConfigError for the first key of ``node`` that ``schema`` does not allow.

    ``prefix`` is the node's dotted path in the run config (``strategy``), used in the message;
    keys in ``ignore`` are neither required nor checked.
    """
    hints = typing.get_type_hints(schema, include_extras=False)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.name not in ignore}
    dotted = f"{prefix}." if prefix else ""
    for key in map(str, node):
        if key not in fields and key not in ignore:
            raise ConfigError(
                f"{dotted}{key}={shown(node[key])}: no such key{suggest(str(key), list(fields))}".replace(
                    "did you mean ", f"did you mean {dotted}"
                )
            )
    for name, field in fields.items():
        if name not in node:
            if field.default is UNSET and field.default_factory is UNSET:
                raise ConfigError(f"{dotted}{name} is missing: add it to the config (it has no default)")
            continue
        value = node[name]
        rule: Rule | None = field.metadata.get("rule")
        about = f" ({rule.doc})" if rule and rule.doc else ""
        problem = type_problem(value, hints[name])
        if problem is None and rule is not None:
            problem = next((p for p in (rule.problem(v) for v in _numbers(value)) if p), None)
        if problem:
            raise ConfigError(f"{dotted}{name}={shown(value)}: {problem}{about}")
    validate = getattr(schema, "validate", None)
    if callable(validate):
        message = validate(node)
        if message:
            raise ConfigError(f"{dotted.rstrip('.')}: {message}" if prefix else message)


def all_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config tree (for suggestions)."""
    if not isinstance(node, (DictConfig, dict)):
        return [prefix] if prefix else []
    keys = [prefix] if prefix else []
    for key in map(str, node):
        keys += all_keys(node[key], f"{prefix}.{key}" if prefix else key)
    return keys
