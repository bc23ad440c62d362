"""Topological RSA (Lin & Kriegeskorte, PNAS 2024): GT transform, RGTMs, geodesic RDMs.

Deliberate differences from ``rsatoolbox.rdm.transform`` (0.3.2), each covered by a test:

- the GT thresholds are quantiles of each RDM's own rank-transformed distances, as in the
  authors' code (rsatoolbox pools the quantiles over all RDMs, without ranking);
- graph edges are an explicit boolean mask, so zero-weight edges stay edges of the geodesic
  graph (``networkx.from_numpy_array`` drops them);
- no function modifies its input (rsatoolbox's transforms write into the RDMs object).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from neurodata.errors import InputDataError
from neurodata.models.rsa.compare import masked_ranks
from neurodata.models.rsa.rdm import _square, as_rdms, condensed

__all__ = [
    "RGTM_CLASSES",
    "adjacency",
    "geodesic",
    "gt_transform",
    "identification_accuracy",
    "knn_geodesic",
    "rank_transform",
    "rgtm_class",
    "topology_grid",
]

RGTM_CLASSES = ("local", "global", "geometry-sensitive", "topology-sensitive", "intermediate")


def _rank01(v: jax.Array) -> jax.Array:
    r = masked_ranks(v, jnp.ones(v.shape, bool))
    lo = r.min(-1, keepdims=True)
    hi = r.max(-1, keepdims=True)
    return (r - lo) / jnp.where(hi > lo, hi - lo, 1.0)


@jax.jit
def _gt_vectors(v: jax.Array, lower: jax.Array, upper: jax.Array) -> jax.Array:
    r = _rank01(v)
    lq = jnp.quantile(r, lower, axis=-1, keepdims=True)
    uq = jnp.quantile(r, upper, axis=-1, keepdims=True)
    width = uq - lq
    mid = (r - lq) / jnp.where(width > 0, width, 1.0)
    # l = u: a binary matrix, 0 for the neighbourhood (d <= quantile), 1 beyond
    mid = jnp.where(width > 0, mid, (r > uq).astype(r.dtype))
    return jnp.where(r < lq, 0.0, jnp.where(r > uq, 1.0, mid))


def _checked(rdms: Any, lower: float, upper: float) -> np.ndarray:
    values, _ = as_rdms(rdms)
    if not (0.0 <= lower <= upper <= 1.0):
        raise InputDataError(
            f"lower={lower} and upper={upper}; they are quantiles with 0 <= lower <= upper <= 1."
        )
    return values


def _like(rdms: Any, out: np.ndarray, measure: str):
    if isinstance(rdms, xr.Dataset):
        res = rdms.copy()
        res["dissimilarity"] = (rdms["dissimilarity"].dims, out, {"measure": measure})
        return res
    if isinstance(rdms, xr.DataArray):
        return rdms.copy(data=out.reshape(rdms.shape))
    return out if np.ndim(rdms) == 3 else out[0]


def rank_transform(rdms: Any):
    """Rank-RDM: per-RDM ranks of the distances, min-max scaled to [0, 1] (= GT(0, 1)).

    Parameters
    ----------
    rdms
        RDM dataset or array ``(n_rdm, n, n)`` / ``(n, n)``.

    Returns
    -------
    Same type as the input (a new object).
    """
    return gt_transform(rdms, 0.0, 1.0)


def gt_transform(rdms: Any, lower: float = 0.2, upper: float = 0.8):
    """Geo-topological transform GT(l, u), thresholds as per-RDM quantiles after ranking.

    ``GT = 0`` below the ``lower`` quantile, 1 above the ``upper`` quantile and linear in
    between. ``lower == upper`` gives a binary matrix (0 within the neighbourhood);
    ``lower=0, upper=1`` gives the rank-RDM. The result is invariant to any monotone
    transform of each RDM.

    Parameters
    ----------
    rdms
        RDM dataset or array ``(n_rdm, n, n)`` / ``(n, n)``.
    lower, upper
        Quantiles in [0, 1].

    Returns
    -------
    Same type as the input: the RGTMs (a new object; the input is not modified).

    Examples
    --------
    >>> import numpy as np
    >>> d = np.array([[0, 1, 2, 3], [1, 0, 4, 5], [2, 4, 0, 6], [3, 5, 6, 0.0]])
    >>> gt_transform(d, 0.5, 0.5)[3]
    array([0., 1., 1., 0.])
    """
    values = _checked(rdms, lower, upper)
    v = condensed(values)
    lu = jnp.asarray(float(lower)), jnp.asarray(float(upper))
    out = np.asarray(_square(_gt_vectors(v, *lu), values.shape[1]))
    return _like(rdms, out, f"gt({lower}, {upper})")


def adjacency(rdms: Any, quantile: float = 0.5):
    """Binary neighbourhood graph: 1 where the distance is at or below the quantile.

    This is ``1 - GT(q, q)`` off the diagonal (diagonal 0).
    """
    values = _checked(rdms, quantile, quantile)
    g = _gt_vectors(condensed(values), jnp.asarray(float(quantile)), jnp.asarray(float(quantile)))
    out = np.asarray(_square(1.0 - g, values.shape[1]))
    return _like(rdms, out, f"adjacency({quantile})")


@jax.jit
def _floyd_warshall(weights: jax.Array, edges: jax.Array) -> jax.Array:
    # all-pairs shortest paths; the edge set is a mask so zero-weight edges are kept
    n = weights.shape[-1]
    dist = jnp.where(edges, weights, jnp.inf)
    dist = jnp.where(jnp.eye(n, dtype=bool), 0.0, dist)

    def step(k, d):
        return jnp.minimum(d, d[..., :, k, None] + d[..., None, k, :])

    return jax.lax.fori_loop(0, n, step, dist)


def _rank_after(dist: jax.Array) -> jax.Array:
    n = dist.shape[-1]
    v = condensed(dist)
    # unreachable pairs (inf) rank above every finite distance and tie with each other
    return _square(_rank01(v), n)


def geodesic(rdms: Any, lower: float = 0.2, upper: float = 0.8, *, rank_after: bool = True):
    """Representational geodesic-distance matrix (RGDM), "twostep" construction.

    The graph's edges are the pairs with GT(l, u) < 1 (distance below the ``upper``
    quantile), weighted by their GT value; all-pairs shortest paths (Floyd-Warshall in
    ``lax.fori_loop``) give the geodesic distances, rank-transformed again by default.
    Pairs below the ``lower`` quantile are edges of weight 0 (rsatoolbox drops them).

    Parameters
    ----------
    rdms
        RDM dataset or array ``(n_rdm, n, n)`` / ``(n, n)``.
    lower, upper
        Quantiles of the GT transform.
    rank_after
        Rank-transform (min-max to [0, 1]) the geodesic distances.

    Returns
    -------
    Same type as the input (a new object); unreachable pairs are ``inf`` when
    ``rank_after=False``.
    """
    values = _checked(rdms, lower, upper)
    n = values.shape[1]
    lu = jnp.asarray(float(lower)), jnp.asarray(float(upper))
    g = _square(_gt_vectors(condensed(values), *lu), n)
    dist = _floyd_warshall(g, g < 1.0)
    out = np.asarray(_rank_after(dist) if rank_after else dist)
    return _like(rdms, out, f"geodesic({lower}, {upper})")


def knn_geodesic(rdms: Any, k: int = 5, *, rank_after: bool = True):
    """Geodesic distances on the symmetrised k-nearest-neighbour graph of each RDM.

    Edge weights are the rank-transformed distances (min-max to [0, 1]).
    """
    values, _ = as_rdms(rdms)
    n = values.shape[1]
    if not 1 <= k < n:
        raise InputDataError(f"k={k}; it must be between 1 and n_stimulus - 1 = {n - 1}.")
    r = _square(_rank01(condensed(values)), n)
    off = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, r)
    kth = jnp.sort(off, -1)[..., k - 1: k]
    near = off <= kth
    edges = near | jnp.swapaxes(near, -1, -2)
    dist = _floyd_warshall(r, edges)
    out = np.asarray(_rank_after(dist) if rank_after else dist)
    return _like(rdms, out, f"knn_geodesic({k})")


def rgtm_class(lower: float, upper: float) -> str:
    """The RGTM class of GT(l, u) (``get_rgtm_type`` in the authors' code).

    ``local`` (mean(l, u) <= 0.2), ``global`` (mean >= 0.8), ``geometry-sensitive``
    (u - l >= 0.8), ``topology-sensitive`` (0.4 <= l and u <= 0.6), else ``intermediate``.
    """
    mean = (lower + upper) / 2
    if mean <= 0.2:
        return "local"
    if mean >= 0.8:
        return "global"
    if upper - lower >= 0.8:
        return "geometry-sensitive"
    if lower >= 0.4 and upper <= 0.6:
        return "topology-sensitive"
    return "intermediate"


@jax.jit
def _loso_accuracy(x: jax.Array, region: jax.Array, subject: jax.Array) -> jax.Array:
    # leave one subject out; nearest centroid (Euclidean) of each region on the others
    n_subject = subject.shape[1]

    def held_out(s):
        train = (1.0 - subject[:, s])[:, None] * region  # (n_item, n_region) weights
        centroids = (train.T @ x) / jnp.maximum(train.sum(0), 1.0)[:, None]
        d = jnp.sum((x[:, None, :] - centroids[None]) ** 2, -1)
        d = jnp.where(train.sum(0)[None, :] > 0, d, jnp.inf)
        hit = jnp.argmin(d, -1) == jnp.argmax(region, -1)
        return jnp.sum(hit * subject[:, s]), jnp.sum(subject[:, s])

    hits, counts = jax.vmap(held_out)(jnp.arange(n_subject))
    return hits.sum() / counts.sum()


def _codes(labels: Any, n: int, name: str) -> jax.Array:
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise InputDataError(f"{name} has shape {lab.shape}; give one label per statistic ({n}).")
    codes = np.unique(lab, return_inverse=True)[1]
    return jax.nn.one_hot(codes, codes.max() + 1, dtype=jnp.float64)


def identification_accuracy(statistics: Any, region: Any, subject: Any) -> float:
    """Leave-one-subject-out nearest-centroid identification accuracy of the region.

    For each held-out subject, one centroid per region is the mean of the other subjects'
    vectorised statistics; each of the held-out subject's statistics is assigned to the
    nearest centroid (Euclidean), as ``loo_eval`` with sklearn's ``NearestCentroid``.

    Parameters
    ----------
    statistics
        RDMs / RGTMs ``(n_item, n, n)`` (or an RDM dataset), or vectors ``(n_item, p)``.
    region, subject
        One label per item (the region or layer, and the subject or network seed).

    Returns
    -------
    float
        Fraction of items identified correctly (chance: 1 / number of regions).
    """
    x = np.array(statistics.get("dissimilarity", statistics) if isinstance(
        statistics, xr.Dataset) else statistics, dtype=np.float64)
    if x.ndim == 3:
        x = np.asarray(condensed(x))
    if x.ndim != 2:
        raise InputDataError(
            f"statistics has shape {x.shape}; give (n_item, n, n) matrices or (n_item, p)."
        )
    subj = _codes(subject, x.shape[0], "subject")
    if subj.shape[1] < 2:
        raise InputDataError("identification needs statistics from at least 2 subjects.")
    return float(_loso_accuracy(jnp.asarray(x), _codes(region, x.shape[0], "region"), subj))


def topology_grid(
    rdms: Any, region: Any, subject: Any, levels: Any = None
) -> xr.DataArray:
    """Identification accuracy of GT(l, u) over a grid of (l, u) quantiles (l <= u).

    Parameters
    ----------
    rdms
        RDMs ``(n_item, n, n)`` or an RDM dataset, one per (region, subject).
    region, subject
        One label per RDM.
    levels
        Quantile grid (default 0, 0.05, ..., 1).

    Returns
    -------
    xarray.DataArray
        ``accuracy(lower, upper)``, NaN where ``lower > upper``.
    """
    values, _ = as_rdms(rdms)
    grid = np.round(np.linspace(0, 1, 21) if levels is None else np.asarray(levels), 10)
    reg = _codes(region, values.shape[0], "region")
    subj = _codes(subject, values.shape[0], "subject")
    v = condensed(values)
    li, ui = np.triu_indices(len(grid))
    acc = jax.lax.map(
        lambda lu: _loso_accuracy(_gt_vectors(v, lu[0], lu[1]), reg, subj),
        jnp.stack([jnp.asarray(grid[li]), jnp.asarray(grid[ui])], 1),
    )
    out = np.full((len(grid), len(grid)), np.nan)
    out[li, ui] = np.asarray(acc)
    return xr.DataArray(out, dims=("lower", "upper"), coords={"lower": grid, "upper": grid},
                        name="accuracy")
