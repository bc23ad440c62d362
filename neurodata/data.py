"""The neurodata data model: one :class:`xarray.Dataset` per recording session.

Dimension names are singular and fixed (see ``ARCHITECTURE.md``): ``time``, ``neuron``,
``trial``, ``animal``, ``spike``, ``behavior_channel``, ``stimulus``, ``pre``/``post``,
``interval``/``bound``. ``activity`` holds the signal the models use; its ``signal`` and
``units`` attrs say what it is. Dataset attrs carry provenance and are only str, numbers or
lists of them, so every dataset round-trips through netCDF and zarr unchanged.

This module holds the constructors (:func:`from_arrays`, :func:`from_spike_times`),
:func:`bin_spikes`, :func:`validate` and the storage round trip (:func:`save`,
:func:`open_dataset`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from neurodata.errors import FormatError, InputDataError, OutputExistsError, SchemaError

SCHEMA_VERSION = "1.0"

SIGNALS = ("spike_count", "rate", "dff", "fluorescence", "deconvolved", "zscore")
"""Allowed values of ``activity.attrs['signal']``."""

ACTIVITY_LAYOUTS = (
    ("time", "neuron"),
    ("trial", "time", "neuron"),
    ("animal", "time", "neuron"),
    ("stimulus", "neuron"),
    ("trial", "stimulus", "neuron"),
)
"""The dimension orders ``activity`` may have."""

DEFAULT_UNITS = {
    "spike_count": "count",
    "rate": "Hz",
    "dff": "1",
    "fluorescence": "a.u.",
    "deconvolved": "a.u.",
    "zscore": "1",
}

_ATTR_SCALARS = (str, int, float, np.integer, np.floating)


# --------------------------------------------------------------------------- validation


def _check_attr_value(owner: str, key: str, value: Any) -> None:
    ok = isinstance(value, _ATTR_SCALARS) and not isinstance(value, bool | np.bool_)
    if isinstance(value, list | tuple):
        ok = all(
            isinstance(v, _ATTR_SCALARS) and not isinstance(v, bool | np.bool_) for v in value
        )
    if isinstance(value, np.ndarray):
        ok = value.ndim == 1 and value.dtype.kind in "iufU"
    if not ok:
        raise SchemaError(
            f"{owner} attr {key!r} is a {type(value).__name__} ({value!r:.80}); attrs must be "
            "str, numbers or lists of them so that the dataset round-trips through netCDF and "
            "zarr. Encode it as a JSON string or a number."
        )


def _check_time(ds: xr.Dataset) -> None:
    if "time" not in ds.coords:
        raise SchemaError(
            "dimension 'time' has no coordinate; give times in seconds, e.g. "
            "ds.assign_coords(time=np.arange(n) / sampling_rate)."
        )
    t = np.asarray(ds["time"].values)
    if t.dtype.kind not in "fiu":
        raise SchemaError(f"coordinate 'time' has dtype {t.dtype}; it must be float seconds.")
    if t.size and not np.all(np.isfinite(t)):
        raise SchemaError("coordinate 'time' contains NaN or Inf; drop or fix those samples.")
    if t.size > 1 and not np.all(np.diff(t) > 0):
        bad = int(np.argmax(~(np.diff(t) > 0)))
        raise SchemaError(
            f"coordinate 'time' is not strictly increasing (at index {bad}: {t[bad]!r} then "
            f"{t[bad + 1]!r}); sort the samples and drop duplicated timestamps."
        )
    if ds["time"].attrs.get("units", "s") != "s":
        raise SchemaError(
            f"coordinate 'time' has units {ds['time'].attrs['units']!r}; store times in seconds "
            "with attrs units='s'."
        )


def _check_neuron(ds: xr.Dataset) -> None:
    if "neuron_id" not in ds.coords:
        raise SchemaError(
            "dimension 'neuron' has no 'neuron_id' coordinate; add one, e.g. "
            "ds.assign_coords(neuron_id=('neuron', [str(i) for i in range(n)]))."
        )
    ids = ds["neuron_id"]
    if ids.dims != ("neuron",):
        raise SchemaError(f"'neuron_id' has dims {ids.dims}; it must lie on ('neuron',).")
    values = np.asarray(ids.values)
    if values.dtype.kind not in "UO":
        raise SchemaError(
            f"'neuron_id' has dtype {values.dtype}; it must hold strings (use .astype(str))."
        )
    if len(set(values.tolist())) != values.size:
        dup = sorted({v for v in values.tolist() if values.tolist().count(v) > 1})[:5]
        raise SchemaError(f"'neuron_id' has duplicated ids {dup}; every neuron needs its own id.")


def _check_activity(ds: xr.Dataset) -> None:
    act = ds["activity"]
    if act.dims not in ACTIVITY_LAYOUTS:
        raise SchemaError(
            f"'activity' has dims {act.dims}; allowed layouts are "
            f"{[list(d) for d in ACTIVITY_LAYOUTS]}. Use ds.transpose(...) or rename dims."
        )
    signal = act.attrs.get("signal")
    if signal not in SIGNALS:
        raise SchemaError(
            f"'activity' attr 'signal' is {signal!r}; set it to one of {list(SIGNALS)}, e.g. "
            "ds['activity'].attrs['signal'] = 'dff'."
        )
    if "units" not in act.attrs:
        raise SchemaError(
            f"'activity' has no 'units' attr; set it (e.g. {DEFAULT_UNITS[signal]!r} for "
            f"signal {signal!r})."
        )
    if act.dtype.kind not in "fiub":
        raise SchemaError(f"'activity' has dtype {act.dtype}; it must be numeric.")


def _check_spikes(ds: xr.Dataset) -> None:
    for name in ("spike_time", "spike_neuron"):
        if name not in ds.variables:
            raise SchemaError(
                f"dimension 'spike' is present but variable {name!r} is missing; the ragged "
                "spike table needs both spike_time(spike) and spike_neuron(spike)."
            )
        if ds[name].dims != ("spike",):
            raise SchemaError(f"{name!r} has dims {ds[name].dims}; it must be ('spike',).")
    if "neuron" not in ds.dims:
        raise SchemaError("a spike table needs a 'neuron' dimension for spike_neuron to index.")
    idx = np.asarray(ds["spike_neuron"].values)
    if idx.dtype.kind not in "iu":
        raise SchemaError(f"'spike_neuron' has dtype {idx.dtype}; it must be integer indices.")
    if idx.size and (idx.min() < 0 or idx.max() >= ds.sizes["neuron"]):
        raise SchemaError(
            f"'spike_neuron' holds indices outside [0, {ds.sizes['neuron']}); they index the "
            "'neuron' dimension by position."
        )
    st = np.asarray(ds["spike_time"].values)
    if st.size and not np.all(np.isfinite(st)):
        raise SchemaError("'spike_time' contains NaN or Inf; drop those spikes.")


def validate(ds: xr.Dataset) -> xr.Dataset:
    """Check that ``ds`` follows the neurodata data model and return it unchanged.

    Only coordinates and metadata are read: lazy (dask-backed) variables stay lazy.

    Parameters
    ----------
    ds
        A recording, response-matrix or connectome dataset.

    Returns
    -------
    xarray.Dataset
        ``ds`` itself, so that ``validate`` can be chained.

    Raises
    ------
    SchemaError
        Naming the variable, coordinate or attr at fault and the fix.

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_arrays(np.zeros((100, 3)), sampling_rate=10.0)
    >>> neurodata.validate(ds) is ds
    True
    """
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(
            f"expected an xarray.Dataset, got {type(ds).__name__}; build one with "
            "neurodata.from_arrays(...) or neurodata.from_spike_times(...)."
        )
    for key, value in ds.attrs.items():
        _check_attr_value("dataset", key, value)
    for name, var in ds.variables.items():
        for key, value in var.attrs.items():
            _check_attr_value(f"variable {name!r}", key, value)
    if "history" in ds.attrs and not isinstance(ds.attrs["history"], str | list | tuple):
        raise SchemaError("dataset attr 'history' must be a list of str.")
    if "time" in ds.dims:
        _check_time(ds)
    if "neuron" in ds.dims:
        _check_neuron(ds)
    if "activity" in ds.data_vars:
        _check_activity(ds)
    if "spike" in ds.dims:
        _check_spikes(ds)
    if "behavior" in ds.data_vars and ds["behavior"].dims not in (
        ("time", "behavior_channel"),
        ("trial", "time", "behavior_channel"),
        ("animal", "time", "behavior_channel"),
    ):
        raise SchemaError(
            f"'behavior' has dims {ds['behavior'].dims}; it must be (time, behavior_channel) "
            "or (trial, time, behavior_channel)."
        )
    if "weight" in ds.data_vars and ds["weight"].dims[-2:] != ("pre", "post"):
        raise SchemaError(f"'weight' has dims {ds['weight'].dims}; it must end in (pre, post).")
    if "recorded" in ds.data_vars and ds["recorded"].dtype != bool:
        raise SchemaError("'recorded' must be a boolean mask (animal, neuron).")
    return ds


# --------------------------------------------------------------------------- constructors


def _base_attrs(attrs: Mapping[str, Any] | None, sampling_rate: float | None) -> dict:
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "history": []}
    if sampling_rate is not None:
        out["sampling_rate"] = float(sampling_rate)
    out.update({k: v for k, v in (attrs or {}).items() if v is not None})
    return out


def _neuron_ids(ids: Sequence | None, n: int, what: str) -> np.ndarray:
    if ids is None:
        return np.array([str(i) for i in range(n)])
    ids = np.asarray([str(i) for i in ids])
    if ids.size != n:
        raise InputDataError(f"neuron_ids has {ids.size} entries but {what} has {n} neurons.")
    return ids


def with_history(ds: xr.Dataset, step: str) -> xr.Dataset:
    """Return ``ds`` with ``step`` appended to its ``history`` attr (``ds`` is not mutated)."""
    out = ds.copy()
    history = ds.attrs.get("history", [])
    history = [history] if isinstance(history, str) else list(history)
    out.attrs = {**ds.attrs, "history": [*history, step]}
    return out


def from_arrays(
    activity: np.ndarray,
    sampling_rate: float,
    *,
    neuron_ids: Sequence | None = None,
    signal: str = "spike_count",
    units: str | None = None,
    start_time: float = 0.0,
    behavior: np.ndarray | None = None,
    behavior_channels: Sequence[str] | None = None,
    trial_conditions: Sequence | None = None,
    neuron_coords: Mapping[str, Sequence] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Build a validated dataset from a ``(time, neuron)`` or ``(trial, time, neuron)`` array.

    Parameters
    ----------
    activity
        Array of shape ``(time, neuron)`` or ``(trial, time, neuron)``.
    sampling_rate
        Samples per second (Hz); time is ``start_time + k / sampling_rate``.
    neuron_ids
        One id per neuron (default ``"0"``, ``"1"``, ...).
    signal
        What the values are: one of :data:`SIGNALS`.
    units
        Units of the values (default from the signal, e.g. ``"count"``).
    start_time
        Time of the first sample in seconds (for trials: relative to the alignment event).
    behavior
        Optional array ``(time, channel)`` or ``(trial, time, channel)`` sampled on the same
        clock.
    behavior_channels
        Names of the behaviour channels.
    trial_conditions
        Optional condition label per trial.
    neuron_coords
        Extra per-neuron coordinates, e.g. ``{"region": [...]}``.
    attrs
        Provenance attrs (``source``, ``subject``, ``session``, ``species``, ...).

    Returns
    -------
    xarray.Dataset

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_arrays(np.random.poisson(1.0, (200, 5)), sampling_rate=20.0)
    >>> dict(ds.sizes)
    {'time': 200, 'neuron': 5}
    """
    act = np.asarray(activity)
    if act.ndim not in (2, 3):
        raise InputDataError(
            f"activity has shape {act.shape}; give (time, neuron) or (trial, time, neuron)."
        )
    if not (np.isfinite(sampling_rate) and sampling_rate > 0):
        raise InputDataError(f"sampling_rate is {sampling_rate!r}; it must be a positive number.")
    if signal not in SIGNALS:
        raise InputDataError(f"signal {signal!r} is not one of {list(SIGNALS)}.")
    dims = ("time", "neuron") if act.ndim == 2 else ("trial", "time", "neuron")
    n_time, n_neuron = act.shape[-2], act.shape[-1]
    coords: dict[str, Any] = {
        "time": ("time", start_time + np.arange(n_time) / float(sampling_rate), {"units": "s"}),
        "neuron_id": ("neuron", _neuron_ids(neuron_ids, n_neuron, "activity")),
    }
    for name, values in (neuron_coords or {}).items():
        coords[name] = ("neuron", np.asarray(values))
    if act.ndim == 3:
        coords["trial"] = ("trial", np.arange(act.shape[0]))
        if trial_conditions is not None:
            coords["condition"] = ("trial", np.asarray(trial_conditions))
    data_vars: dict[str, Any] = {
        "activity": (dims, act, {"signal": signal, "units": units or DEFAULT_UNITS[signal]})
    }
    if behavior is not None:
        beh = np.asarray(behavior, dtype=float)
        if beh.ndim == act.ndim - 1:
            beh = beh[..., None]
        if beh.shape[:-1] != act.shape[:-1]:
            raise InputDataError(
                f"behavior has shape {beh.shape} but activity has {act.shape}; they must share "
                "the trial and time axes."
            )
        names = behavior_channels or [f"b{i}" for i in range(beh.shape[-1])]
        coords["behavior_channel"] = ("behavior_channel", np.asarray(names, dtype=str))
        data_vars["behavior"] = ((*dims[:-1], "behavior_channel"), beh)
    ds = xr.Dataset(data_vars, coords=coords, attrs=_base_attrs(attrs, sampling_rate))
    return validate(ds)


def from_spike_times(
    spike_times: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    *,
    neuron_ids: Sequence | None = None,
    t_start: float | None = None,
    t_stop: float | None = None,
    neuron_coords: Mapping[str, Sequence] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Build a dataset holding the flat ragged spike table from per-neuron spike times.

    Parameters
    ----------
    spike_times
        A list of 1-D arrays (one per neuron, seconds) or a dict ``{neuron_id: times}``.
    neuron_ids
        Ids for a list input (default ``"0"``, ``"1"``, ...).
    t_start, t_stop
        The observed interval (default: the first and last spike). Stored as
        ``valid_intervals(interval, bound)``.
    neuron_coords
        Extra per-neuron coordinates.
    attrs
        Provenance attrs.

    Returns
    -------
    xarray.Dataset
        With ``spike_time(spike)``, ``spike_neuron(spike)`` (position on ``neuron``) sorted by
        neuron then time, and ``valid_intervals``.

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_spike_times({"a": np.array([0.1, 0.5]), "b": np.array([0.2])})
    >>> ds.sizes["spike"], ds.neuron_id.values.tolist()
    (3, ['a', 'b'])
    """
    if isinstance(spike_times, Mapping):
        neuron_ids = list(spike_times.keys())
        trains = list(spike_times.values())
    else:
        trains = list(spike_times)
    arrays = []
    for i, train in enumerate(trains):
        a = np.asarray(train, dtype=float).ravel()
        if not np.all(np.isfinite(a)):
            raise InputDataError(f"spike times of neuron {i} contain NaN or Inf.")
        arrays.append(np.sort(a))
    ids = _neuron_ids(neuron_ids, len(arrays), "spike_times")
    counts = np.array([a.size for a in arrays], dtype=np.int64)
    times = np.concatenate(arrays) if arrays else np.zeros(0)
    owner = np.repeat(np.arange(len(arrays), dtype=np.int64), counts)
    lo = float(times.min()) if t_start is None and times.size else (t_start or 0.0)
    hi = float(times.max()) if t_stop is None and times.size else (t_stop or 0.0)
    coords: dict[str, Any] = {"neuron_id": ("neuron", ids)}
    for name, values in (neuron_coords or {}).items():
        coords[name] = ("neuron", np.asarray(values))
    ds = xr.Dataset(
        {
            "spike_time": ("spike", times, {"units": "s"}),
            "spike_neuron": ("spike", owner),
            "spike_count_total": ("neuron", counts),
            "valid_intervals": (("interval", "bound"), np.array([[lo, hi]]), {"units": "s"}),
        },
        coords=coords,
        attrs=_base_attrs(attrs, None),
    )
    return validate(ds)


def bin_spikes(
    ds: xr.Dataset,
    bin_size: float,
    *,
    t_start: float | None = None,
    t_stop: float | None = None,
) -> xr.Dataset:
    """Count the spikes of the ragged table in bins of ``bin_size`` seconds.

    Parameters
    ----------
    ds
        A dataset with ``spike_time(spike)`` and ``spike_neuron(spike)``.
    bin_size
        Bin width in seconds.
    t_start, t_stop
        Range to bin (default: the first ``valid_intervals`` row, else the spike range).
        Bins are left-closed ``[t, t + bin_size)``; spikes outside the range are not counted.

    Returns
    -------
    xarray.Dataset
        ``ds`` with ``activity(time, neuron)`` holding spike counts; ``time`` is bin centres.

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_spike_times([np.array([0.05, 0.15, 0.16])], t_start=0, t_stop=0.2)
    >>> neurodata.bin_spikes(ds, 0.1).activity.values.ravel().tolist()
    [1, 2]
    """
    if "spike_time" not in ds.variables:
        raise SchemaError("bin_spikes needs a spike table (spike_time, spike_neuron) in ds.")
    if not (np.isfinite(bin_size) and bin_size > 0):
        raise InputDataError(f"bin_size is {bin_size!r}; give a positive number of seconds.")
    times = np.asarray(ds["spike_time"].values, dtype=float)
    owner = np.asarray(ds["spike_neuron"].values)
    if t_start is None or t_stop is None:
        if "valid_intervals" in ds:
            lo, hi = (float(v) for v in ds["valid_intervals"].values[0])
        elif times.size:
            lo, hi = float(times.min()), float(times.max())
        else:
            raise InputDataError("the spike table is empty; give t_start and t_stop.")
        t_start = lo if t_start is None else t_start
        t_stop = hi if t_stop is None else t_stop
    n_bins = int(np.floor((t_stop - t_start) / bin_size + 1e-9))
    if n_bins < 1:
        raise InputDataError(
            f"the range [{t_start}, {t_stop}] s is shorter than one bin of {bin_size} s."
        )
    n_neuron = ds.sizes["neuron"]
    idx = np.floor((times - t_start) / bin_size).astype(np.int64)
    keep = (idx >= 0) & (idx < n_bins)
    flat = idx[keep] * n_neuron + owner[keep]
    counts = np.bincount(flat, minlength=n_bins * n_neuron).reshape(n_bins, n_neuron)
    dtype = np.uint16 if counts.max(initial=0) < 2**16 else np.int64
    out = ds.assign(
        activity=(("time", "neuron"), counts.astype(dtype), {"signal": "spike_count",
                                                             "units": "count"})
    ).assign_coords(
        time=("time", t_start + (np.arange(n_bins) + 0.5) * bin_size, {"units": "s"})
    )
    out.attrs["sampling_rate"] = 1.0 / bin_size
    return validate(with_history(out, f"bin_spikes(bin_size={bin_size}, t_start={t_start}, "
                                      f"t_stop={t_stop})"))


# --------------------------------------------------------------------------- storage


def _storage_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        return "zarr"
    if suffix in (".nc", ".nc4", ".h5", ".netcdf"):
        return "netcdf"
    raise FormatError(f"{path}: unknown output format; name it *.zarr or *.nc.")


def _encode_object_arrays(ds: xr.Dataset) -> xr.Dataset:
    # Object arrays (pandas string columns) do not serialise; bool variables do (xarray
    # stores them as int8 with a dtype attr and decodes them back).
    for name, var in ds.variables.items():
        if var.dtype == object:
            ds[name] = var.astype(str)
    return ds


def write_atomic(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write any dataset to ``path`` (``*.zarr`` or ``*.nc``) through a temporary path.

    The dataset is written beside ``path`` under a temporary name and renamed into place,
    so an interrupted write leaves nothing behind. :func:`save` validates first; model
    ``save`` methods call this directly for their parameter datasets.
    """
    path = Path(path)
    fmt = _storage_format(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass overwrite=True or choose another.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        ds = _encode_object_arrays(ds.copy())
        if fmt == "zarr":
            # zarr format 2: string coordinates have no stable encoding in format 3 yet.
            ds.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True)
        else:
            ds.to_netcdf(tmp, engine="h5netcdf")
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return path


def save(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Validate ``ds`` and write it to ``path`` (``*.zarr`` or ``*.nc``) atomically.

    Parameters
    ----------
    ds
        A neurodata dataset.
    path
        Output path; its suffix picks the format.
    overwrite
        Replace an existing output (default: refuse with :class:`OutputExistsError`).

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import numpy as np, neurodata, tempfile, pathlib
    >>> ds = neurodata.from_arrays(np.ones((4, 2)), sampling_rate=1.0)
    >>> p = neurodata.save(ds, pathlib.Path(tempfile.mkdtemp()) / "x.nc")
    >>> neurodata.open_dataset(p).activity.shape
    (4, 2)
    """
    return write_atomic(validate(ds), path, overwrite=overwrite)


def open_dataset(path: str | os.PathLike, *, chunks: Any = None) -> xr.Dataset:
    """Open a dataset written by :func:`save` (zarr or netCDF), lazily when ``chunks`` is set.

    Parameters
    ----------
    path
        A ``*.zarr`` folder or ``*.nc`` file.
    chunks
        Passed to xarray (``"auto"`` or a dict gives dask-backed variables).

    Returns
    -------
    xarray.Dataset
    """
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path} does not exist.")
    fmt = "zarr" if path.is_dir() else _storage_format(path)
    try:
        if fmt == "zarr":
            ds = xr.open_zarr(path, chunks=chunks)
        else:
            ds = xr.open_dataset(path, engine="h5netcdf", chunks=chunks)
            if chunks is None:
                ds = ds.load()
                ds.close()
    except (OSError, ValueError, KeyError) as exc:
        raise FormatError(f"{path}: cannot be read as {fmt} ({exc}).") from exc
    if isinstance(ds.attrs.get("history"), str):
        ds.attrs["history"] = [ds.attrs["history"]]
    elif isinstance(ds.attrs.get("history"), np.ndarray):
        ds.attrs["history"] = [str(h) for h in ds.attrs["history"]]
    return validate(ds)
