r"""Kalman filtering and forward-filtering backward-sampling (FFBS) with ``lax.scan``.

The state space is linear-Gaussian with time-varying dynamics

.. math::

    x_0 \sim \mathcal N(m_0, P_0), \qquad
    x_{t+1} = A_t x_t + b_t + \varepsilon_t, \quad \varepsilon_t \sim \mathcal N(0, Q_t),

and the observations enter as Gaussian *potentials* in information form,
``exp(h_t^T x_t - x_t^T J_t x_t / 2)``. A linear-Gaussian emission ``y_t = C x_t + v``,
``v ~ N(0, R)`` gives ``J_t = C^T R^{-1} C`` and ``h_t = C^T R^{-1} y_t``; Pólya-Gamma
augmented count models give ``J_t = C^T diag(omega_t) C`` directly, so a filter update costs
``O(D^3)`` however many neurons load on the state. All solves go through Cholesky factors;
batch over sequences with ``jax.vmap``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

from neurodata.models._jax.linalg import chol_logdet, psd_cholesky, symmetrize

# Small dense algebra, unrolled. The state blocks here are tiny (D = latent_dim + 1, about
# 3) and batched over clusters, states and chains inside long scans; LAPACK calls and dot
# products on 3 x 3 matrices cost far more in dispatch than in flops on CPU, while these
# elementwise expressions fuse into a few loops (the bi-clustering sampler's switching-state
# update, 4 chains at T = 500: 210 ms -> 22 ms per call). Larger D falls back to LAPACK.
_UNROLL_MAX = 6


def mm(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """``a @ b`` for small matrices (``b`` a matrix ``(..., k, m)`` or a vector ``(..., k)``)."""
    if a.shape[-1] > _UNROLL_MAX:
        return a @ b
    if b.ndim == a.ndim - 1:
        return jnp.sum(a * b[..., None, :], axis=-1)
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def cholesky(a: jnp.ndarray) -> jnp.ndarray:
    """Lower Cholesky factor of symmetric positive-definite ``(..., D, D)`` matrices."""
    d = a.shape[-1]
    if d > _UNROLL_MAX:
        return psd_cholesky(a)
    a = symmetrize(a)
    L = [[None] * d for _ in range(d)]
    for j in range(d):
        diag = jnp.sqrt(a[..., j, j] - sum((L[j][k] ** 2 for k in range(j)), 0.0))
        L[j][j] = diag
        for i in range(j + 1, d):
            L[i][j] = (a[..., i, j] - sum((L[i][k] * L[j][k] for k in range(j)), 0.0)) / diag
    zero = jnp.zeros_like(a[..., 0, 0])
    return jnp.stack([jnp.stack([L[i][j] if j <= i else zero for j in range(d)], axis=-1)
                      for i in range(d)], axis=-2)


def _as_matrix(b, L):
    vector = b.ndim == L.ndim - 1
    return (b[..., None] if vector else b), vector


def _library_solve(L, b, lower: bool):
    # the library solve wants matrix right-hand sides and equal batch shapes; the unrolled
    # solves below broadcast and take vectors, and callers rely on that
    B, vector = _as_matrix(b, L)
    batch = jnp.broadcast_shapes(L.shape[:-2], B.shape[:-2])
    x = solve_triangular(jnp.broadcast_to(L, batch + L.shape[-2:]),
                         jnp.broadcast_to(B, batch + B.shape[-2:]), lower=lower)
    return x[..., 0] if vector else x


def solve_lower(L: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Solve ``L x = b`` for lower-triangular ``L`` (``b`` a vector or a matrix)."""
    d = L.shape[-1]
    if d > _UNROLL_MAX:
        return _library_solve(L, b, lower=True)
    B, vector = _as_matrix(b, L)
    rows = []
    for i in range(d):
        r = B[..., i, :] - sum((L[..., i, k, None] * rows[k] for k in range(i)), 0.0)
        rows.append(r / L[..., i, i, None])
    x = jnp.stack(rows, axis=-2)
    return x[..., 0] if vector else x


def solve_lower_transpose(L: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Solve ``L^T x = b`` for lower-triangular ``L`` (``b`` a vector or a matrix)."""
    d = L.shape[-1]
    if d > _UNROLL_MAX:
        return _library_solve(jnp.swapaxes(L, -1, -2), b, lower=False)
    B, vector = _as_matrix(b, L)
    rows = [None] * d
    for i in reversed(range(d)):
        r = B[..., i, :] - sum((L[..., k, i, None] * rows[k] for k in range(i + 1, d)), 0.0)
        rows[i] = r / L[..., i, i, None]
    x = jnp.stack(rows, axis=-2)
    return x[..., 0] if vector else x


def cho_solve_small(L: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Solve ``(L L^T) x = b`` given the lower Cholesky factor ``L``."""
    return solve_lower_transpose(L, solve_lower(L, b))


def _inv(L):
    return symmetrize(cho_solve_small(L, jnp.broadcast_to(jnp.eye(L.shape[-1], dtype=L.dtype),
                                                          L.shape)))


def _t(a):
    return jnp.swapaxes(a, -1, -2)


class FilterResult(NamedTuple):
    """Filtered moments from :func:`information_filter`."""

    means: jnp.ndarray
    """``(T, D)`` filtered means ``E[x_t | potentials_{0:t}]``."""
    precisions: jnp.ndarray
    """``(T, D, D)`` filtered precisions (inverse covariances)."""
    log_normalizer: jnp.ndarray
    """``log int p(x_{0:T-1}) prod_t exp(h_t^T x_t - x_t^T J_t x_t / 2) dx``: the log
    marginal likelihood of the potentials under the dynamics."""


def information_filter(m0, P0, A, b, Q, J_obs, h_obs) -> FilterResult:
    """Forward Kalman filter with observation potentials.

    Parameters
    ----------
    m0, P0
        Prior mean ``(D,)`` and covariance ``(D, D)`` of ``x_0``.
    A, b, Q
        Dynamics of the ``T - 1`` transitions: ``(T-1, D, D)``, ``(T-1, D)``, ``(T-1, D, D)``;
        ``A[t]`` maps ``x_t`` to ``x_{t+1}``.
    J_obs, h_obs
        Observation potentials ``(T, D, D)`` and ``(T, D)``.

    Returns
    -------
    FilterResult
    """
    def update(pred_mean, pred_cov, J_t, h_t):
        # log int N(x; m, P) exp(h^T x - x^T J x / 2) dx with L = P^{-1}, L' = L + J,
        # eta = L m + h: (eta^T L'^{-1} eta - m^T L m + log|L| - log|L'|) / 2
        pred_chol = cholesky(pred_cov)
        pred_prec = _inv(pred_chol)
        info_pred = mm(pred_prec, pred_mean)
        prec = symmetrize(pred_prec + J_t)
        chol = cholesky(prec)
        info = info_pred + h_t
        mean = cho_solve_small(chol, info)
        log_z = 0.5 * (jnp.sum(info * mean, -1) - jnp.sum(info_pred * pred_mean, -1)
                       - chol_logdet(pred_chol) - chol_logdet(chol))
        return mean, prec, chol, log_z

    mean0, prec0, chol0, log_z0 = update(m0, P0, J_obs[0], h_obs[0])

    def step(carry, inputs):
        mean, chol, log_z = carry
        A_t, b_t, Q_t, J_t, h_t = inputs
        pred_mean = mm(A_t, mean) + b_t
        pred_cov = mm(mm(A_t, _inv(chol)), _t(A_t)) + Q_t
        mean, prec, chol, inc = update(pred_mean, pred_cov, J_t, h_t)
        return (mean, chol, log_z + inc), (mean, prec)

    (_, _, log_z), (means, precs) = lax.scan(step, (mean0, chol0, log_z0),
                                             (A, b, Q, J_obs[1:], h_obs[1:]))
    return FilterResult(jnp.concatenate([mean0[None], means]),
                        jnp.concatenate([prec0[None], precs]), log_z)


def ffbs(key: jax.Array, m0, P0, A, b, Q, J_obs, h_obs) -> jnp.ndarray:
    """Draw one trajectory ``(T, D)`` from the posterior by forward filtering, backward sampling.

    The backward pass works in information form, ``p(x_t | x_{t+1}, .)`` has precision
    ``J_t^{filt} + A_t^T Q_t^{-1} A_t``, which stays well conditioned when ``Q`` is small.
    Arguments are those of :func:`information_filter`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> T, D = 5, 2
    >>> x = ffbs(jax.random.PRNGKey(0), jnp.zeros(D), jnp.eye(D),
    ...          jnp.tile(jnp.eye(D), (T - 1, 1, 1)), jnp.zeros((T - 1, D)),
    ...          jnp.tile(0.1 * jnp.eye(D), (T - 1, 1, 1)),
    ...          jnp.tile(jnp.eye(D), (T, 1, 1)), jnp.ones((T, D)))
    >>> x.shape
    (5, 2)
    """
    return ffbs_with_normalizer(key, m0, P0, A, b, Q, J_obs, h_obs)[0]


def ffbs_with_normalizer(key: jax.Array | None, m0, P0, A, b, Q, J_obs, h_obs):
    """:func:`ffbs` that also returns the filter's log normalizer.

    The drawn path's density under the posterior is then ``log p(x) + sum_t (h_t^T x_t -
    x_t^T J_t x_t / 2) - log_normalizer`` (``p`` the dynamics prior), which a
    Metropolis-Hastings ratio with this draw as the proposal needs. With ``key=None`` the
    backward pass takes conditional means instead of draws, which gives the smoothed means
    ``E[x_t | potentials]`` (the backward conditionals are linear in ``x_{t+1}``).

    Returns
    -------
    x, log_normalizer
        ``(T, D)`` and a scalar (:attr:`FilterResult.log_normalizer`).
    """
    filt = information_filter(m0, P0, A, b, Q, J_obs, h_obs)
    T = filt.means.shape[0]
    keys = jax.random.split(jax.random.PRNGKey(0) if key is None else key, T)

    def draw(k, mean, chol):
        if key is None:
            return mean
        eps = jax.random.normal(k, mean.shape, mean.dtype)
        return mean + solve_lower_transpose(chol, eps)

    x_last = draw(keys[-1], filt.means[-1], cholesky(filt.precisions[-1]))

    def back(x_next, inputs):
        k, mean, prec, A_t, b_t, Q_t = inputs
        qa = cho_solve_small(cholesky(Q_t), A_t)  # Q^{-1} A
        post_prec = symmetrize(prec + mm(_t(A_t), qa))
        info = mm(prec, mean) + mm(_t(qa), x_next - b_t)
        chol = cholesky(post_prec)
        x = draw(k, cho_solve_small(chol, info), chol)
        return x, x

    _, xs = lax.scan(back, x_last, (keys[:-1], filt.means[:-1], filt.precisions[:-1], A, b, Q),
                     reverse=True)
    return jnp.concatenate([xs, x_last[None]]), filt.log_normalizer


def _absorb_transition(Omega, omega, A, b, Q):
    """``log int N(x'; A x + b, Q) exp(-x'^T Omega x' / 2 + omega^T x') dx'`` as a potential in x.

    With ``Q = L L^T`` and ``M = I + L^T Omega L``, the integral is proportional to
    ``exp(-mu^T Ot mu / 2 + ot^T mu)`` at ``mu = A x + b``, where
    ``Ot = Omega - Omega G Omega``, ``ot = omega - Omega G omega``, ``G = L M^{-1} L^T``
    (``Ot = (Omega^{-1} + Q)^{-1}`` without inverting a possibly singular ``Omega``).
    Returns the potential's ``(Omega_x, omega_x)`` in ``x``.
    """
    eye = jnp.eye(Omega.shape[-1], dtype=Omega.dtype)
    L = cholesky(Q)
    m_chol = cholesky(eye + mm(mm(_t(L), Omega), L))
    G = mm(L, cho_solve_small(m_chol, _t(L)))
    omega_t = omega - mm(Omega, mm(G, omega))
    Omega_t = symmetrize(Omega - mm(mm(Omega, G), Omega))
    return symmetrize(mm(mm(_t(A), Omega_t), A)), mm(_t(A), omega_t - mm(Omega_t, b))


def backward_information_filter(A, b, Q, J_obs, h_obs):
    """Backward messages ``beta_t(x) = p(potentials_{t:T-1} | x_t = x)`` in information form.

    ``beta_t(x) ∝ exp(-x^T Omega_t x / 2 + omega_t^T x)`` (constants dropped); arguments are
    those of :func:`information_filter`. ``beta_{T-1}`` is the last potential alone.

    Returns
    -------
    Omegas, omegas
        ``(T, D, D)`` and ``(T, D)``.
    """

    def step(carry, inputs):
        Omega, omega = carry
        A_t, b_t, Q_t, J_t, h_t = inputs
        Om, om = _absorb_transition(Omega, omega, A_t, b_t, Q_t)
        new = (symmetrize(J_t + Om), h_t + om)
        return new, new

    last = (J_obs[-1], h_obs[-1])
    _, (Omegas, omegas) = lax.scan(step, last, (A, b, Q, J_obs[:-1], h_obs[:-1]), reverse=True)
    return (jnp.concatenate([Omegas, last[0][None]]), jnp.concatenate([omegas, last[1][None]]))


def log_expected_potential(mean, cov, Omega, omega) -> jnp.ndarray:
    """``log E[exp(-x^T Omega x / 2 + omega^T x)]`` for ``x ~ N(mean, cov)``.

    With ``cov = L L^T``, ``M = I + L^T Omega L`` and ``r = omega - Omega mean``:
    ``omega^T mean - mean^T Omega mean / 2 - log|M| / 2 + |M^{-1/2} L^T r|^2 / 2``. Used to
    weigh alternative transitions into a backward message (collapsed switching-state
    updates); ``Omega`` may be singular (zero at the end of a sequence).
    """
    eye = jnp.eye(mean.shape[-1], dtype=mean.dtype)
    L = cholesky(cov)
    m_chol = cholesky(eye + mm(mm(_t(L), Omega), L))
    half = solve_lower(m_chol, mm(_t(L), omega - mm(Omega, mean)))
    return (jnp.sum(omega * mean, -1) - 0.5 * jnp.sum(mean * mm(Omega, mean), -1)
            - 0.5 * chol_logdet(m_chol) + 0.5 * jnp.sum(half**2, -1))


def condition(mean, cov, J, h):
    """Mean and covariance of ``N(mean, cov)`` times the potential ``exp(-x^T J x/2 + h^T x)``."""
    cov_chol = cholesky(cov)
    new_cov = _inv(cholesky(_inv(cov_chol) + J))
    return mm(new_cov, cho_solve_small(cov_chol, mean) + h), new_cov
