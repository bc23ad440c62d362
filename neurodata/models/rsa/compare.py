"""RDM comparators: all-pairs similarity between two sets of RDMs.

Method names follow rsatoolbox 0.3.2: ``cosine``, ``corr``, ``spearman``, ``rho-a``,
``tau-a``, ``kendall`` (tau-b), ``corr_cov``, ``cosine_cov`` (whitened unbiased cosine /
correlation, WUC),
``bures`` (normalised Bures similarity, NBS) and ``bures_metric``. The vector comparators
take a pair mask so that the bootstrap can drop pairs of duplicated stimuli with a fixed
array shape (no NaN filtering). Everything is float64.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from neurodata.errors import InputDataError
from neurodata.models.rsa.rdm import _square, _triu, as_rdms

__all__ = ["COMPARATORS", "compare", "masked_ranks", "vector_similarity"]

COMPARATORS = (
    "cosine", "corr", "spearman", "rho-a", "tau-a", "kendall", "corr_cov", "cosine_cov",
    "bures", "bures_metric",
)
_VECTOR = ("cosine", "corr", "spearman", "rho-a")


def masked_ranks(v: jax.Array, mask: jax.Array) -> jax.Array:
    """Average (tie-aware) ranks, starting at 1, of the masked entries of each row of ``v``.

    Entries outside the mask get rank 0; the ranks of the others equal
    ``scipy.stats.rankdata`` on the masked entries alone.
    """
    big = jnp.where(mask, v, jnp.inf)
    order = jnp.argsort(big, axis=-1)
    srt = jnp.take_along_axis(big, order, -1)
    p = srt.shape[-1]
    pos = jnp.arange(p)
    # a tie group spans [first, last]; its members share the rank (first + last) / 2 + 1
    step = srt[..., 1:] != srt[..., :-1]
    edge = jnp.ones((*srt.shape[:-1], 1), bool)
    first = jax.lax.cummax(jnp.where(jnp.concatenate([edge, step], -1), pos, 0),
                           axis=srt.ndim - 1)
    last = jax.lax.cummin(jnp.where(jnp.concatenate([step, edge], -1), pos, p),
                          axis=srt.ndim - 1, reverse=True)
    ranks = jnp.put_along_axis(jnp.zeros(srt.shape, v.dtype), order, (first + last) / 2 + 1,
                               -1, inplace=False)
    return jnp.where(mask, ranks, 0.0)


def _masked_cosine(a: jax.Array, b: jax.Array, w: jax.Array) -> jax.Array:
    a = a * w
    b = b * w
    num = a @ b.T
    na = jnp.sqrt(jnp.sum(a * a, -1))
    nb = jnp.sqrt(jnp.sum(b * b, -1))
    den = na[:, None] * nb[None, :]
    # a constant RDM has no direction: rsatoolbox reports 0 for it
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _masked_center(a: jax.Array, w: jax.Array) -> jax.Array:
    return (a - jnp.sum(a * w, -1, keepdims=True) / jnp.sum(w)) * w


def vector_similarity(a: jax.Array, b: jax.Array, mask: jax.Array, method: str) -> jax.Array:
    """All-pairs similarity of RDM vectors ``a (n_a, p)`` and ``b (n_b, p)`` over masked pairs.

    Parameters
    ----------
    a, b
        Condensed RDM vectors (upper triangles).
    mask
        Boolean ``(p,)``: the pairs that enter the comparison.
    method
        ``cosine``, ``corr``, ``spearman`` or ``rho-a``.

    Returns
    -------
    jax.Array
        ``(n_a, n_b)``.
    """
    w = mask.astype(a.dtype)
    if method == "cosine":
        return _masked_cosine(a, b, w)
    if method == "corr":
        return _masked_cosine(_masked_center(a, w), _masked_center(b, w), w)
    if method not in ("spearman", "rho-a"):
        raise InputDataError(
            f"method={method!r} has no masked form; use one of {list(_VECTOR)}."
        )
    return rank_similarity(masked_ranks(a, mask), masked_ranks(b, mask), mask, method)


def rank_similarity(ra: jax.Array, rb: jax.Array, mask: jax.Array, method: str) -> jax.Array:
    """Spearman or rho-a from masked ranks (:func:`masked_ranks`) computed once."""
    w = mask.astype(ra.dtype)
    if method == "spearman":
        return _masked_cosine(_masked_center(ra, w), _masked_center(rb, w), w)
    n = jnp.sum(w)
    return 12.0 * (_masked_center(ra, w) @ _masked_center(rb, w).T) / (n**3 - n)


@jax.jit
def _sign_products(a: jax.Array, b: jax.Array) -> jax.Array:
    # sum over ordered pairs (i, j) of sign(a_i - a_j) sign(b_i - b_j) = 2 (C - D), as an
    # O(p^2) sign product in row blocks (memory O(block p)); tied pairs contribute 0. The
    # signs (taken in float64) are exact in float32 and a block sums at most block * p < 2^24
    # of them, so the products run in float32 and accumulate in float64
    p = a.shape[1]
    block = 128
    pad = (-p) % block
    rows_a = jnp.pad(a, ((0, 0), (0, pad)))
    rows_b = jnp.pad(b, ((0, 0), (0, pad)))
    valid = jnp.pad(jnp.ones(p, jnp.float32), (0, pad))

    def body(acc, start):
        ia = jax.lax.dynamic_slice_in_dim(rows_a, start, block, 1)
        ib = jax.lax.dynamic_slice_in_dim(rows_b, start, block, 1)
        ok = jax.lax.dynamic_slice_in_dim(valid, start, block, 0)
        sa = jnp.sign(ia[:, :, None] - a[:, None, :]).astype(jnp.float32) * ok[None, :, None]
        sb = jnp.sign(ib[:, :, None] - b[:, None, :]).astype(jnp.float32)
        return acc + jnp.einsum("xij,yij->xy", sa, sb).astype(a.dtype), None

    starts = jnp.arange(0, p + pad, block)
    acc, _ = jax.lax.scan(body, jnp.zeros((a.shape[0], b.shape[0]), a.dtype), starts)
    return acc


@jax.jit
def _untied_pairs(v: jax.Array) -> jax.Array:
    # ordered pairs with different values: p^2 - sum over tie groups of size^2
    srt = jnp.sort(v, -1)
    count = jax.vmap(lambda s, x: jnp.searchsorted(s, x, side="right")
                     - jnp.searchsorted(s, x, side="left"))(srt, v)
    return v.shape[1] ** 2 - jnp.sum(count, -1).astype(v.dtype)


def _second_moment(d: jax.Array) -> jax.Array:
    # G = -1/2 H D H: the double-centred second-moment matrix of the patterns
    n = d.shape[-1]
    h = jnp.eye(n) - 1.0 / n
    return -0.5 * h @ d @ h


@jax.jit
def _cov_weighted(da: jax.Array, db: jax.Array) -> jax.Array:
    # WUC (Diedrichsen et al. 2021): with Sigma_k = I the cosine of RDM vectors in the metric
    # V^-1, V = (C C^T) o (C C^T), equals the Frobenius cosine of G = -1/2 H D H
    ga = _second_moment(da)
    gb = _second_moment(db)
    va = ga.reshape(ga.shape[0], -1)
    vb = gb.reshape(gb.shape[0], -1)
    return _masked_cosine(va, vb, jnp.ones(va.shape[1], va.dtype))


@jax.jit
def _psd_sqrt(g: jax.Array) -> jax.Array:
    val, vec = jnp.linalg.eigh(g)
    return (vec * jnp.sqrt(jnp.maximum(val, 0.0))[..., None, :]) @ jnp.swapaxes(vec, -1, -2)


@jax.jit
def _bures_parts(da: jax.Array, db: jax.Array):
    ga = _second_moment(da)
    gb = _second_moment(db)
    sa = _psd_sqrt(ga)
    # sum sqrt(eig(A^1/2 B A^1/2)); B is not clipped to PSD, as in rsatoolbox, so that
    # non-Euclidean RDMs give the same value
    prod = jnp.einsum("aij,bjk,akl->abil", sa, gb, sa)
    nuc = jnp.sum(jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(prod), 0.0)), -1)
    tra = jnp.trace(ga, axis1=1, axis2=2)
    trb = jnp.trace(gb, axis1=1, axis2=2)
    return nuc, tra, trb


@jax.jit
def _v_whitened_cosine(va: jax.Array, vb: jax.Array, sigma: jax.Array) -> jax.Array:
    # cosine in the metric V^-1 with V = (C Sigma C^T) o (C Sigma C^T), matrix-free: with
    # u_k = Sigma c_k, (V x)_k = u_k^T L(x) u_k, L(x) the Laplacian of the weights x
    n = sigma.shape[0]
    iu, ju = _triu(n)
    u = sigma[iu] - sigma[ju]  # (p, n): rows c_k^T Sigma

    def matvec(x):
        w = _square(x, n)
        lap = jnp.diag(w.sum(1)) - w
        return jnp.einsum("kn,nm,km->k", u, lap, u)

    def solve(v):
        return jax.scipy.sparse.linalg.cg(matvec, v, tol=1e-12, maxiter=2000)[0]

    wa = jax.vmap(solve)(va)
    wb = jax.vmap(solve)(vb)
    num = va @ wb.T
    na = jnp.sqrt(jnp.sum(va * wa, -1))
    nb = jnp.sqrt(jnp.sum(vb * wb, -1))
    return num / (na[:, None] * nb[None, :])


def _sigma_matrix(sigma_k: Any, n: int) -> jax.Array:
    s = np.asarray(sigma_k, dtype=np.float64)
    if s.ndim == 1 and s.shape == (n,):
        s = np.diag(s)
    if s.shape != (n, n):
        raise InputDataError(
            f"sigma_k has shape {s.shape}; give ({n},) variances or an ({n}, {n}) covariance "
            "of the patterns."
        )
    return jnp.asarray(s)


def compare(
    rdms_a: Any, rdms_b: Any, method: str = "cosine", *, sigma_k: Any = None
) -> xr.DataArray:
    """All-pairs similarity between two sets of RDMs on the same stimuli.

    Parameters
    ----------
    rdms_a, rdms_b
        RDM datasets, DataArrays or arrays of square RDMs ``(n_rdm, n, n)``.
    method
        One of :data:`COMPARATORS` (names as in rsatoolbox 0.3.2).
    sigma_k
        Pattern covariance for ``corr_cov`` / ``cosine_cov`` (``(n,)`` or ``(n, n)``;
        default identity).

    Returns
    -------
    xarray.DataArray
        ``similarity(rdm_a, rdm_b)`` (for ``bures_metric`` the squared Bures distance).

    Raises
    ------
    InputDataError
        Different stimulus sets, bad RDMs (see :func:`~neurodata.models.rsa.as_rdms`) or an
        unknown method.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(3, 5, 5)); d = x + x.transpose(0, 2, 1)
    >>> d[:, range(5), range(5)] = 0
    >>> compare(d, d, "corr").shape
    (3, 3)
    """
    if method not in COMPARATORS:
        raise InputDataError(f"method={method!r}; use one of {list(COMPARATORS)}.")
    a, ids_a = as_rdms(rdms_a, "rdms_a")
    b, ids_b = as_rdms(rdms_b, "rdms_b")
    if a.shape[1] != b.shape[1]:
        raise InputDataError(
            f"rdms_a has {a.shape[1]} stimuli and rdms_b {b.shape[1]}; compare RDMs of the "
            "same stimulus set."
        )
    if ids_a is not None and ids_b is not None and not np.array_equal(ids_a, ids_b):
        raise InputDataError(
            "rdms_a and rdms_b have different stimulus ids (or orders); select and order the "
            "same stimuli in both (e.g. rdms.sel(stimulus=...))."
        )
    n = a.shape[1]
    iu, ju = _triu(n)
    va, vb = jnp.asarray(a[:, iu, ju]), jnp.asarray(b[:, iu, ju])
    ja, jb = a, b  # numpy: the jitted kernels take them as they are
    if method in _VECTOR:
        sim = _vector_jit(va, vb, np.ones(va.shape[1], bool), method)
    elif method == "tau-a":
        p = va.shape[1]
        sim = jnp.clip(_sign_products(va, vb) / (p * (p - 1)), -1.0, 1.0)
    elif method == "kendall":
        # tau-b = (C - D) / sqrt((n0 - n1)(n0 - n2)), n1, n2 the pairs tied in each RDM
        den = jnp.sqrt(_untied_pairs(va)[:, None] * _untied_pairs(vb)[None])
        sim = jnp.clip(_sign_products(va, vb) / den, -1.0, 1.0)
    elif method in ("corr_cov", "cosine_cov"):
        if method == "corr_cov":
            off = 1.0 - np.eye(n)
            ja = jnp.asarray(a - a[:, iu, ju].mean(-1)[:, None, None] * off)
            jb = jnp.asarray(b - b[:, iu, ju].mean(-1)[:, None, None] * off)
            va, vb = va - va.mean(-1, keepdims=True), vb - vb.mean(-1, keepdims=True)
        if sigma_k is None:
            sim = _cov_weighted(ja, jb)
        else:
            # rsatoolbox's fast path for a diagonal sigma_k whitens G instead, which is not
            # the V^-1 metric; we always use the definition
            sim = _v_whitened_cosine(va, vb, _sigma_matrix(sigma_k, n))
    else:
        nuc, tra, trb = _bures_parts(ja, jb)
        if method == "bures":
            sim = nuc / jnp.sqrt(tra[:, None] * trb[None, :])
        else:
            sim = tra[:, None] + trb[None, :] - 2.0 * nuc
    names_a = _names(rdms_a, a.shape[0])
    names_b = _names(rdms_b, b.shape[0])
    return xr.DataArray(
        np.asarray(sim), dims=("rdm_a", "rdm_b"),
        coords={"rdm_a": names_a, "rdm_b": names_b}, name="similarity",
        attrs={"method": method},
    )


_vector_jit = jax.jit(vector_similarity, static_argnames="method")


def _names(x: Any, n: int) -> np.ndarray:
    if isinstance(x, xr.Dataset | xr.DataArray) and "rdm_name" in x.coords:
        return np.asarray(x["rdm_name"]).astype(str)
    return np.asarray([str(i) for i in range(n)])
