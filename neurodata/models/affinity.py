"""Time-resolved pairwise affinities between calcium traces: the ``(pair, window, animal)`` tensor.

The tensor of the dynamic functional connectome (Dyballa et al., ICLR 2024): for every pair
of neurons, every time window and every animal, a non-negative, non-linear affinity.

Layout choice: a pandas MultiIndex does not survive netCDF/zarr, so the ``pair`` dimension
carries plain coordinates ``neuron_a`` / ``neuron_b`` (neuron ids) and ``index_a`` /
``index_b`` (positions in the input's ``neuron`` dimension, ``index_a < index_b``).
:func:`pairs_to_matrix` unstacks any ``pair`` vector into a symmetric
``(neuron_a, neuron_b)`` matrix. The ``mask`` coordinate ``(pair, animal)`` is ``True`` where
both neurons were recorded in that animal, and ``window_mask`` ``(window, animal)`` where
the window lies within that animal's recording; the affinity is 0 where either is False.

Memory. The tensor has ``N(N-1)/2 x windows x animals`` entries, far more than the
recording for long recordings of many neurons. It is built window batch by window batch:
each batch sends only its stretch of the traces to the device, computes the ``(N, N)``
affinity matrices of its windows in float64, keeps the upper triangle and writes it, cast
to ``dtype``, into its slice of the output. The only full-size array is the output itself
(or none: ``lazy=True`` returns a dask array whose chunks are the batches, to be written to
zarr or fed to :class:`~neurodata.models.ntf.NTF`, which reads it batch by batch into its
own dtype). The batch size is planned from the free memory
(:func:`~neurodata.models._jax.memory.plan_batch_size`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from neurodata.errors import InputDataError
from neurodata.models._jax.memory import plan_batch_size

__all__ = ["KERNELS", "affinity_tensor", "pairs_to_matrix"]

KERNELS = ("differential", "gaussian", "correlation")
"""Affinity kernels accepted by :func:`affinity_tensor`."""


def _window_affinity(x: jnp.ndarray, ia, ib, kernel: str, sigma: float) -> jnp.ndarray:
    """Affinities ``(pair,)`` of one window ``x (L, N)`` for the pairs ``(ia, ib)``.

    After centring each trace and scaling it to unit norm, ``|z_i - z_j|^2 = 2 (1 - rho_ij)``,
    so the Gaussian kernel on standardised traces is ``exp(-(1 - rho) / sigma^2)``. The
    kernel is applied to the pairs only (half the ``(N, N)`` matrix).
    """
    xc = x - x.mean(axis=0)
    norm = jnp.sqrt(jnp.sum(xc * xc, axis=0))
    # a flat trace has no defined correlation: give it rho = 0 with every neuron
    z = xc / jnp.where(norm > 0, norm, 1.0)
    rho = (z.T @ z)[ia, ib]
    if kernel == "correlation":
        return jnp.maximum(rho, 0.0)
    return jnp.exp(-(1.0 - rho) / sigma**2)


@partial(jax.jit, static_argnames=("length", "kernel", "dtype"))
def _affinities(x, starts, ia, ib, length: int, kernel: str, sigma: float, dtype):
    """``x (animal, time, neuron)`` -> ``(pair, window, animal)`` in ``dtype``; vmapped twice.

    Computed in ``x``'s dtype (float64), cast at the end.
    """
    offsets = jnp.arange(length)

    def one_animal(xa):
        def one_window(s):
            return _window_affinity(xa[s + offsets], ia, ib, kernel, sigma)

        return jax.vmap(one_window)(starts)

    return jnp.transpose(jax.vmap(one_animal)(x), (2, 1, 0)).astype(dtype)


def _batch(sig, starts, pair_mask, window_mask, ia, ib, batch: int, length: int, kernel: str,
           sigma: float, dtype, b0: int, b1: int) -> np.ndarray:
    """Affinities ``(pair, b1 - b0, animal)`` of windows ``b0:b1``, cast to ``dtype``.

    Every batch has the same shapes (the last one is padded by repeating its last window),
    so the jitted kernel compiles once; only the batch's stretch of the traces is sent to
    the device.
    """
    idx = np.minimum(np.arange(b0, b0 + batch), b1 - 1)
    first = int(starts[b0])
    span = int(starts[idx[-1]] - first) + length
    stretch = np.zeros((sig.shape[0], int(starts[min(batch, starts.size) - 1] - starts[0])
                        + length, sig.shape[2]), sig.dtype)
    stretch[:, :span] = sig[:, first:first + span]
    aff = _affinities(jnp.asarray(stretch), jnp.asarray(starts[idx] - first), ia, ib, length,
                      kernel, sigma, np.dtype(dtype))
    aff = np.asarray(aff)[:, : b1 - b0]
    keep = pair_mask[:, None, :] & window_mask[None, b0:b1]
    return aff if keep.all() else np.where(keep, aff, np.zeros((), dtype))


def _sampling_rate(ds: xr.Dataset, sampling_rate: float | None) -> float:
    if sampling_rate is not None:
        fs = float(sampling_rate)
    elif "sampling_rate" in ds.attrs:
        fs = float(ds.attrs["sampling_rate"])
    else:
        t = np.asarray(ds["time"].values, dtype=float)
        if t.size < 2:
            raise InputDataError("activity has fewer than 2 time points; affinities need more.")
        fs = 1.0 / float(np.median(np.diff(t)))
    if not (np.isfinite(fs) and fs > 0):
        raise InputDataError(
            f"sampling_rate is {fs!r}; give the frame rate, e.g. affinity_tensor(ds, "
            "sampling_rate=30.0), or set ds.attrs['sampling_rate']."
        )
    return fs


def affinity_tensor(
    ds: xr.Dataset,
    window: float,
    step: float | None = None,
    *,
    kernel: str = "differential",
    sigma: float = 0.5,
    sampling_rate: float | None = None,
    dtype: str = "float32",
    batch_windows: int | None = None,
    lazy: bool = False,
) -> xr.DataArray:
    """Time-resolved pairwise affinities ``(pair, window, animal)`` with a recorded-pair mask.

    Parameters
    ----------
    ds
        A dataset with ``activity(animal, time, neuron)`` and a boolean ``recorded(animal,
        neuron)`` mask (multi-animal stack; NaN where a neuron was not recorded), or a
        single-animal ``activity(time, neuron)``.
    window
        Window length in seconds.
    step
        Step between window starts in seconds (default: ``window``, non-overlapping).
    kernel
        ``"differential"`` (default): Gaussian kernel on the temporal derivatives of the
        traces, ``exp(-(1 - rho_ij) / sigma^2)`` with ``rho_ij`` the correlation of the
        first differences within the window, a derivative-based, non-linear affinity that is
        near 0 for independent neurons and 1 for neurons that rise and fall together.
        ``"gaussian"``: the same kernel on the traces themselves. ``"correlation"``: the
        rectified Pearson correlation ``max(rho_ij, 0)`` of the traces.
    sigma
        Kernel width (``"differential"`` and ``"gaussian"``); smaller is more selective.
    sampling_rate
        Frames per second; default ``ds.attrs['sampling_rate']``, else from ``time``.
    dtype
        Output dtype (float32 halves memory; the tensor has ``N(N-1)/2 x windows x animals``
        entries).
    batch_windows
        Windows computed at once (default: planned so that a batch's float64 ``(N, N)``
        matrices use at most a quarter of the free memory, see
        :func:`~neurodata.models._jax.memory.plan_batch_size`). The result does not depend
        on it.
    lazy
        Return a dask-backed DataArray chunked by ``batch_windows`` along ``window``:
        nothing is computed until it is written (``.to_zarr``) or fitted.

    Returns
    -------
    xarray.DataArray
        ``affinity(pair, window, animal)`` with coords ``neuron_a``, ``neuron_b``,
        ``index_a``, ``index_b`` on ``pair``; ``window`` (centre time, s), ``window_start``,
        ``window_stop`` on ``window``; ``animal``; ``mask(pair, animal)`` (both neurons
        recorded) and ``window_mask(window, animal)`` (the window lies within that
        animal's recording: stacks of unequal lengths carry ``n_samples(animal)``). A
        single-animal input gets an ``animal`` dimension of length 1.

    Raises
    ------
    InputDataError
        NaNs in a recorded trace, a window longer than the recording or shorter than 3
        frames, animals that share fewer than 2 recorded neurons, an unknown kernel.

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> from neurodata.models.affinity import affinity_tensor
    >>> ds = neurodata.from_arrays(np.random.default_rng(0).normal(size=(300, 4)), 10.0,
    ...                            signal="dff")
    >>> affinity_tensor(ds, window=5.0).sizes
    Frozen({'pair': 6, 'window': 5, 'animal': 1})
    """
    if kernel not in KERNELS:
        raise InputDataError(f"kernel {kernel!r} is not one of {list(KERNELS)}.")
    if not (np.isfinite(sigma) and sigma > 0):
        raise InputDataError(f"sigma is {sigma!r}; it must be a positive number.")
    if "activity" not in ds:
        raise InputDataError("the dataset has no 'activity' variable to compute affinities from.")
    act = ds["activity"]
    if act.dims == ("time", "neuron"):
        act = act.expand_dims(animal=[0])
    if act.dims != ("animal", "time", "neuron"):
        raise InputDataError(
            f"activity has dims {act.dims}; affinity_tensor needs (time, neuron) or "
            "(animal, time, neuron)."
        )
    x = np.asarray(act.values, dtype=float)
    n_animal, n_time, n_neuron = x.shape
    if "recorded" in ds:
        recorded = np.asarray(ds["recorded"].transpose("animal", "neuron").values, dtype=bool)
        recorded = recorded.reshape(n_animal, n_neuron)
    else:
        recorded = ~np.all(np.isnan(x), axis=1)
    # stacks of recordings of different lengths (stack_animals) end in NaN padding
    n_samples = (np.asarray(ds["n_samples"].values, dtype=int).reshape(n_animal)
                 if "n_samples" in ds else np.full(n_animal, n_time))
    in_range = np.arange(n_time)[None, :] < n_samples[:, None]  # (animal, time)
    bad = np.isnan(x) & recorded[:, None, :] & in_range[:, :, None]
    if bad.any():
        a, t, n = np.argwhere(bad)[0]
        raise InputDataError(
            f"activity has {int(bad.sum())} NaN values in recorded traces (first: animal "
            f"{a}, time index {t}, neuron {ds['neuron_id'].values[n]!r}); interpolate or drop "
            "those frames, or mark the neuron as not recorded in 'recorded'."
        )
    if n_neuron < 2:
        raise InputDataError(f"activity has {n_neuron} neuron(s); affinities need at least 2.")
    shared = recorded[:, :, None] & recorded[:, None, :]
    n_shared = shared.sum(axis=(1, 2)) - recorded.sum(axis=1)
    if np.any(n_shared < 2):
        raise InputDataError(
            f"animals {np.flatnonzero(n_shared < 2).tolist()} record fewer than 2 neurons, so "
            "they have no neuron pair; drop them from the stack."
        )
    ia, ib = np.triu_indices(n_neuron, k=1)
    pair_mask = shared[:, ia, ib].T  # (pair, animal)
    if n_animal > 1:
        # an animal whose pairs no other animal records cannot share components with them
        others = pair_mask.sum(axis=1, keepdims=True) - pair_mask
        lonely = ~np.any(pair_mask & (others > 0), axis=0)
        if lonely.any():
            raise InputDataError(
                f"animals {act['animal'].values[lonely].tolist()} share no recorded neuron pair "
                "with the other animals (check 'recorded' and the neuron labels); drop them "
                "or fit them separately."
            )

    fs = _sampling_rate(ds, sampling_rate)
    length = int(round(window * fs))
    stride = int(round((step if step is not None else window) * fs))
    n_avail = n_time - 1 if kernel == "differential" else n_time
    if length < 3:
        raise InputDataError(
            f"window={window} s is {length} frames at {fs} Hz; give a window of at least 3 frames."
        )
    if length > n_avail:
        raise InputDataError(
            f"window={window} s is {length} frames but the recording has only {n_time} frames "
            f"({n_time / fs:.3g} s at {fs} Hz); give a shorter window."
        )
    if stride < 1:
        raise InputDataError(f"step={step} s is shorter than one frame at {fs} Hz.")
    starts = np.arange(0, n_avail - length + 1, stride)
    sig = np.where(recorded[:, None, :] & in_range[:, :, None], x, 0.0)
    # a window is observed in an animal if it lies within that animal's recording
    last = n_samples - (1 if kernel == "differential" else 0)
    window_mask = (starts[:, None] + length) <= last[None, :]  # (window, animal)
    if kernel == "differential":
        sig = np.diff(sig, axis=1)
    n_win, n_pair = starts.size, ia.size
    if batch_windows is None:
        # per window: the float64 (N, N) matrix and about two temporaries of it per animal
        per_window = 3 * 8 * n_animal * n_neuron**2 + 8 * n_animal * length * n_neuron
        batch_windows = plan_batch_size(per_window, n_win, fraction=0.25)
    elif not (isinstance(batch_windows, int | np.integer) and batch_windows >= 1):
        raise InputDataError(f"batch_windows is {batch_windows!r}; give a positive integer.")
    batch = int(min(batch_windows, n_win))
    build = partial(_batch, sig, starts, pair_mask, window_mask, jnp.asarray(ia),
                    jnp.asarray(ib), batch, length, kernel, float(sigma), dtype)
    bounds = [(b0, min(b0 + batch, n_win)) for b0 in range(0, n_win, batch)]
    if lazy:
        import dask
        import dask.array as da

        aff = da.concatenate(
            [da.from_delayed(dask.delayed(build)(b0, b1), shape=(n_pair, b1 - b0, n_animal),
                             dtype=dtype) for b0, b1 in bounds], axis=1)
    else:
        aff = np.empty((n_pair, n_win, n_animal), dtype)
        for b0, b1 in bounds:
            aff[:, b0:b1] = build(b0, b1)

    t = np.asarray(ds["time"].values, dtype=float)
    # a difference at frame k sits between frames k and k + 1
    offset = 0.5 / fs if kernel == "differential" else 0.0
    t0 = t[starts] + offset
    t1 = t[starts + length - 1] + offset
    ids = np.asarray(ds["neuron_id"].values).astype(str)
    animals = act["animal"].values
    return xr.DataArray(
        aff,
        dims=("pair", "window", "animal"),
        coords={
            "neuron_a": ("pair", ids[ia]),
            "neuron_b": ("pair", ids[ib]),
            "index_a": ("pair", ia),
            "index_b": ("pair", ib),
            "window": ("window", (t0 + t1) / 2, {"units": "s"}),
            "window_start": ("window", t0),
            "window_stop": ("window", t1),
            "animal": ("animal", animals),
            "mask": (("pair", "animal"), pair_mask),
            "window_mask": (("window", "animal"), window_mask),
        },
        name="affinity",
        attrs={"kernel": kernel, "sigma": float(sigma), "window_s": float(window),
               "step_s": float(step if step is not None else window), "sampling_rate": fs,
               "n_neuron": int(n_neuron)},
    )


def pairs_to_matrix(values, n_neuron: int | None = None, *, fill: float = 0.0) -> xr.DataArray:
    """Unstack a ``pair`` vector into a symmetric ``(neuron_a, neuron_b)`` matrix.

    Parameters
    ----------
    values
        A ``pair``-indexed DataArray carrying ``index_a``/``index_b`` (and ``neuron_a``/
        ``neuron_b``) coordinates, e.g. one component of ``NTF.factors_[0]``; or a plain
        array in :func:`numpy.triu_indices` order, then ``n_neuron`` is required.
    n_neuron
        Number of neurons (default: from the coordinates).
    fill
        Value on the diagonal.

    Returns
    -------
    xarray.DataArray
        Symmetric ``(neuron_a, neuron_b)`` matrix labelled by neuron id.

    Examples
    --------
    >>> import numpy as np
    >>> pairs_to_matrix(np.array([1.0, 2.0, 3.0]), 3).values.tolist()
    [[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]]
    """
    if isinstance(values, xr.DataArray) and "index_a" in values.coords:
        ia = np.asarray(values["index_a"].values)
        ib = np.asarray(values["index_b"].values)
        n = n_neuron or int(max(ia.max(), ib.max())) + 1
        ids = np.array([str(i) for i in range(n)], dtype=object)
        ids[ia] = np.asarray(values["neuron_a"].values)
        ids[ib] = np.asarray(values["neuron_b"].values)
        v = np.asarray(values.values, dtype=float)
    else:
        v = np.asarray(values, dtype=float)
        if n_neuron is None:
            n_neuron = int(round((1 + np.sqrt(1 + 8 * v.size)) / 2))
        n = n_neuron
        ia, ib = np.triu_indices(n, k=1)
        if v.size != ia.size:
            raise InputDataError(
                f"a pair vector of {v.size} entries does not match {n} neurons "
                f"({ia.size} pairs)."
            )
        ids = np.array([str(i) for i in range(n)], dtype=object)
    m = np.full((n, n), float(fill))
    m[ia, ib] = v
    m[ib, ia] = v
    ids = ids.astype(str)
    return xr.DataArray(m, dims=("neuron_a", "neuron_b"),
                        coords={"neuron_a": ids, "neuron_b": ids})
