"""Shared input handling for the feature-space measures: ``(stimulus, neuron)`` patterns."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from neurodata.errors import InputDataError


def as_patterns(x: Any, name: str, min_stimuli: int = 3) -> np.ndarray:
    """Validate a response matrix and return it as float64 ``(n_stimulus, n_feature)``."""
    if isinstance(x, xr.Dataset):
        if "activity" not in x:
            raise InputDataError(f"{name} is a Dataset without an 'activity' variable.")
        x = x["activity"]
    if isinstance(x, xr.DataArray):
        if set(x.dims) == {"stimulus", "neuron"}:
            x = x.transpose("stimulus", "neuron")
        x = x.values
    arr = np.array(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputDataError(
            f"{name} has shape {arr.shape}; give a (stimulus, neuron) matrix."
        )
    if arr.shape[0] < min_stimuli:
        raise InputDataError(f"{name} has {arr.shape[0]} stimuli; at least {min_stimuli} needed.")
    if not np.all(np.isfinite(arr)):
        raise InputDataError(f"{name} holds NaN or infinite values; drop or impute them first.")
    return arr


def paired(x: Any, y: Any, min_stimuli: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Two response matrices on the same stimuli."""
    a = as_patterns(x, "x", min_stimuli)
    b = as_patterns(y, "y", min_stimuli)
    if a.shape[0] != b.shape[0]:
        raise InputDataError(
            f"x has {a.shape[0]} stimuli and y {b.shape[0]}; give responses to the same stimuli "
            "in the same order."
        )
    if all(isinstance(o, xr.Dataset | xr.DataArray) and "stimulus" in o.coords for o in (x, y)):
        if not np.array_equal(np.asarray(x["stimulus"]), np.asarray(y["stimulus"])):
            raise InputDataError(
                "x and y have different stimulus ids (or orders); align them first "
                "(e.g. y.sel(stimulus=x.stimulus))."
            )
    return a, b
