"""RDM comparators: all-pairs similarity between two sets of RDMs.

Method names follow rsatoolbox 0.3.2: ``cosine``, ``corr``, ``spearman``, ``rho-a``,
``tau-a``, ``kendall`` (tau-b), ``corr_cov``, ``cosine_cov`` (whitened unbiased cosine /
correlation, WUC),
``bures`` (normalised Bures similarity, NBS) and ``bures_metric``. The vector comparators
take a pair mask so that the bootstrap can drop pairs of duplicated stimuli with a fixed
array shape (no NaN filtering). Everything is float64.

Ranks come from one sort of integer keys with the floats' order per RDM and binary searches
(XLA sorts one integer operand several times faster than floats or argsorts). Kendall's
tau-a and tau-b count discordant pairs exactly in O(p^1.5) per RDM pair, not O(p^2): every
RDM is ranked once, each pair sorts integer keys (at most once where one side has no ties,
not at all where neither has) and counts the inversions of a permutation by square-root
decomposition (fused block comparisons plus a block x bucket histogram).

:func:`compare` on a few RDMs costs about as much in bookkeeping as in arithmetic, so it
reads xarray inputs through their variables, gathers the upper triangles on the host (into
64-byte aligned buffers, which XLA's CPU client reads in place), checks symmetry on the
gathered triangles, computes cosine and Pearson with the same functions on NumPy arrays
and builds the labelled output from indexes cached per set of names.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from neurodata.errors import InputDataError
from neurodata.models._jax.memory import aligned_empty
from neurodata.models.rsa.rdm import (
    _check_rdm_values,
    _coord_values,
    _rdm_array,
    _square,
    _triu,
)

__all__ = ["COMPARATORS", "compare", "masked_ranks", "vector_similarity"]

COMPARATORS = (
    "cosine", "corr", "spearman", "rho-a", "tau-a", "kendall", "corr_cov", "cosine_cov",
    "bures", "bures_metric",
)
_VECTOR = ("cosine", "corr", "spearman", "rho-a")


def _order_keys(v: jax.Array) -> jax.Array:
    # int64 keys with the order of the float64 values (-0.0 and 0.0 equal): XLA sorts one
    # integer operand several times faster than floats or (key, index) pairs
    # (XLA folds v + 0.0 into v, so -0.0 is mapped to 0.0 by a select)
    bits = jax.lax.bitcast_convert_type(jnp.where(v == 0, 0.0, v), jnp.int64)
    return bits ^ ((bits >> 63) & jnp.int64(0x7FFFFFFFFFFFFFFF))


def _count_below(srt: jax.Array, q: jax.Array, strict: bool = True) -> jax.Array:
    """Entries of each sorted row of ``srt`` below (``<``, or ``<=``) each ``q`` of that row.

    A branchless binary search: ``ceil(log2(n + 1))`` clipped gathers.
    """
    n = srt.shape[-1]
    lo = jnp.zeros(q.shape, jnp.int32)
    step = 1 << (n.bit_length() - 1)
    while step:
        val = jnp.take_along_axis(srt, jnp.minimum(lo + step - 1, n - 1), -1, mode="clip")
        ok = (lo + step - 1 < n) & ((val < q) if strict else (val <= q))
        lo = jnp.where(ok, lo + step, lo)
        step >>= 1
    return lo


def masked_ranks(v: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Average (tie-aware) ranks, starting at 1, of the masked entries of each row of ``v``.

    Entries outside the mask get rank 0; the ranks of the others equal
    ``scipy.stats.rankdata`` on the masked entries alone (``mask=None``: all entries).
    """
    # the average rank of x is #below + (#equal + 1) / 2 among the masked entries; #equal is
    # a histogram of the low ranks. Masked-out entries get the largest key, which no finite
    # value reaches
    keys = _order_keys(v)
    if mask is not None:
        keys = jnp.where(mask, keys, jnp.iinfo(jnp.int64).max)
    below = _count_below(jnp.sort(keys, -1), keys)
    flat = below.reshape(-1, below.shape[-1])
    equal = jax.vmap(lambda r: jnp.zeros(r.shape, jnp.int32).at[r].add(1)[r])(flat)
    ranks = below + (equal.reshape(below.shape) + 1).astype(v.dtype) / 2
    return ranks if mask is None else jnp.where(mask, ranks, 0.0)


def _xp(a: Any) -> Any:
    # NumPy arrays stay in NumPy (see compare); jax arrays and tracers use jax.numpy
    return np if isinstance(a, np.ndarray) else jnp


def _masked_cosine(a: jax.Array, b: jax.Array, w: jax.Array | None) -> jax.Array:
    xp = _xp(a)
    if w is not None:  # without a mask the products by ones cost as much as the rest
        a = a * w
        b = b * w
    num = a @ b.T
    na = xp.sqrt(xp.sum(a * a, -1))
    nb = xp.sqrt(xp.sum(b * b, -1))
    den = na[:, None] * nb[None, :]
    # a constant RDM has no direction: rsatoolbox reports 0 for it
    return xp.where(den > 0, num / xp.where(den > 0, den, 1.0), 0.0)


def _masked_center(a: jax.Array, w: jax.Array | None) -> jax.Array:
    if w is None:
        return a - a.mean(-1, keepdims=True)
    xp = _xp(a)
    return (a - xp.sum(a * w, -1, keepdims=True) / xp.sum(w)) * w


def vector_similarity(
    a: jax.Array, b: jax.Array, mask: jax.Array | None, method: str
) -> jax.Array:
    """All-pairs similarity of RDM vectors ``a (n_a, p)`` and ``b (n_b, p)`` over masked pairs.

    Parameters
    ----------
    a, b
        Condensed RDM vectors (upper triangles).
    mask
        Boolean ``(p,)``: the pairs that enter the comparison (``None``: all).
    method
        ``cosine``, ``corr``, ``spearman`` or ``rho-a``.

    Returns
    -------
    jax.Array
        ``(n_a, n_b)``.
    """
    w = None if mask is None else mask.astype(a.dtype)
    if method == "cosine":
        return _masked_cosine(a, b, w)
    if method == "corr":
        return _masked_cosine(_masked_center(a, w), _masked_center(b, w), w)
    if method not in ("spearman", "rho-a"):
        raise InputDataError(
            f"method={method!r} has no masked form; use one of {list(_VECTOR)}."
        )
    return rank_similarity(masked_ranks(a, mask), masked_ranks(b, mask), mask, method)


def rank_similarity(
    ra: jax.Array, rb: jax.Array, mask: jax.Array | None, method: str
) -> jax.Array:
    """Spearman or rho-a from masked ranks (:func:`masked_ranks`) computed once."""
    w = None if mask is None else mask.astype(ra.dtype)
    if method == "spearman":
        return _masked_cosine(_masked_center(ra, w), _masked_center(rb, w), w)
    n = ra.shape[-1] if w is None else jnp.sum(w)
    return 12.0 * (_masked_center(ra, w) @ _masked_center(rb, w).T) / (n**3 - n)


def _pairs_in_blocks(x: jax.Array, s: int) -> jax.Array:
    # per row: pairs (a < b) inside each block of s consecutive entries with x_a > x_b. One
    # fused elementwise pass over the s - 1 shifted copies (a loop over the shifts re-reads
    # the array s times and is ~8x slower on CPU); the padding never counts
    blk = x.reshape(x.shape[0], -1, s)
    padded = jnp.concatenate([blk, jnp.full_like(blk, jnp.iinfo(blk.dtype).max)], -1)
    count = sum((blk > padded[..., d:d + s]).astype(jnp.int16) for d in range(1, s))
    return jnp.sum(count, (-1, -2), dtype=jnp.int64)


def _exclusive_cumsum(x: jax.Array, axis: int, reverse: bool = False) -> jax.Array:
    return jax.lax.associative_scan(jnp.add, x, axis=axis, reverse=reverse) - x


def _permutation_inversions(sigma: jax.Array, inv_sigma: jax.Array, s: int) -> jax.Array:
    """Inversions of each row's permutation ``sigma (m, n)`` (with its inverse), s | n.

    Square-root decomposition, O(n s + n^2 / s^2) per row: with position blocks and value
    buckets of s, an inverted pair lies in one position block (compared directly), in one
    value bucket (compared directly on the inverse) or in different blocks and buckets
    (counted from the block x bucket histogram).
    """
    m, n = sigma.shape
    nb = n // s
    small = jnp.int16 if n < jnp.iinfo(jnp.int16).max else sigma.dtype
    # same bucket, different blocks: value pairs w < w' whose positions lie in blocks
    # P(w) > P(w'), i.e. pairs x_a > x_b of the inverse's block ids
    direct = _pairs_in_blocks(jnp.concatenate([sigma, inv_sigma // s]).astype(small), s)
    hist = jnp.zeros((m, nb * nb), jnp.int32).at[
        jnp.arange(m)[:, None], (jnp.arange(n) // s)[None] * nb + sigma // s].add(
            1, mode="promise_in_bounds")
    hist = hist.reshape(m, nb, nb)
    # elements in earlier blocks and higher buckets than each (block, bucket) cell
    earlier_higher = _exclusive_cumsum(_exclusive_cumsum(hist, 1), 2, reverse=True)
    return direct[:m] + direct[m:] + jnp.sum(hist.astype(jnp.int64) * earlier_higher, (-1, -2))


@jax.jit
def _low_ranks(v: jax.Array):
    # rank = entries strictly below (ties share the lowest); their sum is n0 - tied pairs
    keys = _order_keys(v)
    low = _count_below(jnp.sort(keys, -1), keys)
    p = v.shape[-1]
    return low, p * (p - 1) // 2 - jnp.sum(low, -1, dtype=jnp.int64)


@partial(jax.jit, static_argnames=("a_untied", "b_untied"))
def _discordant(ra: jax.Array, rb: jax.Array, a_untied: bool, b_untied: bool):
    """Discordant pairs D and pairs tied in both (n3) for all pairs of rank rows.

    Pairs sorted by (rank_a, rank_b) list a-ties ascending in b, so D is the number of
    strict inversions of rank_b in that order (Knight 1966); a stable re-sort by rank_b
    makes them the inversions of a permutation. Without ties in a, the per-RDM order of a
    already is that order, and without ties in b, rank_b already is the permutation: the
    per-pair sorts are skipped.
    """
    p = ra.shape[1]
    m = ra.shape[0] * rb.shape[0]
    key_type = jnp.int32 if p * p < jnp.iinfo(jnp.int32).max else jnp.int64
    q = jnp.arange(p, dtype=key_type)
    if a_untied:
        order_a = jnp.sort(ra.astype(key_type) * p + q, -1) % p
        seq = jax.vmap(lambda o: rb[:, o])(order_a).reshape(m, p).astype(key_type)
        tied_ab = jnp.zeros(m, jnp.int64)
    else:
        lex = jnp.sort((ra[:, None, :].astype(key_type) * p + rb[None]).reshape(m, p), -1)
        seq = lex % p
        run = jnp.concatenate([jnp.ones((m, 1), bool), lex[:, 1:] != lex[:, :-1]], 1)
        first = jax.lax.associative_scan(jnp.maximum, jnp.where(run, q, 0), axis=1)
        tied_ab = jnp.sum(q - first, -1, dtype=jnp.int64)
    s = max(64, 1 << int(np.ceil(np.log2(np.sqrt(p)))))
    n = -(-p // s) * s
    rows = jnp.arange(m)[:, None]
    pad = jnp.broadcast_to(jnp.arange(p, n, dtype=jnp.int32), (m, n - p))
    positions = jnp.arange(n, dtype=jnp.int32)[None]
    if b_untied:
        sigma = jnp.concatenate([seq.astype(jnp.int32), pad], 1)
        inv_sigma = jnp.zeros_like(sigma).at[rows, sigma].set(
            positions, mode="promise_in_bounds", unique_indices=True)
    else:
        inv_sigma = jnp.concatenate(
            [(jnp.sort(seq * p + q, -1) % p).astype(jnp.int32), pad], 1)
        sigma = jnp.zeros_like(inv_sigma).at[rows, inv_sigma].set(
            positions, mode="promise_in_bounds", unique_indices=True)
    return _permutation_inversions(sigma, inv_sigma, s), tied_ab


def _kendall_parts(va: jax.Array, vb: jax.Array):
    """(C - D) for all pairs of rows, and the pairs tied in each row, as scipy's kendalltau.

    C - D = n0 - n1 - n2 + n3 - 2 D (n1, n2 the pairs tied in a, in b; n3 in both); every
    row is ranked once.
    """
    ra, ties_a = _low_ranks(va)
    rb, ties_b = _low_ranks(vb)
    a_untied, b_untied = not bool(ties_a.any()), not bool(ties_b.any())
    if b_untied and not a_untied:  # C - D is symmetric: put the untied side first
        disc, tied_ab = _discordant(rb, ra, True, False)
        disc, tied_ab = (x.reshape(vb.shape[0], va.shape[0]).T for x in (disc, tied_ab))
    else:
        disc, tied_ab = _discordant(ra, rb, a_untied, b_untied)
        disc, tied_ab = (x.reshape(va.shape[0], vb.shape[0]) for x in (disc, tied_ab))
    p = va.shape[1]
    n0 = p * (p - 1) // 2
    c_minus_d = n0 - ties_a[:, None] - ties_b[None] + tied_ab - 2 * disc
    return c_minus_d.astype(va.dtype), n0, ties_a, ties_b


def _second_moment(d: jax.Array) -> jax.Array:
    # G = -1/2 H D H, the double-centred second-moment matrix of the patterns, by subtracting
    # row, column and grand means (O(n^2); the two products with H are O(n^3))
    row = d.mean(-1, keepdims=True)
    return -0.5 * (d - row - d.mean(-2, keepdims=True) + row.mean(-2, keepdims=True))


def _center_off_diagonal(d: jax.Array) -> jax.Array:
    # subtract each RDM's mean dissimilarity (upper triangle) from its off-diagonal entries
    n = d.shape[-1]
    mean = jnp.sum(jnp.triu(d, 1), (-2, -1)) / (n * (n - 1) / 2)
    return d - mean[:, None, None] * (1.0 - jnp.eye(n))


_vector_jit = jax.jit(vector_similarity, static_argnames="method")


@partial(jax.jit, static_argnames="centre")
def _cov_weighted(da: jax.Array, db: jax.Array, centre: bool = False) -> jax.Array:
    # WUC (Diedrichsen et al. 2021): with Sigma_k = I the cosine of RDM vectors in the metric
    # V^-1, V = (C C^T) o (C C^T), equals the Frobenius cosine of G = -1/2 H D H
    if centre:  # corr_cov: the dissimilarities minus their mean
        da, db = _center_off_diagonal(da), _center_off_diagonal(db)
    ga = _second_moment(da)
    gb = _second_moment(db)
    va = ga.reshape(ga.shape[0], -1)
    vb = gb.reshape(gb.shape[0], -1)
    return _masked_cosine(va, vb, None)


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
    a, ids_a = _rdm_array(rdms_a, "rdms_a")
    b, ids_b = _rdm_array(rdms_b, "rdms_b")
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
    # nothing below writes into a or b (they may be the callers' buffers, and XLA may read
    # aligned ones in place until the result is fetched)
    if method in ("cosine", "corr"):
        # the functions the bootstrap jits, on NumPy arrays: XLA hands each call to a worker
        # thread, which for a few RDMs costs more than this arithmetic and stalls for
        # milliseconds when the cores are busy
        sim = vector_similarity(_checked_upper(a, "rdms_a", aligned=False),
                                _checked_upper(b, "rdms_b", aligned=False), None, method)
    elif method in _VECTOR:
        sim = _vector_jit(_checked_upper(a, "rdms_a"), _checked_upper(b, "rdms_b"), None, method)
    else:
        _check_rdm_values(a, "rdms_a")
        _check_rdm_values(b, "rdms_b")
        if method in ("corr_cov", "cosine_cov") and sigma_k is None:
            sim = _cov_weighted(_aligned(a), _aligned(b), centre=method == "corr_cov")
        else:
            sim = _other_comparator(a, b, method, sigma_k)
    names = _names(rdms_a, a.shape[0]), _names(rdms_b, b.shape[0])
    return _labelled(np.asarray(sim), *names, method)


def _other_comparator(a: np.ndarray, b: np.ndarray, method: str, sigma_k: Any) -> jax.Array:
    """Kendall's taus, whitened comparators with ``sigma_k`` and the Bures measures."""
    n = a.shape[1]
    iu, ju = _triu(n)
    if method in ("tau-a", "kendall"):
        va, vb = a[:, iu, ju], b[:, iu, ju]
        c_minus_d, n0, ties_a, ties_b = _kendall_parts(va, vb)
        if method == "tau-a":
            return jnp.clip(c_minus_d / n0, -1.0, 1.0)
        # tau-b = (C - D) / sqrt((n0 - n1)(n0 - n2)), n1, n2 the pairs tied in each RDM
        den = jnp.sqrt(((n0 - ties_a)[:, None] * (n0 - ties_b)[None]).astype(va.dtype))
        return jnp.clip(c_minus_d / den, -1.0, 1.0)
    if method in ("corr_cov", "cosine_cov"):
        # rsatoolbox's fast path for a diagonal sigma_k whitens G instead, which is not the
        # V^-1 metric; we always use the definition
        va, vb = a[:, iu, ju], b[:, iu, ju]
        if method == "corr_cov":
            va, vb = va - va.mean(-1, keepdims=True), vb - vb.mean(-1, keepdims=True)
        return _v_whitened_cosine(va, vb, _sigma_matrix(sigma_k, n))
    nuc, tra, trb = _bures_parts(a, b)
    if method == "bures":
        return nuc / jnp.sqrt(tra[:, None] * trb[None, :])
    return tra[:, None] + trb[None, :] - 2.0 * nuc


@lru_cache(maxsize=64)
def _output_template(names_a: tuple, names_b: tuple, method: str) -> tuple:
    out = xr.DataArray(
        np.zeros((len(names_a), len(names_b))), dims=("rdm_a", "rdm_b"),
        coords={"rdm_a": np.asarray(names_a), "rdm_b": np.asarray(names_b)},
        name="similarity", attrs={"method": method},
    )
    return out.coords.variables, out.xindexes


def _labelled(sim: np.ndarray, names_a: tuple, names_b: tuple, method: str) -> xr.DataArray:
    # building the indexed name coordinates costs more than comparing a few RDMs: they are
    # built once per set of names and shared (immutable indexes; each result gets its own
    # shallow copies of the coordinate variables, so their attrs stay separate)
    coords, indexes = _output_template(names_a, names_b, method)
    return xr.DataArray(
        xr.Variable(("rdm_a", "rdm_b"), sim, {"method": method}),
        coords={k: v.copy(deep=False) for k, v in coords.items()}, indexes=dict(indexes),
        name="similarity", fastpath=True,
    )


def _names(x: Any, n: int) -> tuple[str, ...]:
    names = _coord_values(x, "rdm_name") if isinstance(x, xr.Dataset | xr.DataArray) else None
    if names is not None:
        return tuple(map(str, np.atleast_1d(names).tolist()))
    return tuple(map(str, range(n)))


def _aligned(x: np.ndarray) -> np.ndarray:
    """``x`` in a C-contiguous, 64-byte aligned float64 buffer (a copy unless it is one)."""
    if x.flags.c_contiguous and x.ctypes.data % 64 == 0:
        return x
    out = aligned_empty(x.shape)
    out[...] = x
    return out


def _upper_vectors(x: np.ndarray, aligned: bool = True) -> np.ndarray:
    """The upper triangles ``(n_rdm, p)`` of square RDMs (in an aligned buffer for XLA)."""
    flat = _triu_flat(x.shape[-1])
    rows = x.reshape(x.shape[0], -1)
    if not aligned:
        return np.take(rows, flat, axis=1, mode="clip")
    out = aligned_empty((x.shape[0], len(flat)))
    np.take(rows, flat, axis=1, out=out, mode="clip")  # clip: unbuffered
    return out


def _checked_upper(x: np.ndarray, name: str, aligned: bool = True) -> np.ndarray:
    """:func:`_upper_vectors` of RDMs whose values pass :func:`_check_rdm_values`.

    Equal upper and lower triangles, a finite upper triangle and a finite diagonal prove
    the check, in fewer passes over the matrices than the check itself; anything else
    goes through it (for its error, or to accept asymmetry within rounding).
    """
    upper = _upper_vectors(x, aligned)
    lower = np.take(x.reshape(x.shape[0], -1), _triu_flat(x.shape[-1], lower=True), axis=1,
                    mode="clip")
    if not (np.isfinite(upper.sum()) and np.isfinite(x.diagonal(0, 1, 2).sum())
            and np.array_equal(upper, lower)):
        _check_rdm_values(x, name)
    return upper


@lru_cache(maxsize=32)
def _triu_flat(n: int, lower: bool = False) -> np.ndarray:
    # row-major offsets of the upper triangle's entries (lower: of their mirror images)
    iu, ju = _triu(n)
    flat = ju * n + iu if lower else iu * n + ju
    flat.flags.writeable = False
    return flat
