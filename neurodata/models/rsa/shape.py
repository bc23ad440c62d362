"""Shape metrics (Williams et al. 2021): Procrustes, partially whitened metrics, CCA, SVCCA.

:class:`ShapeMetric` follows netrep's ``LinearMetric``: columns are centred, each
representation is partially whitened in the eigenbasis of ``X^T X`` with
``d = alpha + (1 - alpha) lambda^(-1/2)`` (rescaled to preserve the total variance), and the
optimal rotation between the two is fitted; ``alpha = 1`` is Procrustes, ``alpha = 0`` is
CCA-like. ``fit`` and ``score`` are separate so that distances can be cross-validated
(fit the alignment on training stimuli, score on held-out ones). Float64.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from neurodata.errors import InputDataError
from neurodata.models._base import NeurodataModel
from neurodata.models.rsa._features import paired

__all__ = ["ShapeMetric", "cca", "procrustes_distance", "svcca"]


def _pad(x: jax.Array, width: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (0, width - x.shape[1])))


@jax.jit
def _whitener(x: jax.Array, alpha: jax.Array) -> jax.Array:
    lam, vec = jnp.linalg.eigh(x.T @ x)
    lam = jnp.maximum(lam, 1e-7)
    d = alpha + (1 - alpha) * lam ** -0.5
    d = d * jnp.sqrt(jnp.sum(lam) / jnp.sum(d**2 * lam))
    return (vec * d[None]) @ vec.T


@jax.jit
def _fit(x: jax.Array, y: jax.Array, alpha: jax.Array):
    zx = _whitener(x, alpha)
    zy = _whitener(y, alpha)
    u, _, vt = jnp.linalg.svd((x @ zx).T @ (y @ zy))
    return zx @ u, zy @ vt.T


@jax.jit
def _angular(xw: jax.Array, yw: jax.Array) -> jax.Array:
    cos = jnp.sum(xw * yw) / (jnp.linalg.norm(xw) * jnp.linalg.norm(yw))
    return jnp.arccos(jnp.clip(cos, -1.0, 1.0))


class ShapeMetric(NeurodataModel):
    """Generalised shape metric between two ``(stimulus, neuron)`` representations.

    Parameters
    ----------
    alpha
        Partial whitening in [0, 1]: 1 is Procrustes, 0 is CCA-like.
    score_method
        ``"angular"`` (arccos of the aligned correlation, in [0, pi/2]) or ``"euclidean"``
        (root-mean-square distance after alignment).

    Attributes
    ----------
    weights_x_, weights_y_ : numpy.ndarray
        The fitted whitening-plus-rotation maps (zero-padded to equal widths).
    mean_x_, mean_y_ : numpy.ndarray
        Column means of the training responses.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(30, 4)); q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    >>> round(ShapeMetric(alpha=1.0).fit(x, x @ q).score(x, x @ q), 6)
    0.0
    """

    def __init__(self, alpha: float = 1.0, score_method: str = "angular"):
        self.alpha = alpha
        self.score_method = score_method

    def _prepare(self, x: Any, y: Any) -> tuple[jax.Array, jax.Array]:
        a, b = paired(x, y)
        width = max(a.shape[1], b.shape[1])
        return _pad(jnp.asarray(a), width), _pad(jnp.asarray(b), width)

    def fit(self, x: Any, y: Any) -> ShapeMetric:
        """Fit the alignment on responses ``x`` and ``y`` to the same stimuli."""
        if not 0.0 <= self.alpha <= 1.0:
            raise InputDataError(f"alpha={self.alpha}; it must lie in [0, 1].")
        if self.score_method not in ("angular", "euclidean"):
            raise InputDataError(
                f"score_method={self.score_method!r}; use 'angular' or 'euclidean'."
            )
        a, b = self._prepare(x, y)
        self.mean_x_ = np.asarray(a.mean(0))
        self.mean_y_ = np.asarray(b.mean(0))
        wx, wy = _fit(a - a.mean(0), b - b.mean(0), jnp.asarray(float(self.alpha)))
        self.weights_x_, self.weights_y_ = np.asarray(wx), np.asarray(wy)
        return self

    def score(self, x: Any, y: Any) -> float:
        """Distance between ``x`` and ``y`` under the fitted alignment."""
        self._check_fitted()
        a, b = self._prepare(x, y)
        xw = (a - self.mean_x_) @ self.weights_x_
        yw = (b - self.mean_y_) @ self.weights_y_
        if self.score_method == "angular":
            return float(_angular(xw, yw))
        return float(jnp.sqrt(jnp.mean(jnp.sum((xw - yw) ** 2, 1))))

    def fit_score(self, x: Any, y: Any) -> float:
        """Fit and score on the same responses."""
        return self.fit(x, y).score(x, y)


def procrustes_distance(x: Any, y: Any) -> float:
    """Angular Procrustes distance ``arccos(||X^T Y||_* / (||X||_F ||Y||_F))`` (centred).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(10, 3))
    >>> round(procrustes_distance(x, 2 * x), 6)
    0.0
    """
    a, b = paired(x, y)
    a = a - a.mean(0)
    b = b - b.mean(0)
    nuc = np.linalg.svd(a.T @ b, compute_uv=False).sum()
    cos = nuc / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.arccos(np.clip(cos, -1.0, 1.0)))


def cca(x: Any, y: Any, *, n_components: int | None = None) -> np.ndarray:
    """Canonical correlations between two representations, largest first.

    Computed from the singular values of ``Q_x^T Q_y`` (QR of the centred responses);
    at most ``min(rank x, rank y)`` values.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(50, 3))
    >>> np.round(cca(x, x @ np.diag([1.0, 2.0, 3.0])), 6).tolist()
    [1.0, 1.0, 1.0]
    """
    a, b = paired(x, y)
    qa = np.linalg.qr(a - a.mean(0))[0]
    qb = np.linalg.qr(b - b.mean(0))[0]
    rho = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), 0.0, 1.0)
    return rho if n_components is None else rho[:n_components]


def _top_directions(x: np.ndarray, variance: float, n_components: int | None) -> np.ndarray:
    # centred responses projected on their leading principal axes
    x = x - x.mean(0)
    u, sv, _ = np.linalg.svd(x, full_matrices=False)
    if n_components is None:
        explained = np.cumsum(sv**2) / np.sum(sv**2)
        n_components = int(np.searchsorted(explained, variance - 1e-12) + 1)
    return u[:, :n_components] * sv[:n_components]


def svcca(
    x: Any, y: Any, *, variance: float = 0.99, n_components: int | None = None
) -> float:
    """SVCCA (Raghu et al. 2017): mean canonical correlation of SVD-reduced representations.

    Each centred representation is first reduced to its leading principal directions (those
    explaining ``variance`` of its variance, or a fixed ``n_components``), which removes
    low-variance noise directions that plain CCA would align; the score is the mean of the
    canonical correlations between the two reduced representations (:func:`cca`).

    Parameters
    ----------
    x, y
        ``(stimulus, neuron)`` responses to the same stimuli.
    variance
        Fraction of variance kept by the SVD step (in (0, 1]).
    n_components
        Fixed number of directions kept per representation (overrides ``variance``).

    Returns
    -------
    float
        In [0, 1]; 1 when the leading subspaces are linearly equivalent.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(100, 3))
    >>> x = np.c_[z, 1e-3 * rng.normal(size=(100, 5))]
    >>> y = np.c_[z @ rng.normal(size=(3, 3)), 1e-3 * rng.normal(size=(100, 5))]
    >>> round(svcca(x, y), 6)
    1.0
    """
    if not 0.0 < variance <= 1.0:
        raise InputDataError(f"variance={variance}; it must lie in (0, 1].")
    a, b = paired(x, y)
    if n_components is not None and not 1 <= n_components <= min(a.shape[1], b.shape[1]):
        raise InputDataError(
            f"n_components={n_components}; it must be between 1 and the smaller number of "
            f"neurons ({min(a.shape[1], b.shape[1])})."
        )
    rho = cca(_top_directions(a, variance, n_components),
              _top_directions(b, variance, n_components))
    return float(rho.mean())
