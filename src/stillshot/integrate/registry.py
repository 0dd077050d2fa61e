"""Integrators chosen by name (``integration.algorithm``).

An integrator is a function ``integrate(pixels, geometry, options) -> dict``:
it gets the shot's :class:`~stillshot.integrate.pixels.ShotPixels`, the
reflections' :class:`~stillshot.integrate.summation.ShoeboxGeometry` and the
:class:`~stillshot.integrate.options.IntegrationOptions`, and returns the
integrated columns (see :func:`stillshot.integrate.summation.run_kernel`).
A new method is one new module that registers itself here.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["get", "names", "register"]

_INTEGRATORS: dict[str, Callable] = {}


def register(name: str) -> Callable:
    """Decorator registering an integrator under ``name``."""

    def deco(func: Callable) -> Callable:
        _INTEGRATORS[name] = func
        return func

    return deco


def _load() -> None:
    from stillshot.integrate import summation  # noqa: F401  (registers summation and profile)


def names() -> list[str]:
    """Registered integrator names (the default, ``summation``, first)."""
    _load()
    return sorted(_INTEGRATORS, key=lambda n: (n != "summation", n))


def get(name: str) -> Callable:
    """The integrator registered as ``name`` (ValueError naming the known ones)."""
    _load()
    try:
        return _INTEGRATORS[name]
    except KeyError:
        raise ValueError(f"unknown integration algorithm {name!r}; known: {', '.join(names())}") from None
