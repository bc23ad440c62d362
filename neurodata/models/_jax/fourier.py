"""Fourier-domain Gaussian-process prior: a diagonal prior over a few real Fourier coefficients.

A stationary kernel on a circular domain of ``n_circ`` points is diagonalised by the discrete
Fourier transform: with the orthonormal real basis ``B`` (``(n_coef, n_circ)``) the covariance
is ``B.T @ diag(c) @ B`` where ``c`` is the kernel's spectral density sampled at the basis
frequencies. A trial of ``T`` bins is embedded at the start of a circle of ``n_circ > T``
points so that the wrap-around correlation between its two ends is negligible, and only the
frequencies whose prior variance exceeds ``1 / condthresh`` of the largest one (for the
shortest length scale allowed) are kept. The GP prior on ``T`` bins then costs ``O(n_coef)``
instead of a ``T x T`` inverse. The construction follows the ``GP_fourier`` package of the
Pillow lab (ASD, SNP-GPFA, MM-GPVAE); this is our own implementation.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def n_frequencies(n_circ: int, min_length_scale: float, condthresh: float = 1e8) -> int:
    """Highest frequency index ``W`` kept for a circle of ``n_circ`` bins.

    The RBF spectral density at angular frequency ``omega = 2 pi w / n_circ`` falls as
    ``exp(-omega^2 l^2 / 2)``; frequencies where it is below ``1 / condthresh`` of its value at
    zero, for the shortest length scale ``min_length_scale`` (in bins), are dropped.

    Parameters
    ----------
    n_circ
        Length of the circular domain in bins.
    min_length_scale
        Shortest length scale (bins) the prior must represent.
    condthresh
        Condition-number threshold of the prior covariance.

    Returns
    -------
    int
        ``W``: the basis keeps cosines ``0..W`` and sines ``1..W``, capped at the full real DFT.

    Examples
    --------
    >>> n_frequencies(72, 10.0)
    6
    """
    w = math.floor(n_circ / (2 * math.pi * min_length_scale) * math.sqrt(2 * math.log(condthresh)))
    return min(w, n_circ // 2)


def frequencies(n_circ: int, n_freq: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer frequencies of the kept cosine and sine rows.

    Parameters
    ----------
    n_circ
        Length of the circular domain in bins.
    n_freq
        Highest frequency index ``W`` (see :func:`n_frequencies`).

    Returns
    -------
    cos_w, sin_w
        Cosines ``0..W`` and sines ``1..W``; when ``W`` reaches ``n_circ / 2`` the sine at the
        Nyquist frequency (identically zero) is left out, so that the full set has ``n_circ``
        rows.
    """
    cos_w = np.arange(n_freq + 1)
    top = n_freq if 2 * n_freq < n_circ else (n_circ - 1) // 2
    return cos_w, np.arange(1, top + 1)


def fourier_basis(n_time: int, n_circ: int, n_freq: int) -> np.ndarray:
    """Orthonormal real Fourier basis restricted to the first ``n_time`` bins of the circle.

    Parameters
    ----------
    n_time
        Bins of the trial window (``<= n_circ``).
    n_circ
        Length of the circular domain in bins.
    n_freq
        Highest frequency index kept.

    Returns
    -------
    numpy.ndarray
        ``B`` of shape ``(n_coef, n_time)``, float64. Over the whole circle (``n_time ==
        n_circ``) its rows are orthonormal: ``B @ B.T == I``.

    Examples
    --------
    >>> B = fourier_basis(8, 8, 4)
    >>> bool(np.allclose(B @ B.T, np.eye(8)))
    True
    """
    cos_w, sin_w = frequencies(n_circ, n_freq)
    t = np.arange(n_time)
    cos = np.cos(2 * np.pi * np.outer(cos_w, t) / n_circ)
    sin = np.sin(2 * np.pi * np.outer(sin_w, t) / n_circ)
    # The DC row and (for even n_circ) the Nyquist cosine have norm sqrt(n_circ), the others
    # sqrt(n_circ / 2).
    cos_norm = np.where((cos_w == 0) | (2 * cos_w == n_circ), np.sqrt(n_circ), np.sqrt(n_circ / 2))
    return np.concatenate([cos / cos_norm[:, None], sin / np.sqrt(n_circ / 2)], axis=0)


def angular_frequencies(n_circ: int, n_freq: int) -> np.ndarray:
    """Angular frequency (radians per bin) of each row of :func:`fourier_basis`."""
    cos_w, sin_w = frequencies(n_circ, n_freq)
    return 2 * np.pi * np.concatenate([cos_w, sin_w]) / n_circ


def rbf_spectral_variances(
    omega: jnp.ndarray, length_scale: jnp.ndarray, variance: float = 1.0, jitter: float = 0.0
) -> jnp.ndarray:
    """Prior variances of the Fourier coefficients of an RBF GP.

    ``c_f = variance * sqrt(2 pi) * l * exp(-omega_f^2 l^2 / 2) + jitter``: the RBF kernel's
    spectral density sampled at the basis frequencies. ``jitter`` adds ``jitter * I`` to the
    time-domain covariance (the basis is orthonormal on the circle).

    Parameters
    ----------
    omega
        Angular frequencies ``(n_coef,)`` in radians per bin.
    length_scale
        Length scale(s) in bins; a ``(k,)`` array gives ``(k, n_coef)`` variances.
    variance
        Marginal variance of the GP.
    jitter
        Variance added to every coefficient.

    Returns
    -------
    jax.Array
        ``(n_coef,)`` or ``(k, n_coef)``.

    Examples
    --------
    >>> import numpy as np
    >>> c = rbf_spectral_variances(np.zeros(1), 2.0)
    >>> float(c[0]) == float(np.sqrt(2 * np.pi) * 2.0)
    True
    """
    ell = jnp.asarray(length_scale)[..., None]
    return variance * jnp.sqrt(2 * jnp.pi) * ell * jnp.exp(-0.5 * (omega * ell) ** 2) + jitter
