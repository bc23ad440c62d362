"""Permutation-free summaries of partition samples and label alignment (numpy)."""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import squareform


def coclustering(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Posterior similarity matrix: fraction of draws ``(M, n)`` where items share a label."""
    M, n = labels.shape
    onehot = np.zeros((n, M * n_labels), dtype=np.float32)
    onehot[np.repeat(np.arange(n)[:, None], M, axis=1),
           (np.arange(M) * n_labels)[None, :] + labels.T] = 1.0
    return (onehot @ onehot.T).astype(float) / M


def pear(candidate: np.ndarray, psm: np.ndarray) -> float:
    """Posterior expected adjusted Rand index of a partition (Fritsch & Ickstadt 2009)."""
    n = candidate.size
    onehot = (candidate[:, None] == np.unique(candidate)[None, :]).astype(float)
    same = onehot @ onehot.T
    iu = np.triu_indices(n, 1)
    s_i, s_p = same[iu].sum(), psm[iu].sum()
    cross = (same[iu] * psm[iu]).sum()
    pairs = n * (n - 1) / 2
    expected = s_i * s_p / pairs
    denom = 0.5 * (s_i + s_p) - expected
    return float((cross - expected) / denom) if denom > 0 else 1.0


def max_pear(labels: np.ndarray, psm: np.ndarray, max_candidates: int = 200,
             seed: int = 0) -> np.ndarray:
    """Point estimate maximising PEAR among sampled partitions and average-linkage cuts.

    Labels are renumbered by decreasing cluster size (ties by first appearance).
    """
    rng = np.random.default_rng(seed)
    n = psm.shape[0]
    draws = labels if len(labels) <= max_candidates else labels[
        rng.choice(len(labels), max_candidates, replace=False)]
    candidates = [canonical(d) for d in draws]
    if n > 1:
        dist = squareform(np.clip(1.0 - psm, 0.0, None), checks=False)
        tree = linkage(dist, method="average")
        max_k = int(min(n, max(len(np.unique(d)) for d in labels) + 2))
        candidates += [canonical(fcluster(tree, k, criterion="maxclust") - 1)
                       for k in range(1, max_k + 1)]
    unique = {tuple(c) for c in candidates}
    best = max(unique, key=lambda c: pear(np.asarray(c), psm))
    return np.asarray(best)


def canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel ``0..k-1`` by decreasing size, ties broken by first appearance."""
    labels = np.asarray(labels)
    values, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = values[np.lexsort((first, -counts))]
    mapping = {v: i for i, v in enumerate(order)}
    return np.array([mapping[v] for v in labels], dtype=int)


def align(draw: np.ndarray, reference: np.ndarray, n_slots: int) -> np.ndarray:
    """Permutation ``perm`` of the draw's slots so that ``perm[draw]`` best matches the reference.

    Returns ``perm`` of length ``n_slots``: slot ``k`` of the draw maps to label ``perm[k]``
    (labels of the reference keep their numbers; unmatched slots get the remaining numbers).
    """
    n_ref = int(reference.max()) + 1
    size = max(n_slots, n_ref)
    overlap = np.zeros((size, size))
    np.add.at(overlap, (draw, reference), 1.0)
    rows, cols = linear_sum_assignment(-overlap)
    perm = np.empty(size, dtype=int)
    perm[rows] = cols
    return perm[:n_slots]


def cluster_profile(latents: np.ndarray, loadings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Identified form of one cluster's trajectories: its members' log-rate contributions.

    The model leaves ``(mu, x)`` identified only through ``f_it = mu_t + c_i^T x_t`` up to a
    per-neuron constant (absorbed by ``delta_i``): shifting ``mu`` by ``a^T x``, any
    invertible map of ``x`` against ``c`` and constant offsets leave the likelihood
    unchanged, so raw draws drift and their average shrinks. This maps a draw to a
    canonical form: ``f`` centred over time, the baseline is its mean over members, and the
    factors are the leading principal components of the rest (scaled so that the loadings
    have unit mean square). Remaining ambiguity: an orthogonal map of the factors (see
    :func:`procrustes`).

    Parameters
    ----------
    latents
        ``(T, p + 1)`` rows ``[mu, x_1..x_p]`` of the cluster.
    loadings
        ``(n, p)`` loadings ``c_i`` of its members.

    Returns
    -------
    baseline, factors
        ``(T,)`` and ``(T, p)``.
    """
    n, p = loadings.shape
    v = np.concatenate([np.ones((n, 1)), loadings], axis=1)
    f = latents @ v.T
    f = f - f.mean(axis=0)
    baseline = f.mean(axis=1)
    u, s, _ = np.linalg.svd(f - baseline[:, None], full_matrices=False)
    factors = np.zeros((f.shape[0], p))
    q = min(p, s.size)
    factors[:, :q] = u[:, :q] * s[:q] / np.sqrt(n)
    return baseline, factors


def procrustes(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``x @ R`` with the orthogonal ``R`` that brings ``x`` closest to ``reference``."""
    u, _, wt = np.linalg.svd(x.T @ reference)
    return x @ (u @ wt)
