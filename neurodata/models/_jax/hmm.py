"""Discrete hidden-Markov message passing in JAX, shared by HMM-GLM and bi-clustering.

All functions take log-likelihoods ``(T, S)``, an initial distribution ``(S,)`` and a
transition matrix ``(S, S)`` (rows: from, columns: to), plus an optional boolean ``resets``
``(T,)``: ``resets[t]`` starts a new independent sequence at ``t`` (drawn from the initial
distribution), so several trials or sessions can be concatenated without padding;
``resets=None`` (one sequence) compiles the scans without the per-step reset select. Work
is done on scaled probabilities (each step normalised, the log normaliser accumulated),
which is exact and stable. Batch over sequences with ``jax.vmap``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class HMMPosterior(NamedTuple):
    """Result of :func:`hmm_smoother`."""

    marginal_loglik: jnp.ndarray
    """Scalar ``log p(y_{1:T})`` (sum over the sequences that ``resets`` delimits)."""
    filtered_probs: jnp.ndarray
    """``(T, S)``: ``p(z_t | y_{s:t})`` within the current sequence."""
    smoothed_probs: jnp.ndarray
    """``(T, S)``: ``p(z_t | y)``."""
    expected_transitions: jnp.ndarray
    """``(S, S)``: sum over t of ``p(z_t = i, z_{t+1} = j | y)``, boundaries excluded."""
    expected_initial: jnp.ndarray
    """``(S,)``: sum of ``p(z_t | y)`` over sequence starts."""


def _resets(log_likelihoods: jnp.ndarray, resets: jnp.ndarray | None) -> jnp.ndarray:
    n = log_likelihoods.shape[0]
    if resets is None:
        return jnp.zeros(n, dtype=bool).at[0].set(True)
    return jnp.asarray(resets, dtype=bool).at[0].set(True)


def _next_resets(resets: jnp.ndarray | None) -> jnp.ndarray | None:
    # resets[t + 1] aligned with t (the last entry is never read); None stays None, so that
    # a single sequence compiles without the per-step select.
    if resets is None:
        return None
    return jnp.append(jnp.asarray(resets, dtype=bool)[1:], True)


def _vecmat(probs, matrix):
    # probs @ matrix as a fused multiply-reduce: inside a scan step XLA:CPU runs a dot as a
    # separate library call whose overhead dominates at the few states of an HMM.
    return jnp.sum(probs[:, None] * matrix, axis=0)


def _matvec(matrix, vector):
    return jnp.sum(matrix * vector[None, :], axis=1)


def _scaled_likelihoods(log_likelihoods):
    shift = jnp.max(log_likelihoods, axis=1, keepdims=True)
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    return jnp.exp(log_likelihoods - shift), shift[:, 0]


@jax.jit
def hmm_filter(initial_probs, transition_matrix, log_likelihoods, resets=None):
    """Forward pass.

    Returns
    -------
    marginal_loglik, filtered_probs, normalisers
        The log marginal likelihood, ``(T, S)`` filtered probabilities and the per-step
        normalisers ``c_t`` (scaled, without the likelihood shift) that the backward pass uses.
    """
    lik, shift = _scaled_likelihoods(log_likelihoods)

    # The carry is the prediction for the next step, so the first step needs no select.
    def step(predicted, inputs):
        lik_t, reset_next = inputs
        unnorm = predicted * lik_t
        norm = jnp.sum(unnorm)
        filtered = unnorm / norm
        predicted = _vecmat(filtered, transition_matrix)
        if reset_next is not None:
            predicted = jnp.where(reset_next, initial_probs, predicted)
        return predicted, (filtered, norm)

    _, (filtered, norms) = lax.scan(step, initial_probs, (lik, _next_resets(resets)))
    return jnp.sum(jnp.log(norms) + shift), filtered, norms


@jax.jit
def hmm_smoother(initial_probs, transition_matrix, log_likelihoods, resets=None) -> HMMPosterior:
    """Forward-backward: posterior marginals and expected transition counts.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> post = hmm_smoother(jnp.array([0.5, 0.5]), jnp.array([[0.9, 0.1], [0.1, 0.9]]),
    ...                     jnp.log(jnp.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])))
    >>> post.smoothed_probs.shape
    (3, 2)
    """
    loglik, filtered, norms = hmm_filter(initial_probs, transition_matrix, log_likelihoods, resets)
    lik, _ = _scaled_likelihoods(log_likelihoods)
    # beta_t for t < T - 1 from beta_{t+1}; beta_{T-1} = 1 is appended after the scan.
    reset_next = None if resets is None else _next_resets(resets)[:-1]

    def step(beta_next, inputs):
        lik_next, norm_next, reset_t = inputs
        beta = _matvec(transition_matrix, lik_next * beta_next) / norm_next
        if reset_t is not None:
            beta = jnp.where(reset_t, jnp.ones_like(beta), beta)
        return beta, beta

    _, betas = lax.scan(step, jnp.ones_like(initial_probs), (lik[1:], norms[1:], reset_next),
                        reverse=True)
    betas = jnp.concatenate([betas, jnp.ones_like(betas[:1])])
    smoothed = filtered * betas
    smoothed = smoothed / jnp.sum(smoothed, axis=1, keepdims=True)
    # sum_t xi_t(i, j) = A_ij sum_t alpha_t(i) lik_{t+1}(j) beta_{t+1}(j) / c_{t+1}: one
    # contraction over time, without materialising the (T, S, S) pairwise marginals.
    alpha = filtered[:-1]
    if reset_next is not None:
        alpha = jnp.where(reset_next[:, None], 0.0, alpha)
    expected_transitions = transition_matrix * jnp.einsum(
        "ti,tj->ij", alpha, lik[1:] * betas[1:] / norms[1:, None]
    )
    if resets is None:
        expected_initial = smoothed[0]
    else:
        starts = _resets(log_likelihoods, resets)[:, None]
        expected_initial = jnp.sum(jnp.where(starts, smoothed, 0.0), axis=0)
    return HMMPosterior(loglik, filtered, smoothed, expected_transitions, expected_initial)


@jax.jit
def hmm_viterbi(initial_probs, transition_matrix, log_likelihoods, resets=None) -> jnp.ndarray:
    """Most likely state path ``(T,)`` (int), restarting at each reset."""
    resets = _resets(log_likelihoods, resets)
    log_a = jnp.log(transition_matrix)
    log_pi = jnp.log(initial_probs)

    def step(delta_prev, inputs):
        ll_t, reset_t = inputs
        scores = delta_prev[:, None] + log_a
        pointer = jnp.argmax(scores, axis=0)
        delta = jnp.where(reset_t, log_pi, jnp.max(scores, axis=0)) + ll_t
        return delta, (delta, pointer)

    _, (deltas, pointers) = lax.scan(
        step, jnp.zeros_like(log_pi), (log_likelihoods, resets)
    )
    next_reset = jnp.append(resets[1:], True)

    def back(state_next, inputs):
        delta_t, pointer_next, reset_next = inputs
        state = jnp.where(reset_next, jnp.argmax(delta_t), pointer_next[state_next])
        return state, state

    pointers_next = jnp.concatenate([pointers[1:], pointers[:1]])
    _, path = lax.scan(
        back, jnp.argmax(deltas[-1]), (deltas, pointers_next, next_reset), reverse=True
    )
    return path


@jax.jit
def hmm_sample_posterior(key, initial_probs, transition_matrix, log_likelihoods, resets=None):
    """Draw one state path ``(T,)`` from ``p(z | y)`` by forward filtering, backward sampling."""
    resets = _resets(log_likelihoods, resets)
    _, filtered, _ = hmm_filter(initial_probs, transition_matrix, log_likelihoods, resets)
    next_reset = jnp.append(resets[1:], True)
    keys = jax.random.split(key, log_likelihoods.shape[0])

    def back(state_next, inputs):
        key_t, filt_t, reset_next = inputs
        weights = jnp.where(reset_next, filt_t, filt_t * transition_matrix[:, state_next])
        state = jax.random.categorical(key_t, jnp.log(weights))
        return state, state

    _, path = lax.scan(back, jnp.array(0), (keys, filtered, next_reset), reverse=True)
    return path


class _Message(NamedTuple):
    # probs[i, j] ~ p(z_end = j, y_{start:end} | z_{start-1} = i), rows normalised;
    # log_norm[i] = log p(y_{start:end} | z_{start-1} = i).
    probs: jnp.ndarray
    log_norm: jnp.ndarray


def _condition(probs, log_likelihood):
    # Multiply the columns by the likelihood and renormalise each row.
    shift = jnp.max(log_likelihood, axis=-1, keepdims=True)
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    cond = probs * jnp.exp(log_likelihood - shift)
    norm = jnp.sum(cond, axis=-1)
    return cond / norm[..., None], jnp.log(norm) + shift[..., 0]


def _combine(first: _Message, second: _Message) -> _Message:
    probs, log_norm = _condition(first.probs, second.log_norm[..., None, :])
    # The (S, S) product as a multiply-reduce, not a dot: on an H100 (JAX 0.11.2) XLA's Triton
    # GEMM fusion aborted compiling the dot for S = 2, and the multiply-reduce fusion ran the
    # million-bin E-step 3.6x faster than the dot kept apart by optimisation barriers.
    products = probs[..., :, :, None] * second.probs[..., None, :, :]
    return _Message(jnp.sum(products, axis=-2), first.log_norm + log_norm)


def _parallel_filter(initial_probs, transition_matrix, log_likelihoods, resets):
    n_states = initial_probs.shape[0]
    start = jnp.broadcast_to(initial_probs, (n_states, n_states))
    # A reset element does not depend on the previous state: every row is the initial law.
    first = jnp.where(resets[:, None, None], start[None], transition_matrix[None])
    probs, log_norm = jax.vmap(_condition)(first, log_likelihoods[:, None, :])
    prefix = lax.associative_scan(jax.vmap(_combine), _Message(probs, log_norm))
    return prefix.log_norm[-1, 0], prefix.probs[:, 0, :]


@jax.jit
def hmm_filter_parallel(initial_probs, transition_matrix, log_likelihoods, resets=None):
    """Forward pass by ``lax.associative_scan``; same results as :func:`hmm_filter`.

    Returns
    -------
    marginal_loglik, filtered_probs
        The log marginal likelihood and the ``(T, S)`` filtered probabilities.
    """
    resets = _resets(log_likelihoods, resets)
    return _parallel_filter(initial_probs, transition_matrix, log_likelihoods, resets)


@jax.jit
def hmm_smoother_parallel(
    initial_probs, transition_matrix, log_likelihoods, resets=None
) -> HMMPosterior:
    """Forward-backward by ``lax.associative_scan``; same results as :func:`hmm_smoother`.

    The smoothed marginals, expected transitions and expected initial counts are the
    gradients of the log marginal likelihood with respect to the log-likelihoods,
    ``log A`` and ``log pi`` (Fisher's identity), so the backward pass is the reverse-mode
    sweep of the parallel forward pass.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> ll = jnp.log(jnp.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]]))
    >>> a = jnp.array([[0.9, 0.1], [0.1, 0.9]])
    >>> post = hmm_smoother_parallel(jnp.array([0.5, 0.5]), a, ll)
    >>> bool(jnp.allclose(post.smoothed_probs, hmm_smoother(jnp.array([0.5, 0.5]), a, ll)
    ...      .smoothed_probs))
    True
    """
    resets = _resets(log_likelihoods, resets)

    def loglik(ll, trans, init):
        value, filtered = _parallel_filter(init, trans, ll, resets)
        return value, filtered

    (value, filtered), (d_ll, d_trans, d_init) = jax.value_and_grad(
        loglik, argnums=(0, 1, 2), has_aux=True
    )(log_likelihoods, transition_matrix, initial_probs)
    return HMMPosterior(
        value, filtered, d_ll, transition_matrix * d_trans, initial_probs * d_init
    )
