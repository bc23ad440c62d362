"""Preprocessing: bin, smooth, resample, dF/F, z-score, square root, cut trials, split, select.

Every function takes a validated dataset, returns a new validated dataset (the input is
never mutated) and appends one line describing the step to ``attrs["history"]``.

Out of core: a dataset opened lazily (``neurodata.open_dataset(path, chunks={...})``) stays
dask-backed through every step, so a recording larger than memory streams from disk to
:func:`neurodata.save` or to a model chunk by chunk. The filters along time (:func:`smooth`,
:func:`dff`) work on chunks with a halo of neighbouring samples and give the same numbers
as on an in-memory array; :func:`zscore` reads the data once to get each neuron's mean and
standard deviation. Checks that need the values (negative input to :func:`sqrt`, a
non-positive baseline in :func:`dff`) are raised when the values are computed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import numpy as np
import xarray as xr
from scipy.ndimage import gaussian_filter1d, percentile_filter

from neurodata.data import bin_spikes, validate, with_history
from neurodata.errors import InputDataError, SchemaError

__all__ = [
    "bin",
    "cut_trials",
    "cut_windows",
    "dff",
    "resample",
    "select_neurons",
    "smooth",
    "split_trials",
    "sqrt",
    "zscore",
]


def _activity(ds: xr.Dataset, what: str) -> xr.DataArray:
    validate(ds)
    if "activity" not in ds:
        raise SchemaError(
            f"{what} needs an 'activity' variable; for a spike table call "
            "neurodata.preprocess.bin(ds, bin_size) first."
        )
    if "time" not in ds["activity"].dims:
        raise SchemaError(f"{what} needs 'activity' with a 'time' dimension.")
    return ds["activity"]


def _sample_interval(ds: xr.Dataset) -> float:
    t = np.asarray(ds["time"].values, dtype=float)
    if t.size < 2:
        raise InputDataError("the recording has fewer than 2 time samples.")
    dt = np.diff(t)
    step = float((t[-1] - t[0]) / (t.size - 1))
    # Timestamps rounded to the clock's resolution jitter around the true bin width
    # (the Stevenson M1 file alternates 49.5 and 50.5 ms); gaps and drifts do not.
    if np.max(np.abs(dt - step)) > 0.05 * step:
        worst = int(np.argmax(np.abs(dt - step)))
        raise InputDataError(
            f"the time axis is not evenly sampled (step {dt[worst]:.6g} s at index {worst}, "
            f"mean {step:.6g} s); resample it first with "
            "neurodata.preprocess.resample(ds, rate), or cut around the gap."
        )
    return step


def _finish(ds: xr.Dataset, step: str) -> xr.Dataset:
    return validate(with_history(ds, step))


def _is_lazy(da: xr.DataArray) -> bool:
    return dask.is_dask_collection(da.data)


def _along_time(act: xr.DataArray, func: Any, halo: int) -> Any:
    """Apply ``func(values, axis)`` to the float values of ``act`` along time.

    A dask-backed ``act`` is processed chunk by chunk with ``halo`` samples of overlap: the
    interior chunk edges see their true neighbours and the recording's own edges get no
    padding, so ``func``'s boundary mode applies exactly as on the whole array.
    """
    axis = act.dims.index("time")
    if not _is_lazy(act):
        return func(np.asarray(act.values, dtype=float), axis)
    block_func = functools.partial(func, axis=axis)
    data = act.data.astype(float)
    n = data.shape[axis]
    halo = min(halo, n - 1)
    if data.numblocks[axis] > 1 and min(data.chunks[axis]) < halo:
        # map_overlap needs every chunk at least as long as the halo
        data = data.rechunk({axis: min(n, 2 * halo)})
    if data.numblocks[axis] == 1 or halo < 1:
        return data.map_blocks(block_func, dtype=float)
    return data.map_overlap(block_func, depth={axis: halo}, boundary="none", dtype=float)


def _replace_activity(ds: xr.Dataset, values: Any, **attrs: Any) -> xr.Dataset:
    act = ds["activity"]
    new = xr.DataArray(values, dims=act.dims, attrs={**act.attrs, **attrs})
    return ds.assign(activity=new)


def bin(ds: xr.Dataset, bin_size: float) -> xr.Dataset:  # noqa: A001 - the natural name
    """Bin spikes, or re-bin an already binned signal, to ``bin_size`` seconds.

    A dataset with a spike table and no ``activity`` is binned with
    :func:`neurodata.bin_spikes`. An existing ``activity`` is re-binned by an integer factor:
    spike counts are summed, other signals averaged; a trailing partial bin is dropped.

    Parameters
    ----------
    ds
        A dataset with a spike table or a ``(…, time, neuron)`` activity.
    bin_size
        New bin width in seconds (a multiple of the current one for re-binning).

    Returns
    -------
    xarray.Dataset

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_arrays(np.ones((10, 2), int), sampling_rate=10.0)
    >>> neurodata.preprocess.bin(ds, 0.5).activity.values[:, 0].tolist()
    [5, 5]
    """
    if "activity" not in ds and "spike_time" in ds:
        return bin_spikes(ds, bin_size)
    act = _activity(ds, "bin")
    dt = _sample_interval(ds)
    factor = bin_size / dt
    if abs(factor - round(factor)) > 0.01 or round(factor) < 1:
        raise InputDataError(
            f"bin_size {bin_size} s is not a whole multiple of the current bin {dt} s; use "
            "neurodata.preprocess.resample for other rates."
        )
    factor = int(round(factor))
    n_new = ds.sizes["time"] // factor
    if n_new < 1:
        raise InputDataError(f"bin_size {bin_size} s is longer than the recording.")
    trimmed = ds.isel(time=slice(0, n_new * factor))
    coarse = trimmed.coarsen(time=factor)
    counts = act.attrs["signal"] == "spike_count"
    time = coarse.mean()["time"].values
    out = trimmed.drop_vars([v for v in ("activity", "behavior") if v in trimmed])
    out = out.isel(time=slice(0, n_new)).assign_coords(time=("time", time, {"units": "s"}))
    new_act = trimmed["activity"].coarsen(time=factor)
    new_act = new_act.sum() if counts else new_act.mean()
    out["activity"] = new_act.assign_coords(time=out["time"]).assign_attrs(act.attrs)
    if "behavior" in trimmed:
        out["behavior"] = trimmed["behavior"].coarsen(time=factor).mean().assign_coords(
            time=out["time"])
    out.attrs["sampling_rate"] = 1.0 / bin_size
    return _finish(out, f"bin(bin_size={bin_size})")


def _gaussian(width: float, values: np.ndarray, axis: int) -> np.ndarray:
    return gaussian_filter1d(values, width, axis=axis, mode="reflect")


def smooth(ds: xr.Dataset, sigma: float) -> xr.Dataset:
    """Gaussian smoothing along time with standard deviation ``sigma`` seconds.

    Spike counts become firing rates in Hz (the smoothed count divided by the bin width);
    other signals keep their meaning. Edges are handled by reflection.

    Parameters
    ----------
    ds
        A binned dataset.
    sigma
        Kernel standard deviation in seconds.

    Returns
    -------
    xarray.Dataset

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_arrays(np.ones((50, 2)), sampling_rate=10.0, signal="dff")
    >>> float(neurodata.preprocess.smooth(ds, 0.3).activity.mean())
    1.0
    """
    act = _activity(ds, "smooth")
    if not (np.isfinite(sigma) and sigma > 0):
        raise InputDataError(f"sigma is {sigma!r}; give a positive number of seconds.")
    dt = _sample_interval(ds)
    width = sigma / dt
    # gaussian_filter1d's kernel radius (truncate=4): the halo a chunk needs
    values = _along_time(act, functools.partial(_gaussian, width), int(4.0 * width + 0.5) + 1)
    attrs: dict[str, Any] = {}
    if act.attrs["signal"] == "spike_count":
        values = values / dt
        attrs = {"signal": "rate", "units": "Hz"}
    return _finish(_replace_activity(ds, values, **attrs), f"smooth(sigma={sigma})")


def _interp_lazy(var: xr.DataArray, t: np.ndarray, new_t: np.ndarray) -> xr.DataArray:
    # Linear interpolation as two sorted takes along time, which dask does chunk by chunk
    # (xarray's interp would put the whole time axis in one chunk).
    left = np.clip(np.searchsorted(t, new_t, side="right") - 1, 0, t.size - 2)
    frac = xr.DataArray((new_t - t[left]) / (t[left + 1] - t[left]), dims="time")
    lo = var.isel(time=left).drop_vars("time")
    hi = var.isel(time=left + 1).drop_vars("time")
    return (lo + (hi - lo) * frac).assign_coords(time=("time", new_t, {"units": "s"}))


def resample(ds: xr.Dataset, rate: float) -> xr.Dataset:
    """Resample activity (and behaviour) onto an even grid at ``rate`` Hz.

    Values are linearly interpolated between samples (for downsampling by more than 2x,
    the signal is first averaged over the new bin width to avoid aliasing). The new grid
    starts at the first sample and stays within the recording. Spike counts cannot be
    interpolated: re-bin them with :func:`bin`.

    Parameters
    ----------
    ds
        A dataset with ``activity(…, time, neuron)`` (uneven time stamps are fine).
    rate
        Target sampling rate in Hz.

    Returns
    -------
    xarray.Dataset

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_arrays(np.full((30, 1), 2.0), sampling_rate=3.0, signal="dff")
    >>> neurodata.preprocess.resample(ds, 1.0).activity.values.ravel().tolist()
    [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    """
    act = _activity(ds, "resample")
    if act.attrs["signal"] == "spike_count":
        raise InputDataError("spike counts cannot be interpolated; use preprocess.bin(ds, "
                             "bin_size) to change their bin width.")
    if not (np.isfinite(rate) and rate > 0):
        raise InputDataError(f"rate is {rate!r}; give a positive number of Hz.")
    t = np.asarray(ds["time"].values, dtype=float)
    n_new = int(np.floor((t[-1] - t[0]) * rate + 1e-9)) + 1
    new_t = t[0] + np.arange(n_new) / rate
    old_rate = (t.size - 1) / (t[-1] - t[0]) if t.size > 1 else rate
    out = ds.drop_vars([v for v in ("activity", "behavior") if v in ds]).drop_dims("time")
    out = out.assign_coords(time=("time", new_t, {"units": "s"}))
    for name in ("activity", "behavior"):
        if name not in ds:
            continue
        var = ds[name].astype(float)
        if old_rate > 2 * rate:
            var = var.rolling(time=max(int(round(old_rate / rate)), 1), center=True,
                              min_periods=1).mean()
        new = _interp_lazy(var, t, new_t) if _is_lazy(var) else var.interp(time=new_t)
        out[name] = new.assign_attrs(ds[name].attrs)
    out.attrs["sampling_rate"] = float(rate)
    return _finish(out, f"resample(rate={rate})")


def _dff(size: int, percentile: float, values: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * values.ndim
    shape[axis] = size
    baseline = percentile_filter(values, percentile, size=shape, mode="reflect")
    if np.any(baseline <= 0):
        raise InputDataError(
            "the fluorescence baseline F0 is zero or negative for some neurons; add an offset "
            "(neuropil-corrected traces can go negative) before computing dF/F."
        )
    return (values - baseline) / baseline


def dff(ds: xr.Dataset, window: float = 60.0, percentile: float = 8.0) -> xr.Dataset:
    """ΔF/F with a running-percentile baseline: ``(F - F0) / F0``.

    Parameters
    ----------
    ds
        Fluorescence (``signal="fluorescence"``), neuropil-corrected if needed.
    window
        Baseline window in seconds (centred).
    percentile
        Percentile of F inside the window taken as F0.

    Returns
    -------
    xarray.Dataset
        With ``signal="dff"``.

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> f = np.full((100, 1), 10.0); f[50] = 20.0
    >>> ds = neurodata.from_arrays(f, sampling_rate=10.0, signal="fluorescence")
    >>> float(neurodata.preprocess.dff(ds, window=2.0).activity[50, 0])
    1.0
    """
    act = _activity(ds, "dff")
    if act.attrs["signal"] != "fluorescence":
        raise InputDataError(
            f"dff needs fluorescence, but activity is {act.attrs['signal']!r}; set "
            "activity.attrs['signal'] = 'fluorescence' if the values are raw F."
        )
    dt = _sample_interval(ds)
    size = max(int(round(window / dt)), 1)
    values = _along_time(act, functools.partial(_dff, size, percentile), size // 2 + 1)
    out = _replace_activity(ds, values, signal="dff", units="1")
    return _finish(out, f"dff(window={window}, percentile={percentile})")


def zscore(ds: xr.Dataset) -> xr.Dataset:
    """Z-score each neuron over time (and trials): mean 0, standard deviation 1.

    Neurons with zero variance are an error (drop them with :func:`select_neurons`).

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_arrays(np.arange(20.0).reshape(10, 2), 1.0, signal="rate")
    >>> z = neurodata.preprocess.zscore(ds).activity
    >>> np.allclose(z.mean("time"), 0), np.allclose(z.std("time"), 1)
    (True, True)
    """
    act = _activity(ds, "zscore").astype(float)
    over = [d for d in act.dims if d != "neuron"]
    mean, std = act.mean(over), act.std(over)
    if _is_lazy(act):
        # one pass over the data for both statistics; kept lazy they would make dask hold
        # every chunk until the second pass that writes the output
        mean, std = dask.compute(mean, std)
    flat = np.asarray(std.values) == 0
    if flat.any():
        ids = np.asarray(ds["neuron_id"].values)[flat][:10].tolist()
        raise InputDataError(
            f"neurons {ids} are constant and cannot be z-scored; remove them with "
            "neurodata.preprocess.select_neurons(ds, ds.activity.std('time') > 0)."
        )
    out = ds.assign(activity=((act - mean) / std).assign_attrs(
        {**ds["activity"].attrs, "signal": "zscore", "units": "1"}))
    return _finish(out, "zscore()")


def _checked_sqrt(values: np.ndarray) -> np.ndarray:
    if np.any(values < 0):  # NaN (a gap) is not negative
        raise InputDataError("sqrt needs non-negative activity (counts or rates).")
    return np.sqrt(values)


def sqrt(ds: xr.Dataset) -> xr.Dataset:
    """Square-root transform (variance-stabilises Poisson counts; used by GPFA).

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_arrays(np.full((3, 1), 4), sampling_rate=1.0)
    >>> neurodata.preprocess.sqrt(ds).activity.values.ravel().tolist()
    [2.0, 2.0, 2.0]
    """
    act = _activity(ds, "sqrt")
    if _is_lazy(act):
        values = act.data.astype(float).map_blocks(_checked_sqrt, dtype=float)
    else:
        values = _checked_sqrt(np.asarray(act.values, dtype=float))
    out = _replace_activity(ds, values, transform="sqrt")
    return _finish(out, "sqrt()")


def cut_trials(
    ds: xr.Dataset,
    events: Sequence[float] | np.ndarray | str,
    window: tuple[float, float],
    *,
    conditions: Sequence | None = None,
) -> xr.Dataset:
    """Cut a continuous recording into trials aligned on events.

    Parameters
    ----------
    ds
        ``activity(time, neuron)`` on an even time grid (plus optional ``behavior``).
    events
        Event times in seconds, or the name of a coordinate of ``ds`` that holds them (for
        example ``"trial_start"`` from an NWB trials table).
    window
        ``(start, stop)`` in seconds relative to each event, e.g. ``(-0.5, 1.0)``.
    conditions
        Optional label per event, stored as the ``condition`` coordinate.

    Returns
    -------
    xarray.Dataset
        ``activity(trial, time, neuron)`` with ``time`` relative to the event and
        ``trial_start``/``trial_stop``/``event_time`` coordinates. The spike table is not
        carried over.

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_arrays(np.arange(100.0)[:, None], 10.0, signal="rate")
    >>> tr = neurodata.preprocess.cut_trials(ds, [2.0, 5.0], window=(0.0, 0.5))
    >>> tr.activity.values[:, :, 0].tolist()
    [[20.0, 21.0, 22.0, 23.0, 24.0], [50.0, 51.0, 52.0, 53.0, 54.0]]
    """
    act = _activity(ds, "cut_trials")
    if act.dims != ("time", "neuron"):
        raise InputDataError(f"cut_trials needs activity(time, neuron), got {act.dims}.")
    if isinstance(events, str):
        if events not in ds.coords and events not in ds:
            raise InputDataError(f"ds has no coordinate {events!r} holding event times.")
        events = np.asarray(ds[events].values, dtype=float)
    events = np.asarray(events, dtype=float).ravel()
    if events.size == 0 or not np.all(np.isfinite(events)):
        raise InputDataError("events must be a non-empty list of finite times in seconds.")
    start, stop = (float(w) for w in window)
    if stop <= start:
        raise InputDataError(f"window {window} must have stop > start.")
    dt = _sample_interval(ds)
    t = np.asarray(ds["time"].values, dtype=float)
    n = int(round((stop - start) / dt))
    if n < 1:
        raise InputDataError(f"window {window} is shorter than one sample ({dt} s).")
    first = np.round((events + start - t[0]) / dt).astype(np.int64)
    inside = (first >= 0) & (first + n <= t.size)
    if not inside.all():
        bad = events[~inside][:5].tolist()
        raise InputDataError(
            f"events {bad} put the window {window} outside the recording "
            f"[{t[0]}, {t[-1]}] s; drop those events or shorten the window."
        )
    index = first[:, None] + np.arange(n)[None, :]
    take = xr.DataArray(index, dims=("trial", "time"))
    out = xr.Dataset(attrs=dict(ds.attrs))
    for name in ("activity", "behavior"):
        if name in ds:
            var = ds[name].isel(time=take).drop_vars("time", errors="ignore")
            if _is_lazy(var):
                # dask gives one chunk per trial; group trials into chunks about as long
                # as the input's time chunks to keep the task graph small
                per = max(1, max(ds[name].data.chunks[ds[name].dims.index("time")]) // n)
                var = var.chunk({"trial": per})
            out[name] = var
    neuron_coords = {k: v for k, v in ds.coords.items() if v.dims == ("neuron",)}
    out = out.assign_coords(neuron_coords)
    if "behavior_channel" in ds.coords:
        out = out.assign_coords(behavior_channel=ds["behavior_channel"])
    out = out.assign_coords(
        time=("time", np.round(start + np.arange(n) * dt, 12), {"units": "s"}),
        trial=("trial", np.arange(events.size)),
        event_time=("trial", events),
        trial_start=("trial", t[first]),
        trial_stop=("trial", t[first] + n * dt),
    )
    if conditions is not None:
        if len(conditions) != events.size:
            raise InputDataError("conditions must have one label per event.")
        out = out.assign_coords(condition=("trial", np.asarray(conditions)))
    return _finish(out, f"cut_trials(n_events={events.size}, window={window})")


def cut_windows(ds: xr.Dataset, length: float, step: float | None = None) -> xr.Dataset:
    """Cut a continuous recording into consecutive windows of ``length`` seconds as trials.

    Parameters
    ----------
    ds
        ``activity(time, neuron)`` on an even grid.
    length
        Window length in seconds.
    step
        Distance between window starts (default ``length``: non-overlapping).

    Returns
    -------
    xarray.Dataset
        ``activity(trial, time, neuron)``; ``time`` runs from 0 within each window.

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_arrays(np.zeros((100, 3)), sampling_rate=20.0)
    >>> dict(neurodata.preprocess.cut_windows(ds, 1.0).activity.sizes)
    {'trial': 5, 'time': 20, 'neuron': 3}
    """
    _activity(ds, "cut_windows")
    dt = _sample_interval(ds)
    step = length if step is None else step
    if not (length > 0 and step > 0):
        raise InputDataError("length and step must be positive numbers of seconds.")
    t = np.asarray(ds["time"].values, dtype=float)
    n = int(round(length / dt))
    span = t.size * dt
    if n > t.size:
        raise InputDataError(f"window length {length} s is longer than the recording "
                             f"({span:.3f} s).")
    starts = t[0] + np.arange(0.0, span - n * dt + dt / 2, step)
    return cut_trials(ds, starts, window=(0.0, n * dt))


def split_trials(
    ds: xr.Dataset, test_fraction: float = 0.2, seed: int = 0
) -> tuple[xr.Dataset, xr.Dataset]:
    """Split trials at random into a training and a test set.

    Parameters
    ----------
    ds
        A dataset with a ``trial`` dimension.
    test_fraction
        Fraction of trials held out (at least one trial on each side).
    seed
        Seed of the permutation.

    Returns
    -------
    (train, test)
        Each keeps the original ``trial`` coordinate, in increasing order.

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_arrays(np.zeros((10, 5, 2)), sampling_rate=1.0)
    >>> train, test = neurodata.preprocess.split_trials(ds, 0.3)
    >>> train.sizes["trial"], test.sizes["trial"]
    (7, 3)
    """
    validate(ds)
    if "trial" not in ds.dims:
        raise InputDataError("split_trials needs a 'trial' dimension; cut trials first with "
                             "neurodata.preprocess.cut_trials or cut_windows.")
    n = ds.sizes["trial"]
    n_test = int(round(n * test_fraction))
    if not (0 < n_test < n):
        raise InputDataError(f"test_fraction {test_fraction} of {n} trials leaves an empty "
                             "training or test set.")
    order = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    step = f"split_trials(test_fraction={test_fraction}, seed={seed})"
    return (_finish(ds.isel(trial=train_idx), step + ": train"),
            _finish(ds.isel(trial=test_idx), step + ": test"))


def select_neurons(
    ds: xr.Dataset, selection: Sequence | np.ndarray | xr.DataArray | Mapping[str, Any]
) -> xr.Dataset:
    """Keep a subset of neurons.

    Parameters
    ----------
    ds
        Any dataset with a ``neuron`` dimension.
    selection
        A boolean mask over neurons, a list of ``neuron_id`` values, or a mapping
        ``{coordinate: value or list of values}`` (e.g. ``{"region": "M1"}``).

    Returns
    -------
    xarray.Dataset
        Spike-table rows of dropped neurons are removed and ``spike_neuron`` re-indexed.

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_arrays(np.zeros((5, 3)), 1.0, neuron_ids=["a", "b", "c"])
    >>> neurodata.preprocess.select_neurons(ds, ["a", "c"]).neuron_id.values.tolist()
    ['a', 'c']
    """
    validate(ds)
    ids = np.asarray(ds["neuron_id"].values)
    if isinstance(selection, Mapping):
        mask = np.ones(ids.size, dtype=bool)
        for coord, value in selection.items():
            if coord not in ds.coords:
                raise InputDataError(f"ds has no neuron coordinate {coord!r}.")
            values = value if isinstance(value, list | tuple | np.ndarray) else [value]
            mask &= np.isin(np.asarray(ds[coord].values), values)
    else:
        sel = np.asarray(selection.values if isinstance(selection, xr.DataArray) else selection)
        if sel.dtype == bool:
            if sel.shape != ids.shape:
                raise InputDataError(f"the mask has shape {sel.shape}; it needs one entry per "
                                     f"neuron ({ids.size}).")
            mask = sel
        else:
            wanted = sel.astype(str)
            missing = sorted(set(wanted.tolist()) - set(ids.tolist()))
            if missing:
                raise InputDataError(f"unknown neuron ids {missing[:10]}.")
            mask = np.isin(ids, wanted)
    if not mask.any():
        raise InputDataError("the selection keeps no neuron.")
    keep = np.flatnonzero(mask)
    out = ds.isel(neuron=keep)
    if "spike_neuron" in ds:
        new_index = np.full(ids.size, -1, dtype=np.int64)
        new_index[keep] = np.arange(keep.size)
        mapped = new_index[np.asarray(ds["spike_neuron"].values)]
        out = out.isel(spike=np.flatnonzero(mapped >= 0))
        out["spike_neuron"] = ("spike", mapped[mapped >= 0])
    return _finish(out, f"select_neurons(n={keep.size} of {ids.size})")
