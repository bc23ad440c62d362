"""Pure-JAX core of GPFA: exact E-step, closed-form M-step, timescale Newton steps, LNO.

Time reversal trick
-------------------
Every GPFA prior covariance ``K_i[t1, t2] = k(|t1 - t2|)`` is stationary, so it commutes
with the time reversal ``t -> T - 1 - t``, and so does the posterior precision
``M = K^{-1} + I_T (x) C' R^{-1} C``. In the orthonormal basis of time-symmetric
``(x_t + x_{T-1-t}) / sqrt 2`` and antisymmetric ``(x_t - x_{T-1-t}) / sqrt 2`` pairs
(plus the middle bin for odd ``T``), ``M`` is block diagonal with two blocks of half size.
All cubic work (the posterior covariance ``M^{-1}``, the timescale objective) is done on
the halves: four times fewer flops than on the full ``pT x pT`` matrix and exact (this is
the same symmetry elephant exploits as "block persymmetry", used here to split the problem
instead of to skip half of an inverse). Within a half the latent-major order
``(latent, time)`` is used.

Posterior covariance
--------------------
Within a half, ``M``'s blocks between two latents are ``W_ij I`` (``W = C' R^{-1} C``), so
``M^{-1}`` is built latent by latent (:func:`_bordered_inverse`): each added latent is one
rank-``h`` update of the inverse so far, a matrix product at the single-core GEMM rate.

Shapes: a bucket (:class:`Bucket`) holds the trials of one length, ``y (n, T, q)``; ``p``
latents, ``q`` neurons.
All arrays are float64.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import cho_solve

from neurodata.models._jax.linalg import chol_logdet, psd_cholesky

_SQRT2 = 2.0**0.5
_LOG2PI = 1.8378770664093453


class GPFAParams(NamedTuple):
    """GPFA parameters (time in bins)."""

    C: jnp.ndarray
    """``(q, p)`` loadings."""
    d: jnp.ndarray
    """``(q,)`` offsets."""
    R: jnp.ndarray
    """``(q,)`` private (diagonal) noise variances."""
    log_gamma: jnp.ndarray
    """``(p,)`` ``log gamma_i`` with ``gamma_i = (bin / tau_i)^2``."""
    eps: jnp.ndarray
    """``(p,)`` GP noise variances."""


class EMOptions(NamedTuple):
    """Static switches of the M-step."""

    learn_timescales: bool = True
    learn_gp_noise: bool = False
    newton_steps: int = 30
    """Maximum Newton evaluations per M-step (it stops earlier at convergence)."""
    batch_size: int | None = None
    """Solve the E-step for this many trials at a time (``None``: all at once)."""


# ----------------------------------------------------------------------------- time reversal


def rotate(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Split ``x (..., T, k)`` into time-symmetric and antisymmetric coordinates.

    Returns ``(..., ceil(T/2), k)`` and ``(..., floor(T/2), k)`` arrays (an orthogonal
    change of basis).
    """
    T = x.shape[-2]
    h = T // 2
    head, tail = x[..., :h, :], jnp.flip(x, axis=-2)[..., :h, :]
    sym = (head + tail) / _SQRT2
    if T % 2:
        sym = jnp.concatenate([sym, x[..., h:h + 1, :]], axis=-2)
    return sym, (head - tail) / _SQRT2


def unrotate(sym: jnp.ndarray, anti: jnp.ndarray) -> jnp.ndarray:
    """Inverse of :func:`rotate`."""
    h = anti.shape[-2]
    head = (sym[..., :h, :] + anti) / _SQRT2
    tail = (sym[..., :h, :] - anti) / _SQRT2
    parts = [head, sym[..., h:, :], jnp.flip(tail, axis=-2)]
    return jnp.concatenate(parts, axis=-2)


def unrotate_variance(sym_var: jnp.ndarray, anti_var: jnp.ndarray) -> jnp.ndarray:
    """Marginal variances ``(..., T, k)`` from those of the rotated coordinates."""
    h = anti_var.shape[-2]
    half = 0.5 * (sym_var[..., :h, :] + anti_var)
    return jnp.concatenate([half, sym_var[..., h:, :], jnp.flip(half, axis=-2)], axis=-2)


def split_kernel(log_gamma: jnp.ndarray, eps: jnp.ndarray, T: int):
    """One latent's ``T x T`` GPFA kernel in the rotated basis: ``(K_sym, K_anti)``.

    ``K[t1, t2] = (1 - eps) exp(-gamma (t1 - t2)^2 / 2) + eps delta`` (Yu et al. 2009, time
    in bins); the same matrix as :func:`neurodata.models._jax.gp.gpfa_kernel` rotated. Both
    halves come from :func:`stacked_kernel`.
    """
    k = stacked_kernel(log_gamma, eps, T)
    return k[0], k[1, :T // 2, :T // 2]


def stack_halves(sym: jnp.ndarray, anti: jnp.ndarray, pad: float) -> jnp.ndarray:
    """Stack the two halves as ``(..., 2, hs, hs)``.

    For odd ``T`` the smaller antisymmetric half gets one extra row and column, zero but for
    ``pad`` on the diagonal. With ``pad = 1`` for a kernel and ``0`` for its derivatives and
    the statistics, the padded bin adds nothing to the timescale objective (``log 1 = 0``,
    ``0 / 1 = 0``), so both halves are solved in one batched call.
    """
    extra = sym.shape[-1] - anti.shape[-1]
    if extra:
        widths = [(0, 0)] * (anti.ndim - 2) + [(0, extra), (0, extra)]
        corner = jnp.zeros(anti.shape[-1] + extra).at[anti.shape[-1]:].set(pad)
        anti = jnp.pad(anti, widths) + jnp.diag(corner)
    return jnp.stack([sym, anti], axis=-3)


# ----------------------------------------------------------------------------- E-step


class HalfFactor(NamedTuple):
    """The data-independent part of one rotated half's posterior (shared by all trials).

    The posterior covariance ``M^{-1}`` over (latent, rotated time), latent-major, is kept
    as the blocks of its last step (:func:`_bordered_inverse`): with the latents split into
    the head and the last group, ``M^{-1} = [[head - cross mixed', cross], [cross', tail]]``
    (:func:`full_covariance`); EM never needs it assembled.
    """

    head: jnp.ndarray
    """``(s, s)`` inverse of the head latents' block of the precision."""
    mixed: jnp.ndarray
    """``(s, r)``: ``head`` times the precision's head-to-last-group block."""
    cross: jnp.ndarray
    """``(s, r)``: the head-to-last-group block of ``M^{-1}``."""
    tail: jnp.ndarray
    """``(r, r)``: the last group's block of ``M^{-1}`` (``r = 0``: ``head`` is all of it)."""
    cov_blocks: jnp.ndarray
    """``(p, h, h)`` posterior covariance of each latent over (rotated) time."""
    cov_sum: jnp.ndarray
    """``(p, p)``: sum over (rotated) time of the per-bin posterior covariances."""
    logdet: jnp.ndarray
    """``log|K| + log|M|`` of the half."""
    kernel_inv: jnp.ndarray
    """``(p, h, h)``: ``K^{-1}`` of each latent's prior (the M-step's first evaluation)."""
    kernel_logdet: jnp.ndarray
    """``(p,)``: ``log|K|`` of each latent's prior."""


def full_covariance(f: HalfFactor) -> jnp.ndarray:
    """The posterior covariance ``M^{-1}`` of one half, assembled from its blocks."""
    if not f.tail.shape[0]:
        return f.head
    return jnp.concatenate([jnp.concatenate([f.head - f.cross @ _t(f.mixed), f.cross], axis=1),
                            jnp.concatenate([_t(f.cross), f.tail], axis=1)], axis=0)


_BASE = 64
"""Below this size :func:`inv_cholesky` factorises directly (LAPACK)."""


def _t(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.swapaxes(x, -1, -2)


def _times_upper(x: jnp.ndarray, u: jnp.ndarray, depth: int = 2) -> jnp.ndarray:
    """``x @ u`` for upper-triangular ``u``.

    Skips the zero lower-left block ``depth`` levels deep (a product with a triangle costs
    half a dense one).
    """
    n = u.shape[-1]
    if depth == 0 or n < 2 * _BASE:
        return x @ u
    s = n // 2
    left = _times_upper(x[..., :s], u[..., :s, :s], depth - 1)
    return jnp.concatenate([left, x @ u[..., :, s:]], axis=-1)


def _upper_times(u: jnp.ndarray, x: jnp.ndarray, depth: int = 2) -> jnp.ndarray:
    """``u @ x`` for upper-triangular ``u`` (see :func:`_times_upper`)."""
    n = u.shape[-1]
    if depth == 0 or n < 2 * _BASE:
        return u @ x
    s = n // 2
    bottom = _upper_times(u[..., s:, s:], x[..., s:, :], depth - 1)
    return jnp.concatenate([u[..., :s, :] @ x, bottom], axis=-2)


def inv_cholesky(a: jnp.ndarray) -> jnp.ndarray:
    """Upper-triangular ``U`` with ``a^{-1} = U U'`` (``U = L^{-T}`` for ``a = L L'``).

    2 x 2 block recursion: ``U11`` from the leading block, ``L21 = a21 U11``, ``U22`` from
    the Schur complement ``a22 - L21 L21'`` and ``U12 = -(U11 L21') U22``; the products with
    the triangular factors skip their zero blocks. About ``m^3`` flops, all but the small
    leading factorisations in matrix products, which XLA runs several times faster per flop
    than LAPACK's triangular inverse (measured at ``m = 800`` on one core: 13 ms, against
    18 ms for the triangular solve alone). Every product has its contracted axis last on the
    left (``x @ y`` or ``x @ y'``): XLA's fast CPU matrix product takes no transposed left
    operand. EM needs ``a^{-1}``'s blocks and solves, never ``L`` itself. Leading axes are a
    batch.
    """
    m = a.shape[-1]
    if m <= _BASE:
        # LAPACK takes column-major operands: handing it the transpose of the (symmetric)
        # block is free, where ``a`` itself would make XLA lay out every array it is
        # computed from column-major, and the large matrix products copy through transposes
        chol = lax.linalg.cholesky(_t(a), symmetrize_input=False)
        eye = jnp.broadcast_to(jnp.eye(m), a.shape)
        return lax.linalg.triangular_solve(chol, eye, left_side=True, lower=True,
                                           transpose_a=True)
    s = m // 2
    u11 = inv_cholesky(a[..., :s, :s])
    l21 = _times_upper(a[..., s:, :s], u11)
    u22 = inv_cholesky(a[..., s:, s:] - l21 @ _t(l21))
    u12 = -_times_upper(_upper_times(u11, _t(l21)), u22)
    zeros = jnp.zeros(a.shape[:-2] + (m - s, s))
    return jnp.concatenate([jnp.concatenate([u11, u12], axis=-1),
                            jnp.concatenate([zeros, u22], axis=-1)], axis=-2)


def _spd_inverse(a: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Inverse and log-determinant of symmetric positive-definite ``a`` (leading axes batch)."""
    u = inv_cholesky(a)
    return u @ _t(u), -chol_logdet(u)


_GROUP_ROWS = 96
""":func:`_bordered_inverse` adds latents in groups of at least this many rows (all but
possibly the last group)."""


def _latent_block(k_inv: jnp.ndarray, W: jnp.ndarray, idx: range) -> jnp.ndarray:
    """Diagonal block of ``M = blockdiag(k_inv) + W (x) I`` over the latents ``idx``."""
    h = k_inv.shape[-1]
    return (jax.scipy.linalg.block_diag(*[k_inv[i] for i in idx])
            + jnp.kron(W[idx.start:idx.stop, idx.start:idx.stop], jnp.eye(h)))


def _mix_blocks(a: jnp.ndarray, w: jnp.ndarray, h: int) -> jnp.ndarray:
    """``a (w (x) I_h)``: column block ``l`` is ``sum_j w[j, l] a[:, j h:(j + 1) h]``.

    Written as sums of slices (one fused pass over ``a``) for the few-term sums of long
    trials; XLA would turn a reduction over the latent axis into a slow product.
    """
    k, g = w.shape
    if k * g <= 16:
        return jnp.concatenate([sum(w[j, col] * a[..., j * h:(j + 1) * h] for j in range(k))
                                for col in range(g)], axis=-1)
    mixed = jnp.einsum("ajt,jl->alt", a.reshape(a.shape[0], k, h), w)
    return mixed.reshape(a.shape[0], g * h)


def _bordered_inverse(k_inv: jnp.ndarray, W: jnp.ndarray):
    """Blocks of ``M^{-1}`` and ``log|M|`` for ``M = blockdiag(k_inv) + W (x) I_h``.

    The latent blocks of ``M`` off the diagonal are ``W_ij I``, so adding a group ``G`` of
    latents to the inverse ``A^{-1}`` of the first ``k`` latents' block costs one low-rank
    update: with ``B = W[:k, G] (x) I`` the columns ``X = A^{-1} B`` are weighted sums of
    ``A^{-1}``'s column blocks, the Schur complement ``S = M_GG - B' X`` is small, and
    ``[[A^{-1} + X S^{-1} X', -X S^{-1}], [., S^{-1}]]`` is the inverse of the first ``k +
    |G|`` latents' block. A group is one latent for long trials (``h >= 96`` bins), more for
    short ones, so that every update but possibly the last is a matrix product of rank
    ``>= 96``, which runs at the single-core matrix-product rate. The last update is left
    unapplied (it is the largest): returns ``(A^{-1}, X, -X S^{-1}, S^{-1})`` of the last group (see
    :class:`HalfFactor`) and ``log|M| = sum log|S|``. About ``2/3 (p h)^3`` flops in all.

    Accuracy: ``S`` is formed from the explicit inverse, so the error grows with the
    precision's condition number faster than a Cholesky factorisation's. Relative error of
    the covariance against a dense inverse: 3e-13 for GPFA fits of the M1 recording (8 and
    20 latents, 200-bin trials, condition 1e3, as the inverse-Cholesky route), 1e-8 at
    condition 6e5 and 1e-5 at 4e6 (nearly collinear loadings at a high signal-to-noise
    ratio), where the inverse-Cholesky route kept 1e-10.
    """
    p, h, _ = k_inv.shape
    g = max(1, -(-_GROUP_ROWS // h))
    head, logdet = _spd_inverse(_latent_block(k_inv, W, range(min(g, p))))
    empty = jnp.zeros((head.shape[0], 0))
    mixed, cross, tail = empty, empty, jnp.zeros((0, 0))
    for k in range(g, p, g):
        if tail.shape[0]:
            # the previous step's update, in place of the concatenation
            head = jnp.concatenate(
                [jnp.concatenate([head - cross @ _t(mixed), cross], axis=1),
                 # a transpose that feeds only the concatenation: one used in a product
                 # would be folded into it as a transposed (slow) operand
                 jnp.concatenate([_t(cross), tail], axis=1)], axis=0)
        new = range(k, min(k + g, p))
        w = W[:k, new.start:new.stop]
        mixed = _mix_blocks(head, w, h)
        schur = _latent_block(k_inv, W, new) - _mix_blocks(_t(mixed), w, h)
        tail, logdet_s = _spd_inverse(schur)
        cross = -(mixed @ tail)
        logdet = logdet + logdet_s
    return head, mixed, cross, tail, logdet


def _block_traces(a: jnp.ndarray, h: int) -> jnp.ndarray:
    """Traces ``(P, Q)`` of the ``h x h`` blocks of ``a (P h, Q h)``, without a gather.

    Row ``t`` of row block ``i`` holds the diagonal elements of the blocks ``(i, j)`` at
    columns ``j h + t``: laid out with rows of ``Q h + 1`` elements, those are the columns
    ``j h`` of row ``t``, which strided slices read.
    """
    rows, cols = a.shape
    blocks = jnp.pad(a.reshape(rows // h, h * cols), ((0, 0), (0, h)))
    return jnp.sum(blocks.reshape(rows // h, h, cols + 1)[:, :, 0:cols:h], axis=1)


def _half_factor(kernels: jnp.ndarray, W: jnp.ndarray) -> HalfFactor:
    """Factorise one half: ``kernels (p, h, h)`` rotated priors, ``W = C' R^-1 C``.

    EM reads the latent-diagonal blocks of the covariance ``M^{-1}`` and, for every latent
    pair, the trace of their block (the sum over time of the per-bin covariances); both
    from the blocks of :func:`_bordered_inverse`'s last step.
    """
    p, h, _ = kernels.shape
    if h == 0:
        z = jnp.zeros
        return HalfFactor(z((0, 0)), z((0, 0)), z((0, 0)), z((0, 0)), z((p, 0, 0)), z((p, p)),
                          z(()), z((p, 0, 0)), z(p))
    k_inv, logdet_k = _spd_inverse(kernels)
    head, mixed, cross, tail, logdet_m = _bordered_inverse(k_inv, W)
    k, r = head.shape[0] // h, tail.shape[0] // h

    def diagonal_blocks(a, n):
        return [a[j * h:(j + 1) * h, j * h:(j + 1) * h] for j in range(n)]

    if not r:
        cov_blocks, cov_sum = jnp.stack(diagonal_blocks(head, k)), _block_traces(head, h)
    else:
        # the unapplied update -cross mixed' of the head, restricted to what EM reads
        c3, m3 = cross.reshape(k, h, r * h), mixed.reshape(k, h, r * h)
        head_blocks = jnp.stack(diagonal_blocks(head, k)) - c3 @ jnp.swapaxes(m3, 1, 2)
        cov_blocks = jnp.concatenate([head_blocks, jnp.stack(diagonal_blocks(tail, r))])
        head_sum = _block_traces(head, h) - c3.reshape(k, -1) @ m3.reshape(k, -1).T
        cross_sum = _block_traces(cross, h)
        cov_sum = jnp.block([[head_sum, cross_sum], [cross_sum.T, _block_traces(tail, h)]])
    return HalfFactor(head, mixed, cross, tail, cov_blocks, cov_sum,
                      jnp.sum(logdet_k) + logdet_m, k_inv, logdet_k)


class Bucket(NamedTuple):
    """Trials of one length with the per-trial sums that every EM iteration reuses."""

    y: jnp.ndarray
    """``(n, T, q)`` observations."""
    ref: jnp.ndarray
    """``(q,)`` per-neuron mean, subtracted before the sums (no cancellation in them)."""
    sum_y: jnp.ndarray
    """``(n, q)``: sum over time of ``y - ref``."""
    sum_yy: jnp.ndarray
    """``(n, q)``: sum over time of ``(y - ref)^2``."""
    y_t: jnp.ndarray
    """``(q, n T)``: ``y`` transposed, for the M-step's ``sum y x'`` (a product over the
    leading axis of ``y`` would run as a slow transposed-operand product)."""


def make_bucket(y: jnp.ndarray) -> Bucket:
    """Wrap trials ``y (n, T, q)`` of one length for :func:`posterior` and :func:`em_step`."""
    ref = jnp.mean(y, axis=(0, 1))
    centred = y - ref
    return Bucket(y, ref, jnp.sum(centred, axis=1), jnp.sum(centred**2, axis=1),
                  y.reshape(-1, y.shape[-1]).T)


class BucketPosterior(NamedTuple):
    """Posterior for all trials of one length."""

    mean: jnp.ndarray
    """``(n, T, p)``."""
    var: jnp.ndarray
    """``(n, T, p)`` marginal posterior variances (the same for every trial)."""
    loglik: jnp.ndarray
    """``(n,)`` marginal log-likelihood per trial."""
    factors: tuple[HalfFactor, HalfFactor]


def kernels_for(params: GPFAParams, T: int):
    """Rotated prior kernels of every latent: ``((p, hs, hs), (p, ha, ha))``."""
    return jax.vmap(split_kernel, in_axes=(0, 0, None))(params.log_gamma, params.eps, T)


def factorise(params: GPFAParams, T: int) -> tuple[HalfFactor, HalfFactor]:
    """The shared posterior factors of trials of ``T`` bins: ``O((pT)^2)`` memory."""
    W = (params.C.T / params.R) @ params.C
    return tuple(_half_factor(k, W) for k in kernels_for(params, T))


def _trials_posterior(params: GPFAParams, factors, ref, y, sum_y, sum_yy):
    """Posterior means ``(n, T, p)`` and marginal log-likelihoods ``(n,)`` of trials ``y``.

    The trials of one length share each half's posterior covariance ``M^-1``, held as the
    blocks of :class:`HalfFactor` (the head inverse before the last bordering update and the
    ``mixed``/``cross``/``tail`` pieces of that update), so their means ``B M^-1`` (``B``
    the trials' ``C' R^-1 (y - d)`` in the half's latent-major order, one row per trial) are
    a few matrix products with those blocks, and the quadratic term of the log-likelihood is
    ``sum(B * mean)``.
    """
    n, T, q = y.shape
    p = params.C.shape[1]
    w = params.C / params.R[:, None]
    b = y @ w - params.d @ w
    means, quad = [], 0.0
    for f, bh in zip(factors, rotate(b), strict=True):
        h = bh.shape[1]
        if h == 0:
            means.append(jnp.zeros((n, 0, p)))
            continue
        flat = _t(bh).reshape(n, p * h)  # latent-major, as the covariance
        s = f.head.shape[0]
        if f.tail.shape[0]:
            # flat M^{-1} by the blocks of HalfFactor
            tail = flat[:, :s] @ f.cross + flat[:, s:] @ f.tail
            mean = jnp.concatenate([flat[:, :s] @ f.head - tail @ _t(f.mixed), tail], axis=1)
        else:
            mean = flat @ f.head
        quad = quad + jnp.sum(flat * mean, axis=1)
        means.append(_t(mean.reshape(n, p, h)))
    logdet = factors[0].logdet + factors[1].logdet
    shift = params.d - ref
    resid = jnp.sum((sum_yy - 2.0 * shift * sum_y + T * shift**2) / params.R, axis=1)
    loglik = -0.5 * (q * T * _LOG2PI + T * jnp.sum(jnp.log(params.R)) + logdet + resid - quad)
    return unrotate(*means), loglik


def posterior(params: GPFAParams, bucket: Bucket, batch_size: int | None = None
              ) -> BucketPosterior:
    """Exact GPFA posterior and marginal log-likelihood of the trials of one length.

    The posterior covariance is computed once (shared by all trials of one length); the trials are
    then solved all at once, or ``batch_size`` at a time (``lax.map`` over batches, the
    last one padded with zeros: the per-trial intermediates are bounded by the batch, the
    results identical).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> prm = GPFAParams(jnp.ones((4, 2)), jnp.zeros(4), jnp.ones(4), jnp.zeros(2),
    ...                  jnp.full(2, 1e-3))
    >>> posterior(prm, make_bucket(jnp.zeros((3, 5, 4)))).mean.shape
    (3, 5, 2)
    """
    n, T, _ = bucket.y.shape
    p = params.C.shape[1]
    factors = factorise(params, T)
    trials = (bucket.y, bucket.sum_y, bucket.sum_yy)
    if batch_size is None or batch_size >= n:
        mean, loglik = _trials_posterior(params, factors, bucket.ref, *trials)
    else:
        size = int(batch_size)
        n_batches = -(-n // size)

        def batches(a):
            a = jnp.pad(a, [(0, n_batches * size - n)] + [(0, 0)] * (a.ndim - 1))
            return a.reshape((n_batches, size) + a.shape[1:])

        mean, loglik = lax.map(lambda args: _trials_posterior(params, factors, bucket.ref,
                                                              *args),
                               tuple(batches(a) for a in trials))
        mean, loglik = mean.reshape((-1, T, p))[:n], loglik.reshape(-1)[:n]
    diag = [jnp.swapaxes(jnp.diagonal(f.cov_blocks, axis1=1, axis2=2), 0, 1) for f in factors]
    var = jnp.broadcast_to(unrotate_variance(diag[0], diag[1]), (n, T, p))
    return BucketPosterior(mean, var, loglik, factors)


# ----------------------------------------------------------------------------- M-step


def timescale_objective(log_gamma, eps, stats):
    """Expected negative log prior of one latent, ``0.5 sum [n log|K| + tr(K^-1 P)]``.

    ``stats`` is a tuple of ``(T, n, P)`` per trial length, ``P = n Cov + sum mu mu'`` in the
    rotated basis with the halves stacked by :func:`stack_halves` (``(2, hs, hs)``). This is
    elephant's ``grad_betgam`` objective (its ``f``).
    """
    total = 0.0
    for T, n, pk in stats:
        chol = psd_cholesky(stacked_kernel(log_gamma, eps, T))
        total = total + 0.5 * (n * jnp.sum(chol_logdet(chol))
                               + jnp.trace(cho_solve((chol, True), pk), axis1=-2,
                                           axis2=-1).sum())
    return total


def _lag_tables(T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Squared lags and weights that build the stacked rotated halves of a stationary matrix.

    ``A_half = w_near[half] v(near) + w_far[half] v(far)`` with the near lags ``a - b`` and
    the far lags ``a - (T - 1 - b)``, for ``a, b`` in the first half (Toeplitz plus Hankel),
    stacked as by :func:`stack_halves` (the middle bin of odd ``T`` in the symmetric half; the
    antisymmetric half's padding bin at lag 0 with weight 1, so that a kernel gets 1 there
    and its derivatives 0). The kernel is then evaluated elementwise (no gathers). Returns
    ``near, far (hs, hs)`` and ``weights (2, 2, hs, hs)`` as ``[near/far, half]``.
    """
    h, hs = T // 2, T - T // 2
    a = np.arange(h)
    near, far, w = np.zeros((hs, hs)), np.zeros((hs, hs)), np.zeros((2, 2, hs, hs))
    near[:h, :h] = (a[:, None] - a[None, :]) ** 2
    far[:h, :h] = (a[:, None] + a[None, :] - (T - 1)) ** 2
    w[0, :, :h, :h] = 1.0
    w[1, 0, :h, :h], w[1, 1, :h, :h] = 1.0, -1.0
    if T % 2:
        near[:h, h] = near[h, :h] = (a - h) ** 2
        w[0, 0, :h, h] = w[0, 0, h, :h] = _SQRT2
        w[0, :, h, h] = 1.0
    return near, far, w


def _kernel_derivatives(log_gamma, eps, T: int, which: str):
    """Stacked rotated ``(K, dK, d2K)`` with respect to ``log gamma`` or ``logit eps``."""
    near, far, w = _lag_tables(T)
    gamma = jnp.exp(log_gamma)
    u_near, u_far = -0.5 * gamma * near, -0.5 * gamma * far
    e_near, e_far = jnp.exp(u_near), jnp.exp(u_far)
    # (-gamma lag^2 / 2)^k exp(-gamma lag^2 / 2), k = 0, 1, 2, on both halves
    e0 = w[0] * e_near + w[1] * e_far
    e1 = w[0] * (u_near * e_near) + w[1] * (u_far * e_far)
    e2 = w[0] * (u_near**2 * e_near) + w[1] * (u_far**2 * e_far)
    eye = jnp.eye(e0.shape[-1])
    k = (1.0 - eps) * e0 + eps * eye
    if which == "log_gamma":
        # d/dlog(gamma) of f(gamma) = gamma f'(gamma)
        return k, (1.0 - eps) * e1, (1.0 - eps) * (e1 + e2)
    s = eps * (1.0 - eps)
    return k, s * (eye - e0), s * (1.0 - 2.0 * eps) * (eye - e0)


def stacked_kernel(log_gamma: jnp.ndarray, eps: jnp.ndarray, T: int) -> jnp.ndarray:
    """Both rotated halves of one latent's kernel, stacked as ``(2, hs, hs)``.

    As :func:`stack_halves` with ``pad = 1``, built elementwise from :func:`_lag_tables`
    (XLA drops the derivatives that :func:`_kernel_derivatives` also returns).
    """
    return _kernel_derivatives(log_gamma, eps, T, "log_gamma")[0]


def _objective_derivatives(log_gamma, eps, stats, which: str, inverses=None):
    """Value, first and second derivative of :func:`timescale_objective` in one variable.

    ``f' = 0.5 [n tr(A1) - tr(A1 B)]``, ``f'' = 0.5 [n tr(A2) - n tr(A1 A1) + 2 tr(A1 A1 B)
    - tr(A2 B)]`` with ``A_k = K^-1 dK_k``, ``B = K^-1 P``. With ``X = K^-1 dK`` and the
    symmetric ``Z = K^-1 P K^-1`` every trace is an elementwise sum: ``tr(A1 B) = <dK, Z>``,
    ``tr(A2 B) = <d2K, Z>``, ``tr(A1 A1 B) = <dK X, Z>``, ``tr(A1 A1) = <X, X'>``; so an
    evaluation is ``K^-1`` (:func:`inv_cholesky`) and four matrix products per half, both
    halves in one batched call. ``inverses``: ``(K^-1, log|K|)`` per trial length at this
    point if known (the E-step's, at the M-step's starting point).
    """
    f = g = H = 0.0
    for i, (T, n, pk) in enumerate(stats):
        k, k1, k2 = _kernel_derivatives(log_gamma, eps, T, which)
        if inverses is None:
            u = inv_cholesky(k)
            k_inv, logdet = u @ _t(u), -jnp.sum(chol_logdet(u))
        else:
            k_inv, logdet = inverses[i]
        x = k_inv @ k1
        z = (k_inv @ pk) @ k_inv
        f = f + 0.5 * (n * logdet + jnp.sum(k_inv * pk))
        g = g + 0.5 * (n * jnp.sum(k_inv * k1) - jnp.sum(k1 * z))
        H = H + 0.5 * (n * jnp.sum(k_inv * k2) - n * jnp.sum(x * _t(x))
                       + 2 * jnp.sum((k1 @ x) * z) - jnp.sum(k2 * z))
    return f, g, H


def _newton_1d(fgh, x0, max_steps: int, tol: float = 1e-6, first=None):
    """Minimise a function of one variable by corrected Newton steps.

    One evaluation of ``(f, f', f'')`` per iteration. The step is Newton's ``n = -f'/f''``
    (a unit step against the gradient where the curvature is not positive) plus Chebyshev's
    third-order term ``-f''' n^2 / (2 f'')``, with ``f'''`` the change of the curvature since
    the last accepted point; clipped to 1 in log space. A trial point that increases ``f``
    (beyond rounding) is rejected and the step halved. The loop stops once the predicted
    error of the pending step is below ``tol`` and then applies that step without another
    evaluation: ``n^2`` for a plain Newton step, ``n^2 (|last move| + |n|)`` for a corrected
    one (the error of the estimated ``f'''`` is proportional to the last move). Vmapped over
    latents, the loop runs until every latent is done (warm-started from the previous EM
    iteration that takes one to three evaluations) or ``max_steps`` evaluations. ``first``:
    ``(f, f', f'')`` at ``x0`` when already known (then not evaluated again).
    """

    def propose(g, H, f3):
        curved = H > 0
        H_safe = jnp.where(curved, H, 1.0)
        newton = jnp.where(curved, -g / H_safe, -jnp.sign(g))
        step = newton - jnp.where(curved, 0.5 * f3 * newton**2 / H_safe, 0.0)
        return jnp.clip(step, -1.0, 1.0), newton

    def cond(state):
        it, _, _, _, _, err = state
        return (it < max_steps) & (err > tol)

    def body(state):
        it, x, f, H, step, _ = state
        x_try = x + step
        f_try, g_try, h_try = fgh(x_try)
        # rounding makes f flat within ~1e-13 relative near the minimum: do not stall there
        ok = f_try <= f + 1e-13 * jnp.abs(f)
        f3 = (h_try - H) / jnp.where(step == 0, 1.0, step)
        new_step, newton = propose(g_try, h_try, f3)
        err = newton**2 * (jnp.abs(step) + jnp.abs(newton))
        return (it + 1, jnp.where(ok, x_try, x), jnp.where(ok, f_try, f),
                jnp.where(ok, h_try, H), jnp.where(ok, new_step, 0.5 * step),
                jnp.where(ok, err, jnp.inf))

    f0, g0, h0 = fgh(x0) if first is None else first
    step0, newton0 = propose(g0, h0, 0.0)
    _, x, _, _, step, err = lax.while_loop(cond, body, (1, x0, f0, h0, step0, newton0**2))
    return x + jnp.where(err <= tol, step, 0.0)


class SufficientStats(NamedTuple):
    """Sums over all bins of all trials that the closed-form M-step needs."""

    sxx: jnp.ndarray
    syx: jnp.ndarray
    sx: jnp.ndarray
    sy: jnp.ndarray
    syy: jnp.ndarray
    n_bins: jnp.ndarray


def sufficient_stats(buckets: list[Bucket], posts) -> SufficientStats:
    """Accumulate E-step moments over buckets."""
    sxx = syx = sx = sy = syy = 0.0
    n_bins = 0
    for bucket, post in zip(buckets, posts, strict=True):
        n, T, _ = bucket.y.shape
        mu = post.mean
        sxx = sxx + n * (post.factors[0].cov_sum + post.factors[1].cov_sum) + jnp.einsum(
            "ntp,ntk->pk", mu, mu)
        syx = syx + bucket.y_t @ mu.reshape(n * T, -1)
        sx = sx + jnp.sum(mu, axis=(0, 1))
        total = jnp.sum(bucket.sum_y, axis=0)
        sy = sy + total + n * T * bucket.ref
        syy = syy + jnp.sum(bucket.sum_yy, axis=0) + bucket.ref * (2.0 * total
                                                                   + n * T * bucket.ref)
        n_bins += n * T
    return SufficientStats(sxx, syx, sx, sy, syy, jnp.asarray(float(n_bins)))


def m_step(params: GPFAParams, buckets: list[Bucket], posts, var_floor: jnp.ndarray,
           options: EMOptions) -> GPFAParams:
    """Closed-form ``C, d, R`` (diagonal, floored) and Newton steps for the timescales."""
    s = sufficient_stats(buckets, posts)
    p = params.C.shape[1]
    lhs = jnp.concatenate([s.syx, s.sy[:, None]], axis=1)
    gram = jnp.block([[s.sxx, s.sx[:, None]], [s.sx[None, :], s.n_bins[None, None]]])
    cd = jnp.linalg.solve(gram, lhs.T).T
    C, d = cd[:, :p], cd[:, p]
    term = jnp.sum((s.syx - d[:, None] * s.sx[None, :]) * C, axis=1)
    R = d**2 + (s.syy - 2 * s.sy * d - term) / s.n_bins
    R = jnp.maximum(var_floor, R)
    log_gamma, eps = params.log_gamma, params.eps
    if options.learn_timescales or options.learn_gp_noise:
        # per latent and trial length: (T, n, P) with P (p, 2, hs, hs), and the E-step's
        # kernel inverses (p, 2, hs, hs) and log-determinants (p,) at the current timescales
        per_bucket, inverses = [], []
        for bucket, post in zip(buckets, posts, strict=True):
            n, T, _ = bucket.y.shape
            ps = [n * f.cov_blocks + jnp.einsum("nti,nsi->its", mu, mu)
                  for f, mu in zip(post.factors, rotate(post.mean), strict=True)]
            per_bucket.append((T, n, stack_halves(*ps, pad=0.0)))
            sym, anti = post.factors
            inverses.append((stack_halves(sym.kernel_inv, anti.kernel_inv, pad=1.0),
                             sym.kernel_logdet + anti.kernel_logdet))

        def one_latent(args):
            lg, ep, mats, invs = args
            stats = [(T, n, mat) for (T, n, _), mat in zip(per_bucket, mats, strict=True)]
            if options.learn_timescales:
                first = _objective_derivatives(lg, ep, stats, "log_gamma", invs)
                lg = _newton_1d(lambda x: _objective_derivatives(x, ep, stats, "log_gamma"),
                                lg, options.newton_steps, first=first)
            if options.learn_gp_noise:
                logit = _newton_1d(
                    lambda x: _objective_derivatives(lg, jax.nn.sigmoid(x), stats, "eps"),
                    jnp.log(ep) - jnp.log1p(-ep), options.newton_steps)
                ep = jax.nn.sigmoid(logit)
            return lg, ep

        args = (log_gamma, eps, [mat for (_, _, mat) in per_bucket], inverses)
        log_gamma, eps = jax.vmap(one_latent)(args)
    return GPFAParams(C, d, R, log_gamma, eps)


def em_step(params: GPFAParams, buckets: list[Bucket], var_floor, options: EMOptions):
    """One EM iteration: returns the new parameters and the log-likelihood of the old ones.

    ``buckets`` holds the trials of each length (:func:`make_bucket`).
    """
    posts = [posterior(params, b, options.batch_size) for b in buckets]
    loglik = sum(jnp.sum(post.loglik) for post in posts)
    return m_step(params, buckets, posts, var_floor, options), loglik


# ----------------------------------------------------------------------------- leave-neuron-out


def _lno_half(hp: HalfFactor, b: jnp.ndarray, resid: jnp.ndarray, C, R):
    """Leave-neuron-out posterior means for one half.

    Removing neuron ``j`` subtracts ``U_j U_j' / R_j`` from ``M`` (``U_j = c_j (x) I_h``, a
    rank-``h`` downdate: one rank-one downdate per time block); Woodbury gives the new
    mean without refactorising ``M``. ``b (n, h, p)``, ``resid (n, h, q)`` = rotated
    ``y - d``. Returns ``(q, n, h)``: neuron ``j``'s prediction ``c_j' E[x | y_-j]``.
    """
    n, h, p = b.shape
    m = p * h
    m_inv = full_covariance(hp).reshape(m, p, h)
    b_flat = jnp.swapaxes(b, 1, 2).reshape(n, m)

    def one(args):
        c, r, yj = args
        g = jnp.einsum("mit,i->mt", m_inv, c)  # M^{-1} U_j, (m, h)
        s = r * jnp.eye(h) - jnp.einsum("i,ith->th", c, g.reshape(p, h, h))
        bj = b_flat - (c[:, None] * yj[:, None, :] / r).reshape(n, m)  # b_{-j}
        base = bj @ m_inv.reshape(m, m)
        corr = jnp.linalg.solve(s, (bj @ g).T).T @ g.T
        mean = (base + corr).reshape(n, p, h)
        return jnp.einsum("i,nit->nt", c, mean)

    return lax.map(one, (C, R, jnp.moveaxis(resid, 2, 0)), batch_size=8)


def leave_neuron_out(params: GPFAParams, y: jnp.ndarray) -> jnp.ndarray:
    """Predict every neuron from all the others on trials ``y (n, T, q)``: ``(n, T, q)``."""
    n, T, q = y.shape
    factors = factorise(params, T)
    centred = y - params.d
    b = (centred / params.R) @ params.C
    b_rot = rotate(b)
    r_rot = rotate(centred)
    preds = []
    for hp, bh, rh in zip(factors, b_rot, r_rot, strict=True):
        if bh.shape[1] == 0:
            preds.append(jnp.zeros((n, 0, q)))
            continue
        preds.append(jnp.moveaxis(_lno_half(hp, bh, rh, params.C, params.R), 0, 2))
    return unrotate(*preds) + params.d
