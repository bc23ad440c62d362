"""Bi-clustering: exact conditionals on tiny problems, bad input, checkpoint/resume, recovery."""

from __future__ import annotations

import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import neurodata
from neurodata.errors import FormatError, InputDataError
from neurodata.models.bicluster import BiClustering, _core, simulate
from neurodata.models.bicluster._summaries import cluster_profile

# ----------------------------------------------------------------- conditionals


def test_cluster_marginal_matches_quadrature(rng):
    """Collapsed log p(z_i = k | omega, X) against 2-D quadrature over (delta_i, c_i)."""
    T, K = 4, 2
    latents = jnp.asarray(rng.normal(size=(T, K, 2)) * 0.5)
    omega = jnp.asarray(rng.uniform(0.5, 2.0, size=(T, 1)))
    kappa = jnp.asarray(rng.normal(size=(T, 1)))
    log_r = jnp.asarray([0.3])
    logp, mean, _ = _core.cluster_log_marginals(latents, omega, kappa, log_r, jnp.zeros(K))
    grid = np.linspace(-8, 8, 801)
    step = grid[1] - grid[0]
    dd, cc = np.meshgrid(grid, grid, indexing="ij")
    brute = []
    for k in range(K):
        psi = (dd[..., None] + np.asarray(latents[:, k, 0]) + cc[..., None]
               * np.asarray(latents[:, k, 1]) - 0.3)
        log_f = np.sum(np.asarray(kappa[:, 0]) * psi - 0.5 * np.asarray(omega[:, 0]) * psi**2,
                       axis=-1) - 0.5 * (dd**2 + cc**2) - np.log(2 * np.pi)
        brute.append(np.log(np.sum(np.exp(log_f)) * step**2))
        w = np.exp(log_f - log_f.max())
        np.testing.assert_allclose([np.sum(w * dd) / w.sum(), np.sum(w * cc) / w.sum()],
                                   mean[0, k], atol=1e-6)
    # equal up to a k-independent constant (terms in log r only)
    np.testing.assert_allclose(np.diff(np.asarray(logp[0])), np.diff(brute), atol=1e-6)


def test_mniw_draws_match_posterior_moments(rng):
    d = 2
    Suu = np.eye(d + 1) * 3 + 0.5
    Syu = rng.normal(size=(d, d + 1))
    Syy = Syu @ np.linalg.inv(Suu) @ Syu.T + np.eye(d)
    S0, nu0, n = 0.1 * np.eye(d), d + 2.0, 20.0
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    A, b, Q = jax.jit(jax.vmap(lambda k: _core._sample_mniw(
        k, jnp.asarray(Suu), jnp.asarray(Syu), jnp.asarray(Syy), n, jnp.asarray(S0), nu0)))(keys)
    Mn = Syu @ np.linalg.inv(Suu)
    Sn = S0 + Syy - Mn @ Syu.T
    np.testing.assert_allclose(np.asarray(Q).mean(0), Sn / (nu0 + n - d - 1), rtol=0.03,
                               atol=2e-3)
    AB = np.concatenate([np.asarray(A), np.asarray(b)[..., None]], axis=2)
    np.testing.assert_allclose(AB.mean(0), Mn, atol=0.01)


def test_state_ffbs_matches_enumeration(rng):
    """Our AR-HMM likelihoods through hmm_sample_posterior against all 2^T paths."""
    T, S = 4, 2
    latents = jnp.asarray(rng.normal(size=(T, 1, 1)))
    A = jnp.asarray([[[[0.2]]], [[[0.9]]]])
    b = jnp.asarray([[[0.1]], [[-0.2]]])
    Q = jnp.asarray([[[[0.5]]], [[[1.5]]]])
    trans = jnp.asarray([[0.8, 0.2], [0.3, 0.7]])
    ll = np.asarray(_core.transition_loglik(latents, A, b, Q, jnp.ones(1)))
    paths = list(itertools.product(range(S), repeat=T))
    logp = np.array([np.log(0.5) + sum(ll[t, s[t]] for t in range(T))
                     + sum(np.log(trans[s[t], s[t + 1]]) for t in range(T - 1))
                     for s in paths])
    prob = np.exp(logp - logp.max())
    prob /= prob.sum()
    keys = jax.random.split(jax.random.PRNGKey(1), 20000)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: _core.sample_states(
        k, latents, A, b, Q, trans, jnp.ones(1))))(keys))
    codes = draws @ (S ** np.arange(T)[::-1])
    freq = np.bincount(codes, minlength=S**T) / len(codes)
    np.testing.assert_allclose(freq, prob, atol=0.015)


def test_collapsed_state_update_leaves_exact_posterior_invariant(rng):
    """Single-site state Gibbs with trajectories integrated out, against enumeration.

    Tiny SLDS (T = 4, S = 2, one occupied cluster of d = 2 plus an empty slot): the exact
    posterior ``p(xi | potentials)`` over all 2^T paths uses the dense marginal likelihood;
    one update applied to exact posterior draws must return exact posterior draws.
    """
    from test_kalman import _log_partition

    T, S, d = 4, 2, 2
    A = np.stack([np.eye(d) * 0.2, np.array([[0.9, -0.3], [0.3, 0.9]])])[:, None]
    A = np.concatenate([A, A], axis=1)  # (S, K = 2, d, d)
    b = rng.normal(size=(S, 2, d)) * 0.3
    Q = np.stack([np.eye(d) * 0.3, np.eye(d) * 0.1])[:, None].repeat(2, axis=1)
    trans = np.array([[0.8, 0.2], [0.3, 0.7]])
    J = np.zeros((2, T, d, d))
    h = np.zeros((2, T, d))
    C = rng.normal(size=(T, 3, d))
    J[0] = np.einsum("tnd,tne->tde", C, C) * 2.0
    h[0] = np.einsum("tnd,tn->td", C, rng.normal(size=(T, 3))) * 2.0
    paths = np.array(list(itertools.product(range(S), repeat=T)))
    logp = np.array([
        np.sum(np.log(trans[p[:-1], p[1:]]))
        + _log_partition(np.zeros(d), np.eye(d), A[p[:-1], 0], b[p[:-1], 0], Q[p[:-1], 0],
                         J[0], h[0]) for p in paths])
    prob = np.exp(logp - logp.max())
    prob /= prob.sum()
    n = 20000
    start = paths[rng.choice(len(paths), size=n, p=prob)]
    args = [jnp.asarray(a) for a in (A, b, Q, trans, J, h)]
    keys = jax.random.split(jax.random.PRNGKey(2), n)
    draws = np.asarray(jax.jit(jax.vmap(lambda k, s: _core.sample_states_collapsed(
        k, s, *args, jnp.asarray([1.0, 0.0]))))(keys, jnp.asarray(start, dtype=jnp.int32)))
    freq = np.bincount(draws @ (S ** np.arange(T)[::-1]), minlength=S**T) / n
    np.testing.assert_allclose(freq, prob, atol=0.012)
    # and it moves: most draws differ from their start somewhere
    assert np.mean(np.any(draws != start, axis=1)) > 0.2


def test_dispersion_step_leaves_exact_conditional_invariant(rng):
    """r_i | y_i, psi_i (mean fixed) against a 1-D grid: derivatives, and invariance of one step.

    Three neurons with true r = 0.5, 3, 30; exact conditional draws of log r on a fine grid,
    one independence-MH step applied to each, moments compared within Monte Carlo error.
    """
    from scipy.special import gammaln

    T = 40
    psi = rng.normal(size=(T, 3)) * 0.5 + 1.0
    r_true = np.array([0.5, 3.0, 30.0])
    y = rng.negative_binomial(r_true, r_true / (r_true + np.exp(psi)))
    data, priors = _core.make_data(y, 64), _core.Priors()
    rate = jnp.exp(jnp.asarray(psi))

    def exact(u):  # log p(log r | y, psi) up to a constant, Gamma(1, 1) prior
        r = np.exp(u)
        return np.sum(gammaln(y + r) - gammaln(r) + r * np.log(r)
                      - (y + r) * np.log(r + np.exp(psi)), axis=0) + u - r

    u = np.array([0.1, 1.0, 2.5])
    f, g, h, _ = (np.asarray(a) for a in _core._dispersion_logpost(jnp.asarray(u), data, rate,
                                                                     priors))
    fp, gp, _, _ = _core._dispersion_logpost(jnp.asarray(u + 1e-5), data, rate, priors)
    fm, gm, _, _ = _core._dispersion_logpost(jnp.asarray(u - 1e-5), data, rate, priors)
    np.testing.assert_allclose(g, (fp - fm) / 2e-5, rtol=1e-6)
    np.testing.assert_allclose(h, (gp - gm) / 2e-5, rtol=1e-6)
    np.testing.assert_allclose(f - np.asarray(_core._dispersion_logpost(
        jnp.asarray(u + 0.3), data, rate, priors)[0]), exact(u) - exact(u + 0.3), atol=1e-9)
    grid = np.linspace(-6, 8, 4001)
    logp = np.stack([exact(np.full(3, v)) for v in grid])
    prob = np.exp(logp - logp.max(0))
    prob /= prob.sum(0)
    n = 20000
    start = np.stack([rng.choice(grid, size=n, p=prob[:, i]) for i in range(3)], axis=1)
    out = np.log(np.asarray(jax.jit(jax.vmap(lambda k, r: _core.sample_dispersion(
        k, data, jnp.asarray(psi), r, priors)[0]))(jax.random.split(jax.random.PRNGKey(7), n),
                                               jnp.exp(jnp.asarray(start)))))
    mean = grid @ prob
    sd = np.sqrt(((grid[:, None] - mean) ** 2 * prob).sum(0))
    np.testing.assert_allclose(out.mean(0), mean, atol=4 * sd.max() / np.sqrt(n))
    np.testing.assert_allclose(out.std(0), sd, rtol=0.03)
    assert np.mean(out != start) > 0.8  # the proposal is accepted most of the time
    # the log-likelihood returned with the draw is the NB log-likelihood at it
    r_new, loglik = _core.sample_dispersion(jax.random.PRNGKey(8), data, jnp.asarray(psi),
                                            jnp.asarray(r_true), priors)
    np.testing.assert_allclose(loglik, _core.nb_loglik(data.y, jnp.asarray(psi), r_new),
                               rtol=1e-12)


def test_mfm_number_of_components_matches_enumeration():
    """p(k | partition) under the MFM prior against summing p(z | k) over all labelings."""
    from scipy.special import gammaln

    N, K, g = 4, 4, 1.0
    priors = _core.Priors(cluster_prior="mfm", mfm_geometric=0.3, cluster_concentration=g)
    partition = np.array([0, 0, 1, 2])  # three blocks
    brute = []
    for k in range(1, K + 1):
        total = 0.0
        for labels in itertools.product(range(k), repeat=N):
            labels = np.asarray(labels)
            same = (labels[:, None] == labels[None, :]) == (partition[:, None]
                                                           == partition[None, :])
            if same.all():
                counts = np.bincount(labels, minlength=k)
                total += np.exp(gammaln(k * g) - gammaln(k * g + N)
                                + np.sum(gammaln(counts + g) - gammaln(g)))
        brute.append(0.3 * 0.7 ** (k - 1) * total)
    brute = np.asarray(brute) / np.sum(brute)
    logp = np.asarray(_core.mfm_log_components(3, N, K, priors))
    np.testing.assert_allclose(np.exp(logp - np.logaddexp.reduce(logp)), brute, rtol=1e-10)


def _labelings_log_prior(N, K, priors):
    """Every labelling ``(K^N, N)`` and its exact log prior (weights integrated out)."""
    from scipy.special import gammaln, logsumexp

    labels = np.array(list(itertools.product(range(K), repeat=N)))
    counts = np.stack([np.bincount(z, minlength=K) for z in labels])
    if priors.cluster_prior == "mfm":
        g, r = priors.cluster_concentration, priors.mfm_geometric
        k = np.arange(1, K + 1)
        t = np.sum(counts > 0, axis=1)
        log_pk = np.log(r) + (k - 1) * np.log1p(-r)
        # p(z | k): labels confined to k of the K exchangeable slots, Dirichlet(g) weights
        terms = (log_pk[None] + gammaln(k + 1)[None] - gammaln(np.maximum(k[None] - t[:, None]
                 + 1, 1)) - gammaln(K + 1) + gammaln(K - t[:, None] + 1) + gammaln(k * g)[None]
                 - gammaln(k * g + N)[None])
        terms = np.where(k[None] >= t[:, None], terms, -np.inf)
        log_prior = logsumexp(terms, axis=1) + np.sum(
            np.where(counts > 0, gammaln(counts + g) - gammaln(g), 0.0), axis=1)
    else:
        a = priors.cluster_concentration / K
        log_prior = np.sum(gammaln(counts + a) - gammaln(a), axis=1)
    return labels, log_prior


def _tiny_label_problem(rng, T=3, N=3, K=3):
    """PG variables, dynamics and the exact joint posterior of (z, X) for latent_dim = 0.

    With ``d = 1`` each neuron's collapsed marginal ``M_n(x)`` is exactly Gaussian in the
    trajectory ``x`` (only ``delta_n`` is integrated out), so ``p(z | ...) ∝ p(z) prod_k
    int p_k(x) prod_{n in k} M_n(x) dx`` and ``X^(k) | z`` are dense Gaussian computations.
    """
    from test_kalman import _dense_posterior

    omega = rng.uniform(0.5, 2.0, size=(T, N))
    kappa = rng.normal(size=(T, N)) * 1.5
    log_r = rng.normal(size=N) * 0.3
    A = np.full((1, K, 1, 1), 0.8)
    b = 0.2 * rng.normal(size=(1, K, 1))
    Q = np.full((1, K, 1, 1), 0.5)
    ctx = _core.MoveContext(*map(jnp.asarray, (omega, kappa, log_r, A, b, Q)),
                            jnp.zeros(T, dtype=jnp.int32))

    def marginal(x):  # (N,) log M_n(x) for one trajectory (T,)
        return _core._marginal_column(x[:, None], ctx).loglik[:, 0]

    x0 = jnp.zeros(T)
    f0 = np.asarray(marginal(x0))
    g = np.asarray(jax.jacobian(marginal)(x0))  # (N, T)
    H = np.asarray(jax.hessian(marginal)(x0))  # (N, T, T)
    priors_k = [_dense_posterior(np.zeros(1), np.eye(1), np.repeat(A[0, k][None], T - 1, 0),
                                 np.repeat(b[0, k][None], T - 1, 0),
                                 np.repeat(Q[0, k][None], T - 1, 0), np.zeros((T, 1, 1)),
                                 np.zeros((T, 1))) for k in range(K)]

    def slot_posterior(k, members):
        m, P = priors_k[k]
        lam = np.linalg.inv(P)
        lam_post = lam - H[members].sum(0)
        eta = lam @ m + g[members].sum(0)
        mean = np.linalg.solve(lam_post, eta)
        log_z = (f0[members].sum() + 0.5 * (eta @ mean - m @ lam @ m + np.linalg.slogdet(lam)[1]
                                            - np.linalg.slogdet(lam_post)[1]))
        return log_z, mean, np.linalg.inv(lam_post)

    return ctx, slot_posterior


@pytest.mark.parametrize("cluster_prior", ["dirichlet", "mfm"])
def test_split_merge_leaves_exact_joint_posterior_invariant(rng, cluster_prior):
    """Split-merge moves of (labels, trajectory), applied to exact draws of p(z, X | ...).

    N = 3 neurons, K = 3 slots, T = 3 bins, latent_dim = 0; the exact posterior over the 27
    labellings and the Gaussian trajectories given them is computed densely. After three
    moves the labels' frequencies, the mean trajectory of neuron 0's cluster and of every
    slot must match it within Monte Carlo error, and splits and merges must both be accepted.
    """
    from scipy.special import logsumexp

    N, K, T = 3, 3, 3
    priors = _core.Priors(cluster_prior=cluster_prior, split_merge_moves=3,
                          cluster_concentration=2.0)
    ctx, slot_posterior = _tiny_label_problem(rng, T, N, K)
    labels, log_prior = _labelings_log_prior(N, K, priors)
    post = [[slot_posterior(k, z == k) for k in range(K)] for z in labels]
    logp = log_prior + np.array([sum(p[0] for p in row) for row in post])
    prob = np.exp(logp - logsumexp(logp))
    exact_x = sum(p * row[z[0]][1] for p, z, row in zip(prob, labels, post, strict=True))
    n = 30000
    pick = rng.choice(len(labels), size=n, p=prob)
    chols = [[np.linalg.cholesky(p[2]) for p in row] for row in post]
    latents = np.stack([np.stack([post[m][k][1] + chols[m][k] @ rng.normal(size=T)
                                  for k in range(K)], axis=1) for m in pick])[..., None]

    def moves(key, z, x):
        marg = _core.Marginals(*_core.cluster_log_marginals(x, ctx.omega, ctx.kappa, ctx.log_r,
                                                             jnp.zeros(K)))
        z, x, _, counts = _core.split_merge(key, z, x, marg, ctx, priors)
        return z, x, counts

    keys = jax.random.split(jax.random.PRNGKey(3), n)
    z, x, counts = jax.jit(jax.vmap(moves))(keys, jnp.asarray(labels[pick], dtype=jnp.int32),
                                            jnp.asarray(latents))
    z, x, counts = np.asarray(z), np.asarray(x), np.asarray(counts).sum(0)
    freq = np.bincount(z @ (K ** np.arange(N)[::-1]), minlength=K**N) / n
    np.testing.assert_allclose(freq, prob, atol=0.01)
    own = x[np.arange(n), :, z[:, 0], 0]  # trajectory of neuron 0's cluster
    np.testing.assert_allclose(own.mean(0), exact_x, atol=4 * own.std(0).max() / np.sqrt(n))
    # every slot's trajectory, occupied or not: an emptied slot redrawn from another slot's
    # dynamics (each slot has its own offset b) would move these means
    for k in range(K):
        slot_x = sum(p * row[k][1] for p, row in zip(prob, post, strict=True))
        got = x[:, :, k, 0]
        np.testing.assert_allclose(got.mean(0), slot_x, atol=4 * got.std(0).max() / np.sqrt(n))
    print(f"split acceptance {counts[1] / counts[0]:.3f}, merge {counts[3] / counts[2]:.3f}")
    assert counts[1] > 0.02 * counts[0] and counts[3] > 0.02 * counts[2]


def test_split_merge_splits_a_planted_under_split():
    """Two clusters of 8 neurons started as one: the move proposes the second cluster's
    trajectory from its members' counts and splits them off.

    The PG variables are drawn given the true log-rates; slot 0 holds the first cluster's
    true trajectory, the two other slots prior draws (the old labels-only move, which
    offered a new cluster only such a prior draw, never split here). Ten moves in each of
    100 independent runs: the second cluster must end up in a slot of its own, with at least
    6 of its 8 neurons and at most one of the first cluster's (the restricted scans
    allocate weakly informative, low-rate neurons either way, and the exact move may split
    a single neuron off into the third slot; the label step of a sweep moves such neurons
    one at a time).
    """
    ds, truth = simulate(n_neurons_per_cluster=8, n_clusters=2, n_time=200, seed=1)
    y = ds.activity.values.astype(float)
    T, N = y.shape
    K, d = 3, 3
    r = np.full(N, 10.0)
    omega = _core.sample_pg(jax.random.PRNGKey(0), y + r, truth["log_rate"] - np.log(r))
    A = np.broadcast_to(np.eye(d), (1, K, d, d))
    Q = np.broadcast_to(0.01 * np.eye(d), (1, K, d, d))
    ctx = _core.MoveContext(omega, jnp.asarray((y - r) / 2), jnp.log(jnp.asarray(r)),
                            jnp.asarray(A), jnp.zeros((1, K, d)), jnp.asarray(Q),
                            jnp.zeros(T, dtype=jnp.int32))
    priors = _core.Priors(split_merge_moves=10)
    merged = jnp.zeros(N, dtype=jnp.int32)

    def run(key):
        k_prior, k_moves = jax.random.split(key)
        latents = _core.sample_prior_paths(k_prior, *(m[jnp.zeros(T - 1, int)] for m in (
            ctx.A, ctx.b, ctx.Q)))
        latents = latents.at[:, 0].set(jnp.asarray(truth["latents"][:, 0]))
        marg = _core.Marginals(*_core.cluster_log_marginals(latents, ctx.omega, ctx.kappa,
                                                             ctx.log_r, jnp.zeros(K)))
        z, _, _, counts = _core.split_merge(k_moves, merged, latents, marg, ctx, priors)
        return z, counts

    z, counts = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(1), 100))
    z, counts = np.asarray(z), np.asarray(counts).sum(0)
    first, second = truth["neuron_clusters"] == 0, truth["neuron_clusters"] == 1
    own = np.array([np.bincount(zz[second], minlength=K).argmax() for zz in z])
    split_off = np.array([np.sum(zz[second] == o) >= 6 and np.sum(zz[first] == o) <= 1
                          for zz, o in zip(z, own, strict=True)])
    exact = np.mean([adjusted_rand_score(truth["neuron_clusters"], zz) == 1.0 for zz in z])
    print(f"second cluster split off in {split_off.mean():.2f} of runs (exactly the truth in "
          f"{exact:.2f}); split acceptance {counts[1] / counts[0]:.3f}, merge "
          f"{counts[3] / max(counts[2], 1):.3f}")
    assert split_off.mean() > 0.8


# ----------------------------------------------------------------- bad input


def _ds(values):
    return neurodata.from_arrays(np.asarray(values), 2.0)


@pytest.mark.parametrize("values,match", [
    (np.full((40, 3), np.nan), "NaN"),
    (-np.ones((40, 3)), "non-negative integer"),
    (np.full((40, 3), 0.5), "non-negative integer"),
    (np.ones((5, 3)), "time bins"),
    (np.ones((40, 1)), "at least 2 neurons"),
])
def test_bad_counts_raise(values, match):
    with pytest.raises(InputDataError, match=match):
        BiClustering(progress=False).fit(_ds(values))


@pytest.mark.parametrize("params,match", [
    (dict(observation="gauss"), "observation"),
    (dict(dynamics="full"), "dynamics"),
    (dict(cluster_prior="dp"), "cluster_prior"),
    (dict(cluster_prior="mfm", mfm_geometric=1.5), "mfm_geometric"),
    (dict(split_merge=-1), "split_merge"),
])
def test_bad_settings_raise(params, match):
    with pytest.raises(InputDataError, match=match):
        BiClustering(progress=False, **params).fit(_ds(np.ones((40, 3))))


# ----------------------------------------------------------------- joint distribution

GEWEKE_SIZES = dict(n_time=6, n_neurons=3, n_slots=2, n_states=2, latent_dim=1)


def _geweke_stats(state, y):
    K = state.latents.shape[1]
    return jnp.stack([
        jnp.mean(state.delta), jnp.mean(jnp.log(state.dispersion)),
        jnp.sum(jnp.zeros(K).at[state.z].add(1.0) > 0),
        jnp.mean(state.states[1:] != state.states[:-1]), jnp.mean(state.latents**2),
        jnp.mean(jnp.log1p(y)), jnp.mean(state.loadings**2), jnp.max(y)])


@pytest.mark.parametrize("cluster_prior", ["mfm"])
def test_geweke_joint_distribution(cluster_prior):
    """Geweke (2004): prior draws vs a successive-conditional chain (sweep, then new counts).

    Both simulate the joint distribution of (parameters, counts) iff every block of the sweep
    leaves its conditional invariant; the means of a few statistics must agree within Monte
    Carlo error (batch means for the chains). Tiny model (T = 6, N = 3, K = 2, S = 2,
    p = 1) with a dispersion prior away from zero and a tighter inverse-Wishart so that the
    counts stay below ``y_max``. Per-cluster dynamics (the estimator's default); the
    ``dynamics="shared"`` option is not Geweke-tested here.
    """
    priors = _core.Priors(dispersion_shape=10.0, dispersion_rate=1.0, dynamics_dof_extra=10.0,
                          cluster_prior=cluster_prior, shared_dynamics=False)
    # many short chains: at these sizes a vmapped step costs about the same for 8 or 16 chains
    y_max, n_chains, n_steps = 2000, 16, 1000
    sample = lambda k: _core.sample_prior(k, **GEWEKE_SIZES, priors=priors,  # noqa: E731
                                          negbin=True)

    def chain(key):
        k0, key = jax.random.split(key)

        def step(carry, k):
            state, y = carry
            k1, k2 = jax.random.split(k)
            state = _core.sweep(k1, state, _core.make_data(y, y_max), priors, True)
            y = _core.sample_counts(k2, state)
            return (state, y), _geweke_stats(state, y)

        return jax.lax.scan(step, sample(k0), jax.random.split(key, n_steps))[1]

    root = jax.random.key(0)
    # tiny shapes: XLA's backend optimisation level 0 compiles much faster (a third less
    # time) and the run time does not matter here
    quick = dict(compiler_options={"xla_backend_optimization_level": 0})
    marginal = np.asarray(jax.jit(jax.vmap(lambda k: _geweke_stats(*sample(k))), **quick)(
        jax.random.split(jax.random.fold_in(root, 0), 20000)))
    successive = np.asarray(jax.jit(jax.vmap(chain), **quick)(
        jax.random.split(jax.random.fold_in(root, 1), n_chains)))
    assert successive[..., -1].max() <= y_max  # the dispersion tail counts saw every count
    batches = successive.reshape(n_chains * 10, n_steps // 10, -1).mean(axis=1)
    diff = batches.mean(0) - marginal.mean(0)
    se = np.hypot(batches.std(0) / np.sqrt(len(batches)), marginal.std(0) / np.sqrt(20000))
    z = diff[:-1] / se[:-1]
    print("Geweke z-scores", np.round(z, 2))
    assert np.all(np.abs(z) < 4.0), z


# ----------------------------------------------------------------- sampler runs

# One configuration for both tests below, so that they share one compiled sampler.
PAPER = dict(max_clusters=5, max_states=4, n_chains=4, thin=2, chunk_size=20,
             progress=False, seed=0)


@pytest.fixture(scope="module")
def paper_simulation():
    """The paper's simulation: 3 x 10 neurons, T = 500, 2 states, NB counts."""
    return simulate(n_time=500, seed=0)


@pytest.fixture(scope="module")
def short_fit(paper_simulation):
    """A short uninterrupted run (3 blocks of 2 sweeps, 4 chains), shared by the tests below."""
    return BiClustering(n_samples=4, burn_in=2, **PAPER).fit(paper_simulation[0])


def test_checkpoint_resume_gives_identical_draws(tmp_path, paper_simulation, short_fit):
    ds, _ = paper_simulation
    full = short_fit
    path = tmp_path / "chain.npz"
    BiClustering(n_samples=2, burn_in=2, checkpoint=path, **PAPER).fit(ds)  # "interrupted"
    assert path.exists() and not list(tmp_path.glob(".chain*"))
    resumed = BiClustering(n_samples=4, burn_in=2, checkpoint=path, **PAPER).fit(ds)
    for name in ("loglik", "neuron_cluster", "state", "latents", "dispersion"):
        np.testing.assert_array_equal(resumed.posterior_[name].values,
                                      full.posterior_[name].values)
    np.testing.assert_array_equal(resumed.loglik_trace_.values, full.loglik_trace_.values)
    assert resumed.diagnostics_["split_acceptance"] == full.diagnostics_["split_acceptance"]
    other = ds.copy()
    other["activity"] = other.activity[::-1].assign_coords(time=ds.time)
    with pytest.raises(InputDataError, match="other data"):
        BiClustering(n_samples=4, burn_in=2, checkpoint=path, **PAPER).fit(other)
    with np.load(path) as saved:  # a checkpoint of a version whose chain state had no moves
        older = {k: saved[k] for k in saved.files if k != "state_moves"}
    np.savez(path, **older)
    with pytest.raises(FormatError, match="another version"):
        BiClustering(n_samples=4, burn_in=2, checkpoint=path, **PAPER).fit(ds)
    # results round-trip through the pickle-free save/load
    full.save(tmp_path / "model.nc")
    back = BiClustering.load(tmp_path / "model.nc")
    np.testing.assert_array_equal(back.neuron_clusters_.values, full.neuron_clusters_.values)
    assert full.to_inference_data().posterior["loglik"].shape == (4, 4)


def test_diagnostics_without_arviz_warn_and_leave_out_rhat(monkeypatch, short_fit):
    assert set(short_fit.diagnostics_) >= {"rhat_loglik", "ess_n_clusters", "split_acceptance"}
    monkeypatch.setitem(sys.modules, "arviz", None)  # the optional extra is not installed
    with pytest.warns(UserWarning, match="neurodata\\[mcmc\\]"):
        assert short_fit._diagnostics() == {}


def test_recovers_planted_biclusters(paper_simulation):
    """Planted neuron clusters, states and trajectories from a short run (4 chains)."""
    ds, truth = paper_simulation
    model = BiClustering(n_samples=40, burn_in=200, **PAPER).fit(ds)
    neuron_ari = adjusted_rand_score(truth["neuron_clusters"], model.neuron_clusters_.values)
    state_ari = adjusted_rand_score(truth["states"], model.state_sequence_.values)
    # trajectories in the identified form, against the truth's, matched by cluster
    corr = []
    for k in range(3):
        members = truth["neuron_clusters"] == k
        mu, _ = cluster_profile(truth["latents"][:, k], truth["loadings"][members])
        fitted = model.latents_.sel(cluster=np.bincount(
            model.neuron_clusters_.values[members]).argmax(), latent="mu", stat="mean")
        corr.append(np.corrcoef(mu, fitted)[0, 1])
    diag = model.diagnostics_
    print(f"recovery: neuron ARI {neuron_ari:.3f}, state ARI {state_ari:.3f}, "
          f"baseline correlations {np.round(corr, 3)}, "
          f"diagnostics { {k: round(v, 3) for k, v in diag.items()} }")
    # measured (200 burn-in + 80 kept sweeps per chain): neuron ARI 1.000, state ARI 0.820,
    # baseline correlations 0.95 / 0.92 / 0.94, R-hat 1.00 (n_clusters) and 1.11
    # (log-likelihood; 1.30 before the dispersion and interweaving moves); no split or merge
    # of the three well-separated clusters is accepted
    assert neuron_ari >= 0.95, neuron_ari
    assert state_ari >= 0.8, state_ari
    assert min(corr) >= 0.8, corr
    assert model.neuron_coclustering_.shape == (30, 30)
    # the 4 chains agree on the number of clusters; the log-likelihood's R-hat < 1.05 needs
    # about 2,000 sweeps (1.03 in the tutorial's full-size run, which asserts it)
    assert diag["rhat_n_clusters"] < 1.05, diag
    assert diag["rhat_loglik"] < 1.2, diag
