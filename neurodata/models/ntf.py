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

Streaming. The solver touches the tensor only through the MTTKRP of each mode, the Grams
of a mask and the squared norm, all sums over the entries. :func:`fit_cp_stream` runs the
same iteration (:func:`_sweep`, :func:`_update`, :func:`_rel_error` and the stopping rule
are shared with :func:`fit_cp`) with those sums accumulated over chunks of one mode
(:class:`TensorStream`, e.g. windows), so only one chunk of the tensor is in memory: a
slice of an array on disk (zarr) or of a lazy :func:`affinity_tensor` whose windows are
recomputed from the traces when read. The chunk length is planned from the free memory
(:func:`plan_stream`). :class:`NTF` streams when the tensor does not fit (``stream``).
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
from neurodata.models._jax.memory import (
    aligned_empty,
    device_memory,
    host_memory,
    plan_batch_size,
)
from neurodata.models.affinity import affinity_tensor, pairs_to_matrix

__all__ = [
    "NTF",
    "DynamicConnectome",
    "TensorStream",
    "affinity_tensor",
    "congruence",
    "fit_cp",
    "fit_cp_stream",
    "plan_stream",
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


def _update(k_mat, grams, f, method: str, inner_iter: int, inner_tol: float, floor: float,
            eps: float):
    """New factor of one mode from its normal-equation pieces ``K`` and ``G``."""
    if method == "hals":
        return _hals_nnls(k_mat, grams, f, inner_iter, inner_tol, floor)
    return f * k_mat / (_gf(grams, f) + eps)


def _rel_error(norm_sq, k_mat, grams, f):
    """``|M*(A - model)| / |M*A|`` from the last mode's ``K``, ``G`` and factor."""
    resid = norm_sq - 2.0 * jnp.sum(f * k_mat) + _quad(grams, f)
    return jnp.sqrt(jnp.abs(resid) / norm_sq)


def _sweep(stats, factors, update):
    """One outer iteration: every mode once, in order (Gauss-Seidel).

    ``stats(factors, mode) -> (K, G)`` gives the MTTKRP and the Gram(s) of a mode: from
    the whole tensor (:func:`fit_cp`) or accumulated chunk by chunk (:func:`fit_cp_stream`);
    ``update(K, G, f)`` is :func:`_update`. Returns the factors and the last ``(K, G)``,
    from which :func:`_rel_error` gives the objective without a reconstruction.
    """
    factors = list(factors)
    for mode in range(len(factors)):
        k_mat, grams = stats(factors, mode)
        factors[mode] = update(k_mat, grams, factors[mode])
    return tuple(factors), k_mat, grams


def _running(it, err, prev, max_iter: int, tol):
    """Whether a replicate keeps iterating: below the cap and still improving by ``tol``."""
    return (it < max_iter) & ~((it > 1) & (prev - err < tol))


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
        Stop a replicate when its relative error improves by less than ``tol`` (0: when its
        error rises; -inf: never).
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
    update = partial(_update, method=method, inner_iter=inner_iter, inner_tol=inner_tol,
                     floor=floor, eps=eps)

    def stats(factors, mode):
        return _mttkrp(y, factors, mode), _grams(mask, factors, mode)

    def one(init_factors):
        buf = jnp.full((max_iter,), jnp.nan, tensor.dtype)

        def cond(c):
            _, it, err, prev, _ = c
            return _running(it, err, prev, max_iter, tol)

        def body(c):
            f, it, err, _, buf = c
            f, k_mat, grams = _sweep(stats, f, update)
            new = _rel_error(norm_sq, k_mat, grams, f[-1])
            return f, it + 1, new, err, buf.at[it].set(new)

        inf = jnp.array(jnp.inf, tensor.dtype)
        f, it, _, _, buf = jax.lax.while_loop(cond, body, (tuple(init_factors), jnp.array(0),
                                                           inf, inf, buf))
        return f, buf, it

    f, errs, n_iter = jax.vmap(one)(tuple(init))
    return CPFit(f, errs, n_iter)


# --------------------------------------------------------------------------- streaming


def _slice(arr, axis: int, start: int, stop: int):
    idx = [slice(None)] * arr.ndim
    idx[axis] = slice(start, stop)
    return arr[tuple(idx)]


class TensorStream:
    """A tensor read chunk by chunk along one mode, for :func:`fit_cp_stream`.

    Only one chunk is held at a time: a slice of a numpy, zarr or dask array (a lazy
    :func:`affinity_tensor` computes its windows when the slice is read), or of a
    DataArray backed by any of them. Every chunk but the last has ``chunk`` entries along
    ``axis``; the last one is padded with unobserved zeros so that one compiled kernel
    serves every chunk.

    Parameters
    ----------
    data
        The tensor (any array that slices, or a DataArray).
    axis
        The mode to stream along (e.g. 1, ``window``, for an affinity tensor).
    chunk
        Entries of that mode per chunk.
    masks
        Boolean masks of the observed entries, each broadcastable to the tensor (length 1
        where it does not vary): they multiply. A mask that varies along ``axis`` (an
        entry-wise mask, or the ``window_mask`` of an affinity tensor) is sliced with each
        chunk; the others stay whole (they are small).
    dtype
        The solver's dtype.

    Examples
    --------
    >>> import numpy as np
    >>> stream = TensorStream(np.ones((4, 10, 2)), axis=1, chunk=4)
    >>> stream.n_chunks, stream.host_chunk(2)[0].shape
    (3, (4, 4, 2))
    """

    def __init__(self, data, axis: int, chunk: int, masks=(), dtype="float64"):
        self.data = data
        self.shape = tuple(int(n) for n in data.shape)
        self.axis = int(axis)
        self.chunk = int(chunk)
        self.dtype = np.dtype(dtype)
        self.n_chunks = -(-self.shape[self.axis] // self.chunk)
        masks = [np.asarray(m, bool) for m in masks]
        self.chunked = [m for m in masks if m.shape[self.axis] > 1]
        fixed = [m for m in masks if m.shape[self.axis] == 1]
        self.static = None
        for m in fixed:
            self.static = m if self.static is None else self.static & m
        self.mask_shape = np.broadcast_shapes(*(m.shape for m in masks)) if masks else None

    @property
    def masked(self) -> bool:
        """Whether any entry is left out of the objective."""
        return self.static is not None or bool(self.chunked)

    def host_chunk(self, c: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Chunk ``c`` in the solver's dtype (padded) and its observed-entry mask, on the host.

        Unobserved entries (and the padding) are zero, whatever the source holds there (NaN
        included). The mask keeps length 1 where it does not vary; it is padded with False
        when it varies along ``axis``.
        """
        start = c * self.chunk
        stop = min(start + self.chunk, self.shape[self.axis])
        if isinstance(self.data, xr.DataArray):
            part = self.data.isel({self.data.dims[self.axis]: slice(start, stop)}).data
        else:
            part = _slice(self.data, self.axis, start, stop)
        if hasattr(part, "dask"):
            # one chunk at a time, on this thread (no pool holding several chunks)
            part = part.compute(scheduler="synchronous")
        x = np.asarray(part)
        mask = self.static
        for m in self.chunked:
            m = _slice(m, self.axis, start, stop)
            mask = m if mask is None else mask & m
        shape = list(x.shape)
        shape[self.axis] = self.chunk
        out = aligned_empty(tuple(shape), self.dtype)  # aliased, not copied, by device_put
        out[...] = 0
        np.copyto(_slice(out, self.axis, 0, stop - start), x, casting="unsafe",
                  where=True if mask is None else np.broadcast_to(mask, x.shape))
        if self.chunked and stop - start < self.chunk:
            width = [(0, 0)] * out.ndim
            width[self.axis] = (0, self.chunk - (stop - start))
            mask = np.pad(mask, width)
        return out, mask

    def device_chunk(self, c: int):
        """Chunk ``c`` on the device, and its mask when the mask varies along ``axis``."""
        x, mask = self.host_chunk(c)
        # device_put, not jnp.asarray: a transfer (none on CPU), not an eager copy op
        return jax.device_put(x), (jax.device_put(mask.astype(self.dtype)) if self.chunked
                                   else None)

    def scan(self) -> tuple[float, list[np.ndarray]]:
        """One pass: validate the observed entries; their squared norm and observed rows.

        Returns
        -------
        norm_sq : float
            Sum of squares of the observed entries.
        seen : list of numpy.ndarray
            Per mode, whether each row has an observed entry.

        Raises
        ------
        InputDataError
            NaN, Inf or negative observed entries, or no non-zero one.
        """
        low, nonzero, finite, norm_sq = np.inf, False, True, 0.0
        n = len(self.shape)
        seen = [np.zeros(k, bool) for k in self.shape]
        seen[self.axis] = np.zeros(self.n_chunks * self.chunk, bool)
        for c in range(self.n_chunks):
            x, mask = self.host_chunk(c)
            finite &= bool(np.all(np.isfinite(x)))
            if not finite:
                break
            low = min(low, float(np.min(x)))
            nonzero |= bool(np.any(x != 0))
            norm_sq += float(np.sum(np.square(x, dtype=float)))
            observed = np.broadcast_to(True if mask is None else mask, x.shape)
            for k in range(n):
                rows = observed.any(axis=tuple(j for j in range(n) if j != k))
                if k == self.axis:
                    seen[k][c * self.chunk:(c + 1) * self.chunk] = rows
                else:
                    seen[k] |= rows
        _raise_unobservable(low, nonzero, finite)
        seen[self.axis] = seen[self.axis][: self.shape[self.axis]]
        return norm_sq, seen


def _mttkrp_replicates(y, factors, mode: int) -> jnp.ndarray:
    """:func:`_mttkrp` of every replicate ``(B, I_n, R)`` at once: ``(B, I_mode, R)``.

    Column ``r`` of an MTTKRP involves only column ``r`` of each factor, so the replicates
    fold into the rank columns and one contraction serves them all (a vmapped contraction
    of an unbatched chunk hits a 50x slower XLA CPU dot for some modes).
    """
    n_rep, _, rank = factors[0].shape
    flat = [jnp.moveaxis(f, 0, 1).reshape(f.shape[1], n_rep * rank) for f in factors]
    return jnp.moveaxis(_mttkrp(y, flat, mode).reshape(-1, n_rep, rank), 1, 0)


@partial(jax.jit, static_argnames=("mode", "axis"))
def _chunk_stats(acc, y, mask, factors, start, *, mode: int, axis: int):
    """Add one chunk's share of ``(K, G)`` of ``mode`` to ``acc``, for every replicate.

    Along ``axis`` the chunk's rows of ``K`` (and of per-row ``G``) are written in place;
    along the other modes its contraction is added. ``G`` is accumulated only when the
    mask varies along ``axis`` (``mask`` given); otherwise it does not depend on the data.
    """
    factors = list(factors)
    factors[axis] = jax.lax.dynamic_slice_in_dim(factors[axis], start, y.shape[axis], axis=1)
    grams = None
    if mask is not None:
        grams = jax.vmap(_grams, in_axes=(None, 0, None))(mask, tuple(factors), mode)
        if mode == axis and grams.ndim == 3:  # a chunk of one row
            grams = grams[:, None]
    part = (_mttkrp_replicates(y, factors, mode), grams)
    if mode == axis:
        return jax.tree.map(
            lambda a, p: jax.lax.dynamic_update_slice_in_dim(a, p, start, axis=1), acc, part)
    return jax.tree.map(jnp.add, acc, part)


@partial(jax.jit, static_argnames=("method", "inner_iter"))
def _batched_update(k_mat, grams, f, *, method, inner_iter, inner_tol, floor, eps):
    return jax.vmap(partial(_update, method=method, inner_iter=inner_iter, inner_tol=inner_tol,
                            floor=floor, eps=eps))(k_mat, grams, f)


class _StreamState(NamedTuple):
    factors: tuple
    n_iter: jnp.ndarray
    err: jnp.ndarray
    prev: jnp.ndarray
    errors: jnp.ndarray
    active: jnp.ndarray


@partial(jax.jit, static_argnames=("max_iter",))
def _stream_advance(state, new, k_mat, grams, norm_sq, *, max_iter: int, tol):
    """Bookkeeping of one streamed iteration, as a vmapped ``while_loop`` does it.

    A replicate that has stopped keeps its state; the others take the new factors and
    error, and stop by :func:`_running`.
    """
    active = state.active
    new_err = jax.vmap(_rel_error, in_axes=(None, 0, 0, 0))(norm_sq, k_mat, grams, new[-1])
    factors = tuple(jnp.where(active[:, None, None], a, b)
                    for a, b in zip(new, state.factors, strict=True))
    rows = jnp.arange(active.shape[0])
    errors = state.errors.at[rows, jnp.where(active, state.n_iter, max_iter)].set(
        new_err, mode="drop")
    prev = jnp.where(active, state.err, state.prev)
    err = jnp.where(active, new_err, state.err)
    it = state.n_iter + active
    return _StreamState(factors, it, err, prev, errors, _running(it, err, prev, max_iter, tol))


_batched_grams = jax.jit(jax.vmap(_grams, in_axes=(None, 0, None)), static_argnums=2)


def fit_cp_stream(
    stream: TensorStream,
    init: tuple,
    norm_sq: float,
    *,
    method: str = "hals",
    max_iter: int = 500,
    tol: float = 1e-5,
    inner_iter: int = 3,
    inner_tol: float = 0.0,
    floor: float = 1e-12,
    eps: float = 1e-12,
) -> CPFit:
    """:func:`fit_cp` with the tensor read chunk by chunk: only one chunk is in memory.

    The same iteration as :func:`fit_cp` (:func:`_sweep`, :func:`_update`,
    :func:`_rel_error`, the same stopping rule per replicate): only the contractions
    ``K`` (MTTKRP) and, for a mask that varies along the streamed mode, the Grams ``G``
    are sums over chunks, so each outer iteration reads the tensor once per mode. The
    factors match :func:`fit_cp`'s to rounding. The loop over iterations runs on the
    host (a chunk may come from disk or from a lazy computation); every chunk's work is
    one compiled call, vmapped over the replicates.

    Parameters
    ----------
    stream
        The tensor and its masks (:class:`TensorStream`).
    init
        One ``(replicate, I_n, rank)`` array per mode (non-negative).
    norm_sq
        Squared norm of the observed entries (:meth:`TensorStream.scan`).
    method, max_iter, tol, inner_iter, inner_tol, floor, eps
        As in :func:`fit_cp`.

    Returns
    -------
    CPFit
    """
    axis, chunk, dtype = stream.axis, stream.chunk, stream.dtype
    update = partial(_batched_update, method=method, inner_iter=inner_iter,
                     inner_tol=inner_tol, floor=floor, eps=eps)
    static = None if stream.static is None else jnp.asarray(stream.static, dtype)
    n_rep, rank = init[0].shape[0], init[0].shape[2]
    padded = stream.n_chunks * chunk
    factors = [np.asarray(f, dtype) for f in init]
    # zero rows past the end: no data, no Gram, and HALS / MU keep them at zero
    factors[axis] = np.pad(factors[axis], ((0, 0), (0, padded - stream.shape[axis]), (0, 0)))

    def stats(factors, mode):
        rows = padded if mode == axis else stream.shape[mode]
        grams = None
        if stream.chunked:
            # the Grams' shape: one per row along the modes the mask varies along
            per_row = mode == axis or stream.mask_shape[mode] > 1
            grams = np.zeros((n_rep,) + ((rows,) if per_row else ()) + (rank, rank), dtype)
        # host zeros: sent to the device, not compiled as eager ops
        acc = (jnp.asarray(np.zeros((n_rep, rows, rank), dtype)),
               None if grams is None else jnp.asarray(grams))
        for c in range(stream.n_chunks):
            y, mask = stream.device_chunk(c)
            # wait for this chunk before reading the next: one chunk in memory at a time
            acc = jax.block_until_ready(_chunk_stats(acc, y, mask, tuple(factors), c * chunk,
                                                     mode=mode, axis=axis))
        k_mat, grams = acc
        if grams is None:
            grams = _batched_grams(static, tuple(factors), mode)
        return k_mat, grams

    state = _StreamState(tuple(jnp.asarray(f) for f in factors), np.zeros(n_rep, int),
                         np.full(n_rep, np.inf, dtype), np.full(n_rep, np.inf, dtype),
                         np.full((n_rep, max_iter), np.nan, dtype), np.ones(n_rep, bool))
    norm_sq = np.asarray(norm_sq, dtype)
    while bool(np.asarray(state.active).any()):
        new, k_mat, grams = _sweep(stats, state.factors, update)
        state = _stream_advance(state, new, k_mat, grams, norm_sq, max_iter=max_iter, tol=tol)
    factors = list(state.factors)
    factors[axis] = factors[axis][:, : stream.shape[axis]]
    return CPFit(tuple(factors), state.errors, state.n_iter)


@partial(jax.jit, static_argnames=("shape", "rank", "n_init", "dtype"))
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
    _raise_unobservable(low, nonzero, finite)
    return hidden_bad


def _raise_unobservable(low: float, nonzero: bool, finite: bool) -> None:
    """Raise for NaN/Inf or negative observed entries, or an all-zero tensor."""
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


def _masks(tensor, mask) -> list[np.ndarray]:
    """The observation masks of a tensor input, checked: ``[mask]``, or a labelled tensor's.

    A labelled tensor (:func:`affinity_tensor`) carries ``mask(pair, animal)`` and
    ``window_mask(window, animal)``; each becomes a mask with length-1 dims where it does
    not vary (an all-True one is skipped), so that none is ever expanded to full size here.
    """
    shape = tuple(tensor.shape)
    if len(shape) < 2:
        raise InputDataError(f"tensor has {len(shape)} mode(s); NTF needs at least 2.")
    masks = []
    if mask is not None:
        masks = [np.asarray(mask)]
    elif isinstance(tensor, xr.DataArray):
        for name in ("mask", "window_mask"):
            if name not in tensor.coords or bool(tensor[name].all()):
                continue
            m = tensor[name]
            masks.append(np.asarray(m.expand_dims([d for d in tensor.dims if d not in m.dims])
                                    .transpose(*tensor.dims).values))
    for m in masks:
        if m.ndim != len(shape):
            raise InputDataError(
                f"mask has {m.ndim} dims but tensor has {len(shape)}; give a mask of the "
                "tensor's shape (or with length-1 dims where it does not vary)."
            )
        if any(k not in (1, n) for k, n in zip(m.shape, shape, strict=True)):
            raise InputDataError(
                f"mask shape {m.shape} does not broadcast to the tensor shape {shape}."
            )
    masks = [m.astype(bool) for m in masks]
    if mask is not None and not masks[0].any():
        raise InputDataError("mask leaves no observed entry; nothing to fit.")
    return masks


def _as_tensor(tensor, mask, dtype=None):
    """Array (in ``dtype``), mask (broadcastable bool or None) and labels of a tensor input.

    Unobserved entries are zeroed (a copy) only if they hold NaN or Inf; otherwise the
    array is used as is, and a float input already in ``dtype`` is not copied.
    """
    if not hasattr(tensor, "shape"):
        tensor = np.asarray(tensor)
    labels = tensor if isinstance(tensor, xr.DataArray) else None
    masks = _masks(tensor, mask)
    mask = None
    for m in masks:
        # two structured masks multiply into an entry-wise one
        mask = m if mask is None else mask & m
    x = _to_numpy(tensor.data if labels is not None else tensor, dtype)
    if _check_observed(x, mask):
        x = np.where(np.broadcast_to(mask, x.shape), x, np.zeros((), x.dtype))
    return x, mask, labels


def _free_memory() -> float:
    """Bytes a fit may use: the smallest of the device's and the host's free memory.

    The host's includes the room under an address-space limit (``host_memory``).
    """
    free = [device_memory().free]
    if jax.default_backend() != "cpu":  # chunks are read on the host, then sent over
        free.append(host_memory().free)
    return float(min(f for f in free if f > 0) if any(f > 0 for f in free) else 0)


def _native_chunks(data) -> tuple[int, ...] | None:
    """Storage chunk length per mode of a dask / zarr array (or a DataArray of one)."""
    # DataArray.chunks is None unless dask-backed (.data would load a lazy backend array)
    chunks = getattr(data, "chunks", None)
    if not chunks:
        return None
    return tuple(int(c[0]) if isinstance(c, tuple) else int(c) for c in chunks)


def plan_stream(shape, itemsize: int, *, axis: int, native: int | None = None,
                free_bytes: float | None = None) -> int:
    """Chunk length along ``axis`` for :func:`fit_cp_stream` that fits the free memory.

    A chunk lives at once as the slice read, its masked copy in the solver's dtype, the
    device copy and XLA's temporaries: about 6 copies (measured peak on CPU), which may use
    half of the free memory (:func:`_free_memory`; see
    :func:`~neurodata.models._jax.memory.plan_batch_size`). A chunk longer than the
    storage chunk (``native``) is rounded down to a multiple of it, so that no storage
    chunk is read (or computed) twice per pass.

    Parameters
    ----------
    shape
        Tensor shape.
    itemsize
        Bytes per entry in the solver's dtype.
    axis
        The streamed mode.
    native
        Storage chunk length along ``axis`` (dask or zarr), if any.
    free_bytes
        Memory budget instead of the measured free memory.

    Returns
    -------
    int

    Examples
    --------
    >>> plan_stream((19900, 2000, 1), 4, axis=1, free_bytes=400e6)
    418
    """
    per_item = 6 * itemsize * int(np.prod(shape)) // int(shape[axis])
    chunk = plan_batch_size(per_item, int(shape[axis]), fraction=0.5,
                            free_bytes=_free_memory() if free_bytes is None else free_bytes)
    if native and native <= chunk < int(shape[axis]):
        chunk -= chunk % native
    return int(chunk)


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
    stream
        Read the tensor chunk by chunk in every pass (:func:`fit_cp_stream`), holding only
        one chunk of it in memory: ``True``, ``False``, or ``"auto"`` (default): stream
        when the tensor does not fit (see :func:`plan_stream`) or ``chunk_size`` is given.
        The factors are those of the in-memory fit, to rounding; streaming costs one read
        of the tensor per mode and iteration (for a lazy affinity tensor: recomputing its
        windows), so it is slower than a fit that fits.
    chunk_size
        Entries of the streamed mode (``window`` for a labelled tensor, else the mode cut
        into the most storage chunks, else the longest) per chunk; default: planned from
        the free memory (:func:`plan_stream`).
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
    stream_chunk_ : int
        Chunk length of a streamed fit (0: fitted in memory).

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
                 dtype: str = "float32", stream: bool | str = "auto",
                 chunk_size: int | None = None, seed: int = 0):
        self.rank = rank
        self.method = method
        self.n_init = n_init
        self.mask = mask
        self.max_iter = max_iter
        self.tol = tol
        self.inner_iter = inner_iter
        self.dtype = dtype
        self.stream = stream
        self.chunk_size = chunk_size
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

    def _stream_plan(self, tensor) -> tuple[int, int] | None:
        """``(axis, chunk)`` to stream along, or None to fit in memory."""
        if self.stream not in ("auto", True, False):
            raise InputDataError(f"stream is {self.stream!r}; give 'auto', True or False.")
        if self.chunk_size is not None and not (
                isinstance(self.chunk_size, int | np.integer) and self.chunk_size >= 1):
            raise InputDataError(f"chunk_size is {self.chunk_size!r}; give a positive integer.")
        shape = tuple(int(n) for n in tensor.shape)
        if self.stream is False or len(shape) < 2:
            return None
        native = _native_chunks(tensor)
        if isinstance(tensor, xr.DataArray) and "window" in tensor.dims:
            axis = tensor.dims.index("window")
        elif native is not None:
            # the mode cut into the most storage chunks: each pass reads each chunk once
            axis = int(np.argmax([-(-n // c) for n, c in zip(shape, native, strict=True)]))
        else:
            axis = int(np.argmax(shape))
        if self.chunk_size is not None:
            return axis, int(min(self.chunk_size, shape[axis]))
        chunk = plan_stream(shape, jnp.dtype(self.dtype).itemsize, axis=axis,
                            native=None if native is None else native[axis])
        if self.stream == "auto" and chunk >= shape[axis]:
            return None  # it fits: one compiled loop over the whole tensor is faster
        return axis, chunk

    def fit(self, tensor, y=None) -> NTF:
        """Fit the decomposition.

        Parameters
        ----------
        tensor
            Non-negative array or DataArray (e.g. from :func:`affinity_tensor`), numpy-,
            zarr- or dask-backed. In memory, a lazy tensor (``affinity_tensor(...,
            lazy=True)`` or one opened from zarr) is read chunk by chunk into a single
            array in ``dtype``, the only copy the solver needs on the host. Streamed
            (``stream``), it is read one chunk at a time in every pass and never held whole.
        y
            Ignored.

        Returns
        -------
        NTF
            ``self``.
        """
        if self.dtype not in ("float32", "float64"):
            raise InputDataError(f"dtype {self.dtype!r} is not 'float32' or 'float64'.")
        if not hasattr(tensor, "shape"):
            tensor = np.asarray(tensor)
        plan = self._stream_plan(tensor)
        dtype = jnp.dtype(self.dtype)
        settings = dict(method=self.method, max_iter=int(self.max_iter), tol=float(self.tol),
                        inner_iter=int(self.inner_iter))
        if plan is None:
            x, mask, labels = _as_tensor(tensor, self.mask, self.dtype)
            self._check_params(x.shape)
            shape = x.shape
            xj = jnp.asarray(x, dtype)
            del x  # the host copy is no longer needed (fit_cp applies the mask on the device)
            mj = None if mask is None else jnp.asarray(mask, dtype)
            norm = float(jnp.sqrt(jnp.sum(xj * xj if mj is None else jnp.square(xj) * mj)))
            init = random_init(jax.random.PRNGKey(self.seed), shape, int(self.rank),
                               int(self.n_init), norm, dtype)
            res = fit_cp(xj, init, mj, **settings)
            del xj, mj
            full = None if mask is None else np.broadcast_to(mask, shape)
            seen = None if full is None else [
                full.any(axis=tuple(k for k in range(len(shape)) if k != n))
                for n in range(len(shape))]
        else:
            labels = tensor if isinstance(tensor, xr.DataArray) else None
            masks = _masks(tensor, self.mask)
            stream = TensorStream(tensor, plan[0], plan[1], masks, dtype)
            shape = stream.shape
            self._check_params(shape)
            norm_sq, seen = stream.scan()
            seen = seen if stream.masked else None
            init = random_init(jax.random.PRNGKey(self.seed), shape, int(self.rank),
                               int(self.n_init), float(np.sqrt(norm_sq)), dtype)
            res = fit_cp_stream(stream, init, norm_sq, **settings)
        errs = np.asarray(res.errors, dtype=float)
        n_iter = np.asarray(res.n_iter)
        final = errs[np.arange(errs.shape[0]), np.maximum(n_iter - 1, 0)]
        best = int(np.nanargmin(final))
        factors = [np.array(f) for f in res.factors]
        if seen is not None:
            # rows with no observed entry (a pair never recorded) have no data: set to 0
            for f, rows in zip(factors, seen, strict=True):
                f[:, ~rows, :] = 0.0
        reps = [normalize([f[b] for f in factors]) for b in range(errs.shape[0])]
        weights, factors = reps[best]
        self.replicate_similarity_ = np.array([congruence(factors, r[1])[0] for r in reps])
        self.replicate_errors_ = final
        self.n_iter_ = n_iter
        self.errors_ = errs[best, : n_iter[best]]
        self.error_ = float(final[best])
        self.weights_ = weights
        self.factors_ = self._label(factors, labels)
        self.stream_chunk_ = 0 if plan is None else int(plan[1])
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
    stream
        ``"auto"`` (default): when the affinity tensor does not fit in memory, build it
        lazily and stream the NTF over it, recomputing its windows chunk by chunk in every
        pass, so that it is never held whole (see :class:`NTF`); ``True``: always;
        ``False``: never.
    chunk_size
        Windows per chunk when streaming (default: planned from the free memory).
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
                 dtype: str = "float32", stream: bool | str = "auto",
                 chunk_size: int | None = None, community: str = "sbm", max_groups: int = 6,
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
        self.stream = stream
        self.chunk_size = chunk_size
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
        kwargs = dict(kernel=self.kernel, sigma=self.sigma, sampling_rate=self.sampling_rate,
                      dtype=self.dtype)
        aff = affinity_tensor(ds, self.window, self.step, lazy=True, **kwargs)
        chunk = self.chunk_size
        if chunk is None and self.stream is not False:
            # per window: the float64 affinity matrices being built, and the solver's copies
            chunk = plan_stream(aff.shape, jnp.dtype(self.dtype).itemsize + 8, axis=1)
            if self.stream == "auto" and chunk >= aff.sizes["window"]:
                chunk = None
        if chunk is None or self.stream is False:
            aff = affinity_tensor(ds, self.window, self.step, **kwargs)
        else:
            # one affinity batch per chunk: every pass computes each window once
            aff = affinity_tensor(ds, self.window, self.step, lazy=True, batch_windows=chunk,
                                  **kwargs)
        ntf = NTF(rank=self.rank, method=self.method, n_init=self.n_init,
                  max_iter=self.max_iter, tol=self.tol, dtype=self.dtype,
                  stream=self.stream if chunk is None else True, chunk_size=chunk,
                  seed=self.seed)
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
