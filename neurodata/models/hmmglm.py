"""State-switching coupled GLMs (HMM-GLM) with Gaussian and one-hot priors (Li et al., ICLR 2024).

A hidden Markov chain ``z_t`` over brain states; in state ``s`` neuron ``n`` fires with rate
``f(b_n + sum_{n', b} W[s, n, n', b] h[t, n', b])`` where ``h`` is the spike history of every
neuron filtered with a basis (:mod:`neurodata.models._jax.basis`). Priors tie the states to
one learnable global structure:

- ``prior="none"``: free per-state weights (the Escola et al. 2011 HMM-GLM);
- ``prior="gaussian"``: ``W_s ~ N(W_bar, sigma^2)`` with a learnable global mean ``W_bar``
  and spread ``sigma``, both updated in closed form;
- ``prior="onehot"``: ``W_s = (a_exc - a_inh) * softplus(w_s)`` with an adjacency
  ``a_s`` in {inh, none, exc} whose prior is a Concrete (Gumbel-softmax) distribution
  around learnable global class probabilities; relaxed samples (temperature 0.2, fixed, as
  in the reference) in training, logits halved when a class probability falls below
  ``e^-20`` (the Concrete density grows without bound at the simplex's vertices), hardened
  to one-hot at test time.

Fitting is generalised EM: a forward-backward E-step (:mod:`neurodata.models._jax.hmm`,
sequential ``lax.scan`` or parallel ``lax.associative_scan``; trials and sessions are
concatenated with resets, so unequal lengths need no padding); an M-step with closed-form
transitions under a sticky Dirichlet prior and GLM weights by L-BFGS where the objective is
concave (no or Gaussian prior, Poisson with exp/softplus link or Bernoulli with sigmoid
link) or Adam otherwise; several restarts are vmapped and the one whose hardened model has
the highest training log-likelihood is kept (:func:`best_restart`). With
``batch_size`` the E-step and the M-step objective run over batches of whole trials one
after the other, so memory is bounded by the batch rather than the recording.

Everything runs in float64.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from jax import lax
from jax.scipy.special import gammaln

from neurodata.errors import InputDataError
from neurodata.models._base import NeurodataModel
from neurodata.models._jax.basis import filter_history, make_basis
from neurodata.models._jax.hmm import (
    HMMPosterior,
    hmm_filter,
    hmm_filter_parallel,
    hmm_smoother,
    hmm_smoother_parallel,
    hmm_viterbi,
)
from neurodata.models._jax.loop import iterate, make_chunk_runner

__all__ = ["HMMGLM", "simulate", "select_n_states", "match_states", "edge_classes",
           "threshold_classes", "vote_classes", "bits_per_spike", "best_restart"]

PRIORS = ("none", "gaussian", "onehot")
LINKS = ("softplus", "sigmoid", "exp")
OBSERVATIONS = ("poisson", "bernoulli")
CLASSES = ("inh", "none", "exc")
_RATE_FLOOR = 1e-8
_LOGIT_FLOOR = -20.0  # one-hot logits are halved when a class log-probability falls below
_TRANS_FLOOR = float(np.exp(-8.0))
_SPARSE_PSEUDO = (0.1, 0.8, 0.1)


# --------------------------------------------------------------------------- functional core


class GLMParams(NamedTuple):
    """Emission parameters; the unused fields of a prior stay at zero."""

    bias: jnp.ndarray
    """``(S, N)`` or ``(1, N)`` when shared across states."""
    weight: jnp.ndarray
    """``(S, N_post, N_pre, B)``; for the one-hot prior the pre-softplus magnitude."""
    adj_logits: jnp.ndarray
    """``(S, N_post, N_pre, 3)`` adjacency logits over (inh, none, exc) (one-hot prior)."""
    global_mean: jnp.ndarray
    """``(N_post, N_pre, B)`` global mean ``W_bar`` (Gaussian prior)."""
    global_logits: jnp.ndarray
    """``(N_post, N_pre, 3)`` global class logits (one-hot prior)."""
    log_sigma: jnp.ndarray
    """Scalar log spread of the Gaussian prior."""


class Params(NamedTuple):
    """All parameters of one HMM-GLM."""

    initial: jnp.ndarray
    transition: jnp.ndarray
    glm: GLMParams


class _Config(NamedTuple):
    n_states: int
    prior: str
    observation: str
    link: str
    self_coupling: bool
    sticky: float
    prior_scale: float
    temperature: float
    m_steps: int
    learning_rate: float
    parallel: bool


class _Data(NamedTuple):
    """Trials concatenated with resets, in ``n_batches`` equal-length E-step batches.

    A batch holds whole trials; the last batches are padded with rows that are each a
    reset and carry ``valid=False``, whose emission log-likelihood is 0 in every state, so
    they add nothing to the log-likelihood, the expected counts or the M-step objective.
    """

    counts: jnp.ndarray  # (n_batches, L, N)
    features: jnp.ndarray  # (n_batches, L, N * B)
    resets: jnp.ndarray  # (n_batches, L)
    valid: jnp.ndarray  # (n_batches, L)


def _map_batches(fn, xs, *, checkpoint: bool = False):
    """``fn`` over the leading batch axis of the pytree ``xs``; outputs keep that axis.

    One batch runs without a loop (the unbatched fit compiles as before); several run in a
    ``lax.map``, so only one batch's ``(L, S, N)`` intermediates are live at a time, and
    ``checkpoint`` recomputes them in the backward pass instead of storing every batch's.
    """
    if jax.tree_util.tree_leaves(xs)[0].shape[0] == 1:
        out = fn(jax.tree_util.tree_map(lambda a: a[0], xs))
        return jax.tree_util.tree_map(lambda a: a[None], out)
    return lax.map(jax.checkpoint(fn) if checkpoint else fn, xs)


def _inverse_link(eta, link):
    if link == "exp":
        return jnp.exp(eta)
    if link == "softplus":
        return jax.nn.softplus(eta)
    return jax.nn.sigmoid(eta)


def _link(rate, link):
    if link == "exp":
        return np.log(rate)
    if link == "softplus":
        return np.log(np.expm1(rate))
    return np.log(rate / (1 - rate))


def _uses_lbfgs(cfg: _Config) -> bool:
    concave = (cfg.observation == "poisson" and cfg.link in ("exp", "softplus")) or (
        cfg.observation == "bernoulli" and cfg.link == "sigmoid"
    )
    return concave and cfg.prior != "onehot"


def effective_weights(glm: GLMParams, cfg: _Config, *, hard: bool = False, key=None):
    """Per-state coupling ``(S, N_post, N_pre, B)`` from the parameters.

    For the one-hot prior the adjacency is ``one_hot(argmax)`` when ``hard``, a
    Gumbel-softmax sample at ``cfg.temperature`` when ``key`` is given, else the softmax.
    """
    if cfg.prior == "onehot":
        if hard:
            adj = jax.nn.one_hot(jnp.argmax(glm.adj_logits, -1), 3, dtype=glm.weight.dtype)
        elif key is not None:
            gumbel = jax.random.gumbel(key, glm.adj_logits.shape, glm.adj_logits.dtype)
            adj = jax.nn.softmax((glm.adj_logits + gumbel) / cfg.temperature, axis=-1)
        else:
            adj = jax.nn.softmax(glm.adj_logits, axis=-1)
        w = (adj[..., 2] - adj[..., 0])[..., None] * jax.nn.softplus(glm.weight)
    else:
        w = glm.weight
    if not cfg.self_coupling:
        n = w.shape[1]
        w = w * (1.0 - jnp.eye(n, dtype=w.dtype))[None, :, :, None]
    return w


def emission_loglik(glm: GLMParams, weights, data: _Data, cfg: _Config):
    """``(L, S)`` log p(x_t | z_t = s) of one batch: all states in one contraction.

    ``data`` holds one batch (no leading batch axis); padding rows get 0.
    """
    s, n = weights.shape[:2]
    eta = jnp.einsum("tf,snf->tsn", data.features, weights.reshape(s, n, -1)) + glm.bias[None]
    x = data.counts[:, None, :]
    if cfg.observation == "bernoulli":
        if cfg.link == "sigmoid":
            ll = x * jax.nn.log_sigmoid(eta) + (1 - x) * jax.nn.log_sigmoid(-eta)
        else:
            p = jnp.clip(_inverse_link(eta, cfg.link), _RATE_FLOOR, 1 - _RATE_FLOOR)
            ll = x * jnp.log(p) + (1 - x) * jnp.log1p(-p)
    else:
        if cfg.link == "exp":
            log_rate, rate = eta, jnp.exp(eta)
        else:
            rate = _inverse_link(eta, cfg.link) + _RATE_FLOOR
            log_rate = jnp.log(rate)
        ll = x * log_rate - rate - gammaln(x + 1.0)
    return jnp.where(data.valid[:, None], jnp.sum(ll, axis=-1), 0.0)


def log_prior(glm: GLMParams, cfg: _Config):
    """Log density of the per-state weights under the tying prior (0 for ``"none"``)."""
    if cfg.prior == "gaussian":
        sigma2 = jnp.exp(2 * glm.log_sigma)
        diff = glm.weight - glm.global_mean[None]
        return -0.5 * jnp.sum(diff**2) / sigma2 - diff.size * glm.log_sigma
    if cfg.prior == "onehot":
        # Concrete density of the relaxed adjacency softmax(logits) around the global class
        # probabilities (Maddison et al. 2017; reference: gumbel_softmax_log_likelihood).
        n_class, tau = 3, cfg.temperature
        log_a = jax.nn.log_softmax(glm.adj_logits, -1)
        log_abar = jax.nn.log_softmax(glm.global_logits, -1)[None]
        dens = (gammaln(float(n_class)) + (n_class - 1) * jnp.log(tau)
                - n_class * jax.nn.logsumexp(log_abar - tau * log_a, axis=-1)
                + jnp.sum(log_abar - (tau + 1) * log_a, axis=-1))
        return jnp.sum(dens)
    return jnp.zeros((), glm.weight.dtype)


def _posterior(params: Params, data: _Data, cfg: _Config, weights) -> HMMPosterior:
    """Forward-backward batch by batch; marginals stay ``(n_batches, L, S)``."""
    smoother = hmm_smoother_parallel if cfg.parallel else hmm_smoother

    def one(batch):
        ll = emission_loglik(params.glm, weights, batch, cfg)
        return smoother(params.initial, params.transition, ll, batch.resets)

    post = _map_batches(one, data)
    # Padding rows are resets: recount the sequence starts on the valid rows only.
    starts = (data.resets & data.valid)[..., None]
    return HMMPosterior(jnp.sum(post.marginal_loglik), post.filtered_probs,
                        post.smoothed_probs, jnp.sum(post.expected_transitions, 0),
                        jnp.sum(jnp.where(starts, post.smoothed_probs, 0.0), (0, 1)))


def marginal_loglik(params: Params, data: _Data, cfg: _Config, *, hard: bool = True):
    """``log p(x)`` by the forward algorithm (the held-out criterion)."""
    weights = effective_weights(params.glm, cfg, hard=hard)
    forward = hmm_filter_parallel if cfg.parallel else hmm_filter

    def one(batch):
        ll = emission_loglik(params.glm, weights, batch, cfg)
        return forward(params.initial, params.transition, ll, batch.resets)[0]

    return jnp.sum(_map_batches(one, data))


def _update_transitions(post, cfg: _Config):
    n = cfg.n_states
    counts = post.expected_transitions + cfg.sticky * jnp.eye(n)
    trans = counts / jnp.maximum(jnp.sum(counts, 1, keepdims=True), 1e-300)
    trans = jnp.maximum(trans, _TRANS_FLOOR)
    trans = trans / jnp.sum(trans, 1, keepdims=True)
    initial = (post.expected_initial + 1.0) / (jnp.sum(post.expected_initial) + n)
    return initial, trans


def _close_gaussian(glm: GLMParams, cfg: _Config) -> GLMParams:
    # Closed-form maximisers of the Gaussian prior: W_bar is the state mean; sigma^2 is the
    # posterior mode under a scaled-inverse-chi^2 prior centred on prior_scale and worth as
    # many pseudo-observations as there are weights (it keeps the MAP from collapsing to 0).
    mean = jnp.mean(glm.weight, axis=0)
    ss = jnp.sum((glm.weight - mean[None]) ** 2)
    n = glm.weight.size
    sigma2 = (ss + n * cfg.prior_scale**2) / (2 * n + 2)
    return glm._replace(global_mean=mean, log_sigma=0.5 * jnp.log(sigma2))


def _correct_extreme(logits):
    # The Concrete density grows without bound towards the simplex's vertices, and a
    # saturated softmax passes no gradient: halve the logits of any edge with a class
    # log-probability below _LOGIT_FLOOR, so that the likelihood and the global class
    # probabilities can still move it (reference: correct_extreme_onehot).
    extreme = jnp.any(jax.nn.log_softmax(logits, -1) < _LOGIT_FLOOR, -1, keepdims=True)
    return jnp.where(extreme, 0.5 * logits, logits)


def _close_onehot(glm: GLMParams) -> GLMParams:
    # Global class probabilities in closed form, like W_bar for the Gaussian prior: the
    # posterior mean of a categorical over the states' relaxed adjacencies, with one
    # pseudo-observation of a sparse connection (10% inh, 80% none, 10% exc).
    adj = jax.nn.softmax(glm.adj_logits, -1)
    probs = (jnp.sum(adj, 0) + jnp.asarray(_SPARSE_PSEUDO)) / (adj.shape[0] + 1.0)
    return glm._replace(global_logits=jnp.log(probs))


def _m_step_objective(glm: GLMParams, gamma, data: _Data, cfg: _Config, scale, key=None):
    weights = effective_weights(glm, cfg, key=key)

    def one(inputs):
        batch, gamma_b = inputs
        return jnp.sum(gamma_b * emission_loglik(glm, weights, batch, cfg))

    expected = jnp.sum(_map_batches(one, (data, gamma), checkpoint=True))
    return -(expected + log_prior(glm, cfg)) / scale


def _make_em_step(cfg: _Config, data: _Data):
    # Counted on the valid rows so that batching (padding) leaves the optimisation unchanged.
    scale = jnp.sum(data.valid) * data.counts.shape[-1]
    lbfgs = _uses_lbfgs(cfg)
    adam = optax.adam(cfg.learning_rate)

    def glm_lbfgs(glm: GLMParams, gamma):
        def fun(free):
            bias, weight = free
            return _m_step_objective(glm._replace(bias=bias, weight=weight), gamma, data, cfg,
                                     scale)

        # A backtracking line search compiles much faster than the default zoom search and
        # is enough for these smooth concave objectives.
        opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
            max_backtracking_steps=20, store_grad=True))
        value_and_grad = optax.value_and_grad_from_state(fun)
        free = (glm.bias, glm.weight)

        def body(_, carry):
            free, state = carry
            value, grad = value_and_grad(free, state=state)
            updates, state = opt.update(grad, state, free, value=value, grad=grad,
                                        value_fn=fun)
            return optax.apply_updates(free, updates), state

        free, _ = lax.fori_loop(0, cfg.m_steps, body, (free, opt.init(free)))
        glm = glm._replace(bias=free[0], weight=free[1])
        return _close_gaussian(glm, cfg) if cfg.prior == "gaussian" else glm

    def glm_adam(glm: GLMParams, opt_state, gamma, key):
        def body(i, carry):
            glm, opt_state = carry
            sub = jax.random.fold_in(key, i) if cfg.prior == "onehot" else None
            grad = jax.grad(_m_step_objective)(glm, gamma, data, cfg, scale, sub)
            updates, opt_state = adam.update(grad, opt_state, glm)
            glm = optax.apply_updates(glm, updates)
            if cfg.prior == "gaussian":
                glm = _close_gaussian(glm, cfg)
            elif cfg.prior == "onehot":
                glm = _close_onehot(glm._replace(adj_logits=_correct_extreme(glm.adj_logits)))
            return glm, opt_state

        return lax.fori_loop(0, cfg.m_steps, body, (glm, opt_state))

    def step(carry):
        params, opt_state, key = carry
        key, sub = jax.random.split(key)
        weights = effective_weights(params.glm, cfg)
        post = _posterior(params, data, cfg, weights)
        objective = post.marginal_loglik + log_prior(params.glm, cfg)
        initial, trans = _update_transitions(post, cfg)
        gamma = lax.stop_gradient(post.smoothed_probs)
        if lbfgs:
            glm = glm_lbfgs(params.glm, gamma)
        else:
            glm, opt_state = glm_adam(params.glm, opt_state, gamma, sub)
        return (Params(initial, trans, glm), opt_state, key), objective

    return step, adam


def _init_params(key, cfg: _Config, n_neurons: int, n_basis: int, rates: np.ndarray,
                 shared_bias: bool) -> Params:
    s, n, b = cfg.n_states, n_neurons, n_basis
    k_w, k_a, k_b = jax.random.split(key, 3)
    rate = np.clip(rates, 1e-3, 0.9 if cfg.link == "sigmoid" or cfg.observation == "bernoulli"
                   else None)
    bias = jnp.asarray(_link(rate, cfg.link))[None].repeat(1 if shared_bias else s, 0)
    bias = bias + (0.0 if shared_bias else 0.1 * jax.random.normal(k_b, bias.shape))
    weight = 0.3 * jax.random.normal(k_w, (s, n, n, b))
    adj_logits = jnp.zeros((s, n, n, 3))
    global_logits = jnp.zeros((n, n, 3))
    if cfg.prior == "onehot":
        weight = jnp.full((s, n, n, b), float(np.log(np.expm1(0.5)))) + 0.1 * weight
        adj_logits = 0.5 * jax.random.normal(k_a, (s, n, n, 3))
    trans = (0.98 - 0.02 / max(s - 1, 1)) * np.eye(s) + 0.02 / max(s - 1, 1)
    trans = jnp.asarray(trans if s > 1 else np.ones((1, 1)))
    glm = GLMParams(bias, weight, adj_logits, jnp.mean(weight, 0), global_logits,
                    jnp.asarray(np.log(cfg.prior_scale)))
    # Explicit dtypes: a weakly typed leaf would come back strongly typed from the first
    # EM chunk and make the compiled runner recompile for the second.
    return Params(jnp.full(s, 1.0 / s, dtype=jnp.float64), trans, glm)


def _onehot_from_weights(params: Params, threshold: float = 0.35,
                         sharpness: float = 0.1) -> Params:
    """One-hot parameters whose relaxed weights approximate a fitted weight array."""
    glm = params.glm
    w = jnp.sum(glm.weight, -1)
    adj_logits = jnp.stack([(-w - threshold) / sharpness, jnp.zeros_like(w),
                            (w - threshold) / sharpness], -1)
    magnitude = jnp.maximum(jnp.abs(glm.weight), 0.05)
    glm = glm._replace(adj_logits=adj_logits, weight=jnp.log(jnp.expm1(magnitude)))
    return params._replace(glm=_close_onehot(glm))


_onehot_restarts = jax.jit(jax.vmap(_onehot_from_weights))


@functools.lru_cache(maxsize=32)
def _em_runner(cfg: _Config):
    # The data travel in the loop state rather than in a closure, so one compiled runner
    # serves every fit with the same configuration and array shapes (restarts, CV folds).
    def all_restarts(state):
        (carry, _), data = state
        step, _ = _make_em_step(cfg, data)
        carry, objectives = jax.vmap(step)(carry)
        return ((carry, objectives), data), jnp.max(objectives)

    def start(glm: GLMParams):
        # Optimiser state and "no objective yet" of every restart, compiled in one call
        # rather than op by op (each eager op compiles on its first use of a shape).
        n_restarts = glm.bias.shape[0]
        return (jax.vmap(optax.adam(cfg.learning_rate).init)(glm),
                jnp.full(n_restarts, -jnp.inf, dtype=jnp.float64))

    return all_restarts, make_chunk_runner(all_restarts, 25), jax.jit(start)


def _run_em(cfg: _Config, *, params: Params, data: _Data, keys, max_iter: int, tol: float,
            progress: bool):
    """Vmapped EM over restarts; returns the parameters, objectives and convergence flag."""
    step, runner, start = _em_runner(cfg)
    opt_state, no_objective = start(params.glm)
    state = ((params, opt_state, keys), no_objective), data
    result = iterate(step, state, max_iter=max_iter, tol=tol, desc="HMMGLM",
                     progress=progress, runner=runner)
    return result.state[0][0][0], result.objectives, bool(result.converged)


class _Helpers(NamedTuple):
    proba: Any
    viterbi: Any
    loglik: Any
    log_priors: Any
    hard_weights: Any


@functools.lru_cache(maxsize=16)
def _jitted_helpers(cfg: _Config) -> _Helpers:
    def proba(params, data):
        weights = effective_weights(params.glm, cfg, hard=True)
        return _posterior(params, data, cfg, weights).smoothed_probs

    def viterbi(params, data):
        weights = effective_weights(params.glm, cfg, hard=True)

        def one(batch):
            ll = emission_loglik(params.glm, weights, batch, cfg)
            return hmm_viterbi(params.initial, params.transition, ll, batch.resets)

        return _map_batches(one, data)

    def loglik(params, data):
        return marginal_loglik(params, data, cfg)

    def log_priors(glm):
        return jax.vmap(lambda g: log_prior(g, cfg))(glm)

    def hard_weights(glm):
        return effective_weights(glm, cfg, hard=True)

    return _Helpers(*(jax.jit(f) for f in (proba, viterbi, loglik, log_priors, hard_weights)))


class _Restarts(NamedTuple):
    """Every restart of one fit, before one is kept (leading axis of ``params``)."""

    params: Params
    """numpy arrays with a leading restart axis."""
    loglik: np.ndarray
    """Training log-likelihood of each restart's hardened model (the selection rule)."""
    log_prior: np.ndarray
    objectives: np.ndarray
    converged: bool
    basis: np.ndarray
    rates: np.ndarray
    ids: np.ndarray


def _restart(params: Params, index: int) -> Params:
    """One restart of host (numpy) parameters stacked over restarts."""
    return jax.tree_util.tree_map(lambda a: np.array(a[index]), params)


def best_restart(loglik: np.ndarray) -> int:
    """Index of the restart to keep: the highest training log-likelihood (NaN never wins).

    Restarts are compared on how well they explain the data, by the model used at test time
    (the one-hot adjacency hardened to its argmax classes), not on the EM objective
    (log-likelihood plus log-prior). The one-hot prior's Concrete density is unbounded at
    the simplex's vertices: at 5 states and 20 neurons it is about +4e4 nats and differs by
    hundreds of nats between restarts, so adding it lets the prior's parameterisation pick
    the restart. On simulated data (``python -m benchmarks.hmmglm --restart-rule``, 6 seeds
    x 4 restarts, 5 states, 20 neurons, 6000 training bins) the log-prior alone ordered
    restarts against their held-out bits/spike (the worst restart had the largest or
    second-largest log-prior in every fit); keeping the largest objective once cost 0.0076
    bits/spike, the largest log-likelihood at most 0.0006. With less data (3 states, 10
    neurons, 1800 bins) the training log-likelihood overfits, yet the restarts it kept were
    still better (0.0012 against 0.0025 bits/spike below the best on average).

    Examples
    --------
    >>> best_restart(np.array([-10.0, np.nan, -3.0]))
    2
    """
    loglik = np.asarray(loglik, dtype=float)
    return int(np.argmax(np.where(np.isfinite(loglik), loglik, -np.inf)))


# --------------------------------------------------------------------------- data handling


def _datasets(ds) -> list[xr.Dataset]:
    items = list(ds) if isinstance(ds, list | tuple) else [ds]
    if not items:
        raise InputDataError("ds is an empty list; give a dataset or a list of datasets.")
    for item in items:
        if not isinstance(item, xr.Dataset) or "activity" not in item:
            raise InputDataError(
                "ds must be an xarray.Dataset with an 'activity' variable (time, neuron) or "
                "(trial, time, neuron), or a list of them (sessions)."
            )
    return items


def _sequences(ds, observation: str) -> tuple[list[np.ndarray], list[tuple]]:
    """Validated count arrays ``(T_i, N)``, one per trial or session, and their origin."""
    seqs, origin = [], []
    n_neurons = None
    for i, item in enumerate(_datasets(ds)):
        act = item["activity"]
        if act.dims not in (("time", "neuron"), ("trial", "time", "neuron")):
            act = act.transpose(*[d for d in ("trial", "time", "neuron") if d in act.dims])
        values = np.asarray(act.values, dtype=float)
        name = "ds" if len(_datasets(ds)) == 1 else f"ds[{i}]"
        if np.isnan(values).any():
            raise InputDataError(
                f"{name}.activity contains NaN; HMMGLM needs complete spike counts (drop or "
                "cut out the missing stretches and pass the pieces as a list of datasets)."
            )
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise InputDataError(f"{name}.activity has negative or infinite values; give "
                                 "spike counts.")
        if np.any(values != np.round(values)):
            raise InputDataError(
                f"{name}.activity holds non-integer values, but observation={observation!r} "
                "models spike counts; bin spikes (neurodata.bin_spikes) instead of smoothing."
            )
        if observation == "bernoulli" and values.max(initial=0) > 1:
            raise InputDataError(
                f"{name}.activity has counts above 1, which observation='bernoulli' cannot "
                "model; use smaller bins, clip with (activity > 0), or use 'poisson'."
            )
        if n_neurons is not None and values.shape[-1] != n_neurons:
            raise InputDataError(f"{name} has {values.shape[-1]} neurons; the others have "
                                 f"{n_neurons}.")
        n_neurons = values.shape[-1]
        if values.ndim == 2:
            seqs.append(values)
            origin.append((i, None))
        else:
            for r in range(values.shape[0]):
                seqs.append(values[r])
                origin.append((i, r))
    return seqs, origin


def _check_batch_size(batch_size) -> int | None:
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise InputDataError(f"batch_size={batch_size!r}; give a positive number of trials "
                             "per E-step batch, or None for all trials at once.")
    return int(batch_size)


def _design(seqs: list[np.ndarray], basis: np.ndarray, history_bins: int,
            batch_size: int | None = None, length: int = 0) -> _Data:
    """Design of the sequences in batches of ``batch_size`` whole sequences (None: one).

    Batches are padded to the longest batch, or to ``length`` bins if that is longer.
    """
    for seq in seqs:
        if seq.shape[0] <= history_bins:
            raise InputDataError(
                f"a trial has {seq.shape[0]} time bins, not more than history_bins="
                f"{history_bins}; shorten the history or use longer trials."
            )
    size = len(seqs) if batch_size is None else batch_size
    groups = [seqs[i:i + size] for i in range(0, len(seqs), size)]
    length = max(length, *(sum(s.shape[0] for s in g) for g in groups))
    n, nb = seqs[0].shape[1], seqs[0].shape[1] * basis.shape[1]
    counts = np.zeros((len(groups), length, n))
    features = np.zeros((len(groups), length, nb))
    resets = np.ones((len(groups), length), bool)
    valid = np.zeros((len(groups), length), bool)
    for g, group in enumerate(groups):
        start = 0
        for seq in group:
            stop = start + seq.shape[0]
            counts[g, start:stop] = seq
            features[g, start:stop] = np.asarray(
                filter_history(jnp.asarray(seq), jnp.asarray(basis))).reshape(seq.shape[0], -1)
            resets[g, start + 1:stop] = False
            valid[g, start:stop] = True
            start = stop
    return _Data(jnp.asarray(counts), jnp.asarray(features), jnp.asarray(resets),
                 jnp.asarray(valid))


def _split(values: np.ndarray, seqs: list[np.ndarray]) -> list[np.ndarray]:
    return np.split(values, np.cumsum([s.shape[0] for s in seqs[:-1]]))


def _constant_loglik(counts: np.ndarray, rates: np.ndarray, observation: str) -> float:
    rates = np.clip(rates, _RATE_FLOOR, 1 - _RATE_FLOOR if observation == "bernoulli" else None)
    if observation == "bernoulli":
        return float(np.sum(counts * np.log(rates) + (1 - counts) * np.log1p(-rates)))
    from scipy.special import gammaln as np_gammaln

    return float(np.sum(counts * np.log(rates) - rates - np_gammaln(counts + 1)))


def bits_per_spike(loglik: float, counts: np.ndarray, rates: np.ndarray,
                   observation: str = "poisson") -> float:
    """Log-likelihood gain over each neuron's constant rate, in bits per spike.

    Parameters
    ----------
    loglik
        Marginal log-likelihood (nats) of ``counts`` under the model.
    counts
        ``(T, N)`` the counts it was evaluated on.
    rates
        ``(N,)`` constant per-bin rates from the training set.
    observation
        ``"poisson"`` or ``"bernoulli"``.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0], [0.0]])
    >>> round(bits_per_spike(-1.0, x, np.array([0.5])), 3)
    1.0
    """
    n_spikes = float(np.sum(counts))
    base = _constant_loglik(counts, rates, observation)
    return float((loglik - base) / (max(n_spikes, 1.0) * np.log(2.0)))


# --------------------------------------------------------------------------- estimator


class HMMGLM(NeurodataModel):
    """Hidden-Markov switching between coupled spiking GLMs, with tying priors.

    Parameters
    ----------
    n_states
        Number of hidden states ``S``.
    prior
        ``"none"`` (free per-state weights), ``"gaussian"`` (around a learnable global
        mean with a learnable spread) or ``"onehot"`` (3-class adjacency around learnable
        global class probabilities, non-negative strengths).
    observation
        ``"poisson"`` or ``"bernoulli"``.
    link
        Inverse link ``"softplus"``, ``"sigmoid"`` (the reference code's; rates below 1 per
        bin) or ``"exp"``.
    basis
        History basis ``"exp"`` or ``"raised_cosine"`` (log-stretched).
    history_bins
        Length of the spike history in bins.
    n_basis
        Number of basis functions.
    sticky
        Extra Dirichlet pseudo-counts on the diagonal of the transition matrix.
    self_coupling
        Keep each neuron's own history term (``False`` zeroes the diagonal).
    shared_bias
        One bias per neuron shared by the states (default) or one per state.
    prior_scale
        Gaussian prior: centre of the spread's prior (the reference fixes 1/3).
    temperature
        One-hot prior: Gumbel-softmax temperature.
    n_restarts
        Random restarts run in parallel (vmapped). The one kept has the highest training
        log-likelihood of the model used at test time (one-hot adjacency hardened to its
        argmax classes), not the highest EM objective: the log-prior is left out because
        the one-hot prior's Concrete density is unbounded at the simplex's vertices and,
        in the restart study at the paper's size, the worse restarts (often merged states)
        scored a higher log-prior under both priors (see :func:`best_restart`).
    max_iter
        EM iterations.
    m_steps
        Optimiser steps per M-step (L-BFGS iterations or Adam steps).
    learning_rate
        Adam step size (priors or links where the M-step is not concave).
    tol
        Relative change of the objective at which EM stops (0: run ``max_iter``).
    parallel
        Use the associative-scan E-step (faster for long sequences on a GPU).
    batch_size
        Trials per E-step batch (None: all at once). Batches run one after the other
        (``lax.map``, with rematerialisation in the M-step gradient), so the working memory
        of the E-step and of the M-step objective is that of ``batch_size`` trials;
        results equal the unbatched ones up to rounding. Prediction methods use it too
        unless given their own ``batch_size``.
    progress
        Show a progress bar.
    seed
        Seed of the initialisation and of the Gumbel noise.

    Attributes
    ----------
    coupling_ : xarray.DataArray
        ``(state, post, pre, basis)`` effective weights (hardened for ``"onehot"``).
    global_structure_ : xarray.DataArray
        ``(post, pre)`` global mean (``"gaussian"``; summed over the basis) or
        ``(post, pre, edge_class)`` class probabilities (``"onehot"``); for ``"none"`` the
        state mean of the coupling.
    transition_ : xarray.DataArray
        ``(state, next_state)`` transition matrix.
    bias_ : xarray.DataArray
        ``(state, neuron)`` biases.
    rates_ : numpy.ndarray
        Per-neuron constant training rates (the bits/spike baseline).
    train_loglik_ : float
        Training marginal log-likelihood (nats) of the kept restart's hardened model.
    restart_loglik_, restart_log_prior_ : numpy.ndarray
        ``(n_restarts,)`` the same log-likelihood for every restart (the selection
        criterion) and each restart's log-prior (the rest of the EM objective).

    Examples
    --------
    >>> from neurodata.models.hmmglm import HMMGLM, simulate
    >>> ds, truth = simulate(n_states=2, n_neurons=4, n_time=200, n_trials=2, seed=0)
    >>> model = HMMGLM(2, link="sigmoid", max_iter=5, n_restarts=1).fit(ds)
    >>> model.predict_proba(ds).dims
    ('trial', 'time', 'state')
    """

    def __init__(
        self,
        n_states: int = 3,
        *,
        prior: str = "none",
        observation: str = "poisson",
        link: str = "softplus",
        basis: str = "exp",
        history_bins: int = 5,
        n_basis: int = 1,
        sticky: float = 10.0,
        self_coupling: bool = True,
        shared_bias: bool = True,
        prior_scale: float = 1.0 / 3.0,
        temperature: float = 0.2,
        n_restarts: int = 3,
        max_iter: int = 100,
        m_steps: int = 20,
        learning_rate: float = 0.05,
        tol: float = 1e-7,
        parallel: bool = False,
        batch_size: int | None = None,
        progress: bool = False,
        seed: int = 0,
    ):
        self.n_states = n_states
        self.prior = prior
        self.observation = observation
        self.link = link
        self.basis = basis
        self.history_bins = history_bins
        self.n_basis = n_basis
        self.sticky = sticky
        self.self_coupling = self_coupling
        self.shared_bias = shared_bias
        self.prior_scale = prior_scale
        self.temperature = temperature
        self.n_restarts = n_restarts
        self.max_iter = max_iter
        self.m_steps = m_steps
        self.learning_rate = learning_rate
        self.tol = tol
        self.parallel = parallel
        self.batch_size = batch_size
        self.progress = progress
        self.seed = seed

    # ------------------------------------------------------------------ helpers
    def _config(self) -> _Config:
        for name, value, allowed in (("prior", self.prior, PRIORS),
                                     ("observation", self.observation, OBSERVATIONS),
                                     ("link", self.link, LINKS)):
            if value not in allowed:
                raise InputDataError(f"{name}={value!r} is not one of {list(allowed)}.")
        if int(self.n_states) != self.n_states or self.n_states < 1:
            raise InputDataError(f"n_states={self.n_states!r}; give a positive integer.")
        return _Config(int(self.n_states), self.prior, self.observation, self.link,
                       bool(self.self_coupling), float(self.sticky), float(self.prior_scale),
                       float(self.temperature), int(self.m_steps), float(self.learning_rate),
                       bool(self.parallel))

    def _params(self) -> Params:
        p = self.params_
        glm = GLMParams(*(jnp.asarray(p[f]) for f in GLMParams._fields))
        return Params(jnp.asarray(p["initial"]), jnp.asarray(p["transition"]), glm)

    def _evaluate(self, ds, which: int, batch_size):
        """Run a jitted helper over batches of whole trials (bounded memory).

        Returns the sequences, their origin and the helper's per-batch outputs.
        """
        self._check_fitted()
        seqs, origin = _sequences(ds, self.observation)
        if seqs[0].shape[1] != len(self.neuron_id_):
            raise InputDataError(f"ds has {seqs[0].shape[1]} neurons; the model was fitted "
                                 f"on {len(self.neuron_id_)}.")
        size = _check_batch_size(self.batch_size if batch_size is None else batch_size)
        size = len(seqs) if size is None else size
        helper = _jitted_helpers(self._config())[which]
        params, basis = self._params(), np.asarray(self.basis_)
        chunks = [seqs[start:start + size] for start in range(0, len(seqs), size)]
        # Every batch is padded to the longest, so that batches of unequal length (sessions,
        # the last partial batch) share one compiled helper; padding rows add nothing to the
        # log-likelihood and their per-bin outputs are dropped.
        lengths = [sum(s.shape[0] for s in chunk) for chunk in chunks]
        outs = []
        for chunk, n_bins in zip(chunks, lengths, strict=True):
            data = _design(chunk, basis, self.history_bins, length=max(lengths))
            out = np.asarray(helper(params, data))
            outs.append(out if which == 2 else out[:, :n_bins])
        return seqs, origin, outs

    # ------------------------------------------------------------------ fit
    def fit(self, ds) -> HMMGLM:
        """Fit by generalised EM from ``n_restarts`` starts; keep the best restart.

        EM maximises log-likelihood plus log-prior; of the restarts, the one whose model as
        used at test time (one-hot adjacency hardened) has the highest training
        log-likelihood is kept (:func:`best_restart`; every restart's value is in
        ``restart_loglik_``, its log-prior in ``restart_log_prior_``).

        Parameters
        ----------
        ds
            Dataset with ``activity`` (time, neuron) or (trial, time, neuron) spike counts,
            or a list of such datasets (sessions of different lengths).

        Returns
        -------
        HMMGLM
        """
        return self._keep(self._fit_restarts(ds))

    def _fit_restarts(self, ds) -> _Restarts:
        """Run EM from every restart (vmapped) and score each restart on the training data."""
        cfg = self._config()
        basis = make_basis(self.basis, self.history_bins, self.n_basis)
        seqs, _ = _sequences(ds, self.observation)
        counts = np.concatenate(seqs)
        silent = np.flatnonzero(counts.sum(0) == 0)
        first = _datasets(ds)[0]
        ids = np.asarray(first["neuron_id"].values if "neuron_id" in first.coords
                         else np.arange(counts.shape[1])).astype(str)
        if silent.size:
            raise InputDataError(
                f"neurons {ids[silent].tolist()} have no spikes in ds; their weights are not "
                "identifiable. Drop them first (e.g. neurodata.preprocess.select_neurons)."
            )
        data = _design(seqs, basis, self.history_bins, _check_batch_size(self.batch_size))
        rates = counts.mean(0)
        n, b = counts.shape[1], basis.shape[1]
        keys = jax.random.split(jax.random.PRNGKey(self.seed), int(self.n_restarts))
        run_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        run = functools.partial(_run_em, data=data, keys=run_keys, max_iter=int(self.max_iter),
                                tol=float(self.tol), progress=self.progress)
        history = []
        if cfg.prior == "onehot":
            # The relaxed one-hot objective is rugged from a random start: warm-start from
            # the Gaussian-prior fit (concave M-step), then read signs and strengths off it.
            gaussian = cfg._replace(prior="gaussian")
            params = jax.vmap(lambda k: _init_params(k, gaussian, n, b, rates,
                                                     self.shared_bias))(keys)
            params, objectives, _ = run(gaussian, params=params)
            history.append(objectives)
            params = _onehot_restarts(params)
        else:
            params = jax.vmap(lambda k: _init_params(k, cfg, n, b, rates,
                                                     self.shared_bias))(keys)
        params, objectives, converged = run(cfg, params=params)
        history.append(objectives)
        # Restart by restart with the held-out scorer, whose compiled form then serves
        # score() on data of the training set's shape (cross-validation folds).
        # (Indexed on the host: eager indexing of device arrays compiles per shape.)
        helpers = _jitted_helpers(cfg)
        params = jax.tree_util.tree_map(np.asarray, params)
        loglik = np.array([float(helpers.loglik(_restart(params, i), data))
                           for i in range(len(keys))])
        logp = np.asarray(helpers.log_priors(params.glm))
        return _Restarts(params, loglik, logp, np.concatenate(history), converged, basis,
                         rates, ids)

    def _keep(self, restarts: _Restarts, index: int | None = None) -> HMMGLM:
        """Set the fitted attributes from one restart (default: :func:`best_restart`)."""
        best = best_restart(restarts.loglik) if index is None else int(index)
        params = _restart(restarts.params, best)
        self.params_ = {"initial": params.initial, "transition": params.transition,
                        **{f: getattr(params.glm, f) for f in GLMParams._fields}}
        self.basis_ = restarts.basis
        self.rates_ = restarts.rates
        self.neuron_id_ = restarts.ids
        self.objective_history_ = restarts.objectives
        self.restart_loglik_ = restarts.loglik
        self.restart_log_prior_ = restarts.log_prior
        self.converged_ = restarts.converged
        self.train_loglik_ = float(restarts.loglik[best])
        self._set_outputs()
        return self

    def _set_outputs(self) -> None:
        cfg = self._config()
        params = self._params()
        ids = self.neuron_id_
        states = np.arange(cfg.n_states)
        w = np.asarray(_jitted_helpers(cfg).hard_weights(params.glm))
        self.coupling_ = xr.DataArray(
            w, dims=("state", "post", "pre", "basis"),
            coords={"state": states, "post": ids, "pre": ids, "basis": np.arange(w.shape[-1])},
            attrs={"description": "per-state coupling weights, post <- pre"},
        )
        if cfg.prior == "onehot":
            probs = np.asarray(jax.nn.softmax(params.glm.global_logits, -1))
            if not cfg.self_coupling:
                probs[np.arange(len(ids)), np.arange(len(ids))] = [0.0, 1.0, 0.0]
            self.global_structure_ = xr.DataArray(
                probs, dims=("post", "pre", "edge_class"),
                coords={"post": ids, "pre": ids, "edge_class": list(CLASSES)},
                attrs={"description": "global class probabilities (inh, none, exc)"},
            )
        else:
            mean = (np.asarray(params.glm.global_mean) if cfg.prior == "gaussian"
                    else w.mean(0))
            if not cfg.self_coupling:
                mean = mean * (1 - np.eye(len(ids)))[:, :, None]
            self.global_structure_ = xr.DataArray(
                mean.sum(-1), dims=("post", "pre"), coords={"post": ids, "pre": ids},
                attrs={"description": "global mean coupling (summed over the basis)",
                       "sigma": float(np.exp(params.glm.log_sigma))
                       if cfg.prior == "gaussian" else 0.0},
            )
        self.transition_ = xr.DataArray(np.asarray(params.transition),
                                        dims=("state", "next_state"),
                                        coords={"state": states, "next_state": states})
        bias = np.broadcast_to(np.asarray(params.glm.bias), (cfg.n_states, len(ids)))
        self.bias_ = xr.DataArray(bias.copy(), dims=("state", "neuron"),
                                  coords={"state": states, "neuron_id": ("neuron", ids)})

    def _after_load(self) -> None:
        self._set_outputs()

    # ------------------------------------------------------------------ outputs
    def _per_sequence(self, ds, values: np.ndarray, origin, seqs, extra_dims, extra_coords):
        items = _datasets(ds)
        parts = _split(values, seqs)
        out = []
        for i, item in enumerate(items):
            mine = [p for p, (j, _) in zip(parts, origin, strict=True) if j == i]
            act = item["activity"]
            coords = {"time": act["time"].values, **extra_coords}
            if "trial" in act.dims:
                arr = np.stack(mine)
                coords["trial"] = act["trial"].values
                out.append(xr.DataArray(arr, dims=("trial", "time", *extra_dims), coords=coords))
            else:
                out.append(xr.DataArray(mine[0], dims=("time", *extra_dims), coords=coords))
        return out if isinstance(ds, list | tuple) else out[0]

    def predict_proba(self, ds, *, batch_size: int | None = None) -> xr.DataArray:
        """Posterior state probabilities ``(trial, time, state)`` or ``(time, state)``.

        Parameters
        ----------
        ds
            Dataset (or list of datasets) like the training data.
        batch_size
            Trials per forward-backward batch (default: the model's ``batch_size``).

        Returns
        -------
        xarray.DataArray
            A list of them when ``ds`` is a list.
        """
        seqs, origin, outs = self._evaluate(ds, 0, batch_size)
        # each group is one unpadded batch: (1, L, S)
        gamma = np.concatenate([o[0] for o in outs])
        return self._per_sequence(ds, gamma, origin, seqs, ("state",),
                                  {"state": np.arange(self.n_states)})

    def predict(self, ds, *, batch_size: int | None = None) -> xr.DataArray:
        """Most likely state path (Viterbi), ``(trial, time)`` or ``(time,)``, int."""
        seqs, origin, outs = self._evaluate(ds, 1, batch_size)
        path = np.concatenate([o[0] for o in outs])
        return self._per_sequence(ds, path, origin, seqs, (), {})

    def log_likelihood(self, ds, *, batch_size: int | None = None) -> float:
        """Marginal log-likelihood ``log p(x)`` (nats) by the forward algorithm."""
        _, _, outs = self._evaluate(ds, 2, batch_size)
        return float(np.sum(outs))

    def score(self, ds, y=None, *, batch_size: int | None = None) -> float:
        """Held-out marginal log-likelihood in bits per spike over constant training rates."""
        seqs, _, outs = self._evaluate(ds, 2, batch_size)
        return bits_per_spike(float(np.sum(outs)), np.concatenate(seqs), self.rates_,
                              self.observation)


# --------------------------------------------------------------------------- selection


def select_n_states(
    ds: xr.Dataset,
    n_states: Sequence[int] = (1, 2, 3, 4, 5, 6),
    *,
    n_folds: int = 3,
    seed: int = 0,
    tolerance: float = 0.0,
    **model_kwargs: Any,
) -> xr.Dataset:
    """Choose the number of states by held-out bits/spike, cross-validated over trials.

    Parameters
    ----------
    ds
        Dataset with ``activity(trial, time, neuron)``.
    n_states
        Candidate numbers of states.
    n_folds
        Folds over trials (each trial is held out once).
    seed
        Seed of the fold assignment.
    tolerance
        The smallest ``S`` whose mean score is within ``tolerance`` bits/spike of the best
        is chosen (0: the best).
    **model_kwargs
        Passed to :class:`HMMGLM`.

    Returns
    -------
    xarray.Dataset
        ``bits_per_spike(n_states, fold)``, its ``mean``, and attr ``best_n_states``.

    Examples
    --------
    >>> from neurodata.models.hmmglm import simulate, select_n_states
    >>> ds, _ = simulate(n_states=1, n_neurons=3, n_time=100, n_trials=4, seed=0)
    >>> res = select_n_states(ds, (1, 2), n_folds=2, link="sigmoid", max_iter=3, n_restarts=1)
    >>> res.bits_per_spike.dims
    ('n_states', 'fold')
    """
    if "trial" not in ds["activity"].dims:
        raise InputDataError(
            "select_n_states cross-validates over trials but ds.activity has no 'trial' dim; "
            "cut the recording into windows first (neurodata.preprocess.cut_windows)."
        )
    n_trials = ds.sizes["trial"]
    if n_trials < n_folds or n_folds < 2:
        raise InputDataError(f"n_folds={n_folds} needs at least 2 folds and as many trials "
                             f"(ds has {n_trials}).")
    folds = np.random.default_rng(seed).permutation(n_trials) % n_folds
    scores = np.zeros((len(n_states), n_folds))
    for j in range(n_folds):
        train = ds.isel(trial=np.flatnonzero(folds != j))
        test = ds.isel(trial=np.flatnonzero(folds == j))
        for i, s in enumerate(n_states):
            model = HMMGLM(int(s), **model_kwargs).fit(train)
            scores[i, j] = model.score(test)
    mean = scores.mean(1)
    best = int(np.asarray(n_states)[np.flatnonzero(mean >= mean.max() - tolerance)[0]])
    return xr.Dataset(
        {"bits_per_spike": (("n_states", "fold"), scores), "mean": ("n_states", mean)},
        coords={"n_states": np.asarray(n_states), "fold": np.arange(n_folds)},
        attrs={"best_n_states": best},
    )


def match_states(true_states: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Permutation aligning inferred states to true ones (Hungarian on the confusion matrix).

    Parameters
    ----------
    true_states
        ``(...)`` integer labels.
    proba
        ``(..., S)`` posterior probabilities (or one-hot decoded states).

    Returns
    -------
    numpy.ndarray
        ``perm`` with ``perm[true_label] = inferred_label``.

    Examples
    --------
    >>> import numpy as np
    >>> match_states(np.array([0, 1, 1]), np.eye(2)[[1, 0, 0]]).tolist()
    [1, 0]
    """
    from scipy.optimize import linear_sum_assignment

    s = proba.shape[-1]
    true = np.asarray(true_states).ravel()
    proba = np.asarray(proba).reshape(-1, s)
    confusion = np.zeros((s, s))
    for k in range(s):
        confusion[k] = proba[true == k].sum(0)
    rows, cols = linear_sum_assignment(-confusion)
    perm = np.zeros(s, int)
    perm[rows] = cols
    return perm


def threshold_classes(weights: np.ndarray, threshold: float) -> np.ndarray:
    """3-class edges of free weights: their sign where ``|w| > threshold``, else 0.

    Examples
    --------
    >>> threshold_classes([0.5, -0.1, -0.4], 0.3).tolist()
    [1, 0, -1]
    """
    weights = np.asarray(weights)
    return np.where(np.abs(weights) > threshold, np.sign(weights), 0).astype(int)


def vote_classes(state_edges: np.ndarray) -> np.ndarray:
    """Majority vote of per-state 3-class edges (state axis first).

    With the one-hot prior's sparse pseudo-count, the rule of its closed-form global class
    probabilities, so that a tie with "no edge" goes to "no edge" (a tie between inhibitory
    and excitatory goes to inhibitory, the first of the two).

    Examples
    --------
    >>> vote_classes([[1, 0], [1, -1], [0, 1]]).tolist()
    [1, 0]
    """
    state_edges = np.asarray(state_edges)
    counts = np.stack([(state_edges == c).sum(0) for c in (-1, 0, 1)], -1)
    return np.argmax(counts + np.asarray(_SPARSE_PSEUDO), -1) - 1


def edge_classes(model: HMMGLM, *, threshold: float = 0.3) -> xr.Dataset:
    """3-class edges (-1 inhibitory, 0 none, 1 excitatory) read off a fitted model.

    Per state, the one-hot prior's hardened weights carry their class in their sign; free
    and Gaussian-prior weights (summed over the basis) are edges where ``|w| > threshold``.
    Two global read-outs:

    - ``global_edges``, the model's own global structure: the argmax of the one-hot class
      probabilities, or the thresholded global mean (Gaussian) or state mean (none);
    - ``vote_edges``, a majority vote of the per-state classes with the one-hot prior's
      sparse pseudo-count (0.1, 0.8, 0.1). It is the rule the one-hot prior's closed-form
      class probabilities apply to its (saturated) relaxed adjacencies, so it reads every
      prior's global structure the same way.

    Parameters
    ----------
    model
        A fitted :class:`HMMGLM`.
    threshold
        Edge threshold on free weights (the one-hot prior needs none).

    Returns
    -------
    xarray.Dataset
        ``state_edges (state, post, pre)``, ``global_edges (post, pre)`` and
        ``vote_edges (post, pre)``, integers in {-1, 0, 1}.

    Examples
    --------
    >>> from neurodata.models.hmmglm import HMMGLM, edge_classes, simulate
    >>> ds, _ = simulate(n_states=2, n_neurons=3, n_time=100, n_trials=2, seed=0)
    >>> model = HMMGLM(2, link="sigmoid", max_iter=2, n_restarts=1).fit(ds)
    >>> edge_classes(model).state_edges.dims
    ('state', 'post', 'pre')
    """
    model._check_fitted()
    w = model.coupling_.sum("basis").transpose("state", "post", "pre")

    def like(x: xr.DataArray, data: np.ndarray) -> xr.DataArray:
        return xr.DataArray(data, coords=x.coords, dims=x.dims)

    if model.prior == "onehot":
        state_edges = like(w, np.sign(w.values).astype(int))
        glob = model.global_structure_.argmax("edge_class") - 1
    else:
        state_edges = like(w, threshold_classes(w.values, threshold))
        glob = like(model.global_structure_,
                    threshold_classes(model.global_structure_.values, threshold))
    vote = like(w.isel(state=0, drop=True), vote_classes(state_edges.values))
    return xr.Dataset({"state_edges": state_edges, "global_edges": glob.astype(int),
                       "vote_edges": vote.astype(int)}, attrs={"threshold": threshold})


# --------------------------------------------------------------------------- simulator


@functools.partial(jax.jit, static_argnames=("link", "observation"))
def _simulate_counts(keys, states, bias, weights, basis, *, link: str, observation: str):
    """``(n_trials, T, N)`` counts of the coupled GLM along given state paths.

    Module-level and jitted on arrays, so that repeated simulations with the same shapes
    (seeds, parameter sweeps) reuse one compiled scan.
    """

    def run_trial(key, z):
        def step(carry, z_t):
            past, key = carry  # past[k] = counts k+1 bins ago, (K, N)
            h = jnp.einsum("kn,kb->nb", past, basis)
            eta = bias + jnp.einsum("mnb,nb->m", weights[z_t], h)
            rate = _inverse_link(eta, link)
            key, sub = jax.random.split(key)
            if observation == "bernoulli":
                x = jax.random.bernoulli(sub, jnp.clip(rate, 0, 1)).astype(jnp.float64)
            else:
                x = jax.random.poisson(sub, rate).astype(jnp.float64)
            return (jnp.concatenate([x[None], past[:-1]]), key), x

        init = (jnp.zeros((basis.shape[0], bias.shape[0])), key)
        return lax.scan(step, init, z)[1]

    return jax.vmap(run_trial)(keys, states)


def simulate(
    n_states: int = 5,
    n_neurons: int = 20,
    n_time: int = 2000,
    n_trials: int = 50,
    *,
    sparsity: float = 0.2,
    exc_fraction: float = 0.5,
    stay_prob: float = 0.98,
    link: str = "sigmoid",
    observation: str = "poisson",
    basis: str = "exp",
    history_bins: int = 5,
    n_basis: int = 1,
    bias: tuple[float, float] = (-0.05, 0.05),
    strength: float = 3.0,
    sampling_rate: float = 50.0,
    seed: int = 0,
) -> tuple[xr.Dataset, dict[str, np.ndarray]]:
    """Draw spike trains from a one-hot HMM-GLM (the paper's synthetic protocol).

    A global class probability ``a_bar ~ Dirichlet(2 [rho (1 - p_e), 1 - rho, rho p_e])``
    per connection; each state's adjacency is a categorical draw from it; magnitudes
    ``softplus(log(strength u))``, ``u ~ U(0, 1)``; biases uniform in ``bias``; sticky
    transitions with ``stay_prob`` on the diagonal. For exp/softplus links a state whose
    coupling has spectral radius at or above 1 is redrawn (stability check).

    Parameters
    ----------
    n_states, n_neurons, n_time, n_trials
        Sizes (the paper: 5, 20, 2000, 50).
    sparsity, exc_fraction
        ``rho`` and ``p_e``.
    stay_prob
        Diagonal of the transition matrix.
    link, observation, basis, history_bins, n_basis
        As in :class:`HMMGLM`.
    bias
        Range of the uniform biases.
    strength
        Scale of the coupling magnitudes.
    sampling_rate
        Bins per second of the output's time axis.
    seed
        Random seed.

    Returns
    -------
    ds, truth
        ``activity(trial, time, neuron)`` counts and a dict with ``states (trial, time)``,
        ``weights (S, post, pre)``, ``adjacency (S, post, pre)`` in {-1, 0, 1},
        ``global_probs (post, pre, 3)``, ``global_adjacency`` (argmax class, {-1, 0, 1}),
        ``bias (N,)``, ``transition``, ``basis``.

    Examples
    --------
    >>> ds, truth = simulate(n_states=2, n_neurons=3, n_time=50, n_trials=2, seed=1)
    >>> ds.activity.shape, truth["states"].shape
    ((2, 50, 3), (2, 50))
    """
    from neurodata.data import from_arrays

    rng = np.random.default_rng(seed)
    s, n = n_states, n_neurons
    conc = 2.0 * np.array([sparsity * (1 - exc_fraction), 1 - sparsity, sparsity * exc_fraction])
    global_probs = rng.dirichlet(np.maximum(conc, 1e-3), size=(n, n))
    phi = make_basis(basis, history_bins, n_basis)
    adjacency = np.zeros((s, n, n), int)
    weights = np.zeros((s, n, n))
    for k in range(s):
        for _ in range(100):
            cls = (rng.random((n, n, 1)) > np.cumsum(global_probs, -1)).sum(-1)
            adj = np.minimum(cls, 2) - 1
            mag = np.log1p(strength * rng.random((n, n)))
            w = adj * mag
            if link == "sigmoid" or np.max(np.abs(np.linalg.eigvals(w))) < 1.0:
                break
            strength *= 0.9
        adjacency[k], weights[k] = adj, w
    b = rng.uniform(bias[0], bias[1], size=n)
    trans = np.full((s, s), (1 - stay_prob) / max(s - 1, 1))
    np.fill_diagonal(trans, stay_prob if s > 1 else 1.0)

    states = np.zeros((n_trials, n_time), int)
    states[:, 0] = rng.integers(s, size=n_trials)
    uniforms = rng.random((n_trials, n_time))
    cum = np.cumsum(trans, 1)
    for t in range(1, n_time):
        states[:, t] = np.minimum((uniforms[:, t, None] > cum[states[:, t - 1]]).sum(1), s - 1)
    # Per-basis weights: the same sign and magnitude on every basis function, so that the
    # integrated filter is w (each basis function has unit area).
    w_full = np.repeat(weights[..., None], phi.shape[1], -1) / phi.shape[1]
    keys = jax.random.split(jax.random.PRNGKey(seed), n_trials)
    counts = np.asarray(_simulate_counts(keys, jnp.asarray(states), jnp.asarray(b),
                                         jnp.asarray(w_full), jnp.asarray(phi), link=link,
                                         observation=observation))
    ds = from_arrays(counts.astype(np.int64), sampling_rate=sampling_rate,
                     attrs={"source": "neurodata.models.hmmglm.simulate"})
    cls_global = np.argmax(global_probs, -1) - 1
    truth = {"states": states, "weights": weights, "adjacency": adjacency,
             "global_probs": global_probs, "global_adjacency": cls_global, "bias": b,
             "transition": trans, "basis": phi}
    return ds, truth
