"""Centered kernel alignment (Kornblith et al. 2019), biased and debiased (Song et al. 2012).

``HSIC(K, L) = tr(K H L H) / (n - 1)^2`` and ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.
The debiased HSIC is the unbiased U-statistic estimator; use it when features outnumber
stimuli (Murphy et al. 2024). CKA is invariant to orthogonal transforms and isotropic
scaling of either representation, but not to general invertible linear maps. Float64.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from neurodata.errors import InputDataError
from neurodata.models.rsa._features import paired

__all__ = ["cka", "hsic", "linear_kernel", "rbf_kernel"]


def linear_kernel(x: np.ndarray) -> jax.Array:
    """Gram matrix ``X X^T`` of the column-centred responses."""
    x = jnp.asarray(x)
    x = x - x.mean(0, keepdims=True)
    return x @ x.T


def rbf_kernel(x: np.ndarray, sigma_scale: float = 0.5) -> jax.Array:
    """Gaussian kernel with bandwidth ``sigma_scale * median pairwise distance``."""
    x = jnp.asarray(x)
    sq = jnp.sum(x * x, 1)
    d2 = jnp.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0.0)
    iu = np.triu_indices(x.shape[0], 1)
    med = jnp.median(jnp.sqrt(d2[iu]))
    return jnp.exp(-d2 / (2 * (sigma_scale * med) ** 2))


def hsic(k: jax.Array, l: jax.Array, debiased: bool = False) -> jax.Array:  # noqa: E741
    """HSIC of two Gram matrices: biased ``tr(KHLH)/(n-1)^2`` or the unbiased estimator."""
    n = k.shape[0]
    if not debiased:
        h = jnp.eye(n) - 1.0 / n
        return jnp.trace(k @ h @ l @ h) / (n - 1) ** 2
    kt = k * (1 - jnp.eye(n))
    lt = l * (1 - jnp.eye(n))
    one_k = kt.sum()
    one_l = lt.sum()
    return (jnp.sum(kt * lt) + one_k * one_l / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * jnp.sum(kt.sum(0) * lt.sum(1))) / (n * (n - 3))


def _cka(k, l, debiased):  # noqa: E741
    return hsic(k, l, debiased) / jnp.sqrt(hsic(k, k, debiased) * hsic(l, l, debiased))


# the Gram matrices are (n_stimulus, n_stimulus) whatever the number of features, so jitting
# on them compiles once per stimulus count instead of once per layer width
_cka_grams = jax.jit(_cka, static_argnums=2)


def cka(x: Any, y: Any, *, kernel: str = "linear", debiased: bool = False,
        sigma_scale: float = 0.5) -> float:
    """Centered kernel alignment between two ``(stimulus, neuron)`` representations.

    Parameters
    ----------
    x, y
        Responses to the same stimuli (datasets with ``activity``, DataArrays or arrays).
    kernel
        ``"linear"`` or ``"rbf"`` (bandwidth ``sigma_scale`` times the median distance).
    debiased
        Use the unbiased HSIC estimator (needs at least 4 stimuli).
    sigma_scale
        RBF bandwidth factor (typically 0.2 to 0.8).

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(20, 5))
    >>> round(cka(x, 3 * x), 6)
    1.0
    """
    a, b = paired(x, y, min_stimuli=4 if debiased else 3)
    if kernel == "linear":
        return float(_cka_grams(linear_kernel(a), linear_kernel(b), debiased))
    if kernel == "rbf":
        return float(_cka_grams(rbf_kernel(a, sigma_scale), rbf_kernel(b, sigma_scale),
                                debiased))
    raise InputDataError(f"kernel={kernel!r}; use 'linear' or 'rbf'.")
