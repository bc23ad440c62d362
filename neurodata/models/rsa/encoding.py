"""Encoding models (Brain-Score protocol), noise ceilings and kernel analysis.

- :func:`ridge_predictivity`: ridge regression from model features to each neuron, the
  penalty chosen per neuron by exact leave-one-out error on the training stimuli (SVD, all
  penalties at once, in JAX); scored by Pearson r on held-out stimuli.
- :func:`pls_predictivity`: Brain-Score's ``CrossRegressedCorrelation``: PLS with 25
  components (``scale=False``), 10 splits of 90/10 over stimuli (stratified by a label when
  given, ``random_state=1``), Pearson r per neuron on held-out stimuli, median over neurons,
  mean over splits.
- :func:`reverse_predictivity`: the same with the roles swapped (brain predicts the model).
- :func:`split_half_ceiling`: split-half reliability per neuron with Spearman-Brown.
- :func:`kernel_analysis`: Montavon et al. (2011) kernel-analysis curves and their AUC.

Scores are r (not r^2): ``attrs['score']`` says so, and ``r / ceiling`` when a ceiling is
given. Float64.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from neurodata.errors import InputDataError
from neurodata.models.rsa._features import as_patterns, paired

__all__ = [
    "kernel_analysis",
    "pls_predictivity",
    "reverse_predictivity",
    "ridge_predictivity",
    "split_half_ceiling",
]


def _splits(n: int, n_splits: int, test_size: float, seed: int, labels: Any):
    from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
    if labels is None:
        cv = ShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
        return list(cv.split(np.zeros(n)))
    cv = StratifiedShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
    return list(cv.split(np.zeros(n), np.asarray(labels)))


def _pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1.0), 0.0)


@jax.jit
def _ridge_loo(x: jax.Array, y: jax.Array, alphas: jax.Array):
    # ridge for every penalty from one SVD; the exact leave-one-out residual is
    # e_i / (1 - h_ii) (Golub, Heath & Wahba 1979); the best penalty is chosen per target
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    u, s, vt = jnp.linalg.svd(xc, full_matrices=False)
    uty = u.T @ yc

    def loo(alpha):
        f = s**2 / (s**2 + alpha)
        fitted = u @ (f[:, None] * uty)
        h = (u**2) @ f + 1.0 / x.shape[0]
        return jnp.mean(((yc - fitted) / (1.0 - h)[:, None]) ** 2, 0)

    errors = jax.vmap(loo)(alphas)  # (alpha, target)
    best = jnp.argmin(errors, 0)
    coef_all = jax.vmap(lambda a: vt.T @ ((s / (s**2 + a))[:, None] * uty))(alphas)
    coef = jnp.take_along_axis(coef_all, best[None, None, :], 0)[0]
    return coef, xm, ym, alphas[best]


def _result(r: np.ndarray, target_ids: Any, alphas: np.ndarray | None, ceiling: Any,
            method: str) -> xr.Dataset:
    per_neuron = r.mean(0)
    score = float(np.mean(np.median(r, 1)))
    data = {"r": (("split", "neuron"), r), "r_mean": ("neuron", per_neuron)}
    if alphas is not None:
        data["alpha"] = (("split", "neuron"), alphas)
    attrs = {"score": score, "score_kind": "median over neurons of Pearson r, mean over splits",
             "method": method}
    if ceiling is not None:
        c = np.asarray(ceiling, dtype=float)
        attrs["ceiled_score"] = float(np.mean(np.median(r / c[None], 1)))
        attrs["ceiled_kind"] = "r / ceiling"
    return xr.Dataset(data, coords={"neuron": target_ids}, attrs=attrs)


def _ids(x: Any, n: int) -> np.ndarray:
    if isinstance(x, xr.Dataset) and "neuron_id" in x.coords:
        return np.asarray(x["neuron_id"])
    return np.arange(n)


def ridge_predictivity(
    source: Any, target: Any, *, alphas: Any = None, n_splits: int = 10,
    test_size: float = 0.1, seed: int = 1, labels: Any = None, ceiling: Any = None,
) -> xr.Dataset:
    """Cross-validated ridge predictivity of each target neuron from the source features.

    Parameters
    ----------
    source, target
        ``(stimulus, neuron)`` responses on the same stimuli (model features, brain).
    alphas
        Candidate penalties (default ``logspace(-3, 5, 17)``), chosen per neuron by exact
        leave-one-out error within each training set.
    n_splits, test_size, seed, labels
        Stimulus splits (stratified by ``labels`` when given).
    ceiling
        Optional per-neuron noise ceiling (e.g. :func:`split_half_ceiling`).

    Returns
    -------
    xarray.Dataset
        ``r(split, neuron)``, ``r_mean(neuron)``, ``alpha(split, neuron)``; ``attrs['score']``
        is the mean over splits of the median r over neurons.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(60, 8)); y = x @ rng.normal(size=(8, 3))
    >>> ridge_predictivity(x, y + 0.1 * rng.normal(size=y.shape)).attrs["score"] > 0.9
    True
    """
    x, y = paired(source, target, min_stimuli=10)
    grid = jnp.asarray(np.logspace(-3, 5, 17) if alphas is None else np.asarray(alphas, float))
    rs, chosen = [], []
    for train, test in _splits(len(x), n_splits, test_size, seed, labels):
        coef, xm, ym, best = _ridge_loo(jnp.asarray(x[train]), jnp.asarray(y[train]), grid)
        pred = (x[test] - np.asarray(xm)) @ np.asarray(coef) + np.asarray(ym)
        rs.append(_pearson_columns(pred, y[test]))
        chosen.append(np.asarray(best))
    return _result(np.array(rs), _ids(target, y.shape[1]), np.array(chosen), ceiling, "ridge")


def pls_predictivity(
    source: Any, target: Any, *, n_components: int = 25, n_splits: int = 10,
    test_size: float = 0.1, seed: int = 1, labels: Any = None, ceiling: Any = None,
) -> xr.Dataset:
    """Brain-Score neural predictivity: PLS regression, 90/10 splits, Pearson r per neuron.

    Parameters
    ----------
    source, target
        ``(stimulus, neuron)`` responses on the same stimuli.
    n_components
        PLS components (25 in Brain-Score; capped at the number of source features).
    n_splits, test_size, seed, labels
        Stimulus splits (Brain-Score: 10, 0.1, 1, stratified by ``object_name``).
    ceiling
        Optional per-neuron noise ceiling.

    Returns
    -------
    xarray.Dataset
        As :func:`ridge_predictivity` (without ``alpha``).
    """
    from sklearn.cross_decomposition import PLSRegression
    x, y = paired(source, target, min_stimuli=10)
    k = min(n_components, x.shape[1], len(x) - 2)
    rs = []
    for train, test in _splits(len(x), n_splits, test_size, seed, labels):
        pls = PLSRegression(n_components=k, scale=False).fit(x[train], y[train])
        rs.append(_pearson_columns(pls.predict(x[test]), y[test]))
    return _result(np.array(rs), _ids(target, y.shape[1]), None, ceiling, "pls")


def reverse_predictivity(model: Any, brain: Any, *, method: str = "ridge",
                         **kwargs: Any) -> xr.Dataset:
    """Reverse predictivity: how well the brain responses predict each model unit."""
    if method == "ridge":
        return ridge_predictivity(brain, model, **kwargs)
    if method == "pls":
        return pls_predictivity(brain, model, **kwargs)
    raise InputDataError(f"method={method!r}; use 'ridge' or 'pls'.")


def split_half_ceiling(trials: Any, *, n_splits: int = 10, seed: int = 0) -> xr.DataArray:
    """Split-half reliability per neuron, Spearman-Brown corrected, mean over random splits.

    Parameters
    ----------
    trials
        ``(trial, stimulus, neuron)`` responses (a dataset with ``activity``, a DataArray or
        an array), at least 2 trials.
    n_splits
        Random halvings of the trials.
    seed
        Seed of the halvings.

    Returns
    -------
    xarray.DataArray
        ``ceiling(neuron)``: ``2 r / (1 + r)`` with r the correlation over stimuli of the
        two half means.
    """
    if isinstance(trials, xr.Dataset):
        trials = trials["activity"]
    if isinstance(trials, xr.DataArray):
        trials = trials.transpose("trial", "stimulus", "neuron").values
    t = np.asarray(trials, dtype=float)
    if t.ndim != 3 or t.shape[0] < 2:
        raise InputDataError(
            f"trials has shape {t.shape}; give (trial, stimulus, neuron) with >= 2 trials."
        )
    if not np.all(np.isfinite(t)):
        raise InputDataError("trials holds NaN or infinite values.")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_splits):
        perm = rng.permutation(t.shape[0])
        half = t.shape[0] // 2
        r = _pearson_columns(t[perm[:half]].mean(0), t[perm[half:]].mean(0))
        out.append(2 * r / (1 + r))
    return xr.DataArray(np.mean(out, 0), dims="neuron", name="ceiling",
                        attrs={"correction": "Spearman-Brown"})


@jax.jit
def _ka_errors(x: jax.Array, y: jax.Array, sigmas: jax.Array) -> jax.Array:
    sq = jnp.sum(x * x, 1)
    d2 = jnp.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0.0)

    def per_sigma(sigma):
        k = jnp.exp(-d2 / (2 * sigma**2))
        _, vec = jnp.linalg.eigh(k)
        vec = vec[:, ::-1]  # decreasing eigenvalues
        proj = vec.T @ y  # (n, classes)
        explained = jnp.cumsum(jnp.sum(proj**2, 1))
        return (jnp.sum(y**2) - explained) / x.shape[0]

    return jax.vmap(per_sigma)(sigmas).min(0)


def kernel_analysis(patterns: Any, labels: Any, *, sigmas: Any = None) -> xr.DataArray:
    """Kernel-analysis curve (Montavon et al. 2011; Cadieu et al. 2014).

    The one-hot labels (centred) are projected onto the leading d eigenvectors of a
    Gaussian kernel; the error ``e(d) = min_sigma ||Y - U_d U_d^T Y||^2 / n``, normalised by
    ``e(0)``, gives the precision ``1 - e(d)`` as a function of complexity ``d / n``.

    Parameters
    ----------
    patterns
        ``(stimulus, neuron)`` responses.
    labels
        One class label per stimulus.
    sigmas
        Kernel widths to minimise over (default: 10 log-spaced multiples of the median
        distance, 0.1 to 10).

    Returns
    -------
    xarray.DataArray
        ``precision(complexity)``; ``attrs['auc']`` is the area under the curve over
        log10 complexity, normalised to [0, 1].
    """
    x = as_patterns(patterns, "patterns")
    lab = np.asarray(labels)
    if lab.shape != (len(x),):
        raise InputDataError(f"labels has shape {lab.shape}; give one label per stimulus.")
    classes, codes = np.unique(lab, return_inverse=True)
    y = np.eye(len(classes))[codes]
    y = y - y.mean(0)
    dist = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0))
    med = np.median(dist[np.triu_indices(len(x), 1)])
    grid = med * np.logspace(-1, 1, 10) if sigmas is None else np.asarray(sigmas, float)
    err = np.asarray(_ka_errors(jnp.asarray(x), jnp.asarray(y), jnp.asarray(grid)))
    precision = 1.0 - err / (np.sum(y**2) / len(x))
    complexity = np.arange(1, len(x) + 1) / len(x)
    logc = np.log10(complexity)
    auc = float(np.trapezoid(precision, logc) / (logc[-1] - logc[0]))
    return xr.DataArray(precision, dims="complexity", coords={"complexity": complexity},
                        name="precision", attrs={"auc": auc})
