r"""Pólya-Gamma ``PG(b, c)`` sampling in JAX for real ``b > 0``.

``PG(b, c)`` is the infinite convolution of gammas (Polson, Scott & Windle 2013)

.. math::

    \omega = \frac{1}{2\pi^2} \sum_{k \ge 1} \frac{g_k}{(k - 1/2)^2 + c^2 / (4\pi^2)},
    \qquad g_k \sim \mathrm{Gamma}(b, 1).

:func:`sample_pg` keeps the first ``n_terms`` summands exactly and replaces the remainder
by one gamma variable whose mean and variance equal those of the remainder (both are known
in closed form), so the draw has the exact mean ``b tanh(c/2) / (2c)`` and the exact
variance ``b (2 tanh(c/2) - c sech^2(c/2)) / (4 c^3)`` for every ``n_terms``; the shape of
the distribution converges to PG as ``n_terms`` grows (the remainder is a sum of many small
gammas, which a moment-matched gamma approximates closely). The gamma draws use
Marsaglia-Tsang with one vectorised proposal round and a compacted retry of the rejected
elements (see :func:`sample_gamma`), which compiles fast and in float64 runs much faster on
CPU than ``jax.random.gamma`` for the large arrays (one draw per count) the bi-clustering
sampler needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_SMALL_C = 1e-3
_TINY32 = float(jnp.finfo(jnp.float32).tiny)


def pg_mean(b: jnp.ndarray, c: jnp.ndarray) -> jnp.ndarray:
    """Mean of ``PG(b, c)``: ``b tanh(c/2) / (2c)`` (``b / 4`` at ``c = 0``)."""
    c = jnp.abs(c)
    safe = jnp.where(c < _SMALL_C, 1.0, c)
    return b * jnp.where(c < _SMALL_C, 0.25 - c**2 / 48.0, jnp.tanh(safe / 2) / (2 * safe))


def pg_variance(b: jnp.ndarray, c: jnp.ndarray) -> jnp.ndarray:
    """Variance of ``PG(b, c)`` (``b / 24`` at ``c = 0``)."""
    c = jnp.abs(c)
    safe = jnp.where(c < _SMALL_C, 1.0, c)
    sech2 = 1.0 / jnp.cosh(jnp.minimum(safe / 2, 350.0)) ** 2
    big = (2 * jnp.tanh(safe / 2) - safe * sech2) / (4 * safe**3)
    return b * jnp.where(c < _SMALL_C, 1.0 / 24.0 - c**2 / 120.0, big)


def _marsaglia_tsang(kx, ku, d, cc):
    """One Marsaglia-Tsang proposal per element: candidate ``d v`` and whether it is accepted."""
    # the variates are float32 (half the random bits of float64, which dominate the cost);
    # the arithmetic stays in the shape's precision
    x = jax.random.normal(kx, d.shape, jnp.float32).astype(d.dtype)
    u = jax.random.uniform(ku, d.shape, jnp.float32, minval=_TINY32).astype(d.dtype)
    v = (1.0 + cc * x) ** 3
    positive = v > 0
    safe_v = jnp.where(positive, v, 1.0)
    ok = positive & (jnp.log(u) < 0.5 * x**2 + d - d * safe_v + d * jnp.log(safe_v))
    return d * safe_v, ok


def sample_gamma(key: jax.Array, shape_param: jnp.ndarray, retry_fraction: int = 16
                 ) -> jnp.ndarray:
    """``Gamma(a, 1)`` draws, elementwise over ``a > 0`` (Marsaglia-Tsang, exact).

    Every element makes one proposal; the rejected ones (at most 5 % for any shape, under
    1 % once ``a >= 4``) are gathered into a buffer of ``size / retry_fraction`` slots and
    propose again, buffer by buffer, until every element has accepted. Each element keeps
    its first accepted proposal, so the draws are exact, and the random variates (which
    dominate the cost) number about one normal and one uniform per element instead of one
    per element and fixed round (the Pólya-Gamma draws of the bi-clustering sweep: 2.3x
    faster than four fixed vectorised rounds). Shapes below 1 use ``Gamma(a) = Gamma(a + 1)
    U^{1/a}``. A NaN, infinite or negative ``a`` gives NaN.
    """
    a = jnp.asarray(shape_param)
    boost = a < 1.0
    d = (jnp.where(boost, a + 1.0, a) - 1.0 / 3.0).ravel()
    cc = 1.0 / jnp.sqrt(9.0 * d)
    kx, ku, kb, k_retry = jax.random.split(key, 4)
    value, ok = _marsaglia_tsang(kx, ku, d, cc)
    # a NaN, infinite or non-positive shape would never accept and keep the loop below
    # running forever: such elements are done at once, with NaN as their draw
    valid = jnp.isfinite(d) & (d > 0)
    value, ok = jnp.where(valid, value, jnp.nan), ok | ~valid
    n = d.size
    slots = min(n, max(16, n // retry_fraction))

    def retry(carry):
        value, ok, key = carry
        key, kx, ku = jax.random.split(key, 3)
        # the first rejected elements; unused slots point past the end and are dropped
        idx = jnp.nonzero(~ok, size=slots, fill_value=n)[0]
        new, accepted = _marsaglia_tsang(kx, ku, d.at[idx].get(mode="fill", fill_value=1.0),
                                         cc.at[idx].get(mode="fill", fill_value=1.0))
        return value.at[idx].set(new, mode="drop"), ok.at[idx].set(accepted, mode="drop"), key

    value = lax.while_loop(lambda c: ~jnp.all(c[1]), retry, (value, ok, k_retry))[0]
    value = value.reshape(a.shape)
    ub = jax.random.uniform(kb, a.shape, jnp.float32, minval=_TINY32).astype(a.dtype)
    return jnp.where(boost, value * ub ** (1.0 / jnp.where(boost, a, 1.0)), value)


def sample_pg(key: jax.Array, b: jnp.ndarray, c: jnp.ndarray, n_terms: int = 2) -> jnp.ndarray:
    """Draw ``PG(b, c)`` elementwise (``b > 0`` real, ``c`` real; broadcast together).

    Parameters
    ----------
    key
        PRNG key.
    b, c
        Shape and tilting parameters.
    n_terms
        Number of leading gamma summands drawn exactly; the rest is one moment-matched
        gamma. The mean and variance are exact for any value.

    Returns
    -------
    jax.Array
        Draws with the broadcast shape of ``b`` and ``c``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> w = sample_pg(jax.random.PRNGKey(0), jnp.full(20000, 3.0), jnp.full(20000, 1.5))
    >>> bool(abs(w.mean() - pg_mean(3.0, 1.5)) < 0.01)
    True
    """
    b, c = jnp.broadcast_arrays(jnp.asarray(b, float), jnp.asarray(c, float))
    c = jnp.abs(c)
    k = jnp.arange(1, n_terms + 1, dtype=b.dtype)
    denom = (k - 0.5) ** 2 + (c[..., None] / (2 * jnp.pi)) ** 2
    weights = 1.0 / (2 * jnp.pi**2 * denom)
    tail_mean = pg_mean(b, c) - b * jnp.sum(weights, axis=-1)
    tail_var = pg_variance(b, c) - b * jnp.sum(weights**2, axis=-1)
    tail_mean = jnp.maximum(tail_mean, 1e-300)
    tail_var = jnp.maximum(tail_var, 1e-300)
    # one gamma call for the head and the tail (one copy of the sampler to compile)
    shapes = jnp.concatenate([jnp.broadcast_to(b[..., None], denom.shape),
                              (tail_mean**2 / tail_var)[..., None]], axis=-1)
    scales = jnp.concatenate([weights, (tail_var / tail_mean)[..., None]], axis=-1)
    return jnp.sum(scales * sample_gamma(key, shapes), axis=-1)
