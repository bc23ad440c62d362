"""Kalman FFBS against the dense Gaussian posterior of a tiny state space."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import neurodata  # noqa: F401  (switches on float64)
from neurodata.models._jax.kalman import ffbs, information_filter


def _problem(rng, T=4, D=2):
    m0 = rng.normal(size=D)
    P0 = np.eye(D) * 0.7 + 0.1
    A = rng.normal(size=(T - 1, D, D)) * 0.5
    b = rng.normal(size=(T - 1, D)) * 0.3
    Q = np.stack([np.eye(D) * (0.2 + 0.1 * t) + 0.05 for t in range(T - 1)])
    C = rng.normal(size=(T, 3, D))
    R = np.eye(3) * 0.5
    y = rng.normal(size=(T, 3))
    J = np.einsum("tnd,nm,tme->tde", C, np.linalg.inv(R), C)
    h = np.einsum("tnd,nm,tm->td", C, np.linalg.inv(R), y)
    return m0, P0, A, b, Q, J, h


def _dense_posterior(m0, P0, A, b, Q, J, h):
    """Joint precision and mean of x_{0:T-1} by assembling the quadratic form."""
    T, D = h.shape
    prec = np.zeros((T * D, T * D))
    info = np.zeros(T * D)
    sl = [slice(t * D, (t + 1) * D) for t in range(T)]
    P0i = np.linalg.inv(P0)
    prec[sl[0], sl[0]] += P0i
    info[sl[0]] += P0i @ m0
    for t in range(T - 1):
        Qi = np.linalg.inv(Q[t])
        # -(x1 - A x0 - b)^T Qi (x1 - A x0 - b) / 2
        prec[sl[t], sl[t]] += A[t].T @ Qi @ A[t]
        prec[sl[t + 1], sl[t + 1]] += Qi
        prec[sl[t], sl[t + 1]] -= A[t].T @ Qi
        prec[sl[t + 1], sl[t]] -= Qi @ A[t]
        info[sl[t + 1]] += Qi @ b[t]
        info[sl[t]] -= A[t].T @ Qi @ b[t]
    for t in range(T):
        prec[sl[t], sl[t]] += J[t]
        info[sl[t]] += h[t]
    cov = np.linalg.inv(prec)
    return cov @ info, cov


def test_filter_last_marginal_matches_dense(rng):
    args = _problem(rng)
    mean, cov = _dense_posterior(*args)
    filt = information_filter(*map(jnp.asarray, args))
    D = args[0].shape[0]
    np.testing.assert_allclose(filt.means[-1], mean[-D:], atol=1e-10)
    np.testing.assert_allclose(np.linalg.inv(filt.precisions[-1]), cov[-D:, -D:], atol=1e-10)


def test_ffbs_samples_match_dense_posterior(rng):
    args = _problem(rng)
    mean, cov = _dense_posterior(*args)
    keys = jax.random.split(jax.random.PRNGKey(1), 20000)
    draws = jax.jit(jax.vmap(lambda k: ffbs(k, *map(jnp.asarray, args))))(keys)
    flat = np.asarray(draws).reshape(draws.shape[0], -1)
    sd = np.sqrt(np.diag(cov))
    # Monte Carlo error of the mean is sd / 200; of a covariance about 0.01 sd_i sd_j.
    np.testing.assert_allclose(flat.mean(0), mean, atol=float(4 * sd.max() / 200))
    np.testing.assert_allclose(np.cov(flat.T), cov, atol=0.03 * float(sd.max()) ** 2)
