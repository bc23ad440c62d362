"""Gaussian-process kernels in time, shared by GPFA and the GP-VAE."""

from __future__ import annotations

import jax.numpy as jnp


def rbf_kernel(
    t1: jnp.ndarray, t2: jnp.ndarray, length_scale: jnp.ndarray, variance: float = 1.0
) -> jnp.ndarray:
    """Squared-exponential kernel ``variance * exp(-(t1_i - t2_j)^2 / (2 length_scale^2))``.

    Parameters
    ----------
    t1, t2
        Times ``(T1,)`` and ``(T2,)`` in any unit shared with ``length_scale``.
    length_scale
        Scalar length scale (same unit as the times).
    variance
        Marginal variance.

    Returns
    -------
    jax.Array
        ``(T1, T2)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> rbf_kernel(jnp.arange(3.0), jnp.arange(3.0), 1.0)[0, 1].round(4)
    Array(0.6065, dtype=float32)
    """
    diff = t1[:, None] - t2[None, :]
    return variance * jnp.exp(-0.5 * (diff / length_scale) ** 2)


def gpfa_kernel(t: jnp.ndarray, timescale: jnp.ndarray, gp_noise: float) -> jnp.ndarray:
    """GPFA's unit-variance RBF prior covariance over times ``t``.

    ``K = (1 - gp_noise) * exp(-(t_i - t_j)^2 / (2 timescale^2)) + gp_noise * I`` as in Yu
    et al. (2009), so that every latent has unit prior variance.
    """
    n = t.shape[0]
    return (1.0 - gp_noise) * rbf_kernel(t, t, timescale) + gp_noise * jnp.eye(n, dtype=t.dtype)
