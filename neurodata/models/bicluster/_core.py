"""The Gibbs sweep of the bi-clustering model: pure JAX, one chain, fixed shapes.

Shapes: ``T`` time bins, ``N`` neurons, ``K`` = ``max_clusters`` (truncation of the neuron
mixture), ``d = p + 1`` latent rows per cluster (a baseline ``mu`` and ``p`` factors ``x``),
``S`` = ``max_states`` (weak-limit truncation of the HDP-HMM). Every cluster slot, occupied
or empty, keeps a trajectory; empty slots follow the dynamics prior, so a neuron can move
into a fresh cluster without a trans-dimensional move (Neal's algorithm 8 with the empty
slots as auxiliary clusters). The state ``xi_t`` selects dynamics ``(A_s, b_s, Q_s)`` that act
on each cluster's ``d`` rows: by default one ``d x d`` system shared by all clusters
(``Priors.shared_dynamics``), otherwise one block per cluster and state. Either way the
stacked dynamics are block-diagonal over clusters, which (unlike the reference's full
``K d x K d`` matrices over the occupied clusters) lets the state and dynamics updates
integrate the empty slots' trajectories out exactly and makes the trajectory update ``K``
independent ``d``-dimensional Kalman runs.

One sweep (each block draws from its exact conditional or is a Metropolis-Hastings step
that leaves it invariant, so the kernel is a valid partially collapsed Gibbs sampler):

1. States ``xi | X_occupied, dynamics`` by discrete FFBS (AR-HMM likelihoods of the
   occupied clusters' trajectories; the empty slots' trajectories are integrated out).
   This block move can open and close whole state segments.
2. Shared dynamics ``(A, b, Q) | X_occupied, xi`` from their matrix-normal
   inverse-Wishart posteriors (empty slots still integrated out: steps 1-2 are a Gibbs
   sweep of the marginal, and step 5 redraws every trajectory from its full conditional).
   Per-cluster blocks (``shared_dynamics=False``) are drawn after step 5 instead, each
   given its own slot's trajectory.
3. ``omega ~ PG(y + r, psi - log r)`` (Pólya-Gamma augmentation of the NB likelihood).
4. States again, one bin at a time, with every trajectory integrated out given ``omega``
   (Gerlach, Carter & Kohn 2000: backward information filter, forward Kalman filter; see
   :func:`sample_states_collapsed`). Step 1 conditions on one drawn trajectory, which
   follows the current states closely, so on its own it barely moves a misplaced state
   boundary; this step sees the counts and moves boundaries to where they put them. It is
   a marginal update, valid because step 5 redraws the trajectories right after it.
5. Latent trajectories ``X | omega, z, delta, c, xi, dynamics`` by Kalman FFBS, one
   cluster at a time (vmapped; information-form observation potentials); then (per-cluster
   dynamics) ``(A, b, Q)`` given them, and :func:`rescale_innovations`, an interweaving
   move that scales each state's innovations and ``Q`` together (the trajectories and ``Q``
   otherwise pin each other where the counts are weakly informative).
6. Sticky HDP-HMM weights ``beta`` and transition rows by the CRT auxiliary-table scheme
   with the sticky override (Fox et al. 2011).
7. Neuron labels: ``split_merge_moves`` split-merge proposals of the labels together with
   the trajectory of the slot that a split fills (drawn by Kalman FFBS given the neurons
   it receives) or a merge empties (a prior draw), with the weights and every
   ``(delta_i, c_i)`` integrated out (MH; :func:`_split_merge_move`), then the mixture
   weights ``pi | z``
   (under the MFM prior, the number of components first, from ``p(k | partition)``), then
   each neuron's ``(z_i, delta_i, c_i) | omega, X, pi`` jointly: ``(delta_i, c_i)`` are
   integrated out analytically (the PG-augmented likelihood is Gaussian in them), ``z_i``
   is drawn from its exact collapsed conditional, then ``(delta_i, c_i) | z_i`` from their
   Gaussian posterior.
8. (``negbin`` only) ``omega`` is discarded and each ``r_i`` is drawn given the log-rates
   ``psi_i`` (the mean held fixed) by an independence MH step (:func:`sample_dispersion`).

:func:`sample_prior` draws every variable and the counts from the model (used by the
Geweke joint-distribution test).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import cho_solve, solve_triangular
from jax.scipy.special import gammaln

from neurodata.models._jax.hmm import hmm_sample_posterior
from neurodata.models._jax.kalman import (
    backward_information_filter,
    cho_solve_small,
    cholesky,
    condition,
    ffbs,
    ffbs_with_normalizer,
    log_expected_potential,
    mm,
    solve_lower,
    solve_lower_transpose,
)
from neurodata.models._jax.linalg import chol_logdet, psd_cholesky, symmetrize
from neurodata.models._jax.polyagamma import sample_gamma, sample_pg

_FLOOR = 1e-100


class Priors(NamedTuple):
    """Hyperparameters (defaults follow the reference simulation)."""

    cluster_concentration: float = 1.0
    """``gamma``: mixture weights ``~ Dirichlet(gamma / K, ..., gamma / K)`` (sparse finite
    mixture) or, under the MFM prior, ``Dirichlet(gamma, ..., gamma)`` over ``k`` components."""
    cluster_prior: str = "dirichlet"
    """``"dirichlet"``: ``K``-slot sparse finite mixture; ``"mfm"``: mixture of finite
    mixtures with ``k ~ Geometric(mfm_geometric)`` components, truncated at ``K``."""
    mfm_geometric: float = 0.2
    """Success probability of the geometric prior ``P(k) = r (1 - r)^(k - 1)``, ``k >= 1``."""
    hmm_alpha: float = 5.0
    hmm_gamma: float = 5.0
    hmm_kappa: float = 10.0
    dynamics_scale: float = 0.01
    """``S_0 = dynamics_scale * I`` of the inverse-Wishart prior of ``Q``."""
    dynamics_dof_extra: float = 2.0
    """``nu_0 = D + dynamics_dof_extra``."""
    dynamics_precision: float = 1.0
    """``K_0 = dynamics_precision * I``: prior column precision of ``[A | b]`` around
    ``[I | 0]``."""
    dispersion_shape: float = 1.0
    dispersion_rate: float = 1.0
    poisson_dispersion: float = 100.0
    """Fixed ``r`` of the "Poisson" variant (NB with large dispersion, as in the reference)."""
    shared_dynamics: bool = True
    """One ``(A_s, b_s, Q_s)`` per state acting on every cluster's ``d`` latent rows; if
    false, each cluster has its own blocks per state (clusters still share the switching)."""
    split_merge_moves: int = 2
    """Split-merge proposals for the neuron labels per sweep (kernel setting, not a prior)."""
    split_merge_scans: int = 3
    """Intermediate restricted Gibbs scans that build a split-merge launch state."""


class ChainState(NamedTuple):
    """State of one chain."""

    z: jnp.ndarray  # (N,) neuron cluster labels
    weights: jnp.ndarray  # (K,) mixture weights
    delta: jnp.ndarray  # (N,) neuron baselines
    loadings: jnp.ndarray  # (N, p)
    dispersion: jnp.ndarray  # (N,) NB r_i
    latents: jnp.ndarray  # (T, K, d): [mu, x_1..x_p] per cluster
    states: jnp.ndarray  # (T,) temporal states xi_t
    A: jnp.ndarray  # (S, K, d, d) per-cluster blocks
    b: jnp.ndarray  # (S, K, d)
    Q: jnp.ndarray  # (S, K, d, d)
    beta: jnp.ndarray  # (S,) HDP global weights
    trans: jnp.ndarray  # (S, S) transition matrix
    loglik: jnp.ndarray  # () log p(y | params)
    sweep: jnp.ndarray  # () number of sweeps done
    moves: jnp.ndarray  # (4,) split-merge: splits proposed, accepted; merges proposed, accepted


class Data(NamedTuple):
    """Counts and the statistics of them that the sweep reuses."""

    y: jnp.ndarray  # (T, N) float counts
    tail_counts: jnp.ndarray  # (N, y_max): #{t : y_it > l} for l = 0 .. y_max - 1
    log_factorials: jnp.ndarray  # () sum of log y_it!


def make_data(y, y_max: int | None = None) -> Data:
    """Precompute :class:`Data` from integer counts ``(T, N)``.

    ``y_max`` (static, at least the largest count) fixes the shape under ``jit``.
    """
    y = jnp.asarray(y, dtype=float)
    y_max = max(int(jnp.max(y)), 1) if y_max is None else y_max
    levels = jnp.arange(y_max, dtype=float)
    tail = jnp.sum(y.T[:, :, None] > levels[None, None, :], axis=1).astype(float)
    return Data(y, tail, jnp.sum(gammaln(y + 1.0)))


def log_rate(state: ChainState) -> jnp.ndarray:
    """``psi_it = delta_i + mu^{(z_i)}_t + c_i^T x^{(z_i)}_t``, shape ``(T, N)``."""
    N = state.loadings.shape[0]
    v = jnp.concatenate([jnp.ones((N, 1), state.loadings.dtype), state.loadings], axis=1)
    return state.delta[None, :] + jnp.einsum("tnd,nd->tn", state.latents[:, state.z, :], v)


def nb_loglik(y, psi, dispersion) -> jnp.ndarray:
    """Sum of NB log-pmfs with mean ``exp(psi)`` and dispersion ``r`` (broadcast over ``t``)."""
    r = dispersion[None, :]
    logit = psi - jnp.log(r)
    return jnp.sum(gammaln(y + r) - gammaln(r) - gammaln(y + 1) + y * logit
                   - (y + r) * jax.nn.softplus(logit))


def _dirichlet(key, alpha):
    g = jnp.maximum(sample_gamma(key, jnp.maximum(alpha, _FLOOR)), _FLOOR)
    return g / jnp.sum(g, axis=-1, keepdims=True)


def _potentials(members, delta, loadings, log_r, omega, kappa):
    """Potentials ``(J, h)`` of trajectories ``(G, T, d, d)``, ``(G, T, d)`` given the PG variables.

    ``members`` ``(N, G)`` says which neurons load on trajectory ``g`` with baselines
    ``delta`` ``(N,)`` and loadings ``(N, p)``.
    """
    v = jnp.concatenate([jnp.ones((loadings.shape[0], 1), loadings.dtype), loadings], axis=1)
    resid = kappa - omega * (delta - log_r)[None, :]
    J = jnp.einsum("tn,nk,nd,ne->ktde", omega, members, v, v)
    h = jnp.einsum("tn,nk,nd->ktd", resid, members, v)
    return J, h


def observation_potentials(state: ChainState, omega, kappa):
    """Information-form potentials of every cluster's trajectory given the PG variables.

    The PG-augmented likelihood is Gaussian in ``v_i^T X^{(z_i)}_t`` with pseudo-observation
    ``kappa/omega - (delta_i - log r_i)`` and precision ``omega``. Returns ``J`` ``(K, T, d,
    d)`` and ``h`` ``(K, T, d)``; empty slots get zero potentials.
    """
    K = state.latents.shape[1]
    onehot = jax.nn.one_hot(state.z, K, dtype=omega.dtype)
    return _potentials(onehot, state.delta, state.loadings, jnp.log(state.dispersion), omega,
                       kappa)


def _per_cluster(a, states):
    """Dynamics blocks ``(S, K, ...)`` of the ``T - 1`` transitions, as ``(K, T - 1, ...)``."""
    return jnp.moveaxis(a[states[:-1]], 1, 0)


def sample_latents(key, state: ChainState, J, h) -> jnp.ndarray:
    """Kalman FFBS of every cluster's trajectory given the potentials; ``(T, K, d)``.

    Each neuron loads on one cluster and the dynamics act on each cluster's block
    separately, so the posterior factorises over clusters: ``K`` independent ``d``-dimensional
    FFBS runs (vmapped) replace one ``K d``-dimensional run (``K^2`` times fewer flops).
    Empty slots get no observation potential and are drawn from their dynamics prior.
    """
    K, d = state.latents.shape[1:]
    x = jax.vmap(ffbs, in_axes=(0, None, None, 0, 0, 0, 0, 0))(
        jax.random.split(key, K), jnp.zeros(d), jnp.eye(d),
        *(_per_cluster(a, state.states) for a in (state.A, state.b, state.Q)), J, h)
    return jnp.moveaxis(x, 0, 1)


def sample_states_collapsed(key, states, A, b, Q, trans, J, h, occupied) -> jnp.ndarray:
    """Single-site Gibbs update of every ``xi_t`` with all trajectories integrated out.

    Gerlach, Carter & Kohn (2000): a backward information filter under the current states
    gives ``p(potentials_{t+1:} | X_{t+1})``; a forward Kalman filter under the already
    updated ``xi_{<t}`` gives ``p(X_t | potentials_{<=t})``; the two meet through the
    transition that ``xi_t`` selects, so each ``p(xi_t | xi_{-t}, omega, ...)`` is exact and
    costs ``O(S K d^3)``. The update sees the counts (through the PG potentials) rather than
    one drawn trajectory, which follows the current states closely; it moves state
    boundaries to where the data put them. Empty slots have no potentials and drop out.
    """
    T = states.shape[0]
    d = A.shape[-1]
    Omegas, omegas = jax.vmap(backward_information_filter)(
        *(_per_cluster(a, states) for a in (A, b, Q)), J, h)
    log_trans = jnp.log(trans)
    keep = occupied > 0
    m0, P0 = jax.vmap(condition, in_axes=(None, None, 0, 0))(jnp.zeros(d), jnp.eye(d),
                                                             J[:, 0], h[:, 0])
    expected = jax.vmap(jax.vmap(log_expected_potential), in_axes=(0, 0, None, None))

    def step(carry, inputs):
        m, P, s_prev = carry
        t, Om, om, J1, h1, s_next, k = inputs
        mu = mm(A, m[None]) + b
        cov = mm(mm(A, P[None]), jnp.swapaxes(A, -1, -2)) + Q
        ll = jnp.sum(jnp.where(keep[None], expected(mu, cov, Om, om), 0.0), axis=1)
        logits = ll + log_trans[:, s_next] + jnp.where(t > 0, log_trans[s_prev], 0.0)
        s = jax.random.categorical(k, logits)
        m_new, P_new = jax.vmap(condition)(mu[s], cov[s], J1, h1)
        # empty slots are reset rather than predicted: under per-cluster dynamics their
        # prior-drawn blocks may be explosive, and they carry no likelihood anyway
        m = jnp.where(keep[:, None], m_new, m0)
        P = jnp.where(keep[:, None, None], P_new, P0)
        return (m, P, s), s

    time_first = lambda a: jnp.moveaxis(a, 0, 1)[1:]  # noqa: E731  (T - 1, K, ...)
    keys = jax.random.split(key, T)
    (_, _, s_prev), head = lax.scan(
        step, (m0, P0, jnp.asarray(0)),
        (jnp.arange(T - 1), time_first(Omegas), time_first(omegas), time_first(J),
         time_first(h), states[1:], keys[:-1]))
    last = jax.random.categorical(keys[-1], log_trans[s_prev])
    return jnp.concatenate([head, last[None]]).astype(states.dtype)


def transition_loglik(latents, A, b, Q, occupied) -> jnp.ndarray:
    """``(T, S)``: ``sum_k occupied_k log N(X^k_{t+1}; A_sk X^k_t + b_sk, Q_sk)``.

    The last bin has no transition (zeros). Empty slots (``occupied`` false) are left out,
    which integrates their trajectories out of the state update.
    """
    chol = cholesky(Q)  # (S, K, d, d)
    d = latents.shape[2]
    resid = (latents[1:, None] - jnp.einsum("skde,tke->tskd", A, latents[:-1])
             - b[None])  # (T-1, S, K, d)
    # unrolled triangular solves: one LAPACK call per 3 x 3 block cost 4x more
    half = solve_lower(chol[None], resid)
    ll = -0.5 * (jnp.sum(half**2, axis=-1) + chol_logdet(chol)[None]
                 + d * jnp.log(2 * jnp.pi))  # (T-1, S, K)
    ll = jnp.sum(jnp.where(occupied[None, None, :] > 0, ll, 0.0), axis=-1)
    return jnp.concatenate([ll, jnp.zeros_like(ll[:1])])


def sample_states(key, latents, A, b, Q, trans, occupied) -> jnp.ndarray:
    """Discrete FFBS of the temporal states (uniform initial distribution)."""
    S = trans.shape[0]
    ll = transition_loglik(latents, A, b, Q, occupied)
    return hmm_sample_posterior(key, jnp.full(S, 1.0 / S), trans, ll).astype(jnp.int32)


def _sample_mniw(key, Suu, Syu, Syy, n, S0, nu0):
    """One ``([A | b], Q)`` draw from a matrix-normal inverse-Wishart posterior."""
    D = Syy.shape[0]
    k_chi, k_off, k_mat = jax.random.split(key, 3)
    chol_u = psd_cholesky(Suu)
    Mn = cho_solve((chol_u, True), Syu.T).T
    Sn = symmetrize(S0 + Syy - Mn @ Syu.T)
    nu = nu0 + n
    chol_s = psd_cholesky(Sn)
    # Bartlett: Q^{-1} ~ Wishart(Sn^{-1}, nu), Q = (Us A^{-T})(Us A^{-T})^T
    diag = jnp.sqrt(2.0 * sample_gamma(k_chi, (nu - jnp.arange(D)) / 2.0))
    lower = jnp.tril(jax.random.normal(k_off, (D, D)), -1) + jnp.diag(diag)
    M = solve_triangular(lower, chol_s.T, lower=True).T
    Q = symmetrize(M @ M.T)
    Z = jax.random.normal(k_mat, Syu.shape)
    AB = Mn + M @ solve_triangular(chol_u.T, Z.T, lower=False).T
    return AB[:, :D], AB[:, D], Q


def dynamics_statistics(latents, states, occupied, n_states: int, priors: Priors):
    """MNIW posterior statistics ``(Suu, Syu, Syy, n)`` of the dynamics, prior included.

    Per state and cluster ``(S, K, ...)``, or pooled over clusters ``(S, ...)`` when
    ``priors.shared_dynamics``. Empty slots (``occupied`` zero) contribute nothing: their
    trajectories are integrated out (they have no data), so their blocks follow the prior.
    """
    T, K, d = latents.shape
    # a left-out slot's trajectory may have overflowed (see sample_clusters): zero it rather
    # than weigh it by zero, which would keep its NaNs
    latents = jnp.where(occupied[None, :, None] > 0, latents, 0.0)
    u = jnp.concatenate([latents[:-1], jnp.ones((T - 1, K, 1))], axis=2)  # (T-1, K, d+1)
    y = latents[1:]
    W = (jax.nn.one_hot(states[:-1], n_states, dtype=latents.dtype)[:, :, None]
         * occupied[None, None, :])  # (T-1, S, K)
    if priors.shared_dynamics:
        spec = "tsk,tkd,tke->sde"
        n = jnp.sum(W, axis=(0, 2))
    else:
        spec = "tsk,tkd,tke->skde"
        n = jnp.sum(W, axis=0)
    K0 = priors.dynamics_precision * jnp.eye(d + 1)
    M0 = jnp.concatenate([jnp.eye(d), jnp.zeros((d, 1))], axis=1)
    Suu = jnp.einsum(spec, W, u, u) + K0
    Syu = jnp.einsum(spec, W, y, u) + M0 @ K0
    Syy = jnp.einsum(spec, W, y, y) + M0 @ K0 @ M0.T
    return Suu, Syu, Syy, n


def sample_dynamics(key, latents, states, occupied, n_states: int, priors: Priors):
    """``(A, b, Q)`` per state (and cluster) from the MNIW posterior given ``X_occupied``, ``xi``.

    Prior: ``[A | b] ~ MN([I | 0], Q, K_0^{-1})``, ``Q ~ IW(S_0, d + 2)``. Returns arrays of
    shape ``(S, K, d, d)``, ``(S, K, d)``, ``(S, K, d, d)``; with shared dynamics every
    cluster's block is the same draw.
    """
    K, d = latents.shape[1:]
    Suu, Syu, Syy, n = dynamics_statistics(latents, states, occupied, n_states, priors)
    lead = n.shape
    S0 = priors.dynamics_scale * jnp.eye(d)
    nu0 = d + priors.dynamics_dof_extra
    flat = lambda a: a.reshape(-1, *a.shape[len(lead):])  # noqa: E731
    keys = jax.random.split(key, math.prod(lead))
    A, b, Q = jax.vmap(_sample_mniw, in_axes=(0, 0, 0, 0, 0, None, None))(
        keys, flat(Suu), flat(Syu), flat(Syy), flat(n), S0, nu0)
    A, b, Q = (a.reshape(*lead, *a.shape[1:]) for a in (A, b, Q))
    if priors.shared_dynamics:
        A, b, Q = (jnp.broadcast_to(a[:, None], (n_states, K, *a.shape[1:])) for a in (A, b, Q))
    return A, b, Q


def rescale_innovations(key, state: ChainState, J, h_obs, occupied, priors: Priors):
    """Rescale each state's innovations and noise covariance together (an interweaving move).

    Given ``omega``, the trajectories pin each state's ``Q`` and ``Q`` pins them: in a state
    where the counts say little about the trajectories (the paper's quiet state: about 25
    units of data precision per bin against 100 of dynamics precision) the two drift
    together slowly, and the log-likelihood with them. This move goes along that ridge with
    the group of positive scalings of Liu & Sabatti (2000), one state ``s`` after the
    other: every innovation ``e_t = x_{t+1} - A x_t - b`` of a transition in state ``s`` is
    multiplied by ``g`` (the trajectory is rebuilt forward, ``X(g) = X + (g - 1) X^{(s)}``
    with ``X^{(s)}`` the response to state ``s``'s innovations; the other states'
    innovations do not change) and ``Q_s`` by ``g^2``; per cluster under per-cluster
    dynamics, all clusters at once under shared ones. The transition densities' change
    cancels the trajectory's Jacobian, so along the orbit the target is the PG-augmented
    likelihood, Gaussian in ``g``, times ``pi(g) = g^{-a} exp(-c / g^2)`` with
    ``a = d (nu_0 + d + 1) + 1`` (inverse-Wishart and matrix-normal priors, the Jacobian of
    ``Q`` and the Haar measure ``dg / g``) and ``c = tr(Q^{-1} [S_0 + (AB - M_0) K_0 (AB -
    M_0)^T]) / 2``. The proposal is the Gaussian likelihood times the Laplace approximation of
    ``pi`` at its mode ``sqrt(2 c / a)`` (both are fixed points of the orbit, so this is an
    independence sampler on it), accepted with the ratio of ``pi`` to its approximation.
    Unvisited states and empty clusters keep ``g = 1``. ``J``, ``h_obs`` are the observation
    potentials (:func:`observation_potentials`), so the move costs ``O(S K T d^2)``.
    """
    T, K, d = state.latents.shape
    S = state.A.shape[0]
    x, A, b, states = state.latents, state.A, state.b, state.states
    A_t, b_t = A[states[:-1]], b[states[:-1]]  # (T-1, K, d, d), (T-1, K, d)
    innov = x[1:] - mm(A_t, x[:-1]) - b_t
    onehot = jax.nn.one_hot(states[:-1], S, dtype=x.dtype)

    def forward(resp, inputs):
        A_now, e, ind = inputs
        resp = mm(A_now[None], resp) + ind[:, None, None] * e[None]
        return resp, resp

    _, resp = lax.scan(forward, jnp.zeros((S, K, d), x.dtype), (A_t, innov, onehot))
    resp = jnp.concatenate([jnp.zeros((1, S, K, d), x.dtype), resp])  # (T, S, K, d)
    resp = jnp.moveaxis(resp, 0, 2)  # (S, K, T, d)
    visited = (jnp.sum(onehot, axis=0)[:, None] > 0) & (occupied[None, :] > 0)  # (S, K)
    # c for every block: tr(Q^{-1} [S_0 + (AB - M_0) K_0 (AB - M_0)^T]) / 2
    dev = jnp.concatenate([A - jnp.eye(d), b[..., None]], axis=-1)
    scatter = (priors.dynamics_scale * jnp.eye(d)
               + priors.dynamics_precision * jnp.einsum("skde,skfe->skdf", dev, dev))
    c_all = 0.5 * jnp.trace(cho_solve_small(cholesky(state.Q), scatter), axis1=-2, axis2=-1)
    power = d * (2 * d + priors.dynamics_dof_extra + 1) + 1

    def one_state(resid, inputs):
        # resid: (K, T, d) gradient of the PG log-likelihood in each cluster's trajectory,
        # h - J x; along X + (g - 1) X^{(s)} the log-likelihood is Gaussian in g
        r_s, used, c, k = inputs  # (K, T, d), (K,), (K,), key
        h = jnp.sum(r_s * resid, axis=(1, 2))
        P = jnp.sum(r_s * mm(J, r_s), axis=(1, 2))
        if priors.shared_dynamics:
            h, P = jnp.sum(h, keepdims=True), jnp.sum(P, keepdims=True)
            used, c = jnp.any(used, keepdims=True), c[:1]
        used = used & (P > 0)
        P = jnp.where(used, P, 1.0)
        mode, prec_pi = jnp.sqrt(2.0 * c / power), power**2 / c
        prec = P + prec_pi
        mean = (P + h + prec_pi * mode) / prec  # likelihood N(1 + h / P, 1 / P) times N(mode, .)
        k_prop, k_acc = jax.random.split(k)
        g = mean + jax.random.normal(k_prop, mean.shape, mean.dtype) / jnp.sqrt(prec)
        safe = jnp.where(g > 0, g, 1.0)

        def log_excess(g):  # log pi - log of its Gaussian approximation
            return -power * jnp.log(g) - c / g**2 + 0.5 * prec_pi * (g - mode) ** 2

        log_ratio = jnp.where(g > 0, log_excess(safe) - log_excess(jnp.ones_like(g)), -jnp.inf)
        accept = used & (jnp.log(jax.random.uniform(k_acc, g.shape, g.dtype)) < log_ratio)
        g = jnp.broadcast_to(jnp.where(accept, g, 1.0), (K,))
        return resid - (g - 1.0)[:, None, None] * mm(J, r_s), g

    resid = h_obs - mm(J, jnp.moveaxis(x, 0, 1))
    _, g = lax.scan(one_state, resid, (resp, visited, c_all, jax.random.split(key, S)))
    latents = x + jnp.einsum("sktd,sk->tkd", resp, g - 1.0)
    return latents, state.Q * (g**2)[..., None, None]


def _crt_sum(key, counts, conc, max_count: int):
    """``CRT(n, a)`` draws: ``sum_{l < n} Bernoulli(a / (a + l))`` elementwise."""
    levels = jnp.arange(max_count, dtype=conc.dtype)
    u = jax.random.uniform(key, (*counts.shape, max_count), conc.dtype)
    hit = (u < conc[..., None] / (conc[..., None] + levels)) & (levels < counts[..., None])
    return jnp.sum(hit, axis=-1).astype(conc.dtype)


def sample_transitions(key, states, beta, priors: Priors):
    """Sticky HDP-HMM (weak limit): ``beta`` via CRT tables with the override, then rows."""
    S = beta.shape[0]
    T = states.shape[0]
    k_m, k_w, k_beta, k_rows = jax.random.split(key, 4)
    n = jnp.zeros((S, S)).at[states[:-1], states[1:]].add(1.0)
    alpha, kappa, gamma = priors.hmm_alpha, priors.hmm_kappa, priors.hmm_gamma
    conc = alpha * beta[None, :] + kappa * jnp.eye(S)
    m = _crt_sum(k_m, n, conc, T - 1)
    rho = kappa / (alpha + kappa)
    p_override = rho / (rho + beta * (1 - rho))
    levels = jnp.arange(T - 1)
    u = jax.random.uniform(k_w, (S, T - 1))
    w = jnp.sum((u < p_override[:, None]) & (levels[None, :] < jnp.diag(m)[:, None]), axis=1)
    m_bar = m - jnp.diag(w.astype(m.dtype))
    beta = _dirichlet(k_beta, gamma / S + jnp.sum(m_bar, axis=0))
    trans = _dirichlet(k_rows, alpha * beta[None, :] + kappa * jnp.eye(S) + n)
    return beta, trans


def cluster_log_marginals(latents, omega, kappa, log_r, log_weights):
    """Collapsed ``log p(z_i = k | omega, X, pi)`` with ``(delta_i, c_i)`` integrated out.

    Returns the ``(N, K)`` unnormalised log probabilities and the per-``(i, k)`` Gaussian
    posterior of ``(delta_i, c_i)``: mean ``(N, K, d)`` and Cholesky of its precision.
    """
    d = latents.shape[2]
    mu = latents[..., 0]
    G = jnp.concatenate([jnp.ones_like(latents[..., :1]), latents[..., 1:]], axis=2)
    # PG-Gaussian: sum_t kappa psi' - omega psi'^2 / 2, psi' = G beta + mu - log r
    shifted = kappa + omega * log_r[None, :]
    prec = jnp.eye(d) + jnp.einsum("tn,tkd,tke->nkde", omega, G, G)
    h = jnp.einsum("tn,tkd->nkd", shifted, G) - jnp.einsum("tn,tk,tkd->nkd", omega, mu, G)
    const = jnp.einsum("tn,tk->nk", shifted, mu) - 0.5 * jnp.einsum("tn,tk->nk", omega, mu**2)
    chol = cholesky(prec)
    mean = cho_solve_small(chol, h)
    logp = (log_weights[None, :] + const + 0.5 * jnp.sum(h * mean, axis=-1)
            - 0.5 * chol_logdet(chol))
    return logp, mean, chol


def mfm_log_components(n_occupied, n_neurons: int, n_slots: int, priors: Priors):
    """``log p(k | partition)`` for ``k = 1 .. n_slots`` under the MFM prior (unnormalised).

    Miller & Harrison (2018): ``p(C | k) = k! / (k - t)! * Gamma(k g) / Gamma(k g + n) *
    prod_c Gamma(|c| + g) / Gamma(g)`` for a partition ``C`` with ``t`` blocks, so
    ``p(k | C) ∝ p(k) k! / (k - t)! Gamma(k g) / Gamma(k g + n)``.
    """
    k = jnp.arange(1, n_slots + 1, dtype=float)
    g, r = priors.cluster_concentration, priors.mfm_geometric
    logp = (jnp.log(r) + (k - 1) * jnp.log1p(-r) + gammaln(k + 1)
            - gammaln(jnp.maximum(k - n_occupied + 1, 1.0)) + gammaln(k * g)
            - gammaln(k * g + n_neurons))
    return jnp.where(k >= n_occupied, logp, -jnp.inf)


def sample_weights(key, z, n_slots: int, priors: Priors):
    """Mixture weights ``(K,)`` given the labels (zero on inactive slots under MFM).

    Under the MFM prior the number of components ``k`` is drawn from ``p(k | partition)``
    first; the occupied slots plus the first ``k - t`` empty ones are the active components
    (empty slots are exchangeable: their trajectories are i.i.d. prior draws, so which ones
    are activated does not matter), and the weights are ``Dirichlet(g + n_j)`` over them.
    """
    N = z.shape[0]
    counts = jnp.zeros(n_slots).at[z].add(1.0)
    k_k, k_w = jax.random.split(key)
    if priors.cluster_prior == "mfm":
        occupied = counts > 0
        n_occ = jnp.sum(occupied)
        k = 1 + jax.random.categorical(k_k, mfm_log_components(n_occ, N, n_slots, priors))
        empty_rank = jnp.cumsum(~occupied) - 1
        active = occupied | (empty_rank < k - n_occ)
        g = jnp.maximum(sample_gamma(k_w, priors.cluster_concentration + counts), _FLOOR)
        g = jnp.where(active, g, 0.0)
        return g / jnp.sum(g)
    return _dirichlet(k_w, priors.cluster_concentration / n_slots + counts)


def log_partition_prior(counts, priors: Priors) -> jnp.ndarray:
    """``log p(z)`` of labels with slot sizes ``counts`` ``(K,)``, weights integrated out.

    Sparse finite mixture: the Dirichlet-multinomial ``sum_k log Gamma(n_k + gamma / K) -
    log Gamma(gamma / K)`` (constants in ``N`` dropped). MFM: the partition prior of Miller &
    Harrison, ``V_N(t) prod_c Gamma(n_c + g) / Gamma(g)``, spread evenly over the ``K! / (K -
    t)!`` ways to place its ``t`` blocks in the slots (the slots are exchangeable).
    """
    K = counts.shape[0]
    occupied = counts > 0
    if priors.cluster_prior == "mfm":
        g = priors.cluster_concentration
        t = jnp.sum(occupied)
        log_v = jax.scipy.special.logsumexp(
            mfm_log_components(t, jnp.sum(counts), K, priors))
        return (log_v + jnp.sum(jnp.where(occupied, gammaln(counts + g) - gammaln(g), 0.0))
                + gammaln(K - t + 1.0))
    a = priors.cluster_concentration / K
    return jnp.sum(gammaln(counts + a) - gammaln(a))


class MoveContext(NamedTuple):
    """What the split-merge moves condition on (none of it changes during the moves)."""

    omega: jnp.ndarray  # (T, N) PG variables
    kappa: jnp.ndarray  # (T, N)
    log_r: jnp.ndarray  # (N,)
    A: jnp.ndarray  # (S, K, d, d) dynamics of every slot
    b: jnp.ndarray
    Q: jnp.ndarray
    states: jnp.ndarray  # (T,)


class Marginals(NamedTuple):
    """Collapsed marginals of every neuron and slot (:func:`cluster_log_marginals`).

    Log marginal, posterior mean and precision Cholesky of ``(delta_i, c_i)``; the
    split-merge moves keep them in step with the trajectories.
    """

    loglik: jnp.ndarray  # (N, K)
    mean: jnp.ndarray  # (N, K, d)
    chol: jnp.ndarray  # (N, K, d, d)


def _marginal_column(x, ctx: MoveContext) -> Marginals:
    """:class:`Marginals` of every neuron under one trajectory ``x`` ``(T, d)``: ``(N, 1, ...)``."""
    loglik, mean, chol = cluster_log_marginals(x[:, None], ctx.omega, ctx.kappa, ctx.log_r,
                                               jnp.zeros(1))
    # an overflowed prior-drawn trajectory explains nobody (see sample_clusters)
    return Marginals(jnp.where(jnp.isfinite(loglik), loglik, -jnp.inf), mean, chol)


def sample_prior_paths(key, A_t, b_t, Q_t) -> jnp.ndarray:
    """Trajectories ``(T, G, d)`` from the dynamics prior, ``x_0 ~ N(0, I)``.

    ``A_t``, ``b_t``, ``Q_t`` are the ``T - 1`` transitions of ``G`` independent slots:
    ``(T - 1, G, d, d)``, ``(T - 1, G, d)``, ``(T - 1, G, d, d)``.
    """
    k0, k1 = jax.random.split(key)
    x0 = jax.random.normal(k0, b_t.shape[1:], b_t.dtype)
    noise = mm(cholesky(Q_t), jax.random.normal(k1, b_t.shape, b_t.dtype))

    def step(x, inputs):
        A, b, e = inputs
        x = mm(A, x) + b + e
        return x, x

    _, xs = lax.scan(step, x0, (A_t, b_t, noise))
    return jnp.concatenate([x0[None], xs])


def _split_merge_move(key, carry, ctx: MoveContext, priors: Priors):
    r"""One split-merge proposal of the labels and one slot's trajectory, accepted by MH.

    The target is the conditional of the labels ``z`` and the trajectories ``X`` given the PG
    variables, the dispersions, the states and every slot's dynamics, with the mixture
    weights and each neuron's ``(delta_i, c_i)`` integrated out:

    .. math::

        \pi(z, X) \propto p(z) \prod_k p_k(X^{(k)}) \prod_i M_i(X^{(z_i)}),

    ``p(z)`` from :func:`log_partition_prior`, ``p_k`` the dynamics prior of slot ``k``,
    ``M_i`` the Gaussian integral over ``(delta_i, c_i)`` (:func:`cluster_log_marginals`).
    Neurons ``i != j`` are drawn uniformly; ``c = z_j`` keeps its trajectory ``X^{(c)}``
    either way.

    *Split* (``z_i = z_j = c``): an empty slot ``e`` is chosen uniformly among the
    ``n_0`` empty ones; ``i`` goes to ``e``, ``j`` stays, and the other members of ``c`` are
    allocated between ``c`` and ``e`` by restricted Gibbs scans (Jain & Neal 2004) from a
    launch state; then ``X^{(e)}`` is drawn by Kalman FFBS from
    ``q(X | E) = p_e(X) \exp(U_E(X)) / Z_E`` with ``U_E`` the PG potentials of the
    neurons ``E`` in ``e`` (at fixed plug-in baselines and loadings, below) and ``Z_E`` the
    filter's normaliser. *Merge* (``z_i = e != c``): every member of ``e`` moves to ``c``
    and the emptied slot gets a fresh draw ``X' ~ p_e`` (it must: the reverse split draws a
    new trajectory for it). The move is its own reverse pair, so

    .. math::

        \log\alpha_{split} = \log\frac{p(z')}{p(z)} + \sum_{n \in E}
        [\log M_n(X^{(e)}_{new}) - \log M_n(X^{(c)})] + \log Z_E - U_E(X^{(e)}_{new})
        + \log n_0 - \log q_{alloc}(E),

    (``p_e(X_new) / q(X_new) = Z_E / exp(U_E(X_new))``; the old empty-slot trajectory's prior
    density cancels against the reverse merge's fresh prior draw), and for a merge of
    ``E = members(e)``

    .. math::

        \log\alpha_{merge} = \log\frac{p(z')}{p(z)} + \sum_{n \in E}
        [\log M_n(X^{(c)}) - \log M_n(X^{(e)})] + U_E(X^{(e)}) - \log Z_E
        - \log(n_0 + 1) + \log q_{alloc}(E),

    with ``q_alloc(E)`` the probability that the final restricted scan recreates the current
    allocation. The restricted scans weigh label ``c`` by ``M_n(X^{(c)})`` and label ``e`` by
    ``M_n`` under a *launch trajectory*: the smoothed mean of ``X`` given neuron ``i``
    alone, at its posterior mean of ``(delta_i, c_i)`` under ``X^{(c)}``; the proposal's
    plug-ins are every neuron's posterior mean of ``(delta_n, c_n)`` under the launch
    trajectory. Everything that shapes the proposal (launch trajectory, plug-ins, slot
    ``e``'s dynamics, the random launch allocation) is the same before and after the move,
    as the detailed balance above needs. Returns the new carry and ``(split proposed,
    merge proposed, accepted)``.
    """
    z, latents, marg = carry
    N, K = marg.loglik.shape
    d = latents.shape[2]
    k_i, k_j, k_slot, k_launch, k_scans, k_final, k_path, k_prior, k_acc = jax.random.split(
        key, 9)
    i = jax.random.randint(k_i, (), 0, N)
    j = (i + jax.random.randint(k_j, (), 1, N)) % N
    counts = jnp.zeros(K).at[z].add(1.0)
    empty = counts == 0
    n_empty = jnp.sum(empty)
    same = z[i] == z[j]
    a = (priors.cluster_concentration if priors.cluster_prior == "mfm"
         else priors.cluster_concentration / K)
    slot = jax.random.categorical(k_slot, jnp.where(empty, 0.0, -jnp.inf))
    e = jnp.where(same, slot, z[i]).astype(z.dtype)
    c = z[j]
    idx = jnp.arange(N)
    movable = ((z == z[i]) | (z == z[j])) & (idx != i) & (idx != j)
    dyn = tuple(m[ctx.states[:-1], e] for m in (ctx.A, ctx.b, ctx.Q))  # slot e, (T - 1, ...)

    def smooth(key, members, plug):
        J, h = _potentials(members[:, None].astype(plug.dtype), plug[:, 0], plug[:, 1:],
                           ctx.log_r, ctx.omega, ctx.kappa)
        x, log_z = ffbs_with_normalizer(key, jnp.zeros(d), jnp.eye(d), *dyn, J[0], h[0])

        def potential(x):
            return jnp.sum(h[0] * x) - 0.5 * jnp.sum(x * mm(J[0], x))

        return x, log_z, potential

    # launch trajectory, which sees only what the move keeps fixed: the smoothed mean given
    # neuron i, its plug-in (delta_i, c_i) the posterior mean under X^(c). (A second stage,
    # smoothing given every movable neuron the first explains better than X^(c) does, did
    # not split the planted under-split of the tests more often.)
    col_c = marg.loglik[:, c]
    launch = _marginal_column(smooth(None, idx == i, marg.mean[:, c])[0], ctx)
    col_e = launch.loglik[:, 0]

    def scan_once(key, labels, target, forced):
        """Restricted Gibbs scan over ``movable``: new labels and log q of the outcome.

        With ``forced``, the scan is forced to produce ``target`` (reverse probability).
        """
        def step(carry, inputs):
            labels, logq = carry
            n, u = inputs
            others = labels.at[n].set(-1)
            lp_e = jnp.log(jnp.sum(others == e) + a) + col_e[n]
            lp_c = jnp.log(jnp.sum(others == c) + a) + col_c[n]
            norm = jnp.logaddexp(lp_e, lp_c)
            to_e = jnp.where(forced, target[n] == e, jnp.log(u) < lp_e - norm)
            lq = jnp.where(to_e, lp_e, lp_c) - norm
            labels = labels.at[n].set(jnp.where(movable[n], jnp.where(to_e, e, c), labels[n]))
            return (labels, logq + jnp.where(movable[n], lq, 0.0)), None

        (labels, logq), _ = lax.scan(step, (labels, 0.0),
                                     (idx, jax.random.uniform(key, (N,))))
        return labels, logq

    labels = jnp.where(jax.random.bernoulli(k_launch, 0.5, (N,)), e, c)
    labels = jnp.where(movable, labels, z).at[i].set(e).at[j].set(c)
    labels = lax.scan(lambda lab, k: (scan_once(k, lab, z, False)[0], None), labels,
                      jax.random.split(k_scans, priors.split_merge_scans))[0]
    # the final scan and the forced scan that would recreate z (reverse probability), as
    # one vmapped scan (one copy to compile)
    final, logq = jax.vmap(scan_once, in_axes=(None, None, None, 0))(
        k_final, labels, z, jnp.asarray([False, True]))
    split, logq_split, logq_back = final[0], logq[0], logq[1]
    in_e = jnp.where(same, split == e, z == e)  # the neurons of slot e when it is occupied
    # proposal given them, plug-ins under the launch trajectory
    x_split, log_z, potential = smooth(k_path, in_e, launch.mean[:, 0])
    x_merge = sample_prior_paths(k_prior, *(m[:, None] for m in dyn))[:, 0]
    x_new = jnp.where(same, x_split, x_merge)
    col_new = _marginal_column(x_new, ctx)
    merged = jnp.where(movable | (idx == i), c, z)
    proposal = jnp.where(same, split, merged)
    prior_ratio = (log_partition_prior(jnp.zeros(K).at[proposal].add(1.0), priors)
                   - log_partition_prior(counts, priors))
    data_split = jnp.sum(jnp.where(in_e, col_new.loglik[:, 0] - col_c, 0.0))
    data_merge = jnp.sum(jnp.where(in_e, col_c - marg.loglik[:, e], 0.0))
    log_ratio = prior_ratio + jnp.where(
        same,
        data_split + log_z - potential(x_split) + jnp.log(jnp.maximum(n_empty, 1.0))
        - logq_split,
        data_merge + potential(latents[:, e]) - log_z - jnp.log(n_empty + 1.0) + logq_back)
    log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
    accept = (jnp.log(jax.random.uniform(k_acc)) < log_ratio) & ~(same & (n_empty == 0))
    z = jnp.where(accept, proposal, z).astype(z.dtype)
    latents = latents.at[:, e].set(jnp.where(accept, x_new, latents[:, e]))
    marg = Marginals(*(m.at[:, e].set(jnp.where(accept, new[:, 0], m[:, e]))
                       for m, new in zip(marg, col_new, strict=True)))
    return (z, latents, marg), jnp.stack([same, ~same, accept]).astype(jnp.int32)


def split_merge(key, z, latents, marg: Marginals, ctx: MoveContext, priors: Priors):
    """``priors.split_merge_moves`` successive split-merge proposals (see above).

    Returns the labels, trajectories and :class:`Marginals` after the moves, and counts
    ``(4,)`` of proposed and accepted splits and merges.
    """
    def move(carry, k):
        return _split_merge_move(k, carry, ctx, priors)

    (z, latents, marg), info = lax.scan(move, (z, latents, marg),
                                        jax.random.split(key, priors.split_merge_moves))
    split, merge, accepted = info[:, 0], info[:, 1], info[:, 2]
    counts = jnp.stack([jnp.sum(split), jnp.sum(split * accepted), jnp.sum(merge),
                        jnp.sum(merge * accepted)]).astype(jnp.int32)
    return z, latents, marg, counts


def sample_clusters(key, state: ChainState, omega, kappa, priors: Priors):
    """Split-merge moves, the mixture weights, then ``(z_i, delta_i, c_i)`` for every neuron.

    The split-merge moves target the labels and trajectories with the weights integrated
    out; the weights are then drawn given the new labels (a partially collapsed Gibbs step).
    Returns the weights, labels, baselines, loadings, trajectories and the split-merge
    counts (:func:`split_merge`).
    """
    K = state.latents.shape[1]
    k_sm, k_w, k_z, k_beta = jax.random.split(key, 4)
    log_r = jnp.log(state.dispersion)
    marg = Marginals(*cluster_log_marginals(state.latents, omega, kappa, log_r, jnp.zeros(K)))
    # Numerical guard: an empty slot's trajectory is a draw from the dynamics prior, whose
    # heavy-tailed inverse-Wishart allows explosive blocks; over hundreds of bins such a
    # draw can overflow. A neuron's likelihood under it is zero in exact arithmetic, so the
    # slot is simply not available to the neurons (it never is for an occupied slot,
    # whose trajectory the counts hold down).
    marg = marg._replace(loglik=jnp.where(jnp.isfinite(marg.loglik), marg.loglik, -jnp.inf))
    z, latents = state.z, state.latents
    counts = jnp.zeros(4, jnp.int32)
    if priors.split_merge_moves > 0 and z.shape[0] > 1:
        ctx = MoveContext(omega, kappa, log_r, state.A, state.b, state.Q, state.states)
        z, latents, marg, counts = split_merge(k_sm, z, latents, marg, ctx, priors)
    weights = sample_weights(k_w, z, K, priors)
    log_w = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
    z = jax.random.categorical(k_z, marg.loglik + log_w[None, :], axis=1).astype(jnp.int32)
    idx = jnp.arange(z.shape[0])
    m, L = marg.mean[idx, z], marg.chol[idx, z]
    beta = m + solve_lower_transpose(L, jax.random.normal(k_beta, m.shape))
    return weights, z, beta[:, 0], beta[:, 1:], latents, counts


def _dispersion_terms(u, data: Data, rate):
    """NB log-likelihood terms of each neuron that depend on ``r_i = exp(u_i)``, mean fixed.

    ``ell_i = sum_t log Gamma(y + r) - log Gamma(r) + r log r - (y + r) log(r + rate)``, and
    ``r d(ell)/dr``, ``r^2 d^2(ell)/dr^2``. ``sum_t log Gamma(y + r) - log Gamma(r)`` and its
    derivatives come from the tail counts (``sum_l #{t: y_t > l} log(r + l)``); the rest is
    ``O(T N)``. The full log-likelihood is ``sum_i ell_i + sum_t y psi - sum log y!``.
    """
    r = jnp.exp(u)
    T = rate.shape[0]
    y, tail = data.y, data.tail_counts
    shifted = r[:, None] + jnp.arange(tail.shape[1], dtype=u.dtype)[None, :]  # r + l
    r_plus_m = r[None, :] + rate
    log_rm = jnp.log(r_plus_m)
    w = r[None, :] / r_plus_m
    ell = (jnp.sum(tail * jnp.log(shifted), axis=1) + T * r * u
           - jnp.sum((y + r[None, :]) * log_rm, axis=0))
    g = (r * jnp.sum(tail / shifted, axis=1) + T * r * (u + 1.0)
         - jnp.sum(r[None, :] * log_rm + (y + r[None, :]) * w, axis=0))
    h = (-r**2 * jnp.sum(tail / shifted**2, axis=1) + T * r
         - jnp.sum(r[None, :] * w * (2.0 - w) - y * w**2, axis=0))
    return ell, g, h


def _dispersion_logpost(u, data: Data, rate, priors: Priors):
    """``log p(r_i | y_i, psi_i)`` at ``u = log r_i`` (up to a constant), ``d/du``, ``d2/du2``.

    :func:`_dispersion_terms` plus the gamma prior and the Jacobian of ``u = log r``; also
    returns ``ell_i`` (the log-likelihood terms alone).
    """
    ell, g, h = _dispersion_terms(u, data, rate)
    a, b = priors.dispersion_shape, priors.dispersion_rate
    r = jnp.exp(u)
    return ell + a * u - b * r, g + a - b * r, g + h - b * r, ell


def sample_dispersion(key, data: Data, psi, dispersion, priors: Priors,
                      newton_steps: int = 6, dof: int = 5):
    """``r_i | y_i, psi_i`` (the mean held fixed) by an independence Metropolis-Hastings step.

    The proposal is a Student-t in ``log r_i`` centred at the conditional mode (damped Newton
    from a fixed start, so it depends on ``psi`` and the counts only, never on the current
    ``r``) with the Laplace scale; it is accepted about 93 % of the time on the paper's
    simulation, so each sweep draws nearly independently from the exact conditional.
    (The CRT augmentation of the reference, a gamma update at a fixed NB logit, hardly
    moves: the counts pin ``r exp(logit)`` and so ``r`` itself. With it the dispersion was
    the slowest block of the sampler, split R-hat 2.0 after 300 sweeps on the paper's
    simulation; with this step 1.00.)

    Returns the new ``r`` ``(N,)`` and the NB log-likelihood ``log p(y | psi, r)`` at it (its
    terms in ``r`` are computed for the acceptance ratio anyway).
    """
    k_prop, k_acc = jax.random.split(key)
    rate = jnp.exp(psi)

    def newton(u, _):
        _, g, h, _ = _dispersion_logpost(u, data, rate, priors)
        step = jnp.where(h < 0, -g / jnp.minimum(h, -1e-12), jnp.sign(g))
        return jnp.clip(u + jnp.clip(step, -1.0, 1.0), -7.0, 12.0), None

    mode, _ = lax.scan(newton, jnp.full(psi.shape[1], math.log(10.0)), None,
                       length=newton_steps)
    _, _, h, _ = _dispersion_logpost(mode, data, rate, priors)
    scale = 1.0 / jnp.sqrt(jnp.maximum(-h, 1e-2))

    def log_q(u):
        return -0.5 * (dof + 1.0) * jnp.log1p(((u - mode) / scale) ** 2 / dof)

    u_old = jnp.log(dispersion)
    # Student-t from dof + 1 normals (jax.random.t draws a gamma, slow to compile)
    normals = jax.random.normal(k_prop, (dof + 1, *u_old.shape), u_old.dtype)
    u_new = mode + scale * normals[0] / jnp.sqrt(jnp.mean(normals[1:] ** 2, axis=0))
    f_old, _, _, ell_old = _dispersion_logpost(u_old, data, rate, priors)
    f_new, _, _, ell_new = _dispersion_logpost(u_new, data, rate, priors)
    log_ratio = f_new - f_old + log_q(u_old) - log_q(u_new)
    accept = jnp.log(jax.random.uniform(k_acc, u_old.shape)) < log_ratio
    loglik = (jnp.sum(jnp.where(accept, ell_new, ell_old)) + jnp.sum(data.y * psi)
              - data.log_factorials)
    return jnp.where(accept, jnp.exp(u_new), dispersion), loglik


def sweep(key, state: ChainState, data: Data, priors: Priors, negbin: bool) -> ChainState:
    """One Gibbs sweep (see the module docstring for the order and the conditionals)."""
    S = state.trans.shape[0]
    keys = jax.random.split(key, 9)
    y = data.y
    r = state.dispersion
    K = state.latents.shape[1]
    occupied = (jnp.zeros(K).at[state.z].add(1.0) > 0).astype(y.dtype)
    states = sample_states(keys[0], state.latents, state.A, state.b, state.Q, state.trans,
                           occupied)
    if priors.shared_dynamics:
        A, b, Q = sample_dynamics(keys[1], state.latents, states, occupied, S, priors)
    else:
        A, b, Q = state.A, state.b, state.Q
    psi = log_rate(state)
    omega = sample_pg(keys[2], y + r[None, :], psi - jnp.log(r)[None, :])
    kappa = (y - r[None, :]) / 2.0
    J, h = observation_potentials(state, omega, kappa)
    # states again, now with the trajectories integrated out (valid as a partially collapsed
    # Gibbs step because the trajectories are redrawn right after)
    states = sample_states_collapsed(keys[7], states, A, b, Q, state.trans, J, h, occupied)
    latents = sample_latents(keys[3], state._replace(states=states, A=A, b=b, Q=Q), J, h)
    if not priors.shared_dynamics:
        # per-cluster blocks after the trajectories, every slot given its own trajectory: an
        # empty slot's block drawn from the prior alone can be explosive and overflow its
        # prior-drawn trajectory over hundreds of bins
        A, b, Q = sample_dynamics(keys[1], latents, states, jnp.ones(K), S, priors)
    latents, Q = rescale_innovations(
        keys[8], state._replace(latents=latents, states=states, A=A, b=b, Q=Q), J, h, occupied,
        priors)
    beta, trans = sample_transitions(keys[4], states, state.beta, priors)
    weights, z, delta, loadings, latents, moves = sample_clusters(
        keys[5], state._replace(latents=latents, states=states, A=A, b=b, Q=Q), omega, kappa,
        priors)
    new = state._replace(z=z, weights=weights, delta=delta, loadings=loadings, latents=latents,
                         states=states, A=A, b=b, Q=Q, beta=beta, trans=trans,
                         moves=state.moves + moves)
    psi = log_rate(new)
    if negbin:
        dispersion, loglik = sample_dispersion(keys[6], data, psi, r, priors)
        new = new._replace(dispersion=dispersion)
    else:
        loglik = nb_loglik(y, psi, new.dispersion)
    return new._replace(loglik=loglik, sweep=state.sweep + 1)


def init_state(data: Data, z0, states0, latents0, loadings0, n_states: int, priors: Priors,
               negbin: bool) -> ChainState:
    """Build a starting point from initial labels, states, trajectories and loadings.

    The dynamics start at their posterior mean given those (numpy, nothing to compile); the
    rest start at prior means.
    """
    T, N = data.y.shape
    K, d = latents0.shape[1:]
    y = np.asarray(data.y)
    latents0 = np.asarray(latents0, dtype=float)
    states0 = np.asarray(states0, dtype=np.int32)
    z0 = np.asarray(z0, dtype=np.int32)
    v = np.concatenate([np.ones((N, 1)), loadings0], axis=1)
    fitted = np.einsum("tnd,nd->tn", latents0[:, z0, :], v)
    delta = np.mean(np.log(y + 0.5) - fitted, axis=0)
    r0 = 10.0 if negbin else priors.poisson_dispersion
    trans = (np.full((n_states, n_states), priors.hmm_alpha / n_states)
             + priors.hmm_kappa * np.eye(n_states))
    occupied = (np.bincount(z0, minlength=K) > 0).astype(float)
    Suu, Syu, Syy, n = (np.asarray(a) for a in dynamics_statistics(
        jnp.asarray(latents0), jnp.asarray(states0), jnp.asarray(occupied), n_states, priors))
    AB = np.linalg.solve(Suu, np.swapaxes(Syu, -1, -2))
    AB = np.swapaxes(AB, -1, -2)
    Sn = priors.dynamics_scale * np.eye(d) + Syy - AB @ np.swapaxes(Syu, -1, -2)
    # inverse-Wishart mean: S_n / (nu_n - d - 1), nu_n = d + dof_extra + n
    Q = 0.5 * (Sn + np.swapaxes(Sn, -1, -2)) / (n + priors.dynamics_dof_extra - 1.0
                                                 )[..., None, None]
    A, b = AB[..., :d], AB[..., d]
    if priors.shared_dynamics:
        A, b, Q = (np.broadcast_to(a[:, None], (n_states, K, *a.shape[1:])) for a in (A, b, Q))
    # numpy values throughout: a weak-typed field (a Python scalar through jnp.full) would
    # give the compiled runner another signature than a state resumed from a checkpoint,
    # and the resumed fit would compile the sampler a second time
    return ChainState(
        z=jnp.asarray(z0),
        weights=jnp.asarray(np.full(K, 1.0 / K)),
        delta=jnp.asarray(delta),
        loadings=jnp.asarray(loadings0, dtype=float),
        dispersion=jnp.asarray(np.full(N, float(r0))),
        latents=jnp.asarray(latents0),
        states=jnp.asarray(states0),
        A=jnp.asarray(A),
        b=jnp.asarray(b),
        Q=jnp.asarray(Q),
        beta=jnp.asarray(np.full(n_states, 1.0 / n_states)),
        trans=jnp.asarray(trans / np.sum(trans, axis=1, keepdims=True)),
        loglik=jnp.asarray(np.float64(-np.inf)),
        sweep=jnp.asarray(0, dtype=jnp.int32),
        moves=jnp.zeros(4, dtype=jnp.int32),
    )


def n_occupied(labels, size: int) -> jnp.ndarray:
    """Number of distinct values among ``labels`` (``0 .. size - 1``)."""
    return jnp.sum(jnp.zeros(size).at[labels].add(1.0) > 0)


def run_blocks(states: ChainState, start_block, n_blocks_total, data: Data, priors: Priors,
               base_keys, negbin: bool, thin: int, chunk: int):
    """Run ``chunk`` blocks of ``thin`` sweeps for every chain (vmapped), one draw per block.

    Blocks at or past ``n_blocks_total`` leave the state unchanged, so every call
    has the same shape. Each sweep's key is ``fold_in(chain_key, sweep_index)``: the draws do
    not depend on how the run is cut into chunks.
    """

    def one_chain(state, chain_key):
        def block(carry, i):
            def run(st):
                def one(st, _):
                    st = sweep(jax.random.fold_in(chain_key, st.sweep), st, data, priors, negbin)
                    return st, st.loglik
                return lax.scan(one, st, None, length=thin)

            active = (start_block + i) < n_blocks_total
            new, lls = lax.cond(active, run,
                                lambda st: (st, jnp.full(thin, jnp.nan)), carry)
            K = new.latents.shape[1]
            S = new.trans.shape[0]
            draw = dict(z=new.z, states=new.states, delta=new.delta, loadings=new.loadings,
                        dispersion=new.dispersion, latents=new.latents.astype(jnp.float32),
                        A=new.A.astype(jnp.float32), b=new.b.astype(jnp.float32),
                        Q=new.Q.astype(jnp.float32), trans=new.trans, weights=new.weights,
                        loglik=new.loglik, n_clusters=n_occupied(new.z, K),
                        n_states=n_occupied(new.states, S))
            return new, (draw, lls)

        return lax.scan(block, state, jnp.arange(chunk))

    return jax.vmap(one_chain)(states, base_keys)


def sample_prior(key, n_time: int, n_neurons: int, n_slots: int, n_states: int, latent_dim: int,
                 priors: Priors, negbin: bool):
    """One joint draw of every variable of the model and the counts from the prior.

    The generative model that :func:`sweep` targets, with the same truncations; it is the
    "marginal-conditional" simulator of a Geweke (2004) joint-distribution test.

    Returns
    -------
    state, y
        A :class:`ChainState` and ``(T, N)`` float counts.
    """
    T, N, K, S, d = n_time, n_neurons, n_slots, n_states, latent_dim + 1
    keys = jax.random.split(key, 12)
    beta = _dirichlet(keys[0], jnp.full(S, priors.hmm_gamma / S))
    trans = _dirichlet(keys[1], priors.hmm_alpha * beta[None, :] + priors.hmm_kappa * jnp.eye(S))

    def next_state(s, k):
        s = jax.random.categorical(k, jnp.log(trans[s]))
        return s, s

    s0 = jax.random.randint(keys[2], (), 0, S)
    _, rest = lax.scan(next_state, s0, jax.random.split(keys[3], T - 1))
    states = jnp.concatenate([s0[None], rest]).astype(jnp.int32)
    # prior MNIW draws: the posterior update with no data
    empty = jnp.zeros((T, K, d))
    A, b, Q = sample_dynamics(keys[4], empty, states, jnp.zeros(K), S, priors)
    latents = sample_prior_paths(keys[5], *(m[states[:-1]] for m in (A, b, Q)))
    if priors.cluster_prior == "mfm":
        k = 1 + jax.random.categorical(keys[7], jnp.log(priors.mfm_geometric)
                                       + jnp.arange(K) * jnp.log1p(-priors.mfm_geometric))
        g = sample_gamma(keys[8], jnp.full(K, priors.cluster_concentration))
        g = jnp.where(jnp.arange(K) < k, g, 0.0)
        weights = g / jnp.sum(g)
    else:
        weights = _dirichlet(keys[8], jnp.full(K, priors.cluster_concentration / K))
    z = jax.random.categorical(keys[9], jnp.log(weights), shape=(N,)).astype(jnp.int32)
    coef = jax.random.normal(keys[10], (N, d))
    k_r, k_y = jax.random.split(keys[11])
    dispersion = (sample_gamma(k_r, jnp.full(N, priors.dispersion_shape))
                  / priors.dispersion_rate if negbin else jnp.full(N, priors.poisson_dispersion))
    state = ChainState(z=z, weights=weights, delta=coef[:, 0], loadings=coef[:, 1:],
                       dispersion=dispersion, latents=latents, states=states, A=A, b=b, Q=Q,
                       beta=beta, trans=trans, loglik=jnp.asarray(0.0),
                       sweep=jnp.asarray(0, dtype=jnp.int32), moves=jnp.zeros(4, jnp.int32))
    return state, sample_counts(k_y, state)


def sample_counts(key, state: ChainState) -> jnp.ndarray:
    """NB counts ``(T, N)`` given every variable (gamma-Poisson mixture)."""
    r = state.dispersion[None, :]
    k_g, k_p = jax.random.split(key)
    rate = sample_gamma(k_g, jnp.broadcast_to(r, (state.latents.shape[0], r.shape[1]))) / r
    # jax.random.poisson needs a threefry key; derive one from the key's bits
    k_p = jax.random.wrap_key_data(jax.random.bits(k_p, (2,), jnp.uint32), impl="threefry2x32")
    return jax.random.poisson(k_p, rate * jnp.exp(log_rate(state))).astype(float)
