"""Data-driven starting points for the chains (the sampler's validity does not depend on them)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d
from sklearn.cluster import KMeans


def initial_values(y: np.ndarray, n_clusters: int, n_init_clusters: int, n_states: int,
                   n_init_states: int, latent_dim: int, seed: int, smooth_bins: float = 2.0):
    """K-means labels for neurons and bins, and per-cluster PCA trajectories and loadings.

    Neurons are clustered by k-means on their smoothed, standardised ``log(y + 0.5)`` time
    courses; each cluster's baseline is its mean course and its factors are the leading
    principal components of its members (loadings are the PCA weights). Bins are clustered
    by k-means on the smoothed local variance of the population, which separates quiet and
    active dynamical regimes. Each chain uses its own seed, so chains start apart.
    """
    T, N = y.shape
    d = latent_dim + 1
    rng = np.random.default_rng(seed)
    log_y = gaussian_filter1d(np.log(y + 0.5), smooth_bins, axis=0)
    centred = log_y - log_y.mean(axis=0)
    feats = centred / np.maximum(centred.std(axis=0), 1e-9)
    k_init = int(min(n_init_clusters, n_clusters, N))
    z0 = KMeans(k_init, n_init=1, random_state=int(rng.integers(2**31))).fit_predict(feats.T)
    latents = np.zeros((T, n_clusters, d))
    loadings = rng.normal(size=(N, latent_dim)) * 0.1
    for k in range(k_init):
        members = np.flatnonzero(z0 == k)
        if members.size == 0:
            continue
        block = centred[:, members]
        latents[:, k, 0] = block.mean(axis=1)
        resid = block - block.mean(axis=1, keepdims=True)
        u, s, vt = np.linalg.svd(resid, full_matrices=False)
        q = min(latent_dim, s.size)
        scale = np.sqrt(members.size)
        latents[:, k, 1:1 + q] = u[:, :q] * s[:q] / scale
        loadings[members, :q] = vt[:q].T * scale
    activity = gaussian_filter1d((centred - gaussian_filter1d(centred, 5 * smooth_bins,
                                                              axis=0)) ** 2, 5 * smooth_bins,
                                 axis=0)
    s_init = int(min(n_init_states, n_states, T))
    states0 = KMeans(s_init, n_init=1, random_state=int(rng.integers(2**31))).fit_predict(
        np.log(activity + 1e-6))
    return z0, states0, latents, loadings
