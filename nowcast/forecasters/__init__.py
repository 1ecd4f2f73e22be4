"""Forecasters, picked by name from one table (after pySTEPS' ``nowcasts.interface``).

``get_forecaster("persistence")``, ``"extrapolation"``, ``"sprog"`` and ``"steps"`` give the
baselines of :data:`METHODS`; any other name is a trained model of the registry
(``models/NAME/VERSION``, see :mod:`nowcast.artifacts`), given as ``NAME`` (its live
version, else its latest) or ``NAME@VERSION``. An unknown name is an error that lists the valid ones. The
command line, the evaluation job and the service all resolve names here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nowcast import artifacts
from nowcast.errors import InputError, UnknownNameError
from nowcast.forecasters.base import Forecaster, PreparedForecast, Spacing
from nowcast.forecasters.extrapolation import Extrapolation
from nowcast.forecasters.persistence import Persistence
from nowcast.forecasters.sprog import SProg
from nowcast.forecasters.steps import Steps

#: The methods that need no training, by name; each builds its forecaster from keyword options.
METHODS: dict[str, Callable[..., Forecaster]] = {
    "persistence": Persistence,
    "extrapolation": Extrapolation,
    "sprog": SProg,
    "steps": Steps,
}


#: The trained model served when none is named; without it in the registry, and whenever a
#: model fails or is late, the pySTEPS extrapolation answers.
DEFAULT_TRAINED_MODEL = "default-gan"
FALLBACK_MODEL = "extrapolation"


def default_model(models_dir: str | Path | None = None) -> str:
    """The name served when none is given: the shipped trained model where the registry has it."""
    return DEFAULT_TRAINED_MODEL if DEFAULT_TRAINED_MODEL in artifacts.list_models(models_dir) else FALLBACK_MODEL


@dataclass(frozen=True)
class ForecasterName:
    """A resolved name: a method of :data:`METHODS` (no version) or a trained model at a version."""

    name: str
    version: str | None = None

    @property
    def trained(self) -> bool:
        return self.version is not None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name


def builtin_names() -> list[str]:
    """The methods that need no training."""
    return sorted(METHODS)


def available(models_dir: str | Path | None = None) -> list[str]:
    """Every name ``get_forecaster`` accepts: the methods and the trained models."""
    return builtin_names() + artifacts.list_models(models_dir)


def resolve(name: str, version: str | None = None, *, models_dir: str | Path | None = None) -> ForecasterName:
    """``NAME``, ``NAME@VERSION`` or (``NAME``, ``version``) as a name this table holds.

    A trained model without a version is its live one (``models/NAME/LIVE``), else its latest.
    Unknown names and versions raise :class:`UnknownNameError` listing the valid ones; a
    version for a method, or two versions that disagree, :class:`InputError` naming the
    field ``version``.
    """
    base, _, inline = name.partition("@")
    if inline and version and inline != version:
        raise InputError(f"model {name!r} names version {inline!r} but version {version!r} was asked", field="version")
    version = inline or version or None
    if base in METHODS:
        if version is not None:
            raise InputError(f"{base!r} is a built-in method and has no versions (asked for {version!r})",
                             field="version")
        return ForecasterName(base)
    if base not in artifacts.list_models(models_dir):
        raise UnknownNameError(f"unknown forecaster {base!r}; valid names are: {', '.join(available(models_dir))}")
    versions = artifacts.list_versions(base, models_dir)
    if version is None:
        return ForecasterName(base, artifacts.default_version(base, models_dir))
    if version not in versions:
        raise UnknownNameError(f"model {base!r} has no version {version!r}; versions: {', '.join(versions)}")
    return ForecasterName(base, version)


def get_forecaster(name: str, version: str | None = None, *, models_dir: str | Path | None = None,
                   device: str | None = None, **options: Any) -> Forecaster:
    """The forecaster called ``name`` (see :func:`resolve`); ``options`` go to a method's constructor."""
    resolved = resolve(name, version, models_dir=models_dir)
    if not resolved.trained:
        return METHODS[resolved.name](**options)
    if options:
        raise InputError(f"trained model {resolved.label} takes no options; got {sorted(options)}")
    from nowcast.gan.forecaster import GANForecaster  # torch is imported only for trained models

    folder = artifacts.verified_folder(resolved.name, resolved.version, models_dir)
    return GANForecaster.from_artifact(folder, device=device)


__all__ = [
    "METHODS",
    "Forecaster",
    "ForecasterName",
    "PreparedForecast",
    "Spacing",
    "available",
    "builtin_names",
    "get_forecaster",
    "resolve",
]
