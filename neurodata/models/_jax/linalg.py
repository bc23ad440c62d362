"""Linear-algebra helpers built on Cholesky factors (no explicit inverses)."""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.linalg import cho_solve, solve_triangular


def symmetrize(a: jnp.ndarray) -> jnp.ndarray:
    """Return ``(a + a^T) / 2`` over the last two axes."""
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def psd_cholesky(a: jnp.ndarray, jitter: float = 0.0) -> jnp.ndarray:
    """Lower Cholesky factor of a symmetric positive-definite matrix, with optional jitter."""
    n = a.shape[-1]
    return jnp.linalg.cholesky(symmetrize(a) + jitter * jnp.eye(n, dtype=a.dtype))


def chol_solve(chol: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Solve ``A x = b`` given the lower Cholesky factor of ``A``."""
    return cho_solve((chol, True), b)


def chol_logdet(chol: jnp.ndarray) -> jnp.ndarray:
    """``log det A`` from a triangular factor ``F`` of ``A = F F'``.

    Any triangular square root works (the lower Cholesky factor, or an inverse factor, whose
    result is then ``-log det A``).
    """
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)


def chol_inv_quad(chol: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """``b^T A^{-1} b`` given the lower Cholesky factor of ``A`` (``b`` a vector)."""
    half = solve_triangular(chol, b, lower=True)
    return jnp.sum(half * half, axis=0)


def mvn_logpdf_chol(x: jnp.ndarray, mean: jnp.ndarray, chol: jnp.ndarray) -> jnp.ndarray:
    """Log density of ``N(mean, L L^T)`` at ``x`` (vectors)."""
    d = x.shape[-1]
    return -0.5 * (chol_inv_quad(chol, x - mean) + chol_logdet(chol) + d * jnp.log(2 * jnp.pi))
