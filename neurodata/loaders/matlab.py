"""MATLAB files: the Stevenson et al. 2011 M1 reaching recording.

The file holds ``spikes`` (neuron x bin, uint8 counts in 50 ms bins), ``time`` (1 x bin,
seconds), ``handPos`` and ``handVel`` (3 x bin; the third row is all zeros: the task is
planar, so only x and y are kept).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import xarray as xr

from neurodata.data import validate
from neurodata.errors import FormatError, MissingFieldError


def _read_mat(path: Path) -> dict:
    try:
        return scipy.io.loadmat(path, squeeze_me=False)
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise FormatError(
            f"{path}: not a readable MATLAB v5/v7 file ({exc}). MATLAB v7.3 files are HDF5: "
            "open them with h5py."
        ) from exc


def load_stevenson2011(path: Path) -> xr.Dataset:
    """Load the Stevenson 2011 M1 file as spike counts plus hand position and velocity.

    Parameters
    ----------
    path
        ``m1_stevenson_2011.mat``.

    Returns
    -------
    xarray.Dataset
        ``activity(time, neuron)`` spike counts in 50 ms bins, ``behavior(time,
        behavior_channel)`` with channels ``pos_x, pos_y, vel_x, vel_y``.
    """
    mat = _read_mat(path)
    for field in ("spikes", "time", "handPos", "handVel"):
        if field not in mat:
            raise MissingFieldError(f"{path}: field {field!r} is missing; this is not the "
                                    "Stevenson 2011 M1 file.")
    spikes = np.asarray(mat["spikes"]).T
    time = np.asarray(mat["time"], dtype=float).ravel()
    if spikes.shape[0] != time.size:
        raise FormatError(f"{path}: 'spikes' has {spikes.shape[0]} bins but 'time' {time.size}.")
    behavior = np.concatenate([np.asarray(mat["handPos"])[:2], np.asarray(mat["handVel"])[:2]]).T
    dt = float(np.median(np.diff(time)))
    ds = xr.Dataset(
        {
            "activity": (("time", "neuron"), spikes, {"signal": "spike_count",
                                                      "units": "count"}),
            "behavior": (("time", "behavior_channel"), behavior.astype(float)),
        },
        coords={
            "time": ("time", time, {"units": "s"}),
            "neuron_id": ("neuron", np.array([f"n{i:03d}" for i in range(spikes.shape[1])])),
            "behavior_channel": ("behavior_channel", ["pos_x", "pos_y", "vel_x", "vel_y"]),
        },
        attrs={
            "schema_version": "1.0",
            "source": str(path.name),
            "format": "matlab",
            "species": "Macaca mulatta",
            "subject": "stevenson2011",
            "sampling_rate": round(1.0 / dt, 9),
            "bin_size": round(dt, 9),
            "history": [],
        },
    )
    return validate(ds)


def load(path: Path, layout: str = "stevenson2011") -> xr.Dataset:
    """Load a MATLAB file whose ``layout`` neurodata knows (``"stevenson2011"``)."""
    layouts = {"stevenson2011": load_stevenson2011}
    if layout not in layouts:
        raise FormatError(f"unknown MATLAB layout {layout!r}; known: {sorted(layouts)}.")
    return layouts[layout](Path(path))
