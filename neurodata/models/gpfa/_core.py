"""Pure-JAX core of GPFA: exact E-step, closed-form M-step, timescale Newton steps, LNO.

Time reversal trick
-------------------
Every GPFA prior covariance ``K_i[t1, t2] = k(|t1 - t2|)`` is stationary, so it commutes
with the time reversal ``t -> T - 1 - t``, and so does the posterior precision
``M = K^{-1} + I_T (x) C' R^{-1} C``. In the orthonormal basis of time-symmetric
``(x_t + x_{T-1-t}) / sqrt 2`` and antisymmetric ``(x_t - x_{T-1-t}) / sqrt 2`` pairs
(plus the middle bin for odd ``T``), ``M`` is block diagonal with two blocks of half size.
All cubic work (Cholesky of ``M``, its selected inverse, the timescale objective) is done on
the halves: four times fewer flops than on the full ``pT x pT`` matrix and exact (this is
the same symmetry elephant exploits as "block persymmetry", used here to split the problem
instead of to skip half of an inverse). Within a half the latent-major order
``(latent, time)`` is used.

Shapes: a bucket is ``(n, T, q)`` (trials of one length), ``p`` latents, ``q`` neurons.
All arrays are float64.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import cho_solve, solve_triangular

from neurodata.models._jax.gp import rbf_kernel
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


def _split(fn, T: int):
    """Rotated blocks ``(sym, anti)`` of the stationary matrix ``A[t1, t2] = fn(t1 - t2)``.

    The blocks are ``fn(a - b) +- fn(a - (T - 1 - b))`` for ``a, b`` in the first half, and
    the symmetric block gets the middle bin of odd ``T``.
    """
    h = T // 2
    t = jnp.arange(h, dtype=jnp.float64)
    near = fn(t[:, None] - t[None, :])
    far = fn(t[:, None] - ((T - 1) - t)[None, :])
    sym, anti = near + far, near - far
    if T % 2:
        col = _SQRT2 * fn(t - h)[:, None]
        sym = jnp.block([[sym, col], [col.T, fn(jnp.zeros((1, 1)))]])
    return sym, anti


def split_kernel(log_gamma: jnp.ndarray, eps: jnp.ndarray, T: int):
    """One latent's ``T x T`` GPFA kernel in the rotated basis: ``(K_sym, K_anti)``.

    ``K[t1, t2] = (1 - eps) exp(-gamma (t1 - t2)^2 / 2) + eps delta`` (Yu et al. 2009, time
    in bins); the same matrix as :func:`neurodata.models._jax.gp.gpfa_kernel` rotated.
    """
    length = jnp.exp(-0.5 * log_gamma)
    blocks = _split(lambda lag: rbf_kernel(lag.ravel(), jnp.zeros(1), length).reshape(lag.shape),
                    T)
    return tuple((1.0 - eps) * b + eps * jnp.eye(b.shape[0]) for b in blocks)


# ----------------------------------------------------------------------------- E-step


class HalfFactor(NamedTuple):
    """The data-independent part of one rotated half's posterior (shared by all trials)."""

    chol_m: jnp.ndarray
    """``(p h, p h)`` lower Cholesky factor of the posterior precision (latent-major)."""
    cov_blocks: jnp.ndarray
    """``(p, h, h)`` posterior covariance of each latent over (rotated) time."""
    cov_sum: jnp.ndarray
    """``(p, p)``: sum over (rotated) time of the per-bin posterior covariances."""
    logdet: jnp.ndarray
    """``log|K| + log|M|`` of the half."""


def _selected_inverse(chol: jnp.ndarray, p: int, h: int):
    """Parts of ``M^{-1} = L^{-T} L^{-1}`` that EM needs, from ``M``'s lower factor ``L``.

    Returns the latent-diagonal blocks ``(p, h, h)`` and ``(p, p)``: the sum over time of
    every latent pair's block diagonal. Column block ``j`` of ``L^{-1}`` is zero above row
    ``j h`` and below it solves only the trailing triangle ``L[jh:, jh:]``: ``(p h)^3 / 3``
    flops instead of the ``(p h)^3`` of a triangular solve against the full identity (2x
    faster measured at ``p h = 800``); the diagonal blocks then skip the zero rows.
    """
    m = p * h
    if m <= 512:
        # small problems: one solve compiles faster and the flops do not matter
        l_inv = solve_triangular(chol, jnp.eye(m), lower=True).reshape(m, p, h)
        return (jnp.einsum("kit,kis->its", l_inv, l_inv),
                jnp.einsum("kit,kjt->ij", l_inv, l_inv))
    cols = [solve_triangular(chol[j * h:, j * h:], jnp.eye(m - j * h, h), lower=True)
            for j in range(p)]
    cov_blocks = jnp.stack([c.T @ c for c in cols])
    padded = jnp.stack([jnp.pad(c, ((j * h, 0), (0, 0))) for j, c in enumerate(cols)], axis=1)
    cov_sum = jnp.einsum("kit,kjt->ij", padded, padded)
    return cov_blocks, cov_sum


def _half_factor(kernels: jnp.ndarray, W: jnp.ndarray) -> HalfFactor:
    """Factorise one half: ``kernels (p, h, h)`` rotated priors, ``W = C' R^-1 C``."""
    p, h, _ = kernels.shape
    if h == 0:
        z = jnp.zeros
        return HalfFactor(z((0, 0)), z((p, 0, 0)), z((p, p)), z(()))
    m = p * h
    eye_h = jnp.eye(h)
    chol_k = psd_cholesky(kernels)
    k_inv = jax.vmap(lambda c: cho_solve((c, True), eye_h))(chol_k)
    prec = (jnp.einsum("ij,ts->itjs", W, eye_h)
            + jnp.einsum("ij,its->itjs", jnp.eye(p), k_inv)).reshape(m, m)
    chol_m = psd_cholesky(prec)
    cov_blocks, cov_sum = _selected_inverse(chol_m, p, h)
    return HalfFactor(chol_m, cov_blocks, cov_sum,
                      jnp.sum(chol_logdet(chol_k)) + chol_logdet(chol_m))


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


def _trial_posterior(params: GPFAParams, factors, y: jnp.ndarray):
    """Posterior mean ``(T, p)`` and marginal log-likelihood of one trial ``y (T, q)``."""
    T, q = y.shape
    p = params.C.shape[1]
    centred = y - params.d
    b = (centred / params.R) @ params.C
    means, quad = [], 0.0
    for f, bh in zip(factors, rotate(b), strict=True):
        h = bh.shape[0]
        if h == 0:
            means.append(jnp.zeros((0, p)))
            continue
        flat = bh.T.reshape(p * h)  # latent-major, as the factor
        sol = cho_solve((f.chol_m, True), flat)
        quad = quad + flat @ sol
        means.append(sol.reshape(p, h).T)
    logdet = factors[0].logdet + factors[1].logdet
    resid = jnp.sum(centred**2 / params.R)
    loglik = -0.5 * (q * T * _LOG2PI + T * jnp.sum(jnp.log(params.R)) + logdet + resid - quad)
    return unrotate(*means), loglik


def posterior(params: GPFAParams, y: jnp.ndarray, batch_size: int | None = None
              ) -> BucketPosterior:
    """Exact GPFA posterior and marginal log-likelihood of trials ``y (n, T, q)``.

    The precision is factorised once (shared by all trials of one length); the trials are
    then solved all at once, or ``batch_size`` at a time (``lax.map``: the per-trial
    intermediates are bounded by the batch, the results identical).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> prm = GPFAParams(jnp.ones((4, 2)), jnp.zeros(4), jnp.ones(4), jnp.zeros(2),
    ...                  jnp.full(2, 1e-3))
    >>> posterior(prm, jnp.zeros((3, 5, 4))).mean.shape
    (3, 5, 2)
    """
    n, T, _ = y.shape
    p = params.C.shape[1]
    factors = factorise(params, T)

    def one(yi):
        return _trial_posterior(params, factors, yi)

    if batch_size is None or batch_size >= n:
        mean, loglik = jax.vmap(one)(y)
    else:
        mean, loglik = lax.map(one, y, batch_size=int(batch_size))
    diag = [jnp.swapaxes(jnp.diagonal(f.cov_blocks, axis1=1, axis2=2), 0, 1) for f in factors]
    var = jnp.broadcast_to(unrotate_variance(diag[0], diag[1]), (n, T, p))
    return BucketPosterior(mean, var, loglik, factors)


# ----------------------------------------------------------------------------- M-step


def timescale_objective(log_gamma, eps, stats):
    """Expected negative log prior of one latent, ``0.5 sum [n log|K| + tr(K^-1 P)]``.

    ``stats`` is a tuple of ``(T, n, P_sym, P_anti)`` with ``P = n Cov + sum mu mu'`` in the
    rotated basis. This is elephant's ``grad_betgam`` objective (its ``f``).
    """
    total = 0.0
    for T, n, p_sym, p_anti in stats:
        for k, pk in zip(split_kernel(log_gamma, eps, T), (p_sym, p_anti), strict=True):
            if k.shape[0]:
                chol = psd_cholesky(k)
                total = total + 0.5 * (n * chol_logdet(chol)
                                       + jnp.trace(cho_solve((chol, True), pk)))
    return total


def _kernel_derivatives(log_gamma, eps, T: int, which: str):
    """Rotated ``(K, dK, d2K)`` with respect to ``log gamma`` or ``logit eps``."""
    gamma = jnp.exp(log_gamma)

    def blocks(power):
        # (-gamma lag^2 / 2)^power exp(-gamma lag^2 / 2)
        def fn(lag):
            u = -0.5 * gamma * lag**2
            return u**power * jnp.exp(u)
        return _split(fn, T)

    e0, e1, e2 = blocks(0), blocks(1), blocks(2)
    out = []
    for b0, b1, b2 in zip(e0, e1, e2, strict=True):
        eye = jnp.eye(b0.shape[0])
        k = (1.0 - eps) * b0 + eps * eye
        if which == "log_gamma":
            # d/dlog(gamma) of f(gamma) = gamma f'(gamma)
            out.append((k, (1.0 - eps) * b1, (1.0 - eps) * (b1 + b2)))
        else:
            s = eps * (1.0 - eps)
            out.append((k, s * (eye - b0), s * (1.0 - 2.0 * eps) * (eye - b0)))
    return out


def _objective_derivatives(log_gamma, eps, stats, which: str):
    """Value, first and second derivative of :func:`timescale_objective` in one variable.

    ``f' = 0.5 [n tr(A1) - tr(A1 B)]``, ``f'' = 0.5 [n tr(A2) - n tr(A1 A1) + 2 tr(A1 A1 B)
    - tr(A2 B)]`` with ``A_k = K^-1 dK_k``, ``B = K^-1 P``.
    """
    f = g = H = 0.0
    for T, n, p_sym, p_anti in stats:
        mats = _kernel_derivatives(log_gamma, eps, T, which)
        for (k, k1, k2), pk in zip(mats, (p_sym, p_anti), strict=True):
            if not k.shape[0]:
                continue
            chol = psd_cholesky(k)
            a1 = cho_solve((chol, True), k1)
            a2 = cho_solve((chol, True), k2)
            b = cho_solve((chol, True), pk)
            a1a1 = a1 @ a1
            f = f + 0.5 * (n * chol_logdet(chol) + jnp.trace(b))
            g = g + 0.5 * (n * jnp.trace(a1) - jnp.sum(a1 * b.T))
            H = H + 0.5 * (n * jnp.trace(a2) - n * jnp.trace(a1a1) + 2 * jnp.sum(a1a1 * b.T)
                           - jnp.sum(a2 * b.T))
    return f, g, H


def _newton_1d(fgh, x0, max_steps: int, xtol: float = 1e-5):
    """Newton minimisation in one variable with backtracking.

    One evaluation of ``(f, f', f'')`` per iteration: a Newton step (a unit step against
    the gradient where the curvature is not positive, clipped to 1 in log space) is taken if
    it does not increase ``f`` (up to rounding), else halved. Once the proposed step is below
    ``xtol`` it is applied without another evaluation: Newton converges quadratically, so
    the result is then within about ``xtol^2`` of the minimum. Vmapped over latents, the
    loop runs until every latent has converged (warm-started from the previous EM iteration
    that takes two or three evaluations) or ``max_steps`` evaluations.
    """

    def direction(g, H):
        step = jnp.where(H > 0, -g / jnp.where(H > 0, H, 1.0), -jnp.sign(g))
        return jnp.clip(step, -1.0, 1.0)

    def cond(state):
        it, _, _, step = state
        return (it < max_steps) & (jnp.abs(step) > xtol)

    def body(state):
        it, x, f, step = state
        x_try = x + step
        f_try, g_try, h_try = fgh(x_try)
        # rounding makes f flat within ~1e-13 relative near the minimum: do not stall there
        ok = f_try <= f + 1e-13 * jnp.abs(f)
        return (it + 1, jnp.where(ok, x_try, x), jnp.where(ok, f_try, f),
                jnp.where(ok, direction(g_try, h_try), 0.5 * step))

    f0, g0, h0 = fgh(x0)
    _, x, _, step = lax.while_loop(cond, body, (1, x0, f0, direction(g0, h0)))
    return x + jnp.where(jnp.abs(step) <= xtol, step, 0.0)


class SufficientStats(NamedTuple):
    """Sums over all bins of all trials that the closed-form M-step needs."""

    sxx: jnp.ndarray
    syx: jnp.ndarray
    sx: jnp.ndarray
    sy: jnp.ndarray
    syy: jnp.ndarray
    n_bins: jnp.ndarray


def sufficient_stats(buckets, posts) -> SufficientStats:
    """Accumulate E-step moments over buckets."""
    sxx = syx = sx = sy = syy = 0.0
    n_bins = 0
    for y, post in zip(buckets, posts, strict=True):
        n, T, _ = y.shape
        mu = post.mean
        sxx = sxx + n * (post.factors[0].cov_sum + post.factors[1].cov_sum) + jnp.einsum(
            "ntp,ntk->pk", mu, mu)
        syx = syx + jnp.einsum("ntq,ntp->qp", y, mu)
        sx = sx + jnp.sum(mu, axis=(0, 1))
        sy = sy + jnp.sum(y, axis=(0, 1))
        syy = syy + jnp.sum(y * y, axis=(0, 1))
        n_bins += n * T
    return SufficientStats(sxx, syx, sx, sy, syy, jnp.asarray(float(n_bins)))


def m_step(params: GPFAParams, buckets, posts, var_floor: jnp.ndarray,
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
        # per latent: (T, n, P_sym, P_anti) for every bucket
        per_bucket = []
        for y, post in zip(buckets, posts, strict=True):
            n = y.shape[0]
            ps = [n * f.cov_blocks + jnp.einsum("nti,nsi->its", mu, mu)
                  for f, mu in zip(post.factors, rotate(post.mean), strict=True)]
            per_bucket.append((y.shape[1], n, ps[0], ps[1]))

        def one_latent(args):
            lg, ep, *mats = args
            stats = [(T, n, mats[2 * j], mats[2 * j + 1])
                     for j, (T, n, _, _) in enumerate(per_bucket)]
            if options.learn_timescales:
                lg = _newton_1d(lambda x: _objective_derivatives(x, ep, stats, "log_gamma"),
                                lg, options.newton_steps)
            if options.learn_gp_noise:
                logit = _newton_1d(
                    lambda x: _objective_derivatives(lg, jax.nn.sigmoid(x), stats, "eps"),
                    jnp.log(ep) - jnp.log1p(-ep), options.newton_steps)
                ep = jax.nn.sigmoid(logit)
            return lg, ep

        mats = [m for (_, _, a, b) in per_bucket for m in (a, b)]
        log_gamma, eps = jax.vmap(one_latent)((log_gamma, eps, *mats))
    return GPFAParams(C, d, R, log_gamma, eps)


def em_step(params: GPFAParams, buckets, var_floor, options: EMOptions):
    """One EM iteration: returns the new parameters and the log-likelihood of the old ones."""
    posts = [posterior(params, y, options.batch_size) for y in buckets]
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
    eye_m = jnp.eye(m)
    m_inv = cho_solve((hp.chol_m, True), eye_m).reshape(m, p, h)
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
