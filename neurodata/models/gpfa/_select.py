"""Model selection by leave-neuron-out cross-validation, and co-smoothing bits per spike."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from neurodata.errors import InputDataError


def co_bps(counts: np.ndarray, rates: np.ndarray) -> float:
    """Co-smoothing bits per spike (NLB'21).

    The Poisson log-likelihood gain over each neuron's mean rate,
    ``(NLL_null - NLL) / (n_spikes ln 2)``.

    Parameters
    ----------
    counts, rates
        Same-shape arrays ``(..., neuron)`` of observed counts and predicted rates per bin;
        NaN entries are ignored.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> counts = np.array([[0, 2], [1, 0], [3, 1]])
    >>> round(co_bps(counts, counts + 0.1), 3) > 0
    True
    """
    counts = np.asarray(counts, dtype=float).reshape(-1, np.shape(counts)[-1])
    rates = np.asarray(rates, dtype=float).reshape(counts.shape)
    ok = ~(np.isnan(counts) | np.isnan(rates))
    rates = np.maximum(rates, 1e-9)
    null = np.nanmean(np.where(ok, counts, np.nan), axis=0, keepdims=True) * np.ones_like(counts)
    null = np.maximum(null, 1e-9)

    def nll(lam):
        return np.sum(np.where(ok, lam - counts * np.log(lam), 0.0))

    n_spikes = np.sum(np.where(ok, counts, 0.0))
    return float((nll(null) - nll(rates)) / (n_spikes * np.log(2)))


def select_n_latents(
    ds: xr.Dataset,
    candidates: Sequence[int] = (1, 2, 3, 4, 5, 6),
    n_folds: int = 3,
    *,
    seed: int = 0,
    **gpfa_kwargs: Any,
) -> xr.Dataset:
    """Leave-neuron-out cross-validation over numbers of latents (Yu et al. 2009).

    For each fold, GPFA is fitted on the other trials; on the held-out trials every neuron
    is predicted from all the others (exact rank-one downdates of the posterior, no refit
    per neuron) and the squared error is summed. For spike counts the co-smoothing bits per
    spike of those predictions are reported too (rates ``max(yhat, 0)^2 + R`` when the
    square root transform is used).

    Parameters
    ----------
    ds
        ``activity(trial, time, neuron)``.
    candidates
        Numbers of latents to compare.
    n_folds
        Number of trial folds.
    seed
        Seed of the fold assignment.
    **gpfa_kwargs
        Passed to :class:`GPFA` (e.g. ``max_iter``).

    Returns
    -------
    xarray.Dataset
        Over ``n_latents``: ``lno_error`` (mean squared leave-neuron-out error per bin and
        neuron, in the modelled space), ``co_bps``; attr ``best_n_latents`` (the argmin of
        ``lno_error``).

    Examples
    --------
    >>> from neurodata.models.gpfa import simulate
    >>> ds, _ = simulate(n_trials=8, n_time=10, n_neurons=8, n_latents=1)
    >>> cv = select_n_latents(ds, [1, 2], n_folds=2, max_iter=5, progress=False)
    >>> cv["lno_error"].dims
    ('n_latents',)
    """
    from neurodata.models.gpfa._estimator import GPFA

    if "activity" not in ds or "trial" not in ds["activity"].dims:
        raise InputDataError("select_n_latents needs activity(trial, time, neuron); cut the "
                             "recording into trials first, e.g. "
                             "neurodata.preprocess.cut_windows(ds, 1.0).")
    n_trials = ds.sizes["trial"]
    if not 2 <= n_folds <= n_trials:
        raise InputDataError(f"n_folds={n_folds} must be between 2 and the number of trials "
                             f"({n_trials}).")
    folds = np.random.default_rng(seed).permutation(n_trials) % n_folds
    # drop the neurons that are constant in some fold's training trials once, up front, so
    # that every fold and candidate scores the same neurons
    values = np.asarray(ds["activity"].values, dtype=float)
    constant = np.zeros(values.shape[-1], dtype=bool)
    for k in range(n_folds):
        constant |= np.nanvar(values[folds != k].reshape(-1, values.shape[-1]), axis=0) <= 1e-12
    if constant.any():
        ids = [str(v) for v in ds["neuron_id"].values[constant]]
        warnings.warn(f"select_n_latents drops {len(ids)} neurons that are constant in the "
                      f"training trials of some fold: {ids}", stacklevel=2)
        ds = ds.isel(neuron=np.flatnonzero(~constant))
    counts = ds["activity"].attrs.get("signal") == "spike_count"
    errors, bits = [], []
    for p in candidates:
        sq_err, n_obs = 0.0, 0
        obs, pred_rates = [], []
        for k in range(n_folds):
            train, test = ds.isel(trial=folds != k), ds.isel(trial=folds == k)
            model = GPFA(n_latents=int(p), **gpfa_kwargs).fit(train)
            pred = model.predict_leave_neuron_out(test).values
            test_act = test["activity"].sel(
                neuron=np.isin(test["neuron_id"].values, model.loadings_["neuron_id"].values))
            y = np.asarray(test_act.values, dtype=float)
            target = np.sqrt(y) if model.sqrt_transform_ else y
            sq_err += float(np.nansum((pred - target) ** 2))
            n_obs += int(np.sum(~np.isnan(pred - target)))
            if counts:
                rate = (np.maximum(pred, 0.0) ** 2 + model.noise_variances_.values
                        if model.sqrt_transform_ else np.maximum(pred, 1e-3))
                obs.append(y.reshape(-1, y.shape[-1]))
                pred_rates.append(rate.reshape(-1, y.shape[-1]))
        errors.append(sq_err / n_obs)
        bits.append(co_bps(np.concatenate(obs), np.concatenate(pred_rates)) if counts
                    else np.nan)
    errors = np.asarray(errors)
    best = int(np.asarray(candidates)[int(np.argmin(errors))])
    return xr.Dataset(
        {"lno_error": ("n_latents", errors), "co_bps": ("n_latents", np.asarray(bits))},
        coords={"n_latents": np.asarray(candidates, dtype=int)},
        attrs={"best_n_latents": best, "n_folds": n_folds})
