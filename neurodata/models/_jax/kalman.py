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

from neurodata.models._jax.linalg import chol_solve, psd_cholesky, symmetrize


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
