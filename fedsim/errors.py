"""User-facing errors: each prints as one line naming what was wrong and how to fix it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class FedsimError(Exception):
    """An error caused by the user's input or environment (config, data, files).

    The CLI prints its message as a single line and exits with code 2, without a traceback.
    """


class ConfigError(FedsimError):
    """A bad override, an unknown group option or an invalid value."""


class DataError(FedsimError):
    """Dataset files missing or unreadable."""


class RoundFailedError(FedsimError):
    """Too few clients replied with a usable update for a round to be aggregated."""


def build_option(kind: str, name: str, factory: Callable[..., T], **options: Any) -> T:
    """``factory(**options)``; a wrong or invalid option becomes a one-line ConfigError naming ``kind`` and ``name``."""
    try:
        return factory(**options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{kind} '{name}' got a bad option: {err}") from err
