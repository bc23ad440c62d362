"""Non-negative tensor factorisation (masked CP) and the dynamic functional connectome.

Pipeline of Dyballa et al. (ICLR 2024): pairwise affinities between calcium traces
(:func:`neurodata.models.affinity.affinity_tensor`) form a ``(pair, window, animal)``
tensor; a non-negative CP decomposition (:class:`NTF`) splits it into components, each a
pair pattern (a weighted neuron graph), a time course and animal loadings; communities
of each component's graph come from a weighted stochastic block model
(:mod:`neurodata.models.community`). :class:`DynamicConnectome` runs the whole chain.

Solvers. Both solvers use the *exact* masked objective
``|| M * (A - [[F_1, ..., F_N]]) ||_F^2`` without reconstructing the tensor: the masked
normal equations of mode ``n`` need ``MTTKRP(M * A)`` and, per row ``i``, the Gram matrix
``G_i = sum_{j} M_{ij} k_j k_j^T`` of the Khatri-Rao rows ``k_j`` of the other factors. Mask
dimensions of length 1 factor out of that sum as ordinary ``F_k^T F_k`` Grams, so the mask
of unrecorded neurons, of shape ``(pair, 1, animal)``, costs ``O(P W R^2)`` per mode, not a
reconstruction of the ``P T W`` tensor (what tensorly and tensortools do, by imputation).
A general entry-wise mask is exact too, at ``O(size R^2)`` per mode.

- HALS: block-coordinate descent over the columns of each factor, a few inner sweeps per
  mode (``inner_iter``), as tensorly's ``non_negative_parafac_hals`` (5 sweeps, inner
  early stop) and tensortools' ``ncp_hals`` (3 sweeps, ``max(G_kk, 1e-6)`` denominator).
- MU: Lee-Seung multiplicative updates ``F <- F * K / (G F + eps)``.

Iterations run in a jitted ``lax.while_loop`` until the relative error improves by less
than ``tol``; an ensemble of random initialisations runs at once under ``vmap`` (each
replicate stops on its own; vmapped ``while_loop`` freezes the finished ones). Default
dtype float32 (fast on CPU and GPU; the relative error is then accurate to about 1e-5, the
default ``tol``); pass ``dtype="float64"`` for tight tolerances.
"""

from __future__ import annotations

import string
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from scipy.optimize import linear_sum_assignment

from neurodata.errors import InputDataError
from neurodata.models._base import NeurodataModel
from neurodata.models.affinity import affinity_tensor, pairs_to_matrix

__all__ = [
    "NTF",
    "DynamicConnectome",
    "affinity_tensor",
    "congruence",
    "fit_cp",
    "pairs_to_matrix",
    "rank_diagnostics",
    "simulate",
]


# --------------------------------------------------------------------------- functional core


class CPFit(NamedTuple):
    """Result of :func:`fit_cp` (leading axis: replicate)."""

    factors: tuple
    """One ``(replicate, I_n, rank)`` array per mode."""
    errors: jnp.ndarray
    """``(replicate, max_iter)`` relative error after each iteration (NaN past the stop)."""
    n_iter: jnp.ndarray
    """``(replicate,)`` iterations run."""


def _letters(n: int) -> list[str]:
    return list(string.ascii_lowercase[:n])


def _mttkrp(y: jnp.ndarray, factors, mode: int) -> jnp.ndarray:
    """``Y_(mode) (khatri-rao of the other factors)``: shape ``(I_mode, R)``."""
    dims = _letters(y.ndim)
    ops = [y] + [f for k, f in enumerate(factors) if k != mode]
    subs = ["".join(dims)] + [dims[k] + "z" for k in range(y.ndim) if k != mode]
    return jnp.einsum(",".join(subs) + "->" + dims[mode] + "z", *ops, optimize="optimal")


def _grams(mask, factors, mode: int) -> jnp.ndarray:
    """Normal-equation Gram of mode ``mode``: ``(R, R)`` or per row ``(I_mode, R, R)``."""
    rank = factors[0].shape[1]
    g = jnp.ones((rank, rank), factors[0].dtype)
    if mask is None:
        for k, f in enumerate(factors):
            if k != mode:
                g = g * (f.T @ f)
        return g
    full = [k for k in range(len(factors)) if k != mode and mask.shape[k] > 1]
    for k, f in enumerate(factors):
        if k != mode and k not in full:
            g = g * (f.T @ f)
    squeeze = tuple(k for k in range(mask.ndim) if mask.shape[k] == 1 and k != mode)
    m = jnp.squeeze(mask, axis=squeeze) if squeeze else mask
    # Khatri-Rao rows of the modes the mask varies along, as outer products (J, R, R)
    kr = jnp.ones((1, rank), factors[0].dtype)
    for k in full:
        kr = (kr[:, None, :] * factors[k][None, :, :]).reshape(-1, rank)
    outer = (kr[:, :, None] * kr[:, None, :]).reshape(kr.shape[0], rank * rank)
    if mask.shape[mode] > 1:
        rows = jnp.moveaxis(m, sorted([mode, *full]).index(mode), 0)
        rows = rows.reshape(rows.shape[0], -1)
        return (rows @ outer).reshape(-1, rank, rank) * g
    return (m.reshape(-1) @ outer).reshape(rank, rank) * g


def _quad(grams, f):
    """``sum_i f_i^T G_i f_i`` (``G`` shared or per row)."""
    if grams.ndim == 2:
        return jnp.sum(grams * (f.T @ f))
    return jnp.einsum("ir,irs,is->", f, grams, f)


def _gf(grams, f, k=None):
    """``G_i f_i`` per row (column ``k`` only when given)."""
    if grams.ndim == 2:
        return f @ grams if k is None else f @ grams[:, k]
    if k is None:
        return jnp.einsum("irs,is->ir", grams, f)
    return jnp.einsum("is,is->i", grams[:, k, :], f)


def _hals_nnls(k_mat, grams, f, inner_iter: int, inner_tol: float, floor: float):
    """HALS sweeps over the columns of ``f`` for ``min_f>=0 sum_i |.|_{G_i}`` (tensorly rule).

    Stops after ``inner_iter`` sweeps, or earlier when a sweep changes ``f`` by less than
    ``inner_tol`` times the first sweep's change (squared norms), as tensorly's hals_nnls.
    """
    rank = f.shape[1]
    diag = jnp.diagonal(grams, axis1=-2, axis2=-1)  # (R,) or (I, R)

    def column(k, carry):
        f, change = carry
        gkk = diag[k] if diag.ndim == 1 else diag[:, k]
        num = k_mat[:, k] - _gf(grams, f, k) + gkk * f[:, k]
        new = jnp.where(gkk > 0, jnp.maximum(num / jnp.maximum(gkk, floor), 0.0), f[:, k])
        change = change + jnp.sum((f[:, k] - new) ** 2)
        return f.at[:, k].set(new), change

    def cond(c):
        _, it, first, last = c
        return (it < inner_iter) & ~((it > 0) & (last < inner_tol * first))

    def body(c):
        f, it, first, _ = c
        f, change = jax.lax.fori_loop(0, rank, column, (f, jnp.zeros((), f.dtype)))
        first = jnp.where(it == 0, change, first)
        return f, it + 1, first, change

    zero = jnp.zeros((), f.dtype)
    f, *_ = jax.lax.while_loop(cond, body, (f, jnp.array(0), zero, zero))
    return f


def _sweep(y, mask, norm_sq, factors, method, inner_iter, inner_tol, floor, eps):
    """One outer iteration (every mode once); returns the factors and the relative error."""
    factors = list(factors)
    for mode in range(len(factors)):
        grams = _grams(mask, factors, mode)
        k_mat = _mttkrp(y, factors, mode)
        if method == "hals":
            factors[mode] = _hals_nnls(k_mat, grams, factors[mode], inner_iter, inner_tol, floor)
        else:
            factors[mode] = factors[mode] * k_mat / (_gf(grams, factors[mode]) + eps)
    resid = norm_sq - 2.0 * jnp.sum(factors[-1] * k_mat) + _quad(grams, factors[-1])
    return tuple(factors), jnp.sqrt(jnp.abs(resid) / norm_sq)


@partial(jax.jit, static_argnames=("method", "max_iter", "inner_iter"))
def fit_cp(
    tensor: jnp.ndarray,
    init: tuple,
    mask: jnp.ndarray | None = None,
    *,
    method: str = "hals",
    max_iter: int = 500,
    tol: float = 1e-5,
    inner_iter: int = 3,
    inner_tol: float = 0.0,
    floor: float = 1e-12,
    eps: float = 1e-12,
) -> CPFit:
    """Fit a (masked) non-negative CP model from an ensemble of initial factors.

    Parameters
    ----------
    tensor
        Data, any number of modes.
    init
        One ``(replicate, I_n, rank)`` array per mode (non-negative).
    mask
        ``None`` or a 0/1 array broadcastable to ``tensor`` (each dim full or 1); entries
        with 0 are left out of the objective.
    method
        ``"hals"`` or ``"mu"``.
    max_iter
        Iteration cap (static: it sizes the error buffer).
    tol
        Stop a replicate when its relative error improves by less than ``tol`` (0: never).
    inner_iter
        HALS sweeps per mode (tensorly: 5, tensortools: 3).
    inner_tol
        HALS inner early stop (tensorly: 1e-8, tensortools: 0).
    floor
        Lower bound on the HALS denominator ``G_kk`` (tensortools: 1e-6).
    eps
        MU denominator offset.

    Returns
    -------
    CPFit
    """
    if mask is not None:
        mask = mask.astype(tensor.dtype)
        y = tensor * mask
    else:
        y = tensor
    norm_sq = jnp.sum(y * y)

    def one(init_factors):
        buf = jnp.full((max_iter,), jnp.nan, tensor.dtype)

        def cond(c):
            _, it, err, prev, _ = c
            return (it < max_iter) & ~((it > 1) & (prev - err < tol))

        def body(c):
            f, it, err, _, buf = c
            f, new = _sweep(y, mask, norm_sq, f, method, inner_iter, inner_tol, floor, eps)
            return f, it + 1, new, err, buf.at[it].set(new)

        inf = jnp.array(jnp.inf, tensor.dtype)
        f, it, _, _, buf = jax.lax.while_loop(cond, body, (tuple(init_factors), jnp.array(0),
                                                           inf, inf, buf))
        return f, buf, it

    f, errs, n_iter = jax.vmap(one)(tuple(init))
    return CPFit(f, errs, n_iter)


def random_init(key: jax.Array, shape, rank: int, n_init: int, norm: float, dtype) -> tuple:
    """Uniform random non-negative factors whose model norm equals ``norm``.

    Parameters
    ----------
    key
        PRNG key.
    shape
        Tensor shape.
    rank
        Number of components.
    n_init
        Replicates.
    norm
        Target Frobenius norm of the initial reconstruction (the data norm).
    dtype
        Factor dtype.

    Returns
    -------
    tuple
        One ``(n_init, I_n, rank)`` array per mode.
    """
    keys = jax.random.split(key, len(shape))
    factors = [jax.random.uniform(k, (n_init, n, rank), dtype)
               for k, n in zip(keys, shape, strict=True)]
    grams = jnp.ones((n_init, rank, rank), dtype)
    for f in factors:
        grams = grams * jnp.einsum("bir,bis->brs", f, f)
    model_norm = jnp.sqrt(jnp.sum(grams, axis=(1, 2)))
    scale = (norm / model_norm) ** (1.0 / len(shape))
    return tuple(f * scale[:, None, None] for f in factors)


def normalize(factors) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unit-norm columns, weights = product of norms, components sorted by weight.

    Parameters
    ----------
    factors
        One ``(I_n, R)`` array per mode.

    Returns
    -------
    weights : numpy.ndarray
        ``(R,)`` in decreasing order.
    factors : list of numpy.ndarray
        Unit-norm factors in the same component order.
    """
    factors = [np.asarray(f, dtype=float) for f in factors]
    norms = np.stack([np.linalg.norm(f, axis=0) for f in factors])
    weights = norms.prod(axis=0)
    factors = [f / np.where(n > 0, n, 1.0) for f, n in zip(factors, norms, strict=True)]
    order = np.argsort(-weights, kind="stable")
    return weights[order], [f[:, order] for f in factors]


def congruence(a, b) -> tuple[float, np.ndarray]:
    """Factor congruence of two CP models after Hungarian alignment of their components.

    The similarity of components ``r`` and ``s`` is the product over modes of the cosines
    of their factor columns (Tucker's congruence coefficient, as tensortools'
    ``kruskal_align``); components are matched to maximise the total similarity.

    Parameters
    ----------
    a, b
        Lists of factor matrices ``(I_n, R_a)`` and ``(I_n, R_b)``.

    Returns
    -------
    score : float
        Mean similarity of the matched components of ``a`` (unmatched ones count 0).
    perm : numpy.ndarray
        ``perm[r]`` is the component of ``b`` matched to component ``r`` of ``a`` (-1 if none).

    Examples
    --------
    >>> import numpy as np
    >>> f = [np.eye(3), np.ones((2, 3)) + np.eye(2, 3)]
    >>> congruence(f, [m[:, ::-1] for m in f])[1].tolist()
    [2, 1, 0]
    """
    sim = np.ones((np.shape(a[0])[1], np.shape(b[0])[1]))
    for fa, fb in zip(a, b, strict=True):
        fa = np.asarray(fa, float)
        fb = np.asarray(fb, float)
        na = np.linalg.norm(fa, axis=0)
        nb = np.linalg.norm(fb, axis=0)
        sim = sim * (fa.T @ fb) / np.maximum(np.outer(na, nb), 1e-300)
    rows, cols = linear_sum_assignment(-sim)
    perm = np.full(sim.shape[0], -1)
    perm[rows] = cols
    return float(sim[rows, cols].sum() / sim.shape[0]), perm


# --------------------------------------------------------------------------- estimator


def _to_numpy(data, dtype) -> np.ndarray:
    """An array in ``dtype`` (default: its own float dtype, float64 for integers).

    A dask array (e.g. ``affinity_tensor(..., lazy=True)``) is computed chunk by chunk
    straight into the result, so no float64 or full-size intermediate is ever held.
    """
    if dtype is None:
        kind = np.dtype(getattr(data, "dtype", float))
        dtype = kind if np.issubdtype(kind, np.floating) else np.float64
    if hasattr(data, "dask"):
        import dask.array as da

        out = np.empty(data.shape, dtype)
        da.store(data.astype(dtype), out, lock=False)
        return out
    return np.asarray(data, dtype=dtype)


def _check_observed(x: np.ndarray, mask) -> bool:
    """Check the observed entries block by block; True if unobserved ones are not finite."""
    block = max(1, (1 << 22) // max(1, int(np.prod(x.shape[1:]))))  # ~4M entries at a time
    low, nonzero, finite, hidden_bad = np.inf, False, True, False
    for i0 in range(0, x.shape[0], block):
        xb = x[i0:i0 + block]
        if mask is not None:
            mb = np.broadcast_to(mask if mask.shape[0] == 1 else mask[i0:i0 + block], xb.shape)
            hidden_bad |= not np.all(np.isfinite(xb[~mb]))
            xb = np.where(mb, xb, 0)
        finite &= bool(np.all(np.isfinite(xb)))
        if xb.size:
            low = min(low, float(np.min(xb)))
            nonzero |= bool(np.any(xb != 0))
    if not finite:
        raise InputDataError(
            "tensor has NaN or Inf entries that the mask does not exclude; mask them "
            "(mask=~np.isnan(tensor)) or fill them."
        )
    if low < 0:
        raise InputDataError(
            f"tensor has negative entries (min {low:.3g}); non-negative CP needs "
            "a non-negative tensor (use a non-negative affinity kernel or shift the data)."
        )
    if not nonzero:
        raise InputDataError("tensor is zero on every observed entry; nothing to fit.")
    return hidden_bad


def _as_tensor(tensor, mask, dtype=None):
    """Array (in ``dtype``), mask (broadcastable bool or None) and labels of a tensor input.

    Unobserved entries are zeroed (a copy) only if they hold NaN or Inf; otherwise the
    array is used as is, and a float input already in ``dtype`` is not copied.
    """
    labels = None
    if isinstance(tensor, xr.DataArray):
        labels = tensor
        if mask is None:
            for name in ("mask", "window_mask"):
                if name not in tensor.coords or bool(tensor[name].all()):
                    continue
                m = tensor[name]
                m = np.asarray(m.expand_dims([d for d in tensor.dims if d not in m.dims])
                               .transpose(*tensor.dims).values)
                # two structured masks multiply into an entry-wise one
                mask = m if mask is None else mask & m
        tensor = tensor.data
    x = _to_numpy(tensor, dtype)
    if x.ndim < 2:
        raise InputDataError(f"tensor has {x.ndim} mode(s); NTF needs at least 2.")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.ndim != x.ndim:
            raise InputDataError(
                f"mask has {mask.ndim} dims but tensor has {x.ndim}; give a mask of the "
                "tensor's shape (or with length-1 dims where it does not vary)."
            )
        if any(m not in (1, n) for m, n in zip(mask.shape, x.shape, strict=True)):
            raise InputDataError(
                f"mask shape {mask.shape} does not broadcast to the tensor shape {x.shape}."
            )
        mask = mask.astype(bool)
        if not mask.any():
            raise InputDataError("mask leaves no observed entry; nothing to fit.")
    if _check_observed(x, mask):
        x = np.where(np.broadcast_to(mask, x.shape), x, np.zeros((), x.dtype))
    return x, mask, labels


class NTF(NeurodataModel):
    """Non-negative CP decomposition (masked HALS or MU) with an ensemble of initialisations.

    Parameters
    ----------
    rank
        Number of components.
    method
        ``"hals"`` (default) or ``"mu"``.
    n_init
        Random initialisations fitted together (``vmap``); the lowest-error one is kept.
    mask
        Optional 0/1 mask broadcastable to the tensor (1 = observed). For a labelled tensor
        from :func:`affinity_tensor`, its ``mask(pair, animal)`` and ``window_mask(window,
        animal)`` coordinates are used by default (an all-True one is skipped).
    max_iter
        Iteration cap.
    tol
        Stop when the relative error improves by less than ``tol`` in one iteration.
    inner_iter
        HALS sweeps per mode and iteration.
    dtype
        ``"float32"`` (default) or ``"float64"``.
    seed
        Seed of the initialisations.

    Attributes
    ----------
    factors_ : list
        One ``(I_n, component)`` factor per mode, unit-norm columns, sorted by weight; for a
        labelled tensor DataArrays ``(pair, component)``, ``(window, component)``,
        ``(animal, component)`` with the input's coordinates.
    weights_ : numpy.ndarray
        Component weights (``(component,)``, decreasing).
    error_ : float
        Relative error ``|M*(A - model)| / |M*A|`` of the kept replicate.
    replicate_errors_ : numpy.ndarray
        Final relative error of every replicate.
    replicate_similarity_ : numpy.ndarray
        Factor congruence of every replicate with the kept one.
    n_iter_ : numpy.ndarray
        Iterations run by each replicate.
    errors_ : numpy.ndarray
        Relative error per iteration of the kept replicate.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = np.einsum("ir,jr,kr->ijk", rng.random((8, 2)), rng.random((6, 2)), rng.random((5, 2)))
    >>> model = NTF(rank=2, n_init=3, dtype="float64", seed=0).fit(x)
    >>> bool(model.error_ < 1e-2)
    True
    """

    def __init__(self, rank: int = 5, method: str = "hals", n_init: int = 8, mask=None,
                 max_iter: int = 500, tol: float = 1e-5, inner_iter: int = 3,
                 dtype: str = "float32", seed: int = 0):
        self.rank = rank
        self.method = method
        self.n_init = n_init
        self.mask = mask
        self.max_iter = max_iter
        self.tol = tol
        self.inner_iter = inner_iter
        self.dtype = dtype
        self.seed = seed

    def _check_params(self, shape) -> None:
        if self.method not in ("hals", "mu"):
            raise InputDataError(f"method {self.method!r} is not 'hals' or 'mu'.")
        if not (isinstance(self.rank, int | np.integer) and self.rank >= 1):
            raise InputDataError(f"rank is {self.rank!r}; it must be a positive integer.")
        if self.rank > max(shape):
            raise InputDataError(
                f"rank={self.rank} is larger than every mode of the tensor {tuple(shape)}; "
                f"use rank <= {max(shape)}."
            )
        if not (isinstance(self.n_init, int | np.integer) and self.n_init >= 1):
            raise InputDataError(f"n_init is {self.n_init!r}; it must be a positive integer.")

    def fit(self, tensor, y=None) -> NTF:
        """Fit the decomposition.

        Parameters
        ----------
        tensor
            Non-negative array or DataArray (e.g. from :func:`affinity_tensor`), numpy- or
            dask-backed: a lazy tensor (``affinity_tensor(..., lazy=True)`` or one opened
            from zarr) is read chunk by chunk into a single array in ``dtype``, the only
            copy the solver needs on the host.
        y
            Ignored.

        Returns
        -------
        NTF
            ``self``.
        """
        if self.dtype not in ("float32", "float64"):
            raise InputDataError(f"dtype {self.dtype!r} is not 'float32' or 'float64'.")
        x, mask, labels = _as_tensor(tensor, self.mask, self.dtype)
        self._check_params(x.shape)
        dtype = jnp.dtype(self.dtype)
        shape = x.shape
        xj = jnp.asarray(x, dtype)
        del x  # the host copy is no longer needed (fit_cp applies the mask on the device)
        mj = None if mask is None else jnp.asarray(mask, dtype)
        norm = float(jnp.sqrt(jnp.sum(xj * xj if mj is None else jnp.square(xj) * mj)))
        init = random_init(jax.random.PRNGKey(self.seed), shape, int(self.rank),
                           int(self.n_init), norm, dtype)
        res = fit_cp(xj, init, mj, method=self.method, max_iter=int(self.max_iter),
                     tol=float(self.tol), inner_iter=int(self.inner_iter))
        errs = np.asarray(res.errors, dtype=float)
        n_iter = np.asarray(res.n_iter)
        final = errs[np.arange(errs.shape[0]), np.maximum(n_iter - 1, 0)]
        best = int(np.nanargmin(final))
        factors = [np.array(f) for f in res.factors]
        if mask is not None:
            # rows with no observed entry (a pair never recorded) have no data: set to 0
            full = np.broadcast_to(mask, shape)
            for n, f in enumerate(factors):
                seen = full.any(axis=tuple(k for k in range(len(shape)) if k != n))
                f[:, ~seen, :] = 0.0
        reps = [normalize([f[b] for f in factors]) for b in range(errs.shape[0])]
        weights, factors = reps[best]
        self.replicate_similarity_ = np.array([congruence(factors, r[1])[0] for r in reps])
        self.replicate_errors_ = final
        self.n_iter_ = n_iter
        self.errors_ = errs[best, : n_iter[best]]
        self.error_ = float(final[best])
        self.weights_ = weights
        self.factors_ = self._label(factors, labels)
        return self

    @staticmethod
    def _label(factors, labels):
        if labels is None:
            return factors
        out = []
        comp = np.arange(factors[0].shape[1])
        for dim, f in zip(labels.dims, factors, strict=True):
            coords = {c: v for c, v in labels[dim].coords.items() if v.dims == (dim,)}
            out.append(xr.DataArray(f, dims=(dim, "component"),
                                    coords={**coords, "component": comp}))
        return out

    def reconstruct(self) -> np.ndarray:
        """The fitted model tensor ``[[weights; factors]]`` (dense, mask ignored).

        Returns
        -------
        numpy.ndarray
        """
        self._check_fitted()
        fs = [np.asarray(f) for f in self.factors_]
        fs[0] = fs[0] * self.weights_
        dims = _letters(len(fs))
        return np.einsum(",".join(d + "z" for d in dims) + "->" + "".join(dims), *fs)


def rank_diagnostics(tensor, ranks, *, n_init: int = 5, heldout: float = 0.1, mask=None,
                     method: str = "hals", max_iter: int = 300, tol: float = 1e-5,
                     dtype: str = "float32", seed: int = 0) -> xr.Dataset:
    """Rank selection: objective, replicate similarity and masked held-out error per rank.

    The Williams et al. (2018) recipe: for each rank, ``n_init`` replicates are fitted on
    the observed entries minus a random held-out fraction; reported are the training
    error, each replicate's factor congruence with the best replicate, and the relative
    error on the held-out entries (cross-validation by masking).

    Parameters
    ----------
    tensor
        Array or DataArray (its ``mask`` coordinate is honoured).
    ranks
        Ranks to try.
    n_init
        Replicates per rank.
    heldout
        Fraction of observed entries held out.
    mask
        Optional observation mask (see :class:`NTF`).
    method, max_iter, tol, dtype
        As in :class:`NTF`.
    seed
        Seed of the held-out draw and of the initialisations.

    Returns
    -------
    xarray.Dataset
        ``error(rank, replicate)``, ``similarity(rank, replicate)``,
        ``heldout_error(rank, replicate)`` (replicates sorted by training error).
    """
    x, mask, _ = _as_tensor(tensor, mask)
    if not 0 <= heldout < 1:
        raise InputDataError(f"heldout is {heldout!r}; it must be in [0, 1).")
    observed = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
    rng = np.random.default_rng(seed)
    test = observed & (rng.random(x.shape) < heldout)
    train = observed & ~test
    ranks = [int(r) for r in ranks]
    err = np.full((len(ranks), n_init), np.nan)
    sim = np.full_like(err, np.nan)
    cv = np.full_like(err, np.nan)
    for i, r in enumerate(ranks):
        model = NTF(rank=r, method=method, n_init=n_init, mask=train, max_iter=max_iter,
                    tol=tol, dtype=dtype, seed=seed + i)
        model.fit(x)
        order = np.argsort(model.replicate_errors_)
        err[i] = model.replicate_errors_[order]
        sim[i] = model.replicate_similarity_[order]
        if test.any():
            resid = (x - model.reconstruct())[test]
            cv[i] = np.linalg.norm(resid) / np.linalg.norm(x[test])
    coords = {"rank": ranks, "replicate": np.arange(n_init)}
    return xr.Dataset(
        {"error": (("rank", "replicate"), err),
         "similarity": (("rank", "replicate"), sim),
         "heldout_error": (("rank", "replicate"), cv)},
        coords=coords, attrs={"heldout": float(heldout), "method": method},
    )


# --------------------------------------------------------------------------- simulator


def simulate(n_neurons: int = 30, n_animals: int = 4, *, partitions=None,
             epoch_names=None, epoch_duration: float = 60.0, sampling_rate: float = 5.0,
             event_rate: float = 0.3, private_rate: float = 0.05, decay: float = 1.0,
             noise: float = 0.1, missing: float = 0.1, neuron_ids=None, seed: int = 0):
    """Multi-animal calcium traces whose co-active neuron groups change with stimulus epochs.

    In epoch ``e`` neurons are partitioned into groups (``partitions[e]``); every group
    shares a train of calcium events (Poisson, ``event_rate`` per second), each neuron adds
    private events (``private_rate``), events decay exponentially (``decay`` seconds), and
    white noise of standard deviation ``noise`` is added. Animals differ by a gain on the
    shared events (the animal loadings) and each animal misses a random fraction
    ``missing`` of neurons (NaN, ``recorded == False``).

    Parameters
    ----------
    n_neurons
        Neurons per animal (shared identities ``N00``, ``N01``, ...).
    n_animals
        Animals.
    partitions
        One label array of length ``n_neurons`` per epoch; default three epochs with
        3 contiguous groups, 2 interleaved groups and 4 groups of unequal sizes.
    epoch_names
        Epoch labels (default ``"epoch0"``, ...).
    epoch_duration
        Seconds per epoch; epochs run in order.
    sampling_rate
        Frames per second.
    event_rate, private_rate
        Shared and private event rates (per second).
    decay
        Calcium decay time constant (s).
    noise
        White-noise standard deviation (event amplitude is about 1).
    missing
        Fraction of neurons not recorded in each animal.
    neuron_ids
        Neuron labels (default ``N00``, ``N01``, ...), e.g. C. elegans names to compare
        communities with a connectome.
    seed
        Seed.

    Returns
    -------
    xarray.Dataset
        ``activity(animal, time, neuron)`` (``signal="dff"``), ``recorded(animal, neuron)``,
        ``epoch_label(time)``, ``planted_community(epoch, neuron)`` and
        ``animal_gain(animal)``.

    Examples
    --------
    >>> ds = simulate(n_neurons=12, n_animals=2, epoch_duration=20.0, seed=0)
    >>> dict(ds["activity"].sizes)
    {'animal': 2, 'time': 300, 'neuron': 12}
    """
    rng = np.random.default_rng(seed)
    if partitions is None:
        idx = np.arange(n_neurons)
        cuts = np.array([0.4, 0.65, 0.85]) * n_neurons
        partitions = [idx * 3 // n_neurons, idx % 2, np.searchsorted(cuts, idx, side="right")]
    partitions = [np.asarray(p, int) for p in partitions]
    if any(p.shape != (n_neurons,) for p in partitions):
        raise InputDataError(f"every partition needs {n_neurons} labels (one per neuron).")
    names = list(epoch_names or [f"epoch{e}" for e in range(len(partitions))])
    n_ep = int(round(epoch_duration * sampling_rate))
    n_time = n_ep * len(partitions)
    dt = 1.0 / sampling_rate
    kernel = np.exp(-np.arange(int(5 * decay * sampling_rate) + 1) * dt / decay)
    gains = rng.uniform(0.5, 1.5, n_animals)
    act = np.empty((n_animals, n_time, n_neurons))
    for a in range(n_animals):
        events = (rng.random((n_time, n_neurons)) < private_rate * dt).astype(float)
        for e, part in enumerate(partitions):
            sl = slice(e * n_ep, (e + 1) * n_ep)
            shared = rng.random((n_ep, part.max() + 1)) < event_rate * dt
            events[sl] += gains[a] * shared[:, part]
        calcium = np.apply_along_axis(lambda s: np.convolve(s, kernel)[:n_time], 0, events)
        act[a] = calcium + noise * rng.normal(size=(n_time, n_neurons))
    recorded = rng.random((n_animals, n_neurons)) >= missing
    # every neuron is recorded in at least one animal
    recorded[rng.integers(n_animals, size=n_neurons), np.arange(n_neurons)] = True
    act = np.where(recorded[:, None, :], act, np.nan)
    ids = np.array([f"N{i:02d}" for i in range(n_neurons)] if neuron_ids is None
                   else [str(i) for i in neuron_ids])
    if ids.size != n_neurons:
        raise InputDataError(f"neuron_ids has {ids.size} labels for {n_neurons} neurons.")
    return xr.Dataset(
        {"activity": (("animal", "time", "neuron"), act, {"signal": "dff", "units": "1"}),
         "recorded": (("animal", "neuron"), recorded),
         "epoch_label": ("time", np.repeat(names, n_ep)),
         "planted_community": (("epoch", "neuron"), np.stack(partitions)),
         "animal_gain": ("animal", gains)},
        coords={"time": ("time", np.arange(n_time) * dt, {"units": "s"}),
                "neuron_id": ("neuron", ids), "animal": ("animal", np.arange(n_animals)),
                "epoch": ("epoch", names)},
        attrs={"sampling_rate": float(sampling_rate), "schema_version": "1.0", "history": [],
               "source": "neurodata.models.ntf.simulate", "species": "simulated"},
    )


# --------------------------------------------------------------------------- pipeline


class DynamicConnectome(NeurodataModel):
    """Affinity tensor -> masked NTF -> weighted-SBM communities: the dynamic connectome atlas.

    Parameters
    ----------
    rank
        NTF components (choose with :func:`rank_diagnostics`).
    window, step
        Affinity window and step in seconds (see :func:`affinity_tensor`).
    kernel, sigma
        Affinity kernel and width.
    method, n_init, max_iter, tol, dtype
        NTF solver settings (see :class:`NTF`).
    community
        ``"sbm"`` (:class:`~neurodata.models.community.WeightedSBM`, number of groups by
        ICL) or ``"leiden"`` (modularity baseline, optional extra).
    max_groups
        Largest number of communities per component.
    distribution
        Edge-weight model of the SBM (``"exponential"`` or ``"gamma"``).
    nested
        Hierarchical communities (SBM only).
    epoch_var
        Name of the ``(time,)`` variable that labels stimulus epochs (used when present).
    sampling_rate
        Frame rate if the dataset does not carry one.
    seed
        Seed of the NTF initialisations and SBM restarts.

    Attributes
    ----------
    weights_ : numpy.ndarray
        Component weights.
    time_course_ : xarray.DataArray
        ``(window, component)`` with ``window_start``/``window_stop`` and ``epoch`` labels.
    animal_loading_ : xarray.DataArray
        ``(animal, component)``.
    pair_pattern_ : xarray.DataArray
        ``(pair, component)`` with ``neuron_a``/``neuron_b``/``index_a``/``index_b``.
    communities_ : xarray.DataArray
        ``(component, neuron)`` community labels (top level).
    epoch_activity_ : xarray.DataArray
        ``(component, epoch)`` mean time course per epoch (if epochs are known).
    ntf_error_ : float
        Relative error of the NTF fit.
    replicate_similarity_ : numpy.ndarray
        Congruence of the NTF replicates with the best one.

    Examples
    --------
    >>> ds = simulate(n_neurons=12, n_animals=2, epoch_duration=40.0, seed=0)
    >>> dc = DynamicConnectome(rank=3, window=10.0, step=5.0, n_init=2).fit(ds)
    >>> dc.communities_.sizes["neuron"]
    12
    """

    def __init__(self, rank: int = 4, window: float = 10.0, step: float | None = None, *,
                 kernel: str = "differential", sigma: float = 0.5, method: str = "hals",
                 n_init: int = 8, max_iter: int = 500, tol: float = 1e-5,
                 dtype: str = "float32", community: str = "sbm", max_groups: int = 6,
                 distribution: str = "exponential", nested: bool = False,
                 epoch_var: str = "epoch_label", sampling_rate: float | None = None,
                 seed: int = 0):
        self.rank = rank
        self.window = window
        self.step = step
        self.kernel = kernel
        self.sigma = sigma
        self.method = method
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.dtype = dtype
        self.community = community
        self.max_groups = max_groups
        self.distribution = distribution
        self.nested = nested
        self.epoch_var = epoch_var
        self.sampling_rate = sampling_rate
        self.seed = seed

    def fit(self, ds: xr.Dataset, y=None) -> DynamicConnectome:
        """Run affinity, NTF and community detection on a (multi-animal) recording.

        Parameters
        ----------
        ds
            ``activity(animal, time, neuron)`` with ``recorded(animal, neuron)``, or
            ``activity(time, neuron)``.
        y
            Ignored.

        Returns
        -------
        DynamicConnectome
            ``self``.
        """
        from neurodata.models.community import WeightedSBM, leiden

        if self.community not in ("sbm", "leiden"):
            raise InputDataError(f"community {self.community!r} is not 'sbm' or 'leiden'.")
        aff = affinity_tensor(ds, self.window, self.step, kernel=self.kernel, sigma=self.sigma,
                              sampling_rate=self.sampling_rate, dtype=self.dtype)
        ntf = NTF(rank=self.rank, method=self.method, n_init=self.n_init,
                  max_iter=self.max_iter, tol=self.tol, dtype=self.dtype, seed=self.seed)
        ntf.fit(aff)
        pair, time_course, loading = ntf.factors_
        if self.epoch_var in ds:
            labels = np.asarray(ds[self.epoch_var].values).astype(str)
            t = np.asarray(ds["time"].values, dtype=float)
            centre = np.searchsorted(t, aff["window"].values).clip(0, t.size - 1)
            time_course = time_course.assign_coords(epoch=("window", labels[centre]))
        n_neuron = int(aff.attrs["n_neuron"])
        comms = []
        for r in range(int(self.rank)):
            graph = pairs_to_matrix(pair[:, r], n_neuron).values
            if not np.any(graph > 0):
                comms.append(np.zeros(n_neuron, int))
            elif self.community == "leiden":
                comms.append(leiden(graph, seed=self.seed))
            else:
                sbm = WeightedSBM(max_groups=self.max_groups, distribution=self.distribution,
                                  nested=self.nested, seed=self.seed).fit(graph)
                comms.append(sbm.labels_)
        ids = np.asarray(ds["neuron_id"].values).astype(str)
        self.weights_ = ntf.weights_
        self.pair_pattern_ = pair
        self.time_course_ = time_course
        self.animal_loading_ = loading
        self.communities_ = xr.DataArray(
            np.stack(comms), dims=("component", "neuron"),
            coords={"component": np.arange(int(self.rank)), "neuron_id": ("neuron", ids)})
        if "epoch" in time_course.coords:
            names = list(dict.fromkeys(time_course["epoch"].values.tolist()))
            tc = time_course.values
            act = np.stack([tc[time_course["epoch"].values == e].mean(0) for e in names], 1)
            self.epoch_activity_ = xr.DataArray(
                act, dims=("component", "epoch"),
                coords={"component": np.arange(int(self.rank)), "epoch": names})
        self.ntf_error_ = ntf.error_
        self.replicate_similarity_ = ntf.replicate_similarity_
        return self

    def epoch_components(self) -> dict[str, int]:
        """The component most specific to each epoch (largest share of its time course).

        Returns
        -------
        dict
            Epoch label -> component index.
        """
        self._check_fitted()
        if not hasattr(self, "epoch_activity_"):
            raise InputDataError(
                f"the dataset had no {self.epoch_var!r} variable, so epochs are unknown."
            )
        act = self.epoch_activity_.values
        share = act / np.maximum(act.sum(1, keepdims=True), 1e-300)
        return {str(e): int(np.argmax(share[:, j] * (act[:, j] > 0)))
                for j, e in enumerate(self.epoch_activity_["epoch"].values)}

    def atlas(self) -> xr.Dataset:
        """All fitted outputs as one dataset (time courses, loadings, patterns, communities).

        Returns
        -------
        xarray.Dataset
        """
        self._check_fitted()
        out = xr.Dataset({
            "weight": ("component", self.weights_),
            "time_course": self.time_course_,
            "animal_loading": self.animal_loading_,
            "pair_pattern": self.pair_pattern_,
            "community": self.communities_,
        })
        if hasattr(self, "epoch_activity_"):
            out["epoch_activity"] = self.epoch_activity_
        return out
