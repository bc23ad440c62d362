"""Simulator of the bi-clustering model (the reference's simulation protocol by default)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from neurodata.data import from_arrays


def _rotation(rng: np.random.Generator, dim: int, theta: float) -> np.ndarray:
    """Rotation by ``theta`` in a random plane of ``R^dim``."""
    basis, _ = np.linalg.qr(rng.normal(size=(dim, 2)))
    u, v = basis[:, 0], basis[:, 1]
    return (np.eye(dim) + np.sin(theta) * (np.outer(v, u) - np.outer(u, v))
            + (np.cos(theta) - 1) * (np.outer(u, u) + np.outer(v, v)))


def _semi_markov_states(rng, n_time: int, n_states: int, mean_duration: float) -> np.ndarray:
    """Cycle through states with Poisson durations (a semi-Markov chain without self-loops)."""
    states = np.empty(n_time, dtype=int)
    t, s = 0, int(rng.integers(n_states))
    while t < n_time:
        dur = 1 + rng.poisson(mean_duration - 1)
        states[t:t + dur] = s
        t += dur
        others = [k for k in range(n_states) if k != s]
        s = int(rng.choice(others)) if others else s
    return states


def simulate(
    n_neurons_per_cluster: int = 10,
    n_clusters: int = 3,
    n_time: int = 500,
    latent_dim: int = 2,
    *,
    dynamics: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    mean_duration: float = 50.0,
    dispersion: float = 10.0,
    loading_scale: float = 0.5,
    bin_size: float = 0.5,
    burn_in: int = 500,
    seed: int = 0,
) -> tuple[xr.Dataset, dict[str, np.ndarray]]:
    """Draw spike counts from the bi-clustering model.

    Defaults follow the reference simulation (Wei 2023; ``run_simulation_NB.py``): 3
    clusters of 10 neurons, ``p = 2``, ``T = 500``; two states that alternate with Poisson
    durations (mean 50 bins), state 0 with ``A = 0.01 I`` and state 1 with ``A = 1.01 R``
    (``R`` a block-diagonal rotation by ``pi / 20`` in a random plane per cluster), no
    offset, ``Q = 0.01 I``; ``delta_i, c_i ~ N(0, 0.5^2)``; NB counts with ``r = 10``. The
    latent process runs ``burn_in`` bins before the recorded window, as in the reference.

    Parameters
    ----------
    n_neurons_per_cluster, n_clusters, n_time, latent_dim
        Sizes.
    dynamics
        Optional list of ``(A, b, Q)`` per state, each of the stacked dimension
        ``n_clusters * (latent_dim + 1)``; replaces the default two states.
    mean_duration
        Mean state duration in bins.
    dispersion
        NB dispersion ``r`` (``np.inf`` for Poisson counts).
    loading_scale
        Standard deviation of ``delta_i`` and ``c_i``.
    bin_size
        Bin width in seconds (for the time coordinate).
    burn_in
        Bins simulated and dropped before the recorded window.
    seed
        Seed of the numpy generator.

    Returns
    -------
    ds, truth
        A validated dataset with ``activity(time, neuron)`` counts, and a dict with
        ``neuron_clusters`` ``(N,)``, ``states`` ``(T,)``, ``latents`` ``(T, K, p + 1)``,
        ``delta``, ``loadings``, ``log_rate`` ``(T, N)`` and the per-state ``A``, ``b``,
        ``Q``.

    Examples
    --------
    >>> ds, truth = simulate(n_time=100, seed=1)
    >>> ds.activity.shape, truth["neuron_clusters"].shape
    ((100, 30), (30,))
    """
    rng = np.random.default_rng(seed)
    d = latent_dim + 1
    D = n_clusters * d
    if dynamics is None:
        rot = np.zeros((D, D))
        for k in range(n_clusters):
            rot[k * d:(k + 1) * d, k * d:(k + 1) * d] = 1.01 * _rotation(rng, d, np.pi / 20)
        dynamics = [(0.01 * np.eye(D), np.zeros(D), 0.01 * np.eye(D)),
                    (rot, np.zeros(D), 0.01 * np.eye(D))]
    n_states = len(dynamics)
    total = burn_in + n_time
    states = _semi_markov_states(rng, total, n_states, mean_duration)
    X = np.zeros((total, D))
    X[0] = rng.normal(size=D) * 0.1
    for t in range(total - 1):
        A, b, Q = dynamics[states[t]]
        X[t + 1] = A @ X[t] + b + rng.multivariate_normal(np.zeros(D), Q)
    X, states = X[burn_in:], states[burn_in:]
    latents = X.reshape(n_time, n_clusters, d)
    N = n_neurons_per_cluster * n_clusters
    labels = np.repeat(np.arange(n_clusters), n_neurons_per_cluster)
    delta = rng.normal(size=N) * loading_scale
    loadings = rng.normal(size=(N, latent_dim)) * loading_scale
    v = np.concatenate([np.ones((N, 1)), loadings], axis=1)
    log_rate = delta[None, :] + np.einsum("tnd,nd->tn", latents[:, labels, :], v)
    rate = np.exp(log_rate)
    if np.isinf(dispersion):
        counts = rng.poisson(rate)
    else:
        counts = rng.negative_binomial(dispersion, dispersion / (dispersion + rate))
    ds = from_arrays(counts.astype(np.int64), 1.0 / bin_size,
                     attrs={"source": "neurodata.models.bicluster.simulate"})
    truth = {
        "neuron_clusters": labels, "states": states, "latents": latents, "delta": delta,
        "loadings": loadings, "log_rate": log_rate,
        "A": np.stack([a for a, _, _ in dynamics]), "b": np.stack([b for _, b, _ in dynamics]),
        "Q": np.stack([q for _, _, q in dynamics]),
    }
    return ds, truth
