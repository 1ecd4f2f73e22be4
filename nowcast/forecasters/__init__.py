"""Forecasters, picked by name from a registry (after pysteps' ``get_method``).

``get_forecaster("persistence")`` and ``get_forecaster("extrapolation")`` give the
baselines; any other name is looked up in the model registry (``models/NAME/VERSION``,
see :mod:`nowcast.artifacts`), with an optional ``NAME@VERSION``. An unknown name raises
an error that lists the valid names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nowcast.errors import UnknownNameError
from nowcast.forecasters.base import Forecaster

_BUILTIN: dict[str, Callable[..., Forecaster]] = {}


def register(name: str) -> Callable[[Callable[..., Forecaster]], Callable[..., Forecaster]]:
    """Register a forecaster factory under ``name``."""

    def decorator(factory: Callable[..., Forecaster]) -> Callable[..., Forecaster]:
        _BUILTIN[name] = factory
        return factory

    return decorator


def builtin_names() -> list[str]:
    _load_builtins()
    return sorted(_BUILTIN)


def available(models_dir: str | Path | None = None) -> list[str]:
    """Every name ``get_forecaster`` accepts: baselines and trained models."""
    from nowcast import artifacts

    return builtin_names() + sorted(artifacts.list_models(models_dir))


def get_forecaster(name: str, *, models_dir: str | Path | None = None, device: str | None = None,
                   **kwargs: Any) -> Forecaster:
    """The forecaster called ``name`` (``NAME`` or ``NAME@VERSION`` for a trained model)."""
    _load_builtins()
    if name in _BUILTIN:
        return _BUILTIN[name](**kwargs)
    from nowcast import artifacts

    model_name, _, version = name.partition("@")
    if model_name in artifacts.list_models(models_dir):
        return artifacts.load_forecaster(model_name, version or None, models_dir=models_dir, device=device)
    raise UnknownNameError(
        f"unknown forecaster {name!r}; valid names are: {', '.join(available(models_dir))}"
    )


def _load_builtins() -> None:
    # Imported here so that registering does not pull pysteps into every import.
    from nowcast.forecasters import extrapolation, persistence  # noqa: F401


__all__ = ["Forecaster", "available", "builtin_names", "get_forecaster", "register"]
