"""Matplotlib figures, one module per model family; no computation happens here.

Every public function of the family modules is reachable as ``neurodata.plot.<name>``
(e.g. ``neurodata.plot.gpfa_latents``); modules are imported on first use.
"""

from __future__ import annotations

import importlib

_FAMILIES = ("data", "gpfa", "gpvae", "hmmglm", "ntf", "bicluster", "rsa")


def __getattr__(name: str):
    for family in _FAMILIES:
        try:
            module = importlib.import_module(f"neurodata.plot.{family}")
        except ModuleNotFoundError as exc:
            if exc.name != f"neurodata.plot.{family}":
                raise
            continue
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module 'neurodata.plot' has no attribute {name!r}")


def __dir__() -> list[str]:
    names = []
    for family in _FAMILIES:
        try:
            names += list(importlib.import_module(f"neurodata.plot.{family}").__all__)
        except ModuleNotFoundError:
            continue
    return sorted(names)
