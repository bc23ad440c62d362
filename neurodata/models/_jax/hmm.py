"""Discrete hidden-Markov message passing in JAX, shared by HMM-GLM and bi-clustering.

All functions take log-likelihoods ``(T, S)``, an initial distribution ``(S,)`` and a
transition matrix ``(S, S)`` (rows: from, columns: to), plus an optional boolean ``resets``
``(T,)``: ``resets[t]`` starts a new independent sequence at ``t`` (drawn from the initial
distribution), so several trials or sessions can be concatenated without padding. Work is
done on scaled probabilities (each step normalised, the log normaliser accumulated), which
is exact and stable. Batch over sequences with ``jax.vmap``.
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


def _scaled_likelihoods(log_likelihoods):
    shift = jnp.max(log_likelihoods, axis=1, keepdims=True)
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    return jnp.exp(log_likelihoods - shift), shift[:, 0]


def hmm_filter(initial_probs, transition_matrix, log_likelihoods, resets=None):
    """Forward pass.

    Returns
    -------
    marginal_loglik, filtered_probs, normalisers
        The log marginal likelihood, ``(T, S)`` filtered probabilities and the per-step
        normalisers ``c_t`` (scaled, without the likelihood shift) that the backward pass uses.
    """
    resets = _resets(log_likelihoods, resets)
    lik, shift = _scaled_likelihoods(log_likelihoods)

    def step(prev, inputs):
        lik_t, reset_t = inputs
        predicted = jnp.where(reset_t, initial_probs, prev @ transition_matrix)
        unnorm = predicted * lik_t
        norm = jnp.sum(unnorm)
        return unnorm / norm, (unnorm / norm, norm)

    _, (filtered, norms) = lax.scan(step, initial_probs, (lik, resets))
    return jnp.sum(jnp.log(norms) + shift), filtered, norms


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
    resets = _resets(log_likelihoods, resets)
    loglik, filtered, norms = hmm_filter(initial_probs, transition_matrix, log_likelihoods, resets)
    lik, _ = _scaled_likelihoods(log_likelihoods)
    next_reset = jnp.append(resets[1:], True)

    def step(beta_next, inputs):
        lik_next, norm_next, reset_next = inputs
        beta = jnp.where(
            reset_next, jnp.ones_like(beta_next), transition_matrix @ (lik_next * beta_next) / norm_next
        )
        return beta, beta

    lik_next = jnp.concatenate([lik[1:], jnp.ones_like(lik[:1])])
    norm_next = jnp.append(norms[1:], 1.0)
    _, betas = lax.scan(
        step, jnp.ones_like(initial_probs), (lik_next, norm_next, next_reset), reverse=True
    )
    smoothed = filtered * betas
    smoothed = smoothed / jnp.sum(smoothed, axis=1, keepdims=True)
    # xi_t(i, j) = alpha_t(i) A_ij lik_{t+1}(j) beta_{t+1}(j) / c_{t+1}
    weights = jnp.where(next_reset[:-1], 0.0, 1.0)[:, None, None]
    xi = (
        filtered[:-1, :, None]
        * transition_matrix[None]
        * (lik[1:] * betas[1:] / norms[1:, None])[:, None, :]
    )
    expected_transitions = jnp.sum(weights * xi, axis=0)
    expected_initial = jnp.sum(jnp.where(resets[:, None], smoothed, 0.0), axis=0)
    return HMMPosterior(loglik, filtered, smoothed, expected_transitions, expected_initial)


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
