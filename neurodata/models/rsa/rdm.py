"""Representational dissimilarity matrices: construction, validation and the RDM dataset.

An RDM dataset is an :class:`xarray.Dataset` holding ``dissimilarity(rdm, stimulus,
stimulus_)`` (float64, square, symmetric) with descriptors as coordinates (``rdm_name`` on
``rdm``, ``stimulus_id`` on ``stimulus``). Every function here also takes plain arrays.

Dissimilarities follow rsatoolbox 0.3.2 (every measure divided by the number of channels
P): squared Euclidean, correlation, Mahalanobis, crossnobis, Poisson-KL and cross-validated
Poisson-KL; plus the linear-discriminant t (LD-t, Nili et al. 2014), a t value and not
divided by P. All run in float64 (comparisons with rsatoolbox are to 1e-6).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from neurodata.errors import InputDataError

__all__ = [
    "METHODS",
    "LowRankPrecision",
    "as_rdms",
    "calc_rdm",
    "condensed",
    "mds",
    "precision_from_residuals",
    "rdm_dataset",
]

METHODS = ("euclidean", "correlation", "mahalanobis", "crossnobis", "poisson", "poisson_cv",
           "ldt")
_CV_METHODS = ("crossnobis", "poisson_cv", "ldt")


# --------------------------------------------------------------------------- RDM containers


def rdm_dataset(
    dissimilarity: Any,
    *,
    rdm_name: Sequence[str] | None = None,
    stimulus_id: Sequence | None = None,
    measure: str = "",
    rdm_coords: dict[str, Sequence] | None = None,
) -> xr.Dataset:
    """Wrap square RDMs ``(n_rdm, n_stim, n_stim)`` into an RDM dataset.

    Parameters
    ----------
    dissimilarity
        Array ``(n_rdm, n, n)`` or ``(n, n)``; validated with :func:`as_rdms`.
    rdm_name
        One name per RDM (default ``"0"``, ``"1"``, ...).
    stimulus_id
        One id per stimulus (default ``0 .. n-1``).
    measure
        The dissimilarity measure, stored in ``dissimilarity.attrs['measure']``.
    rdm_coords
        Extra descriptors on the ``rdm`` dim (e.g. ``{"subject": [...]}``).

    Returns
    -------
    xarray.Dataset
        ``dissimilarity(rdm, stimulus, stimulus_)``.

    Examples
    --------
    >>> import numpy as np
    >>> ds = rdm_dataset(np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0.0]]))
    >>> dict(ds.sizes)
    {'rdm': 1, 'stimulus': 3, 'stimulus_': 3}
    """
    values, _ = as_rdms(dissimilarity)
    n_rdm, n = values.shape[:2]
    names = np.asarray([str(i) for i in range(n_rdm)] if rdm_name is None else rdm_name)
    ids = np.arange(n) if stimulus_id is None else np.asarray(stimulus_id)
    if names.shape != (n_rdm,) or ids.shape != (n,):
        raise InputDataError(
            f"rdm_name has shape {names.shape} and stimulus_id {ids.shape}, but the RDMs are "
            f"{values.shape}; give one name per RDM and one id per stimulus."
        )
    coords: dict[str, Any] = {
        "rdm_name": ("rdm", names),
        "stimulus_id": ("stimulus", ids),
        "stimulus_id_": ("stimulus_", ids),
    }
    for key, val in (rdm_coords or {}).items():
        coords[key] = ("rdm", np.asarray(val))
    return xr.Dataset(
        {"dissimilarity": (("rdm", "stimulus", "stimulus_"), values, {"measure": measure})},
        coords=coords,
    )


def as_rdms(x: Any, name: str = "rdms") -> tuple[np.ndarray, np.ndarray | None]:
    """Validate RDMs and return them as a float64 array ``(n_rdm, n, n)`` plus stimulus ids.

    Accepts an RDM dataset (``dissimilarity`` variable), a DataArray with dims
    ``(rdm, stimulus, stimulus_)`` or ``(stimulus, stimulus_)``, or an array of square
    matrices. The input is never modified (a copy is returned).

    Parameters
    ----------
    x
        The RDMs.
    name
        The argument name used in error messages.

    Returns
    -------
    values : numpy.ndarray
        ``(n_rdm, n, n)`` float64.
    stimulus_id : numpy.ndarray or None
        Stimulus ids when the input carried them.

    Raises
    ------
    InputDataError
        Non-square or asymmetric matrices, NaN entries, or fewer than 3 stimuli.
    """
    values, ids = _rdm_array(x, name, copy=True)  # a copy: callers' buffers are never touched
    _check_rdm_values(values, name)
    return values, ids


def _rdm_array(x: Any, name: str, copy: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The float64 ``(n_rdm, n, n)`` values and stimulus ids of RDMs, shapes checked only.

    Reads xarray inputs through their variables (the DataArray accessors cost more than the
    comparisons of small RDMs); without ``copy`` float64 input is not copied.
    """
    ids = None
    if isinstance(x, xr.Dataset):
        if "dissimilarity" not in x.variables:
            raise InputDataError(
                f"{name} is a Dataset without a 'dissimilarity' variable; build it with "
                "neurodata.models.rsa.rdm_dataset."
            )
        var = x.variables["dissimilarity"]
    elif isinstance(x, xr.DataArray):
        var = x.variable
    if isinstance(x, xr.Dataset | xr.DataArray):
        for key in ("stimulus_id", "stimulus"):
            ids = _coord_values(x, key)
            if ids is not None:
                break
        if var.ndim == 3 and var.dims[0] != "rdm":
            var = var.transpose("rdm", ...)
        x = var.values
    values = np.array(x, dtype=np.float64, copy=copy or None)
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3 or values.shape[1] != values.shape[2]:
        raise InputDataError(
            f"{name} has shape {np.shape(x)}; give square RDMs (n_rdm, n_stimulus, n_stimulus) "
            "(use scipy.spatial.distance.squareform on condensed vectors)."
        )
    if values.shape[1] < 3:
        raise InputDataError(
            f"{name} has {values.shape[1]} stimuli; RDM comparisons need at least 3."
        )
    return values, ids


def _coord_values(x: xr.Dataset | xr.DataArray, key: str) -> np.ndarray | None:
    # Dataset.coords.variables builds a dict of every variable on each access
    if key not in x.coords:
        return None
    return (x.variables if isinstance(x, xr.Dataset) else x.coords.variables)[key].values


def _check_rdm_values(values: np.ndarray, name: str) -> None:
    """Raise on NaN or infinite entries and on asymmetric matrices."""
    # fast paths first (a finite sum, exact symmetry): most RDMs pass them in one pass each
    if not np.isfinite(values.sum()) and not np.all(np.isfinite(values)):
        raise InputDataError(
            f"{name} holds NaN or infinite entries; remove the stimuli they belong to "
            "(the bootstrap handles repeated stimuli with masks, not NaNs)."
        )
    if not np.array_equal(values, values.transpose(0, 2, 1)) and np.abs(
            values - values.transpose(0, 2, 1)).max() > 1e-8 * max(float(np.abs(values).max()),
                                                                   1e-300):
        raise InputDataError(
            f"{name} holds asymmetric matrices; RDMs must be symmetric "
            "(symmetrise with (D + D.T) / 2 if the asymmetry is numerical noise)."
        )


@lru_cache(maxsize=32)
def _triu(n: int) -> tuple[np.ndarray, np.ndarray]:
    # cached: np.triu_indices builds an n x n mask on every call
    iu, ju = np.triu_indices(n, 1)
    iu.flags.writeable = ju.flags.writeable = False
    return iu, ju


def condensed(rdms: np.ndarray | jax.Array) -> jax.Array:
    """Upper-triangle vectors ``(n_rdm, n (n - 1) / 2)`` in row-major (squareform) order."""
    iu, ju = _triu(rdms.shape[-1])
    if isinstance(rdms, np.ndarray):
        return jnp.asarray(rdms[..., iu, ju])
    return rdms[..., iu, ju]


def _square(vectors: jax.Array, n: int) -> jax.Array:
    iu, ju = _triu(n)
    out = jnp.zeros((*vectors.shape[:-1], n, n), vectors.dtype)
    out = out.at[..., iu, ju].set(vectors)
    return out.at[..., ju, iu].set(vectors)


# --------------------------------------------------------------------------- precisions


@jax.jit
def _shrinkage_diag(x: jax.Array, dof: jax.Array) -> jax.Array:
    # Schaefer & Strimmer (2005) shrinkage towards the diagonal, as rsatoolbox computes it
    n = x.shape[0]
    s_sum = x.T @ x
    s2_sum = (x**2).T @ (x**2)
    s = s_sum / dof
    var = jnp.diag(s)
    std = jnp.sqrt(var)
    s_mean = s_sum / std[None, :] / std[:, None] / (n - 1)
    s2_mean = s2_sum / var[None, :] / var[:, None] / (n - 1)
    var_hat = n / dof**2 * (s2_mean - s_mean**2)
    off = ~jnp.eye(s.shape[0], dtype=bool)
    lamb = jnp.sum(jnp.where(off, var_hat, 0)) / jnp.sum(jnp.where(off, s_mean**2, 0))
    lamb = jnp.clip(lamb, 0.0, 1.0)
    return s * jnp.where(off, 1.0 - lamb, 1.0)


@jax.jit
def _shrinkage_eye(x: jax.Array, dof: jax.Array) -> jax.Array:
    # Ledoit & Wolf (2004) shrinkage towards a multiple of the identity
    n, p = x.shape
    s = x.T @ x / n
    b2 = jnp.sum((x**2).T @ (x**2) / n - s * s) / n
    m = jnp.trace(s) / p
    d2 = jnp.sum((s - m * jnp.eye(p)) ** 2)
    b2 = jnp.minimum(d2, b2)
    return (b2 / d2 * m * jnp.eye(p) + (d2 - b2) / d2 * s) * n / dof


class LowRankPrecision(NamedTuple):
    """A precision matrix ``diag(inv_diag) - factor @ core @ factor.T``, never formed.

    This is the inverse of a shrinkage covariance ``D + c X^T X`` (D diagonal, X the
    ``(n_obs, P)`` residuals) by the Woodbury identity: ``factor = D^-1 X^T`` ``(P, n_obs)``
    and ``core = c (I + c X D^-1 X^T)^-1``. With many more channels than residual rows it
    costs ``O(P n_obs)`` memory instead of ``O(P^2)``; :func:`calc_rdm` uses it directly.
    """

    inv_diag: jax.Array
    factor: jax.Array
    core: jax.Array

    def dense(self) -> np.ndarray:
        """The full ``(P, P)`` precision matrix."""
        f = np.asarray(self.factor)
        return np.diag(np.asarray(self.inv_diag)) - f @ np.asarray(self.core) @ f.T


@jax.jit
def _bilinear(x: jax.Array, y: jax.Array, prec: Any) -> jax.Array:
    """``x Lambda y^T`` for Lambda None (identity), dense, or :class:`LowRankPrecision`."""
    if prec is None:
        return x @ y.T
    if isinstance(prec, LowRankPrecision):
        xf, yf = x @ prec.factor, y @ prec.factor
        return (x * prec.inv_diag) @ y.T - xf @ prec.core @ yf.T
    return x @ prec @ y.T


@jax.jit
def _shrinkage_diag_parts(x: jax.Array, dof: jax.Array):
    # the diagonal D and low-rank weight c of Schaefer-Strimmer's covariance
    # (1 - lambda) S + lambda diag(S), S = X^T X / dof, with lambda from n x n products only
    n = x.shape[0]
    var = jnp.sum(x**2, 0) / dof
    z = x / jnp.sqrt(var)
    row = jnp.sum(z**2, 1)  # sum_i z_ki^2
    col = jnp.sum(z**2, 0)  # diag of Z^T Z
    gram = z @ z.T
    off_s2 = (jnp.sum(gram**2) - jnp.sum(col**2)) / (n - 1) ** 2
    off_s2_mean = (jnp.sum(row**2) - jnp.sum(z**4)) / (n - 1)
    lamb = jnp.clip(n / dof**2 * (off_s2_mean - off_s2) / off_s2, 0.0, 1.0)
    return lamb * var, (1.0 - lamb) / dof


@jax.jit
def _shrinkage_eye_parts(x: jax.Array, dof: jax.Array):
    # Ledoit-Wolf (b2/d2) m I + (d2 - b2)/d2 S, scaled by n / dof, from n x n products only
    n, p = x.shape
    row = jnp.sum(x**2, 1)
    gram2 = jnp.sum((x @ x.T) ** 2) / n**2  # ||S||_F^2
    b2 = (jnp.sum(row**2) / n - gram2) / n
    m = jnp.sum(row) / (n * p)
    d2 = gram2 - 2 * m * jnp.sum(row) / n + m**2 * p
    b2 = jnp.minimum(d2, b2)
    return jnp.full(p, b2 / d2 * m * n / dof), (d2 - b2) / (d2 * dof)


@jax.jit
def _woodbury(x: jax.Array, diag: jax.Array, c: jax.Array) -> LowRankPrecision:
    inv_diag = 1.0 / diag
    factor = (x * inv_diag).T
    core = c * jnp.linalg.inv(jnp.eye(x.shape[0]) + c * (x @ factor))
    return LowRankPrecision(inv_diag, factor, core)


def precision_from_residuals(
    residuals: Any, *, method: str = "shrinkage_diag", dof: int | None = None,
    low_rank: bool = False,
) -> np.ndarray | LowRankPrecision:
    """Noise precision matrix from residuals ``(n_obs, n_channel)``.

    Parameters
    ----------
    residuals
        Residuals (e.g. of a first-level GLM), one row per observation.
    method
        ``"shrinkage_diag"`` (Schaefer-Strimmer, default), ``"shrinkage_eye"``
        (Ledoit-Wolf), ``"diag"`` or ``"full"``; as ``rsatoolbox.data.prec_from_residuals``.
    dof
        Degrees of freedom (default ``n_obs - 1``; subtract the GLM regressors if any).
    low_rank
        Return a :class:`LowRankPrecision` (Woodbury form; ``shrinkage_diag``,
        ``shrinkage_eye`` and ``diag``): the same matrix without forming or inverting any
        ``(P, P)`` array, much faster when ``P`` exceeds the number of residual rows.

    Returns
    -------
    numpy.ndarray or LowRankPrecision
        ``(n_channel, n_channel)`` precision (float64).

    Examples
    --------
    >>> import numpy as np
    >>> prec = precision_from_residuals(np.random.default_rng(0).normal(size=(50, 4)))
    >>> prec.shape
    (4, 4)
    """
    x = np.array(residuals, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputDataError(
            f"residuals has shape {x.shape}; give (n_observation, n_channel) with >= 2 rows."
        )
    if not np.all(np.isfinite(x)):
        raise InputDataError("residuals holds NaN or infinite values; drop those rows.")
    x = jnp.asarray(x - x.mean(0, keepdims=True))
    dof_ = jnp.asarray(float(x.shape[0] - 1 if dof is None else dof))
    if low_rank:
        parts = {"shrinkage_diag": _shrinkage_diag_parts, "shrinkage_eye": _shrinkage_eye_parts,
                 "diag": lambda x, d: (jnp.sum(x**2, 0) / d, jnp.zeros(()))}
        if method not in parts:
            raise InputDataError(
                f"method={method!r} with low_rank=True; the full sample covariance has no "
                "diagonal part to invert: use 'shrinkage_diag', 'shrinkage_eye' or 'diag'."
            )
        diag, c = parts[method](x, dof_)
        if not bool(jnp.all(diag > 0)):
            raise InputDataError(
                "residuals has channels with zero variance (or no shrinkage); drop them or "
                "use low_rank=False."
            )
        return _woodbury(x, diag, c)
    if method == "shrinkage_diag":
        cov = _shrinkage_diag(x, dof_)
    elif method == "shrinkage_eye":
        cov = _shrinkage_eye(x, dof_)
    elif method == "diag":
        cov = jnp.diag(jnp.sum(x**2, 0) / dof_)
    elif method == "full":
        cov = x.T @ x / dof_
    else:
        raise InputDataError(
            f"method={method!r}; use 'shrinkage_diag', 'shrinkage_eye', 'diag' or 'full'."
        )
    return np.asarray(jnp.linalg.inv(cov))


# --------------------------------------------------------------------------- cores


def _from_kernel(k: jax.Array, p: int) -> jax.Array:
    d = jnp.diag(k)
    return (d[:, None] + d[None, :] - k - k.T) / p


@jax.jit
def _euclidean(u: jax.Array) -> jax.Array:
    return _from_kernel(u @ u.T, u.shape[1])


@jax.jit
def _correlation(u: jax.Array) -> jax.Array:
    u = u - u.mean(1, keepdims=True)
    u = u / jnp.sqrt(jnp.sum(u * u, 1, keepdims=True))
    return 1.0 - u @ u.T


@jax.jit
def _mahalanobis(u: jax.Array, prec: Any) -> jax.Array:
    return _from_kernel(_bilinear(u, u, prec), u.shape[1])


def _smooth(u: jax.Array, prior_lambda: float, prior_weight: float) -> jax.Array:
    return (u + prior_lambda * prior_weight) / (1.0 + prior_weight)


@jax.jit
def _poisson(u: jax.Array, prior_lambda: float, prior_weight: float) -> jax.Array:
    u = _smooth(u, prior_lambda, prior_weight)
    return _from_kernel(u @ jnp.log(u).T, u.shape[1])


@partial(jax.jit, static_argnames=("n_stim", "n_fold"))
def _fold_means(x: jax.Array, stim: jax.Array, fold: jax.Array, n_stim: int, n_fold: int):
    # per-fold, per-condition means with counts: unbalanced designs become masks
    seg = fold * n_stim + stim
    counts = jax.ops.segment_sum(jnp.ones_like(seg, x.dtype), seg, n_fold * n_stim)
    sums = jax.ops.segment_sum(x, seg, n_fold * n_stim)
    counts = counts.reshape(n_fold, n_stim)
    sums = sums.reshape(n_fold, n_stim, x.shape[1])
    return sums / jnp.maximum(counts, 1)[..., None], counts > 0


@partial(jax.jit, static_argnames="n_stim")
def _crossnobis_observations(x, stim, fold, prec, n_stim: int) -> jax.Array:
    # unbalanced designs: average the inner products over all pairs of single observations
    # from different folds (rsatoolbox's calc_rdm_unbalanced, weighting='number')
    k = _bilinear(x, x, prec)
    cross = (fold[:, None] != fold[None, :]).astype(x.dtype)
    onehot = jax.nn.one_hot(stim, n_stim, dtype=x.dtype)
    mean_k = (onehot.T @ (k * cross) @ onehot) / (onehot.T @ cross @ onehot)
    return _from_kernel(mean_k, x.shape[1])


def _fold_gram(a: jax.Array, b: jax.Array) -> jax.Array:
    # sum_f A_f B_f^T for (F, n, k) stacks, as one (n, F k) x (F k, m) matrix product (an
    # einsum over f and k lowers to F small products and a reduction, ~4x slower on CPU)
    def flat(x):
        return jnp.swapaxes(x, 0, 1).reshape(x.shape[1], -1)

    return flat(a) @ flat(b).T


@jax.jit
def _crossnobis_balanced(means: jax.Array, prec: Any) -> jax.Array:
    # sum over a != b of K_ab = (sum_a W_a)(sum_b M_b)^T - sum_a W_a M_a^T, W = M Lambda: one
    # pass over the folds instead of n_fold^2 kernels
    n_fold, n, p = means.shape
    if prec is None or isinstance(prec, LowRankPrecision):
        # Lambda = D^-1 - F C F^T: only (n_fold n, P) @ (P, n_obs) products, no (P, P) array
        # a Gram of one array needs one relayout of the stack, a product of two needs two
        scaled = means if prec is None else means * jnp.sqrt(prec.inv_diag)
        k = scaled.sum(0) @ scaled.sum(0).T - _fold_gram(scaled, scaled)
        if prec is not None:
            mf = means @ prec.factor
            k = k - mf.sum(0) @ prec.core @ mf.sum(0).T + _fold_gram(mf @ prec.core, mf)
    else:
        k = _symmetric_cross_kernel(means, prec)
    return _from_kernel(k, p) / (n_fold * (n_fold - 1))


def _symmetric_cross_kernel(means: jax.Array, prec: jax.Array, block: int = 512) -> jax.Array:
    """``sum over a != b of M_a Lambda M_b^T`` for a dense Lambda, in ~55% of the flops.

    The sum over ordered fold pairs, and hence the RDM, depends on the symmetric part of
    Lambda only (as rsatoolbox's leave-one-fold-out kernels do), so each block is read as
    ``(Lambda_ij + Lambda_ji^T) / 2``: exact for any precision, at the cost of one read of
    each triangle. The product with Lambda dominates (``n_fold n P^2`` multiply-adds). With
    channel blocks i, j and Lambda symmetric, ``sum_ij X_i Lambda_ij Y_j^T = C + C^T`` with
    ``C = sum_j Z_j Y_j^T`` and ``Z_j = sum_{i<j} X_i Lambda_ij + X_j Lambda_jj / 2``, so only
    the upper block triangle of Lambda is multiplied ((K + 1) / 2K of the products for K
    blocks: 20 instead of 37 GFLOP at 8 folds x 92 conditions x 5000 channels, measured at
    0.8x the time of the plain product on one XLA thread). As in the identity and Woodbury
    paths, the cross-fold sum is the kernel of the fold total minus the within-fold
    kernels, all from the same Z.
    """
    n_fold, n, p = means.shape
    x = means.reshape(n_fold * n, p)
    c = jnp.zeros((n, n), means.dtype)
    for start in range(0, p, block):
        stop = min(start + block, p)
        diag = prec[start:stop, start:stop]
        z = x[:, start:stop] @ (0.25 * (diag + diag.T))
        if start:
            upper = 0.5 * (prec[:start, start:stop] + prec[start:stop, :start].T)
            z = z + x[:, :start] @ upper
        z = z.reshape(n_fold, n, -1)
        xj = means[:, :, start:stop]
        c = c + z.sum(0) @ xj.sum(0).T - _fold_gram(z, xj)
    return c + c.T


@jax.jit
def _poisson_cv(means: jax.Array, prior_lambda: float, prior_weight: float) -> jax.Array:
    # leave-one-fold-out, averaged over test folds (rsatoolbox 0.3.2 keeps only the last fold)
    n_fold = means.shape[0]

    def one(k):
        train = (means.sum(0) - means[k]) / (n_fold - 1)
        train = _smooth(train, prior_lambda, prior_weight)
        test = _smooth(means[k], prior_lambda, prior_weight)
        return _from_kernel(train @ jnp.log(test).T, means.shape[2])

    return jnp.mean(jax.vmap(one)(jnp.arange(n_fold)), 0)


# --------------------------------------------------------------------------- entry point


def _patterns(data: Any, stimuli: Any, folds: Any):
    """Return (observations (n_obs, P), stimulus codes, fold codes or None, stimulus ids)."""
    if isinstance(data, xr.Dataset):
        if "activity" not in data:
            raise InputDataError("data is a Dataset without an 'activity' variable.")
        data = data["activity"]
    ids = None
    if isinstance(data, xr.DataArray):
        if "stimulus" in data.dims:
            ids = np.asarray(data["stimulus_id"] if "stimulus_id" in data.coords
                             else data["stimulus"])
        order = [d for d in ("trial", "stimulus", "neuron") if d in data.dims]
        if data.ndim >= 2 and set(data.dims) == set(order):
            data = data.transpose(*order)
        data = data.values
    x = np.array(data, dtype=np.float64)
    if x.ndim == 3:  # (fold, stimulus, channel): balanced folds
        n_fold, n_stim, _ = x.shape
        stim = np.tile(np.arange(n_stim), n_fold)
        fold = np.repeat(np.arange(n_fold), n_stim)
        return x.reshape(n_fold * n_stim, -1), stim, fold, ids, n_stim
    if x.ndim != 2:
        raise InputDataError(
            f"data has shape {x.shape}; give (stimulus, neuron), (trial, stimulus, neuron) or "
            "(observation, neuron) with stimuli= labels."
        )
    if stimuli is None:
        stim = np.arange(x.shape[0])
        uniq = stim
    else:
        labels = np.asarray(stimuli)
        if labels.shape != (x.shape[0],):
            raise InputDataError(
                f"stimuli has shape {labels.shape}; give one label per row of data "
                f"({x.shape[0]})."
            )
        uniq, stim = np.unique(labels, return_inverse=True)
    fold = None
    if folds is not None:
        flabels = np.asarray(folds)
        if flabels.shape != (x.shape[0],):
            raise InputDataError(
                f"folds has shape {flabels.shape}; give one fold label per row of data "
                f"({x.shape[0]})."
            )
        fold = np.unique(flabels, return_inverse=True)[1]
    return x, stim, fold, uniq if ids is None else ids, len(uniq)


@jax.jit
def _ldt_fold(m_test, e_test, m_train, counts, dof, prec):
    # t of the test-fold difference of each pair along the training discriminant
    # w_ij = Lambda (m_i - m_j) (train): numerator (m_i - m_j)_test . w_ij; error variance
    # w_ij^T Sigma_test w_ij from the test residuals E (||E w_ij||^2 / dof)
    k = _bilinear(m_test, m_train, prec)
    num = jnp.diag(k)[:, None] + jnp.diag(k)[None, :] - k - k.T
    q = _bilinear(e_test, m_train, prec)
    g = q.T @ q
    var = (jnp.diag(g)[:, None] + jnp.diag(g)[None, :] - 2 * g) / dof
    inv_n = 1.0 / counts
    se = jnp.sqrt(var * (inv_n[:, None] + inv_n[None, :]))
    return jnp.where(se > 0, num / jnp.where(se > 0, se, 1.0), 0.0)


def _condition_means(x: np.ndarray, stim: np.ndarray, n_stim: int):
    counts = np.bincount(stim, minlength=n_stim).astype(float)
    means = np.zeros((n_stim, x.shape[1]))
    np.add.at(means, stim, x)
    means /= np.maximum(counts, 1)[:, None]
    return means, x - means[stim], counts


def _ldt(x, stim, fold, n_stim, n_fold, prec):
    """LD-t RDM, leave one fold out, averaged over the test folds."""
    out = np.zeros((n_stim, n_stim))
    for f in range(n_fold):
        test = fold == f
        m_tr, e_tr, c_tr = _condition_means(x[~test], stim[~test], n_stim)
        m_te, e_te, c_te = _condition_means(x[test], stim[test], n_stim)
        dof = test.sum() - n_stim
        if c_te.min() < 1 or c_tr.min() < 1 or dof < 1:
            raise InputDataError(
                f"ldt: fold {f} must hold every stimulus and more observations than stimuli "
                "(its residuals estimate the noise of the discriminant); regroup the folds."
            )
        lam = prec if prec is not None else precision_from_residuals(
            e_tr, dof=int((~test).sum() - n_stim), low_rank=True)
        out += np.asarray(_ldt_fold(jnp.asarray(m_te), jnp.asarray(e_te), jnp.asarray(m_tr),
                                    jnp.asarray(c_te), float(dof), lam))
    return out / n_fold


def _precision_arg(precision: Any, p: int) -> Any:
    """None, a :class:`LowRankPrecision`, a ``(P, P)`` or per-fold ``(F, P, P)`` array."""
    if precision is None:
        return None
    if isinstance(precision, LowRankPrecision):
        if precision.factor.shape[0] != p:
            raise InputDataError(
                f"precision is for {precision.factor.shape[0]} channels; data has {p}."
            )
        return precision
    prec = np.asarray(precision, dtype=np.float64)
    if prec.shape[-2:] != (p, p) or prec.ndim not in (2, 3):
        raise InputDataError(
            f"precision has shape {prec.shape}; it must be ({p}, {p}) (or (n_fold, {p}, {p}) "
            "per fold for crossnobis)."
        )
    return prec


def calc_rdm(
    data: Any,
    method: str = "euclidean",
    *,
    stimuli: Sequence | None = None,
    folds: Sequence | None = None,
    precision: Any = None,
    prior_lambda: float = 1.0,
    prior_weight: float = 0.1,
    name: str = "0",
) -> xr.Dataset:
    """Compute an RDM from response patterns.

    Parameters
    ----------
    data
        Responses: a dataset with ``activity(stimulus, neuron)`` or
        ``activity(trial, stimulus, neuron)`` (trials are the cross-validation folds), a
        DataArray with those dims, an array ``(stimulus, channel)``, an array
        ``(fold, stimulus, channel)`` (balanced folds) or an array ``(observation, channel)``
        with ``stimuli`` (and ``folds``) labels per row (unbalanced designs). Repeated
        observations of a stimulus are averaged (per fold for the cross-validated measures).
    method
        One of :data:`METHODS`.
    stimuli, folds
        Per-row labels for ``(observation, channel)`` input.
    precision
        Noise precision ``(P, P)`` or :class:`LowRankPrecision` (from
        ``precision_from_residuals(..., low_rank=True)``, fastest for many channels) for
        ``mahalanobis`` / ``crossnobis`` (default identity), or one precision per fold
        ``(n_fold, P, P)`` for ``crossnobis`` (then every fold pair uses
        ``((Sigma_A + Sigma_B) / 2)^-1``, also for unbalanced designs). For ``ldt`` the
        default is the ``shrinkage_diag`` precision of each training split's residuals;
        ``ldt`` needs ``(observation, channel)`` data with replicates of every stimulus in
        every fold (the test fold's residuals give the discriminant's noise).
    prior_lambda, prior_weight
        Poisson smoothing ``u <- (u + lambda w) / (1 + w)``.
    name
        The ``rdm_name`` of the result.

    Returns
    -------
    xarray.Dataset
        An RDM dataset with one RDM.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(4, 6, 20))  # 4 folds, 6 stimuli
    >>> rdm = calc_rdm(x, "crossnobis")
    >>> rdm["dissimilarity"].shape
    (1, 6, 6)
    """
    if method not in METHODS:
        raise InputDataError(f"method={method!r}; use one of {list(METHODS)}.")
    x, stim, fold, ids, n_stim = _patterns(data, stimuli, folds)
    if not np.all(np.isfinite(x)):
        raise InputDataError("data holds NaN or infinite values; drop or impute them first.")
    if n_stim < 3:
        raise InputDataError(f"data has {n_stim} stimuli; an RDM needs at least 3.")
    p = x.shape[1]
    if method in _CV_METHODS:
        if fold is None:
            raise InputDataError(
                f"method={method!r} needs cross-validation folds: give (trial, stimulus, neuron) "
                "data or folds= labels per row."
            )
        n_fold = int(fold.max()) + 1
        if n_fold < 2:
            raise InputDataError(f"{method} needs at least 2 folds; data has {n_fold}.")
        if x.shape[0] == n_fold * n_stim and np.array_equal(
                fold, np.repeat(np.arange(n_fold), n_stim)) and np.array_equal(
                stim, np.tile(np.arange(n_stim), n_fold)):
            # one observation per (fold, stimulus) in order: the fold means are the data
            means = jnp.asarray(x.reshape(n_fold, n_stim, p))
            present = np.ones((n_fold, n_stim), bool)
        else:
            means, present = _fold_means(jnp.asarray(x), jnp.asarray(stim), jnp.asarray(fold),
                                         n_stim, n_fold)
        counts = np.asarray(present).sum(0)
        if counts.min() < 2:
            missing = np.asarray(ids)[counts < 2] if ids is not None else np.where(counts < 2)[0]
            raise InputDataError(
                f"{method}: stimuli {list(missing)[:5]} appear in fewer than 2 folds, so no "
                "cross-validated distance exists for them; drop them or regroup the folds."
            )
        pair_folds = np.asarray(present, float).T @ np.asarray(present, float)
        if pair_folds.min() < 2:
            raise InputDataError(
                f"{method}: some stimulus pairs are measured together in fewer than 2 folds; "
                "the fold structure cannot cross-validate them. Regroup the folds."
            )
        if method == "ldt":
            prec = _precision_arg(precision, p)
            if isinstance(prec, np.ndarray) and prec.ndim == 3:
                raise InputDataError("ldt takes one precision, not one per fold.")
            d = _ldt(x, stim, fold, n_stim, n_fold, prec)
        elif method == "poisson_cv":
            if not bool(np.asarray(present).all()):
                raise InputDataError(
                    "poisson_cv needs every stimulus in every fold (balanced folds)."
                )
            d = _poisson_cv(means, prior_lambda, prior_weight)
        else:
            prec = _precision_arg(precision, p)
            if isinstance(prec, np.ndarray) and prec.ndim == 3:
                if prec.shape != (n_fold, p, p):
                    raise InputDataError(
                        f"precision has shape {prec.shape}; per-fold precisions must be "
                        f"({n_fold}, {p}, {p})."
                    )
                d = _crossnobis_fold_precisions(means, present, jnp.asarray(prec))
            else:
                prec_j = None if prec is None else jax.tree.map(jnp.asarray, prec)
                if bool(np.asarray(present).all()):
                    d = _crossnobis_balanced(means, prec_j)
                else:
                    d = _crossnobis_observations(jnp.asarray(x), jnp.asarray(stim),
                                                 jnp.asarray(fold), prec_j, n_stim)
    else:
        means, _ = _fold_means(jnp.asarray(x), jnp.asarray(stim),
                               jnp.zeros(len(stim), int), n_stim, 1)
        u = means[0]
        if method == "euclidean":
            d = _euclidean(u)
        elif method == "correlation":
            d = _correlation(u)
        elif method == "mahalanobis":
            prec = _precision_arg(precision, p)
            if prec is None:
                d = _euclidean(u)
            elif isinstance(prec, np.ndarray) and prec.ndim == 3:
                raise InputDataError("per-fold precisions apply to crossnobis only.")
            else:
                d = _mahalanobis(u, jax.tree.map(jnp.asarray, prec))
        else:
            if np.any(x < 0):
                raise InputDataError("poisson needs non-negative responses (counts or rates).")
            d = _poisson(u, prior_lambda, prior_weight)
    d = np.asarray(d)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return rdm_dataset(d[None], rdm_name=[name], stimulus_id=ids, measure=method)


@jax.jit
def _crossnobis_fold_precisions(means: jax.Array, present: jax.Array, precs: jax.Array):
    # all fold pairs with Lambda = ((Sigma_A + Sigma_B) / 2)^-1, as rsatoolbox's list of
    # noises; pairs of conditions missing from a fold are masked (unbalanced designs, #491)
    n_fold, n, p = means.shape
    covs = jnp.linalg.inv(precs)
    ia, ib = np.triu_indices(n_fold, 1)

    def one(a, b):
        lam = jnp.linalg.inv((covs[a] + covs[b]) / 2)
        d = _from_kernel(means[a] @ lam @ means[b].T, p)
        ok = present[a][:, None] & present[a][None, :] & present[b][:, None] & present[b][None]
        return jnp.where(ok, d, 0.0), ok

    d, ok = jax.vmap(one)(jnp.asarray(ia), jnp.asarray(ib))
    return d.sum(0) / ok.sum(0)


def mds(rdm: Any, n_components: int = 2) -> xr.DataArray:
    """Classical (Torgerson) multidimensional scaling of one RDM.

    Parameters
    ----------
    rdm
        One RDM (``(n, n)`` array, or an RDM dataset / DataArray; several RDMs are averaged).
    n_components
        Embedding dimensions.

    Returns
    -------
    xarray.DataArray
        ``position(stimulus, component)``; distances between rows approximate the square
        root of the dissimilarities' double-centred second moment.
    """
    values, ids = as_rdms(rdm, "rdm")
    d = values.mean(0)
    n = d.shape[0]
    h = np.eye(n) - 1.0 / n
    g = -0.5 * h @ d @ h
    val, vec = np.linalg.eigh(g)
    order = np.argsort(val)[::-1][:n_components]
    pos = vec[:, order] * np.sqrt(np.maximum(val[order], 0.0))
    return xr.DataArray(pos, dims=("stimulus", "component"),
                        coords={"stimulus": np.arange(n) if ids is None else ids,
                                "component": np.arange(n_components)}, name="position")
