"""Datasets written by :func:`neurodata.save` (zarr or netCDF)."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from neurodata.data import open_dataset


def load(path: Path, chunks=None) -> xr.Dataset:
    """Open a neurodata zarr store or netCDF file (lazily when ``chunks`` is given)."""
    return open_dataset(path, chunks=chunks)
