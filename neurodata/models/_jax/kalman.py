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

from neurodata.models._jax.linalg import chol_logdet, chol_solve, psd_cholesky, symmetrize


class FilterResult(NamedTuple):
    """Filtered moments from :func:`information_filter`."""

    means: jnp.ndarray
    """``(T, D)`` filtered means ``E[x_t | potentials_{0:t}]``."""
    precisions: jnp.ndarray
    """``(T, D, D)`` filtered precisions (inverse covariances)."""


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
    dim = m0.shape[0]
    eye = jnp.eye(dim, dtype=m0.dtype)

    def update(pred_mean, pred_prec, J_t, h_t):
        prec = symmetrize(pred_prec + J_t)
        chol = psd_cholesky(prec)
        mean = chol_solve(chol, pred_prec @ pred_mean + h_t)
        return mean, prec, chol

    prior_prec = chol_solve(psd_cholesky(P0), eye)
    mean0, prec0, chol0 = update(m0, prior_prec, J_obs[0], h_obs[0])

    def step(carry, inputs):
        mean, chol = carry
        A_t, b_t, Q_t, J_t, h_t = inputs
        cov = chol_solve(chol, eye)
        pred_mean = A_t @ mean + b_t
        pred_cov = A_t @ cov @ A_t.T + Q_t
        pred_prec = chol_solve(psd_cholesky(pred_cov), eye)
        mean, prec, chol = update(pred_mean, pred_prec, J_t, h_t)
        return (mean, chol), (mean, prec)

    _, (means, precs) = lax.scan(step, (mean0, chol0), (A, b, Q, J_obs[1:], h_obs[1:]))
    return FilterResult(jnp.concatenate([mean0[None], means]),
                        jnp.concatenate([prec0[None], precs]))


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
    filt = information_filter(m0, P0, A, b, Q, J_obs, h_obs)
    T = filt.means.shape[0]
    keys = jax.random.split(key, T)

    def draw(k, mean, chol):
        eps = jax.random.normal(k, mean.shape, mean.dtype)
        return mean + solve_triangular(chol.T, eps, lower=False)

    last_chol = psd_cholesky(filt.precisions[-1])
    x_last = draw(keys[-1], filt.means[-1], last_chol)

    def back(x_next, inputs):
        k, mean, prec, A_t, b_t, Q_t = inputs
        q_chol = psd_cholesky(Q_t)
        qa = chol_solve(q_chol, A_t)  # Q^{-1} A
        post_prec = symmetrize(prec + A_t.T @ qa)
        info = prec @ mean + qa.T @ (x_next - b_t)
        chol = psd_cholesky(post_prec)
        x = draw(k, chol_solve(chol, info), chol)
        return x, x

    _, xs = lax.scan(back, x_last, (keys[:-1], filt.means[:-1], filt.precisions[:-1], A, b, Q),
                     reverse=True)
    return jnp.concatenate([xs, x_last[None]])


def _absorb_transition(Omega, omega, A, b, Q):
    """``log int N(x'; A x + b, Q) exp(-x'^T Omega x' / 2 + omega^T x') dx'`` as a potential in x.

    With ``Q = L L^T`` and ``M = I + L^T Omega L``, the integral is proportional to
    ``exp(-mu^T Ot mu / 2 + ot^T mu)`` at ``mu = A x + b``, where
    ``Ot = Omega - Omega G Omega``, ``ot = omega - Omega G omega``, ``G = L M^{-1} L^T``
    (``Ot = (Omega^{-1} + Q)^{-1}`` without inverting a possibly singular ``Omega``).
    Returns the potential's ``(Omega_x, omega_x)`` in ``x``.
    """
    eye = jnp.eye(Omega.shape[-1], dtype=Omega.dtype)
    L = psd_cholesky(Q)
    m_chol = psd_cholesky(eye + L.T @ Omega @ L)
    G = L @ chol_solve(m_chol, L.T)
    omega_t = omega - Omega @ (G @ omega)
    Omega_t = symmetrize(Omega - Omega @ G @ Omega)
    return symmetrize(A.T @ Omega_t @ A), A.T @ (omega_t - Omega_t @ b)


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
    L = psd_cholesky(cov)
    m_chol = psd_cholesky(eye + L.T @ Omega @ L)
    half = solve_triangular(m_chol, L.T @ (omega - Omega @ mean), lower=True)
    return (omega @ mean - 0.5 * mean @ Omega @ mean
            - 0.5 * chol_logdet(m_chol) + 0.5 * jnp.sum(half**2))


def condition(mean, cov, J, h):
    """Mean and covariance of ``N(mean, cov)`` times the potential ``exp(-x^T J x/2 + h^T x)``."""
    eye = jnp.eye(mean.shape[-1], dtype=mean.dtype)
    cov_chol = psd_cholesky(cov)
    chol = psd_cholesky(chol_solve(cov_chol, eye) + J)
    new_cov = symmetrize(chol_solve(chol, eye))
    return new_cov @ (chol_solve(cov_chol, mean) + h), new_cov
