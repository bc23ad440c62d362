"""Kalman FFBS against the dense Gaussian posterior of a tiny state space."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurodata  # noqa: F401  (switches on float64)
from neurodata.models._jax.kalman import (
    backward_information_filter,
    condition,
    ffbs,
    information_filter,
    log_expected_potential,
)


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


def _log_partition(m0, P0, A, b, Q, J, h):
    """log of int p(x_{0:T-1}) prod_t exp(-x_t^T J_t x_t / 2 + h_t^T x_t) dx, densely."""
    zero = (np.zeros_like(J), np.zeros_like(h))
    mean, cov = _dense_posterior(m0, P0, A, b, Q, *zero)  # the prior of the whole path
    T, D = h.shape
    big_J = np.zeros((T * D, T * D))
    for t in range(T):
        big_J[t * D:(t + 1) * D, t * D:(t + 1) * D] = J[t]
    lam = np.linalg.inv(cov)
    eta = lam @ mean
    post = lam + big_J
    info = eta + h.ravel()
    return 0.5 * (np.linalg.slogdet(lam)[1] - np.linalg.slogdet(post)[1]
                  + info @ np.linalg.solve(post, info) - eta @ mean)


def test_filter_normalizer_and_smoothed_means_match_dense(rng):
    """The filter's log normalizer is the dense log Z; the keyless backward pass gives the
    smoothed means; a drawn path's posterior log density is prior + potentials - log Z."""
    from neurodata.models._jax.kalman import ffbs_with_normalizer

    args = _problem(rng, T=5)
    m0, P0, A, b, Q, J, h = args
    mean, cov = _dense_posterior(*args)
    means, log_z = ffbs_with_normalizer(None, *map(jnp.asarray, args))
    np.testing.assert_allclose(log_z, _log_partition(*args), atol=1e-10)
    np.testing.assert_allclose(np.asarray(means).ravel(), mean, atol=1e-10)
    x, log_z2 = ffbs_with_normalizer(jax.random.PRNGKey(3), *map(jnp.asarray, args))
    x = np.asarray(x).ravel()
    prior_mean, prior_cov = _dense_posterior(m0, P0, A, b, Q, np.zeros_like(J),
                                             np.zeros_like(h))
    from scipy.stats import multivariate_normal

    D = m0.size
    potentials = sum(h[t] @ x[t * D:(t + 1) * D]
                     - 0.5 * x[t * D:(t + 1) * D] @ J[t] @ x[t * D:(t + 1) * D]
                     for t in range(len(h)))
    np.testing.assert_allclose(
        multivariate_normal(prior_mean, prior_cov).logpdf(x) + potentials - float(log_z2),
        multivariate_normal(mean, cov).logpdf(x), atol=1e-9)


def test_backward_messages_give_the_smoothed_first_marginal(rng):
    """Prior of x_0 times beta_0 is the posterior of x_0 (every later potential enters beta_0)."""
    m0, P0, A, b, Q, J, h = _problem(rng, T=5)
    mean, cov = _dense_posterior(m0, P0, A, b, Q, J, h)
    Omegas, omegas = backward_information_filter(*map(jnp.asarray, (A, b, Q, J, h)))
    prec = np.linalg.inv(P0) + np.asarray(Omegas[0])
    D = m0.size
    np.testing.assert_allclose(np.linalg.inv(prec), cov[:D, :D], atol=1e-10)
    np.testing.assert_allclose(np.linalg.solve(prec, np.linalg.solve(P0, m0) + omegas[0]),
                               mean[:D], atol=1e-10)


def test_expected_potential_and_messages_give_the_marginal_likelihood(rng):
    """Changing one transition: log E_{x_{t+1}}[beta_{t+1}] differences = dense log Z differences.

    ``log_expected_potential`` of the one-step prediction into ``beta_{t+1}`` equals
    ``log Z`` up to terms that do not depend on the transition at ``t``.
    """
    m0, P0, A, b, Q, J, h = _problem(rng, T=5)
    t = 2
    Omegas, omegas = backward_information_filter(*map(jnp.asarray, (A, b, Q, J, h)))
    filt = information_filter(*map(jnp.asarray, (m0, P0, A, b, Q, J, h)))
    m_t, P_t = np.asarray(filt.means[t]), np.linalg.inv(filt.precisions[t])
    ours, dense = [], []
    for scale in (0.3, 1.0, 1.7):
        A2, Q2 = A.copy(), Q.copy()
        A2[t] = A[t] * scale
        Q2[t] = Q[t] * scale
        ours.append(float(log_expected_potential(
            jnp.asarray(A2[t] @ m_t + b[t]), jnp.asarray(A2[t] @ P_t @ A2[t].T + Q2[t]),
            Omegas[t + 1], omegas[t + 1])))
        dense.append(_log_partition(m0, P0, A2, b, Q2, J, h))
    np.testing.assert_allclose(np.diff(ours), np.diff(dense), atol=1e-9)


def test_condition_matches_product_of_gaussians(rng):
    mean, J, h = rng.normal(size=2), np.eye(2) * 0.4, rng.normal(size=2)
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    m, c = condition(*map(jnp.asarray, (mean, cov, J, h)))
    prec = np.linalg.inv(cov) + J
    np.testing.assert_allclose(c, np.linalg.inv(prec), atol=1e-12)
    np.testing.assert_allclose(m, np.linalg.solve(prec, np.linalg.solve(cov, mean) + h),
                               atol=1e-12)


def test_unrolled_small_algebra_matches_numpy(rng):
    from neurodata.models._jax.kalman import (
        cho_solve_small,
        cholesky,
        mm,
        solve_lower,
        solve_lower_transpose,
    )

    a = rng.normal(size=(5, 3, 3))
    spd = a @ np.swapaxes(a, -1, -2) + 0.5 * np.eye(3)
    rhs = rng.normal(size=(5, 3))
    L = np.asarray(cholesky(jnp.asarray(spd)))
    np.testing.assert_allclose(L, np.linalg.cholesky(spd), atol=1e-12)
    np.testing.assert_allclose(mm(jnp.asarray(a), jnp.asarray(spd)), a @ spd, atol=1e-12)
    np.testing.assert_allclose(mm(jnp.asarray(a), jnp.asarray(rhs)),
                               np.einsum("nij,nj->ni", a, rhs), atol=1e-12)
    np.testing.assert_allclose(solve_lower(jnp.asarray(L), jnp.asarray(rhs)),
                               np.linalg.solve(L, rhs[..., None])[..., 0], atol=1e-10)
    np.testing.assert_allclose(solve_lower_transpose(jnp.asarray(L), jnp.asarray(a)),
                               np.linalg.solve(np.swapaxes(L, -1, -2), a), atol=1e-10)
    np.testing.assert_allclose(cho_solve_small(jnp.asarray(L), jnp.asarray(rhs)),
                               np.linalg.solve(spd, rhs[..., None])[..., 0], atol=1e-10)


@pytest.mark.parametrize("d", [3, 8])
def test_triangular_solves_broadcast_vectors_on_both_paths(d):
    """Batched vector right-hand sides against a broadcast factor, unrolled (d <= 6) and
    through the library solve (d > 6)."""
    from neurodata.models._jax.kalman import solve_lower, solve_lower_transpose

    rng = np.random.default_rng(0)
    L = np.tril(rng.normal(size=(1, 3, d, d))) + 3 * np.eye(d)
    b = rng.normal(size=(5, 3, d))
    want = np.linalg.solve(np.broadcast_to(L, (5, 3, d, d)), b[..., None])[..., 0]
    np.testing.assert_allclose(solve_lower(jnp.asarray(L), jnp.asarray(b)), want, rtol=1e-10)
    want_t = np.linalg.solve(np.broadcast_to(np.swapaxes(L, -1, -2), (5, 3, d, d)),
                             b[..., None])[..., 0]
    np.testing.assert_allclose(solve_lower_transpose(jnp.asarray(L), jnp.asarray(b)), want_t,
                               rtol=1e-10)
