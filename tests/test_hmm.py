"""HMM message passing against brute-force enumeration and dynamax."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neurodata  # noqa: F401  (switches on x64)
from neurodata.models._jax.hmm import (
    hmm_filter,
    hmm_filter_parallel,
    hmm_sample_posterior,
    hmm_smoother,
    hmm_smoother_parallel,
    hmm_viterbi,
)

S, T = 3, 6


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1)
    init = rng.dirichlet(np.ones(S))
    trans = rng.dirichlet(np.ones(S), size=S)
    ll = rng.normal(size=(T, S)) * 2.0
    resets = np.zeros(T, bool)
    resets[0] = resets[3] = True
    return init, trans, ll, resets


def brute_force(init, trans, ll, resets):
    """Enumerate all S**T paths; return log Z, marginals, pairwise sums, initial sums, logp."""
    paths = np.array(list(itertools.product(range(S), repeat=T)))
    logp = np.zeros(len(paths))
    for t in range(T):
        if resets[t] or t == 0:
            logp += np.log(init[paths[:, t]])
        else:
            logp += np.log(trans[paths[:, t - 1], paths[:, t]])
        logp += ll[t, paths[:, t]]
    logz = np.logaddexp.reduce(logp)
    w = np.exp(logp - logz)
    marg = np.zeros((T, S))
    for t in range(T):
        np.add.at(marg[t], paths[:, t], w)
    xi = np.zeros((S, S))
    init_counts = np.zeros(S)
    for t in range(T):
        if resets[t] or t == 0:
            np.add.at(init_counts, paths[:, t], w)
        else:
            np.add.at(xi, (paths[:, t - 1], paths[:, t]), w)
    return logz, marg, xi, init_counts, paths, logp


@pytest.mark.parametrize("smoother", [hmm_smoother, hmm_smoother_parallel])
def test_smoother_matches_brute_force(problem, smoother):
    init, trans, ll, resets = problem
    logz, marg, xi, init_counts, _, _ = brute_force(*problem)
    post = smoother(jnp.asarray(init), jnp.asarray(trans), jnp.asarray(ll), jnp.asarray(resets))
    np.testing.assert_allclose(post.marginal_loglik, logz, atol=1e-10)
    np.testing.assert_allclose(post.smoothed_probs, marg, atol=1e-10)
    np.testing.assert_allclose(post.expected_transitions, xi, atol=1e-10)
    np.testing.assert_allclose(post.expected_initial, init_counts, atol=1e-10)


def test_smoother_without_resets_matches_brute_force(problem):
    init, trans, ll, _ = problem
    single = np.zeros(T, bool)
    logz, marg, xi, init_counts, _, _ = brute_force(init, trans, ll, single)
    post = hmm_smoother(jnp.asarray(init), jnp.asarray(trans), jnp.asarray(ll))
    np.testing.assert_allclose(post.marginal_loglik, logz, atol=1e-10)
    np.testing.assert_allclose(post.smoothed_probs, marg, atol=1e-10)
    np.testing.assert_allclose(post.expected_transitions, xi, atol=1e-10)
    np.testing.assert_allclose(post.expected_initial, init_counts, atol=1e-10)


def test_filter_sequential_equals_parallel(problem):
    init, trans, ll, resets = (jnp.asarray(a) for a in problem)
    z1, f1, _ = hmm_filter(init, trans, ll, resets)
    z2, f2 = hmm_filter_parallel(init, trans, ll, resets)
    np.testing.assert_allclose(z1, z2, atol=1e-10)
    np.testing.assert_allclose(f1, f2, atol=1e-10)


def test_long_sequence_parallel_matches_sequential():
    rng = np.random.default_rng(2)
    n, s = 1000, 4
    init = jnp.asarray(rng.dirichlet(np.ones(s)))
    trans = jnp.asarray(0.9 * np.eye(s) + 0.1 * rng.dirichlet(np.ones(s), size=s))
    ll = jnp.asarray(rng.normal(size=(n, s)) * 5.0)
    resets = jnp.asarray(rng.random(n) < 0.01)
    a = hmm_smoother(init, trans, ll, resets)
    b = hmm_smoother_parallel(init, trans, ll, resets)
    np.testing.assert_allclose(a.marginal_loglik, b.marginal_loglik, rtol=1e-10)
    np.testing.assert_allclose(a.smoothed_probs, b.smoothed_probs, atol=1e-8)
    np.testing.assert_allclose(a.expected_transitions, b.expected_transitions, rtol=1e-7)


@pytest.mark.reference
def test_matches_dynamax():
    from dynamax.hidden_markov_model import inference as dyn

    rng = np.random.default_rng(3)
    # The shapes of test_long_sequence_parallel_matches_sequential, with no resets after
    # the first bin, so that the compiled smoothers are shared.
    n, s = 1000, 4
    init = jnp.asarray(rng.dirichlet(np.ones(s)))
    trans = jnp.asarray(rng.dirichlet(np.ones(s), size=s))
    ll = jnp.asarray(rng.normal(size=(n, s)) * 3.0)
    no_resets = jnp.zeros(n, bool)
    ref_f = dyn.hmm_filter(init, trans, ll)
    ref_s = dyn.hmm_smoother(init, trans, ll)
    # resets=None compiles the sequential smoother without the per-step reset select.
    for post in (hmm_smoother(init, trans, ll, no_resets), hmm_smoother(init, trans, ll),
                 hmm_smoother_parallel(init, trans, ll, no_resets)):
        np.testing.assert_allclose(post.marginal_loglik, ref_f.marginal_loglik, atol=1e-6)
        np.testing.assert_allclose(post.filtered_probs, ref_f.filtered_probs, atol=1e-6)
        np.testing.assert_allclose(post.smoothed_probs, ref_s.smoothed_probs, atol=1e-6)
    xi = dyn.compute_transition_probs(trans, ref_s)
    xi = np.asarray(xi).sum(0) if np.ndim(xi) == 3 else xi
    for resets in (no_resets, None):
        post = hmm_smoother(init, trans, ll, resets)
        np.testing.assert_allclose(post.expected_transitions, xi, atol=1e-6)
        np.testing.assert_allclose(post.expected_initial, ref_s.smoothed_probs[0], atol=1e-6)


def test_viterbi_matches_brute_force(problem):
    init, trans, ll, resets = problem
    _, _, _, _, paths, logp = brute_force(*problem)
    path = hmm_viterbi(jnp.asarray(init), jnp.asarray(trans), jnp.asarray(ll),
                       jnp.asarray(resets))
    np.testing.assert_array_equal(np.asarray(path), paths[np.argmax(logp)])


def test_ffbs_matches_marginals(problem):
    init, trans, ll, resets = (jnp.asarray(a) for a in problem)
    _, marg, xi, _, _, _ = brute_force(*problem)
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    draws = jax.vmap(lambda k: hmm_sample_posterior(k, init, trans, ll, resets))(keys)
    draws = np.asarray(draws)
    freq = np.stack([(draws == k).mean(0) for k in range(S)], axis=1)
    # Monte Carlo standard error at n=20000 is at most 0.0036.
    np.testing.assert_allclose(freq, marg, atol=0.015)
    pairs = np.zeros((S, S))
    for t in range(1, T):
        if not problem[3][t]:
            np.add.at(pairs, (draws[:, t - 1], draws[:, t]), 1.0 / len(draws))
    np.testing.assert_allclose(pairs, xi, atol=0.03)
