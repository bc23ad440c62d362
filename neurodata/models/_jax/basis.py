"""Spike-history bases and causal filtering of spike trains, shared by the GLM-type models.

A basis is a ``(history_bins, n_basis)`` array ``phi``: ``phi[k - 1, b]`` weights the count
``k`` bins in the past (lag 1 is the previous bin, never the current one). Filtering gives
``h[t, n, b] = sum_k phi[k - 1, b] x[t - k, n]`` with zeros before the start of each trial,
so no history leaks across trial or session boundaries.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from neurodata.errors import InputDataError


def exp_basis(history_bins: int, n_basis: int = 1, *, tau: float | None = None) -> np.ndarray:
    """Decaying exponentials, each normalised to unit area.

    With ``n_basis=1`` this is the reference HMM-GLM's single kernel
    ``exp(-k / tau)`` over lags ``1..history_bins`` (``tau`` defaults to
    ``history_bins / 2``); more bases use time constants spaced logarithmically from one bin
    to ``history_bins``.

    Parameters
    ----------
    history_bins
        Number of past bins the kernel spans.
    n_basis
        Number of kernels.
    tau
        Time constant (in bins) of the single kernel; ignored when ``n_basis > 1``.

    Returns
    -------
    numpy.ndarray
        ``(history_bins, n_basis)``.

    Examples
    --------
    >>> exp_basis(5).sum(0)
    array([1.])
    """
    _check_sizes(history_bins, n_basis)
    lags = np.arange(1, history_bins + 1, dtype=float)[:, None]
    if n_basis == 1:
        taus = np.array([tau if tau is not None else history_bins / 2.0])
    else:
        taus = np.geomspace(1.0, float(history_bins), n_basis)
    phi = np.exp(-(lags - 1.0) / taus[None, :])
    return phi / phi.sum(0, keepdims=True)


def raised_cosine_log_basis(history_bins: int, n_basis: int = 3, *,
                            stretch: float = 1.0) -> np.ndarray:
    """Raised cosines on a logarithmically stretched time axis (Pillow et al. 2008).

    Bumps ``0.5 (1 + cos(clip(log(k + c) - mu_b, -pi, pi)))`` with centres ``mu_b`` equally
    spaced between ``log(1 + c)`` and ``log(history_bins + c)`` (``c = stretch``), so early
    lags are resolved finely and late lags coarsely. Each column is normalised to unit area.

    Parameters
    ----------
    history_bins
        Number of past bins the basis spans.
    n_basis
        Number of bumps.
    stretch
        Offset ``c`` of the log axis; smaller values compress the early bumps more.

    Returns
    -------
    numpy.ndarray
        ``(history_bins, n_basis)``.

    Examples
    --------
    >>> raised_cosine_log_basis(10, 3).shape
    (10, 3)
    """
    _check_sizes(history_bins, n_basis)
    lags = np.arange(1, history_bins + 1, dtype=float)
    log_t = np.log(lags + stretch)
    lo, hi = np.log(1.0 + stretch), np.log(history_bins + stretch)
    if n_basis == 1:
        centres, width = np.array([lo]), max(hi - lo, 1e-6)
    else:
        centres = np.linspace(lo, hi, n_basis)
        width = centres[1] - centres[0]
    arg = np.clip((log_t[:, None] - centres[None, :]) * np.pi / (2.0 * width), -np.pi, np.pi)
    phi = 0.5 * (1.0 + np.cos(arg))
    return phi / phi.sum(0, keepdims=True)


def make_basis(kind: str, history_bins: int, n_basis: int = 1) -> np.ndarray:
    """Build a basis by name: ``"exp"`` or ``"raised_cosine"`` (see the functions above).

    Examples
    --------
    >>> make_basis("exp", 5).shape
    (5, 1)
    """
    if kind == "exp":
        return exp_basis(history_bins, n_basis)
    if kind in ("raised_cosine", "raised_cosine_log"):
        return raised_cosine_log_basis(history_bins, n_basis)
    raise InputDataError(f"basis {kind!r} is not one of 'exp', 'raised_cosine'.")


def filter_history(counts: jnp.ndarray, basis: jnp.ndarray) -> jnp.ndarray:
    """Causally filter spike counts with a history basis.

    Parameters
    ----------
    counts
        ``(..., time, neuron)``; leading axes (trials) are independent sequences.
    basis
        ``(history_bins, n_basis)`` from :func:`exp_basis` or :func:`raised_cosine_log_basis`.

    Returns
    -------
    jax.Array
        ``(..., time, neuron, n_basis)`` with ``out[t] = sum_k basis[k-1] counts[t-k]``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> filter_history(jnp.array([[1.0], [0.0], [0.0]]), jnp.array([[1.0], [0.5]]))[..., 0]
    Array([[0. ],
           [1. ],
           [0.5]], dtype=float64)
    """
    counts = jnp.asarray(counts)
    basis = jnp.asarray(basis, dtype=counts.dtype if jnp.issubdtype(counts.dtype, jnp.floating)
                        else jnp.float64)
    counts = counts.astype(basis.dtype)
    n_time = counts.shape[-2]
    n_lags = basis.shape[0]
    pad = [(0, 0)] * (counts.ndim - 2) + [(n_lags, 0), (0, 0)]
    padded = jnp.pad(counts, pad)
    out = jnp.zeros((*counts.shape, basis.shape[1]), basis.dtype)
    # History windows are short (a few to tens of bins): a sum of shifted copies is cheaper
    # than an FFT convolution and keeps the causal alignment explicit.
    for k in range(1, n_lags + 1):
        shifted = padded[..., n_lags - k:n_lags - k + n_time, :]
        out = out + shifted[..., None] * basis[k - 1]
    return out


def _check_sizes(history_bins: int, n_basis: int) -> None:
    if int(history_bins) != history_bins or history_bins < 1:
        raise InputDataError(f"history_bins is {history_bins!r}; give a positive integer.")
    if int(n_basis) != n_basis or not 1 <= n_basis <= history_bins:
        raise InputDataError(
            f"n_basis is {n_basis!r}; give an integer between 1 and history_bins ({history_bins})."
        )
