"""The Gibbs sweep of the bi-clustering model: pure JAX, one chain, fixed shapes.

Shapes: ``T`` time bins, ``N`` neurons, ``K`` = ``max_clusters`` (truncation of the neuron
mixture), ``d = p + 1`` latent rows per cluster (a baseline ``mu`` and ``p`` factors ``x``),
``D = K d`` stacked latent dimension, ``S`` = ``max_states`` (weak-limit truncation of the
HDP-HMM). Every cluster slot, occupied or empty, keeps a trajectory; empty slots follow the
dynamics prior, so a neuron can move into a fresh cluster without a trans-dimensional move.
The state-specific dynamics ``(A_s, b_s, Q_s)`` act block-diagonally (one ``d x d`` block
per cluster): clusters share the switching times but not their couplings. Unlike the
reference's full ``D x D`` matrices this lets the state update ignore empty slots exactly
(their trajectories integrate out), which is what lets the state sequence mix.

One sweep (each block draws from its exact full conditional, so the kernel is a valid
Gibbs sampler with one Metropolis-Hastings step for the dispersion):

1. States ``xi | X_occupied, dynamics`` by discrete FFBS (AR-HMM likelihoods of the
   occupied clusters' trajectories; the empty slots' trajectories are integrated out, a
   partially collapsed step that step 3 completes by redrawing every trajectory).
2. ``omega ~ PG(y + r, psi - log r)`` (Pólya-Gamma augmentation of the NB likelihood).
3. Latent trajectories ``X | omega, z, delta, c, xi, dynamics`` by Kalman FFBS (information
   form, block-diagonal observation precision, ``O(D^3)`` per bin for any ``N``).
4. ``(A_sk, b_sk, Q_sk) | X, xi`` from their matrix-normal inverse-Wishart posteriors.
5. Sticky HDP-HMM weights ``beta`` and transition rows by the CRT auxiliary-table scheme
   with the sticky override (Fox et al. 2011).
6. Mixture weights ``pi | z``, then each neuron's ``(z_i, delta_i, c_i) | omega, X, pi``
   jointly: ``(delta_i, c_i)`` are integrated out analytically (the PG-augmented likelihood
   is Gaussian in them), ``z_i`` is drawn from its exact collapsed conditional, then
   ``(delta_i, c_i) | z_i`` from their Gaussian posterior.
7. (``negbin`` only) ``omega`` is discarded and each ``r_i`` is updated by CRT augmentation:
   holding the NB logit ``psi - log r`` fixed, ``r_i`` has a gamma conditional up to the
   ``N(0, 1)`` prior of ``delta_i`` (which moves with ``log r_i``); that gamma is an
   independence proposal accepted with the ratio of the ``delta`` prior densities.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import cho_solve, solve_triangular
from jax.scipy.special import gammaln

from neurodata.models._jax.hmm import hmm_sample_posterior
from neurodata.models._jax.kalman import ffbs
from neurodata.models._jax.linalg import chol_logdet, psd_cholesky, symmetrize
from neurodata.models._jax.polyagamma import sample_gamma, sample_pg

_FLOOR = 1e-100


class Priors(NamedTuple):
    """Hyperparameters (defaults follow the reference simulation)."""

    cluster_concentration: float = 1.0
    """``gamma``: mixture weights ``~ Dirichlet(gamma / K, ..., gamma / K)``."""
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


class Data(NamedTuple):
    """Counts and the statistics of them that the sweep reuses."""

    y: jnp.ndarray  # (T, N) float counts
    tail_counts: jnp.ndarray  # (N, y_max): #{t : y_it > l} for l = 0 .. y_max - 1


def make_data(y) -> Data:
    """Precompute :class:`Data` from integer counts ``(T, N)``."""
    y = jnp.asarray(y, dtype=float)
    y_max = max(int(jnp.max(y)), 1)
    levels = jnp.arange(y_max, dtype=float)
    tail = jnp.sum(y.T[:, :, None] > levels[None, None, :], axis=1).astype(float)
    return Data(y, tail)


def log_rate(state: ChainState) -> jnp.ndarray:
    """``psi_it = delta_i + mu^{(z_i)}_t + c_i^T x^{(z_i)}_t``, shape ``(T, N)``."""
    v = jnp.concatenate([jnp.ones_like(state.loadings[:, :1]), state.loadings], axis=1)
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


def sample_latents(key, state: ChainState, omega, kappa) -> jnp.ndarray:
    """Kalman FFBS of all cluster trajectories given the PG variables; ``(T, K, d)``."""
    T, K, d = state.latents.shape
    D = K * d
    onehot = jax.nn.one_hot(state.z, K, dtype=omega.dtype)
    v = jnp.concatenate([jnp.ones_like(state.loadings[:, :1]), state.loadings], axis=1)
    # pseudo-observation of c_i^T X: kappa/omega - (delta_i - log r_i), precision omega
    resid = kappa - omega * (state.delta - jnp.log(state.dispersion))[None, :]
    blocks = jnp.einsum("tn,nk,nd,ne->tkde", omega, onehot, v, v)
    J = jnp.einsum("tkde,kl->tkdle", blocks, jnp.eye(K, dtype=omega.dtype)).reshape(T, D, D)
    h = jnp.einsum("tn,nk,nd->tkd", resid, onehot, v).reshape(T, D)
    prev = state.states[:-1]
    x = ffbs(key, jnp.zeros(D), jnp.eye(D), block_diag(state.A[prev]),
             state.b[prev].reshape(T - 1, D), block_diag(state.Q[prev]), J, h)
    return x.reshape(T, K, d)


def block_diag(blocks: jnp.ndarray) -> jnp.ndarray:
    """``(..., K, d, d)`` blocks to ``(..., K d, K d)`` block-diagonal matrices."""
    K, d = blocks.shape[-3], blocks.shape[-1]
    eye = jnp.eye(K, dtype=blocks.dtype)
    full = jnp.einsum("...kde,kl->...kdle", blocks, eye)
    return full.reshape(*blocks.shape[:-3], K * d, K * d)


def transition_loglik(latents, A, b, Q, occupied) -> jnp.ndarray:
    """``(T, S)``: ``sum_k occupied_k log N(X^k_{t+1}; A_sk X^k_t + b_sk, Q_sk)``.

    The last bin has no transition (zeros). Empty slots (``occupied`` false) are left out,
    which integrates their trajectories out of the state update.
    """
    chol = psd_cholesky(Q)  # (S, K, d, d)
    d = latents.shape[2]
    resid = (latents[1:, None] - jnp.einsum("skde,tke->tskd", A, latents[:-1])
             - b[None])  # (T-1, S, K, d)
    half = solve_triangular(jnp.broadcast_to(chol[None], (*resid.shape, d)), resid[..., None],
                            lower=True)[..., 0]
    ll = -0.5 * (jnp.sum(half**2, axis=-1) + chol_logdet(chol)[None]
                 + d * jnp.log(2 * jnp.pi))  # (T-1, S, K)
    ll = jnp.sum(ll * occupied[None, None, :], axis=-1)
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


def sample_dynamics(key, latents, states, n_states: int, priors: Priors):
    """Per state and cluster, ``(A, b, Q)`` from the MNIW posterior given ``X`` and ``xi``.

    Prior: ``[A | b] ~ MN([I | 0], Q, K_0^{-1})``, ``Q ~ IW(S_0, d + 2)``.
    """
    T, K, d = latents.shape
    u = jnp.concatenate([latents[:-1], jnp.ones((T - 1, K, 1))], axis=2)  # (T-1, K, d+1)
    y = latents[1:]
    W = jax.nn.one_hot(states[:-1], n_states, dtype=latents.dtype)
    K0 = priors.dynamics_precision * jnp.eye(d + 1)
    M0 = jnp.concatenate([jnp.eye(d), jnp.zeros((d, 1))], axis=1)
    Suu = jnp.einsum("ts,tkd,tke->skde", W, u, u) + K0
    Syu = jnp.einsum("ts,tkd,tke->skde", W, y, u) + M0 @ K0
    Syy = jnp.einsum("ts,tkd,tke->skde", W, y, y) + M0 @ K0 @ M0.T
    n = jnp.broadcast_to(jnp.sum(W, axis=0)[:, None], (n_states, K))
    S0 = priors.dynamics_scale * jnp.eye(d)
    nu0 = d + priors.dynamics_dof_extra
    flat = lambda a: a.reshape(n_states * K, *a.shape[2:])  # noqa: E731
    keys = jax.random.split(key, n_states * K)
    A, b, Q = jax.vmap(_sample_mniw, in_axes=(0, 0, 0, 0, 0, None, None))(
        keys, flat(Suu), flat(Syu), flat(Syy), flat(n), S0, nu0)
    return (A.reshape(n_states, K, d, d), b.reshape(n_states, K, d),
            Q.reshape(n_states, K, d, d))


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
    chol = psd_cholesky(prec)
    mean = cho_solve((chol, True), h[..., None])[..., 0]
    logp = (log_weights[None, :] + const + 0.5 * jnp.sum(h * mean, axis=-1)
            - 0.5 * chol_logdet(chol))
    return logp, mean, chol


def sample_clusters(key, state: ChainState, latents, omega, kappa, priors: Priors):
    """Draw the mixture weights, then ``(z_i, delta_i, c_i)`` jointly for every neuron."""
    K = latents.shape[1]
    k_w, k_z, k_beta = jax.random.split(key, 3)
    counts = jnp.zeros(K).at[state.z].add(1.0)
    weights = _dirichlet(k_w, priors.cluster_concentration / K + counts)
    logp, mean, chol = cluster_log_marginals(latents, omega, kappa, jnp.log(state.dispersion),
                                             jnp.log(weights))
    z = jax.random.categorical(k_z, logp, axis=1).astype(jnp.int32)
    idx = jnp.arange(z.shape[0])
    m, L = mean[idx, z], chol[idx, z]
    eps = jax.random.normal(k_beta, m.shape)
    beta = m + jax.vmap(lambda Lc, e: solve_triangular(Lc.T, e, lower=False))(L, eps)
    return weights, z, beta[:, 0], beta[:, 1:]


def sample_dispersion(key, data: Data, psi, delta, dispersion, priors: Priors):
    """CRT-augmented update of ``r_i`` at fixed NB logit, MH-corrected for ``delta``'s prior."""
    k_crt, k_gam, k_acc = jax.random.split(key, 3)
    y_max = data.tail_counts.shape[1]
    levels = jnp.arange(y_max, dtype=float)
    r = dispersion
    # sum_t CRT(y_it, r_i) = sum_l Binomial(#{t: y_it > l}, r_i / (r_i + l))
    prob = r[:, None] / (r[:, None] + levels[None, :])
    tables = jnp.sum(jax.random.binomial(k_crt, data.tail_counts, prob), axis=1)
    logit = psi - jnp.log(r)[None, :]
    rate = priors.dispersion_rate + jnp.sum(jax.nn.softplus(logit), axis=0)
    proposal = sample_gamma(k_gam, priors.dispersion_shape + tables) / rate
    proposal = jnp.maximum(proposal, 1e-8)
    base = delta - jnp.log(r)
    new_delta = base + jnp.log(proposal)
    log_ratio = -0.5 * (new_delta**2 - delta**2)
    accept = jnp.log(jax.random.uniform(k_acc, r.shape)) < log_ratio
    return jnp.where(accept, proposal, r), jnp.where(accept, new_delta, delta)


def sweep(key, state: ChainState, data: Data, priors: Priors, negbin: bool) -> ChainState:
    """One Gibbs sweep (see the module docstring for the order and the conditionals)."""
    S = state.trans.shape[0]
    keys = jax.random.split(key, 7)
    y = data.y
    r = state.dispersion
    K = state.latents.shape[1]
    occupied = (jnp.zeros(K).at[state.z].add(1.0) > 0).astype(y.dtype)
    states = sample_states(keys[2], state.latents, state.A, state.b, state.Q, state.trans,
                           occupied)
    psi = log_rate(state)
    omega = sample_pg(keys[0], y + r[None, :], psi - jnp.log(r)[None, :])
    kappa = (y - r[None, :]) / 2.0
    latents = sample_latents(keys[1], state._replace(states=states), omega, kappa)
    A, b, Q = sample_dynamics(keys[3], latents, states, S, priors)
    beta, trans = sample_transitions(keys[4], states, state.beta, priors)
    weights, z, delta, loadings = sample_clusters(keys[5], state, latents, omega, kappa, priors)
    new = state._replace(z=z, weights=weights, delta=delta, loadings=loadings, latents=latents,
                         states=states, A=A, b=b, Q=Q, beta=beta, trans=trans)
    psi = log_rate(new)
    if negbin:
        dispersion, delta = sample_dispersion(keys[6], data, psi, delta, r, priors)
        psi = psi + (delta - new.delta)[None, :]
        new = new._replace(dispersion=dispersion, delta=delta)
    return new._replace(loglik=nb_loglik(y, psi, new.dispersion), sweep=state.sweep + 1)


def init_state(key, data: Data, z0, states0, latents0, loadings0, n_states: int,
               priors: Priors, negbin: bool) -> ChainState:
    """Build a starting point from initial labels, states, trajectories and loadings.

    The dynamics are drawn from their conditional given those; the rest start at prior
    means.
    """
    T, N = data.y.shape
    K, d = latents0.shape[1:]
    v = jnp.concatenate([jnp.ones((N, 1)), loadings0], axis=1)
    fitted = jnp.einsum("tnd,nd->tn", latents0[:, z0, :], v)
    delta = jnp.mean(jnp.log(data.y + 0.5) - fitted, axis=0)
    r0 = 10.0 if negbin else priors.poisson_dispersion
    trans = (jnp.full((n_states, n_states), priors.hmm_alpha / n_states)
             + priors.hmm_kappa * jnp.eye(n_states))
    latents0 = jnp.asarray(latents0, dtype=float)
    states0 = jnp.asarray(states0, dtype=jnp.int32)
    A, b, Q = sample_dynamics(key, latents0, states0, n_states, priors)
    return ChainState(
        z=jnp.asarray(z0, dtype=jnp.int32),
        weights=jnp.full(K, 1.0 / K),
        delta=delta,
        loadings=jnp.asarray(loadings0, dtype=float),
        dispersion=jnp.full(N, r0),
        latents=latents0,
        states=states0,
        A=A,
        b=b,
        Q=Q,
        beta=jnp.full(n_states, 1.0 / n_states),
        trans=trans / jnp.sum(trans, axis=1, keepdims=True),
        loglik=jnp.asarray(-jnp.inf),
        sweep=jnp.asarray(0, dtype=jnp.int32),
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
