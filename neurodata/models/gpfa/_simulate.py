"""Draw trial datasets from a GPFA model (for tests and tutorials)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from neurodata.data import from_arrays
from neurodata.errors import InputDataError


def _gp_latents(rng: np.random.Generator, n_trials: int, n_time: int,
                timescales_bins: np.ndarray, gp_noise: float) -> np.ndarray:
    t = np.arange(n_time, dtype=float)
    out = np.empty((n_trials, n_time, timescales_bins.size))
    for i, tau in enumerate(timescales_bins):
        K = (1 - gp_noise) * np.exp(-0.5 * (t[:, None] - t[None, :]) ** 2 / tau**2)
        L = np.linalg.cholesky(K + gp_noise * np.eye(n_time))
        out[:, :, i] = rng.standard_normal((n_trials, n_time)) @ L.T
    return out


def simulate(
    n_trials: int = 100,
    n_time: int = 50,
    n_neurons: int = 40,
    n_latents: int = 3,
    *,
    timescales: Sequence[float] | None = None,
    bin_size: float = 0.02,
    gp_noise: float = 1e-3,
    observation: str = "gaussian",
    noise_std: float = 0.5,
    mean_rate: float = 2.0,
    seed: int = 0,
) -> tuple[xr.Dataset, dict[str, np.ndarray]]:
    """Simulate trials from a GPFA model.

    Latents are independent GPs with unit variance and the RBF kernel of Yu et al. (2009);
    neurons are ``y = C x + d + noise`` (``observation="gaussian"``, signal ``"rate"``) or
    Poisson counts with rate ``exp(C x + d)`` per bin (``observation="poisson"``, signal
    ``"spike_count"``).

    Parameters
    ----------
    n_trials, n_time, n_neurons, n_latents
        Sizes.
    timescales
        GP timescales in seconds (default: spread between 2 and 8 bins).
    bin_size
        Bin width in seconds.
    gp_noise
        GP noise variance ``eps``.
    observation
        ``"gaussian"`` or ``"poisson"``.
    noise_std
        Standard deviation of the private Gaussian noise (Gaussian observations).
    mean_rate
        Mean count per bin (Poisson observations).
    seed
        Seed of the generator.

    Returns
    -------
    (xarray.Dataset, dict)
        A validated ``activity(trial, time, neuron)`` dataset and the truth: ``loadings``
        ``(neuron, latent)``, ``offsets``, ``noise_variances``, ``timescales`` (s) and
        ``latents`` ``(trial, time, latent)``.

    Examples
    --------
    >>> ds, truth = simulate(n_trials=4, n_time=10, n_neurons=6, n_latents=2)
    >>> dict(ds.activity.sizes), truth["latents"].shape
    ({'trial': 4, 'time': 10, 'neuron': 6}, (4, 10, 2))
    """
    if observation not in ("gaussian", "poisson"):
        raise InputDataError(f"observation {observation!r} must be 'gaussian' or 'poisson'.")
    rng = np.random.default_rng(seed)
    if timescales is None:
        timescales = bin_size * np.geomspace(2.0, 8.0, n_latents)
    timescales = np.asarray(timescales, dtype=float)
    if timescales.size != n_latents or np.any(timescales <= 0):
        raise InputDataError(f"timescales must be {n_latents} positive numbers of seconds.")
    x = _gp_latents(rng, n_trials, n_time, timescales / bin_size, gp_noise)
    if observation == "gaussian":
        C = rng.normal(size=(n_neurons, n_latents))
        d = rng.normal(size=n_neurons)
        R = np.full(n_neurons, noise_std**2)
        y = x @ C.T + d + rng.normal(size=(n_trials, n_time, n_neurons)) * noise_std
        signal = "rate"
    else:
        C = rng.normal(size=(n_neurons, n_latents)) * 0.4
        d = np.log(mean_rate) + rng.normal(size=n_neurons) * 0.3 - 0.5 * np.sum(C**2, 1)
        R = np.full(n_neurons, np.nan)
        y = rng.poisson(np.exp(x @ C.T + d))
        signal = "spike_count"
    ds = from_arrays(y, 1.0 / bin_size, signal=signal,
                     attrs={"source": "neurodata.models.gpfa.simulate", "bin_size": bin_size})
    truth = {"loadings": C, "offsets": d, "noise_variances": R, "timescales": timescales,
             "latents": x}
    return ds, truth
