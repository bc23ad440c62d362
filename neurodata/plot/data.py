"""Summary figures of datasets: spike raster, activity heatmap, connectome matrix."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.colors import LogNorm, TwoSlopeNorm
from matplotlib.figure import Figure

from neurodata.errors import InputDataError

__all__ = ["activity_heatmap", "connectome_matrix", "raster", "stimulus_images"]


def _time_window(t: np.ndarray, t_range: tuple[float, float] | None) -> np.ndarray:
    if t_range is None:
        return np.ones(t.size, dtype=bool)
    return (t >= t_range[0]) & (t <= t_range[1])


def raster(
    ds: xr.Dataset,
    *,
    t_range: tuple[float, float] | None = None,
    max_neurons: int | None = 100,
    title: str | None = None,
) -> Figure:
    """Spike raster: one row per neuron, one tick per spike.

    Uses the ragged spike table (``spike_time``, ``spike_neuron``) when present; for binned
    spike counts ``activity(time, neuron)`` a tick marks every bin with at least one spike.

    Parameters
    ----------
    ds
        A dataset with a spike table or spike counts.
    t_range
        ``(start, stop)`` in seconds (default: everything).
    max_neurons
        Draw at most this many neurons (the first ones); ``None`` for all.
    title
        Figure title (default: the ``source`` attr).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_spike_times([np.array([0.1, 0.5]), np.array([0.2])])
    >>> fig = neurodata.plot.raster(ds)
    """
    n_neuron = ds.sizes.get("neuron", 0)
    shown = n_neuron if max_neurons is None else min(n_neuron, max_neurons)
    if "spike_time" in ds:
        times = np.asarray(ds["spike_time"].values, dtype=float)
        rows = np.asarray(ds["spike_neuron"].values)
    elif "activity" in ds and ds["activity"].dims == ("time", "neuron") and \
            ds["activity"].attrs.get("signal") == "spike_count":
        counts = np.asarray(ds["activity"].values[:, :shown])
        t_idx, rows = np.nonzero(counts)
        times = np.asarray(ds["time"].values, dtype=float)[t_idx]
    else:
        raise InputDataError("raster needs a spike table (spike_time, spike_neuron) or spike "
                             "counts activity(time, neuron); use activity_heatmap for other "
                             "signals.")
    keep = (rows < shown) & _time_window(times, t_range)
    fig, ax = plt.subplots(figsize=(8, max(2.0, min(6.0, 0.08 * shown + 1.5))))
    ax.scatter(times[keep], rows[keep], marker="|", s=12, linewidths=0.6, color="k")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("neuron")
    ax.set_ylim(shown - 0.5, -0.5)
    ax.set_title(title or f"{ds.attrs.get('source', '')}: {int(keep.sum())} spikes, "
                 f"{shown} of {n_neuron} neurons")
    fig.tight_layout()
    return fig


def _pick(act: xr.DataArray, animal: int, trial: int) -> tuple[xr.DataArray, str]:
    if "animal" in act.dims:
        return act.isel(animal=animal), f"animal {act['animal'].values[animal]}"
    if "trial" in act.dims:
        return act.isel(trial=trial), f"trial {trial}"
    return act, ""


def activity_heatmap(
    ds: xr.Dataset,
    *,
    t_range: tuple[float, float] | None = None,
    max_neurons: int | None = 200,
    animal: int = 0,
    trial: int = 0,
    cmap: str = "viridis",
    title: str | None = None,
) -> Figure:
    """Heatmap of ``activity``: neurons against time, with the behaviour under it if present.

    For ``(animal, time, neuron)`` and ``(trial, time, neuron)`` data one animal or trial is
    drawn; ``(stimulus, neuron)`` response matrices are drawn stimulus by neuron. Colours
    span the 1st to 99th percentile so that a few large values do not wash out the rest.

    Parameters
    ----------
    ds
        A dataset with ``activity``.
    t_range
        ``(start, stop)`` in seconds.
    max_neurons
        Draw at most this many neurons (the first ones); ``None`` for all.
    animal, trial
        Which animal or trial to draw (positions).
    cmap
        Matplotlib colormap.
    title
        Figure title (default: the ``source`` attr and the signal).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> ds = neurodata.from_arrays(np.random.rand(50, 4), 10.0, signal="dff")
    >>> fig = neurodata.plot.activity_heatmap(ds)
    """
    if "activity" not in ds:
        raise InputDataError("activity_heatmap needs an 'activity' variable.")
    act, which = _pick(ds["activity"], animal, trial)
    if max_neurons is not None:
        act = act.isel(neuron=slice(0, max_neurons))
    signal = f"{ds['activity'].attrs.get('signal')} ({ds['activity'].attrs.get('units')})"
    label = title or " ".join(x for x in (str(ds.attrs.get("source", "")), which) if x)
    if "stimulus" in act.dims:
        fig, ax = plt.subplots(figsize=(8, 4))
        values = np.asarray(act.values, dtype=float)
        lo, hi = np.nanpercentile(values, [1, 99]) if np.isfinite(values).any() else (0, 1)
        im = ax.imshow(values.T, aspect="auto", cmap=cmap, vmin=lo, vmax=hi,
                       interpolation="nearest")
        ax.set_xlabel("stimulus")
        ax.set_ylabel("neuron")
        fig.colorbar(im, ax=ax, label=signal)
        ax.set_title(label)
        fig.tight_layout()
        return fig
    t = np.asarray(act["time"].values, dtype=float)
    window = _time_window(t, t_range)
    values = np.asarray(act.values, dtype=float)[window]
    behavior = None
    if "behavior" in ds:
        beh, _ = _pick(ds["behavior"], animal, trial)
        behavior = np.asarray(beh.values, dtype=float)[window]
    fig, axes = plt.subplots(2 if behavior is not None else 1, 1, sharex=True, squeeze=False,
                             figsize=(9, 5.5 if behavior is not None else 4),
                             gridspec_kw={"height_ratios": [3, 1] if behavior is not None
                                          else [1]})
    ax = axes[0, 0]
    extent = (t[window][0], t[window][-1], values.shape[1] - 0.5, -0.5) if window.any() else None
    finite = np.isfinite(values)
    lo, hi = np.nanpercentile(values[finite], [1, 99]) if finite.any() else (0.0, 1.0)
    im = ax.imshow(values.T, aspect="auto", cmap=cmap, vmin=lo, vmax=hi, extent=extent,
                   interpolation="nearest")
    ax.set_ylabel("neuron")
    ax.set_title(label)
    fig.colorbar(im, ax=axes[:, 0].tolist(), label=signal, fraction=0.04)
    if behavior is not None:
        bax = axes[1, 0]
        for k, name in enumerate(ds["behavior_channel"].values):
            bax.plot(t[window], behavior[:, k], lw=0.7, label=str(name))
        bax.set_ylabel("behaviour")
        bax.legend(loc="upper right", fontsize="small", ncol=min(4, behavior.shape[1]))
    axes[-1, 0].set_xlabel("time (s)")
    return fig


def connectome_matrix(
    ds: xr.Dataset,
    synapse_type: str = "chemical",
    *,
    title: str | None = None,
) -> Figure:
    """Connectivity matrix: presynaptic neurons as rows, postsynaptic as columns.

    Anatomical weights are drawn on a log scale (zeros blank, NaN grey); a functional atlas
    (``response(pre, post)``) on a diverging scale centred at 0.

    Parameters
    ----------
    ds
        A dataset from :func:`neurodata.loaders.connectome`.
    synapse_type
        ``"chemical"`` or ``"gap_junction"`` (ignored for a functional atlas).
    title
        Figure title (default: the ``connectome`` attr and the synapse type).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import neurodata
    >>> fig = neurodata.plot.connectome_matrix(neurodata.loaders.connectome("white1986"))
    ... # doctest: +SKIP
    """
    if "weight" in ds:
        if synapse_type not in ds["synapse_type"].values:
            raise InputDataError(f"synapse_type {synapse_type!r} is not one of "
                                 f"{list(ds['synapse_type'].values)}.")
        values = np.asarray(ds["weight"].sel(synapse_type=synapse_type).values, dtype=float)
        shown = np.where(values > 0, values, np.nan)
        finite = shown[np.isfinite(shown)]
        norm = LogNorm(vmin=1.0, vmax=max(float(finite.max()), 2.0)) if finite.size else None
        cmap, label = "magma_r", f"{synapse_type} ({ds['weight'].attrs.get('units', '')})"
        name = f"{ds.attrs.get('connectome', '')} {synapse_type}"
    elif "response" in ds:
        shown = np.asarray(ds["response"].values, dtype=float)
        finite = shown[np.isfinite(shown)]
        bound = float(np.nanpercentile(np.abs(finite), 99)) if finite.size else 1.0
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
        cmap, label = "RdBu_r", f"response ({ds['response'].attrs.get('units', '')})"
        name = f"{ds.attrs.get('connectome', '')} functional ({ds.attrs.get('strain', '')})"
    else:
        raise InputDataError("connectome_matrix needs weight(synapse_type, pre, post) or "
                             "response(pre, post).")
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    colormap = plt.get_cmap(cmap).with_extremes(bad="white" if "weight" in ds else "0.85")
    im = ax.imshow(shown, cmap=colormap, norm=norm, interpolation="nearest")
    n = shown.shape[0]
    if n <= 40:
        ax.set_xticks(range(n), ds["post"].values, rotation=90, fontsize=6)
        ax.set_yticks(range(n), ds["pre"].values, fontsize=6)
    ax.set_xlabel(f"postsynaptic ({ds.sizes['post']})")
    ax.set_ylabel(f"presynaptic ({ds.sizes['pre']})")
    fig.colorbar(im, ax=ax, label=label, fraction=0.046)
    ax.set_title(title or name.strip())
    fig.tight_layout()
    return fig


def stimulus_images(
    ds: xr.Dataset,
    variable: str = "image",
    *,
    max_images: int = 48,
    columns: int = 12,
    title: str | None = None,
) -> Figure:
    """A mosaic of the stimulus images of a dataset (``variable(stimulus, y, x[, channel])``).

    Parameters
    ----------
    ds
        A dataset with an image variable whose first dim is ``stimulus``.
    variable
        Name of that variable.
    max_images
        Draw at most this many (the first ones).
    columns
        Images per row.
    title
        Figure title (default: the ``source`` attr).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, xarray as xr, neurodata
    >>> ds = xr.Dataset({"image": (("stimulus", "y", "x"), np.random.rand(4, 8, 8))})
    >>> fig = neurodata.plot.stimulus_images(ds)
    """
    if variable not in ds or ds[variable].dims[0] != "stimulus" or ds[variable].ndim not in (3, 4):
        raise InputDataError(f"stimulus_images needs {variable}(stimulus, y, x[, channel]).")
    images = np.asarray(ds[variable].values[:max_images])
    n = images.shape[0]
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, min(columns, n), squeeze=False,
                             figsize=(min(columns, n) * 0.8, rows * 0.8 + 0.4))
    labels = ds["stimulus_id"].values if "stimulus_id" in ds.coords else np.arange(n)
    for k, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if k < n:
            ax.imshow(images[k], cmap="gray" if images.ndim == 3 else None)
            ax.set_title(str(labels[k]), fontsize=5, pad=1)
    fig.suptitle(title or f"{ds.attrs.get('source', '')}: {n} of {ds.sizes['stimulus']} "
                 "stimuli", fontsize=9)
    return fig
