"""Loaders: one module per source format, each returning a validated dataset.

:func:`load` detects the format of a path and dispatches; ``format=`` forces one.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import xarray as xr

from neurodata.errors import FormatError

FORMATS = {
    "nwb": "nwb",
    "suite2p": "suite2p",
    "phy": "phy",
    "matlab": "matlab",
    "celegans": "celegans",
    "neurodata": "stored",
}
"""Format name -> loader module in :mod:`neurodata.loaders`."""


def detect_format(path: str | Path) -> str:
    """Guess the format of a file or folder from its name and contents.

    Parameters
    ----------
    path
        A file (``.nwb``, ``.mat``, ``.nc``) or folder (Suite2p plane or its parent, Phy
        output, the 92-image RSA folder, ``.zarr``).

    Returns
    -------
    str
        A key of :data:`FORMATS`.
    """
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path} does not exist.")
    if path.is_dir():
        if path.suffix == ".zarr":
            return "neurodata"
        if (path / "F.npy").exists() or (path / "plane0").is_dir():
            return "suite2p"
        if (path / "spike_times.npy").exists():
            return "phy"
        if (path / "92_brainRDMs.mat").exists():
            return "matlab"  # the 92-image RSA folder (layout "kriegeskorte2008")
        raise FormatError(
            f"{path}: folder of unknown format; expected a Suite2p plane folder (F.npy), a "
            "Phy/Kilosort folder (spike_times.npy) or the 92-image RSA folder "
            "(92_brainRDMs.mat). Pass format=... to choose a loader."
        )
    suffix = path.suffix.lower()
    if suffix == ".nwb":
        return "nwb"
    if suffix == ".mat":
        return "matlab"
    if suffix in (".nc", ".nc4"):
        return "neurodata"
    raise FormatError(
        f"{path}: unknown file type {suffix!r}; supported: .nwb, .mat, .nc, .zarr, Suite2p and "
        f"Phy folders. Pass format= one of {sorted(FORMATS)}."
    )


def load(path: str | Path, format: str | None = None, **options: Any) -> xr.Dataset:
    """Load a recording into the neurodata data model.

    Parameters
    ----------
    path
        File or folder.
    format
        Force a loader (a key of :data:`FORMATS`); default: :func:`detect_format`.
    **options
        Passed to the loader (e.g. ``sampling_rate=30.0`` for Suite2p).

    Returns
    -------
    xarray.Dataset
        A validated dataset.

    Examples
    --------
    >>> import neurodata
    >>> ds = neurodata.load("recording.nwb")  # doctest: +SKIP
    """
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}.")
    module = importlib.import_module(f"neurodata.loaders.{FORMATS[fmt]}")
    return module.load(Path(path), **options)


# Bound after the submodules load, so that ``neurodata.loaders.connectome`` and
# ``neurodata.loaders.activations`` are the functions, not the modules of the same name.
from neurodata.loaders.activations import activations  # noqa: E402
from neurodata.loaders.connectome import connectome, functional_atlas  # noqa: E402

__all__ = ["FORMATS", "activations", "connectome", "detect_format", "functional_atlas", "load"]
