"""Inference for RSA model comparison: dual bootstrap, noise ceilings, model tests, FDR.

:func:`dual_bootstrap` is the one bootstrap entry point. It resamples subjects (or RDMs) and
stimuli jointly, and alone, in one vmapped pass (Schuett et al., eLife 2023, as
``rsatoolbox.inference.eval_dual_bootstrap`` with fixed models), and combines the three
variance estimates with the small-sample dual-bootstrap formula. Pairs of a stimulus drawn
twice are removed with a mask, so every bootstrap sample has the same array shape. For the
``corr`` and ``cosine`` comparators every sum over resampled pairs is a quadratic form of
the stimulus counts, so all samples are evaluated with one matrix product and no resampled
RDM is ever materialised; the rank comparators gather the resampled RDMs (vmapped, in
batches). Both paths agree to 1e-10 on the same draws (tested).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import xarray as xr

from neurodata.errors import InputDataError
from neurodata.models.rsa.compare import _VECTOR, masked_ranks, vector_similarity
from neurodata.models.rsa.rdm import as_rdms

__all__ = ["dual_bootstrap", "fdr", "noise_ceiling", "pairwise_tests"]

_KINDS = ("both", "rdm", "pattern")


def _normalise(v: jax.Array, mask: jax.Array, method: str) -> jax.Array:
    """Per-RDM normalisation before pooling, as ``rsatoolbox.util.pooling.pool_rdm``."""
    m = mask.astype(v.dtype)
    n_ok = jnp.sum(m)
    if method == "cosine":
        return v / jnp.sqrt(jnp.sum(v * v * m, -1, keepdims=True) / n_ok)
    if method == "corr":
        mean = jnp.sum(v * m, -1, keepdims=True) / n_ok
        sd = jnp.sqrt(jnp.sum((v - mean) ** 2 * m, -1, keepdims=True) / n_ok)
        return (v - mean) / sd
    return masked_ranks(v, mask)


def _sample_stats(models, data, group_of, group_counts, idx, method):
    """Model evaluations and (lower, upper) noise ceiling for one resampled data set."""
    n = idx.shape[0]
    iu, ju = np.triu_indices(n, 1)
    a, b = idx[iu], idx[ju]
    mask = a != b
    mv = models[:, a, b]
    dv = data[:, a, b]
    w = group_counts[group_of]  # how often each RDM was drawn
    sims = vector_similarity(mv, dv, mask, method)
    evals = (sims @ w) / jnp.sum(w)
    # noise ceiling: each drawn subject against the pool of the others (lower) and of all
    # (upper); all pools at once as one weighted sum of the normalised RDMs
    z = _normalise(dv, mask, method)
    mine = (group_of[None, :] == jnp.arange(group_counts.shape[0])[:, None]).astype(dv.dtype)
    w_rest = w[None, :] * (1.0 - mine)
    pools = jnp.concatenate([w_rest, w[None]]) @ z
    pools = pools / jnp.maximum(jnp.concatenate([w_rest.sum(1), w.sum()[None]]), 1e-300)[:, None]
    s = vector_similarity(pools, dv, mask, method)  # (n_group + 1, n_data)
    per_mine = jnp.maximum(mine.sum(1), 1.0)
    lower = jnp.sum(s[:-1] * mine, 1) / per_mine
    upper = (mine @ s[-1]) / per_mine
    lower = jnp.where(w_rest.sum(1) > 0, lower, upper)  # one subject drawn: pool all
    present = (group_counts > 0).astype(dv.dtype)
    nc = jnp.stack([lower @ present, upper @ present]) / jnp.sum(present)
    return evals, nc


_sample_stats_jit = jax.jit(_sample_stats, static_argnames="method")


@partial(jax.jit, static_argnames=("method", "batch_size"))
def _bootstrap_core(models, data, group_of, group_draws, stim_draws, method, batch_size):
    n_group = int(group_draws.shape[1])
    n_stim = data.shape[1]
    all_groups = jnp.ones(n_group)
    all_stim = jnp.arange(n_stim)

    def one(draw):
        g, s = draw
        counts = jnp.zeros(n_group).at[g].add(1.0)
        e_both, nc_both = _sample_stats(models, data, group_of, counts, s, method)
        e_rdm, nc_rdm = _sample_stats(models, data, group_of, counts, all_stim, method)
        e_pat, nc_pat = _sample_stats(models, data, group_of, all_groups, s, method)
        return jnp.stack([e_both, e_rdm, e_pat], -1), jnp.stack([nc_both, nc_rdm, nc_pat], -1)

    return jax.lax.map(one, (group_draws, stim_draws), batch_size=batch_size)


def _linear_products(models: jax.Array, data: jax.Array) -> jax.Array:
    """Zero-diagonal matrices for every pair sum that cosine and Pearson need.

    Their quadratic forms in the stimulus counts give the sums over sampled pairs of: ones,
    X_m, D_k, X_m^2, X_m D_k and D_k D_l.
    """
    n_m, n = models.shape[:2]
    n_d = data.shape[0]
    off = 1.0 - jnp.eye(n)
    mats = jnp.concatenate([
        off[None], models, data, models**2,
        (models[:, None] * data[None]).reshape(n_m * n_d, n, n),
        (data[:, None] * data[None]).reshape(n_d * n_d, n, n),
    ]) * off
    return mats.reshape(mats.shape[0], n * n)


def _pool_similarity(c_mat: jax.Array, v: jax.Array) -> jax.Array:
    # similarity of each RDM with the pool sum_k v_k z_k, z_k normalised by sqrt(C_kk); the
    # comparator is invariant to the pool's scale and offset, so C (centred for corr,
    # uncentred for cosine) is all it needs
    a = v / jnp.sqrt(jnp.diag(c_mat))
    num = a @ c_mat
    den = jnp.sqrt((a @ c_mat @ a) * jnp.diag(c_mat))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _linear_stats(q: jax.Array, n_m: int, n_d: int, w: jax.Array, group_of: jax.Array,
                  group_counts: jax.Array, method: str):
    """Evaluations and noise ceiling from the quadratic forms ``q`` of one sample."""
    n_p = q[0]
    sm = q[1:1 + n_m]
    sd = q[1 + n_m:1 + n_m + n_d]
    smm = q[1 + n_m + n_d:1 + 2 * n_m + n_d]
    k = 1 + 2 * n_m + n_d
    smd = q[k:k + n_m * n_d].reshape(n_m, n_d)
    sdd = q[k + n_m * n_d:].reshape(n_d, n_d)
    if method == "corr":
        smd = smd - sm[:, None] * sd[None] / n_p
        smm = smm - sm**2 / n_p
        sdd = sdd - sd[:, None] * sd[None] / n_p
    sims = smd / jnp.sqrt(smm[:, None] * jnp.diag(sdd)[None])
    evals = (sims @ w) / jnp.sum(w)
    mine = (group_of[None, :] == jnp.arange(group_counts.shape[0])[:, None]).astype(w.dtype)
    per_mine = jnp.maximum(mine.sum(1), 1.0)
    lower = jnp.sum(jax.vmap(lambda v: _pool_similarity(sdd, v))(w[None] * (1 - mine)) * mine,
                    1) / per_mine
    upper = (mine @ _pool_similarity(sdd, w)) / per_mine
    # a sample that drew one subject only has no "others": as rsatoolbox, pool all of them
    lower = jnp.where((w[None] * (1 - mine)).sum(1) > 0, lower, upper)
    present = (group_counts > 0).astype(w.dtype)
    return evals, jnp.stack([lower @ present, upper @ present]) / jnp.sum(present)


@partial(jax.jit, static_argnames=("method",))
def _bootstrap_linear(models, data, group_of, group_draws, stim_draws, method):
    # cosine and Pearson need only sums over the sampled pairs, and with stimulus counts c a
    # sum over pairs is c^T M c / 2: one matmul for all samples, no gathered RDM copies
    n_group = int(group_draws.shape[1])
    n_m, n = models.shape[:2]
    n_d = data.shape[0]
    prods = _linear_products(models, data)
    counts = jax.vmap(lambda s: jnp.zeros(n).at[s].add(1.0))(stim_draws)
    q = jnp.einsum("bi,bj->bij", counts, counts).reshape(counts.shape[0], -1) @ prods.T / 2
    q_all = prods @ jnp.ones(n * n) / 2
    g_counts = jax.vmap(lambda g: jnp.zeros(n_group).at[g].add(1.0))(group_draws)
    ones = jnp.ones(n_group)

    def one(qb, gc):
        w = gc[group_of]
        e_b, nc_b = _linear_stats(qb, n_m, n_d, w, group_of, gc, method)
        e_r, nc_r = _linear_stats(q_all, n_m, n_d, w, group_of, gc, method)
        e_p, nc_p = _linear_stats(qb, n_m, n_d, ones[group_of], group_of, ones, method)
        return jnp.stack([e_b, e_r, e_p], -1), jnp.stack([nc_b, nc_r, nc_p], -1)

    return jax.vmap(one)(q, g_counts)


def _dual_variance(v: np.ndarray, n_rdm: int, n_pattern: int) -> np.ndarray:
    # v[..., kind]: variances under (both, rdm, pattern) resampling; small-sample formula
    both, rdm, pat = v[..., 0], v[..., 1], v[..., 2]
    cr, cp = n_rdm / (n_rdm - 1), n_pattern / (n_pattern - 1)
    var = cr * rdm + cp * pat - cr * cp * (both - rdm - pat)
    var = np.maximum(np.maximum(var, cr * rdm), cp * pat)
    return np.minimum(var, both)


def _pairwise_contrast(n: int) -> np.ndarray:
    ia, ib = np.triu_indices(n, 1)
    c = np.zeros((len(ia), n))
    c[np.arange(len(ia)), ia] = 1.0
    c[np.arange(len(ia)), ib] = -1.0
    return c


def dual_bootstrap(
    model_rdms: Any,
    data_rdms: Any,
    *,
    key: jax.Array,
    subjects: Any = None,
    method: str = "corr",
    n_bootstrap: int = 1000,
    batch_size: int = 64,
) -> xr.Dataset:
    """Evaluate fixed model RDMs on data RDMs with the dual bootstrap.

    Each bootstrap sample draws subjects and stimuli with replacement and evaluates the
    models three times: resampling both, only subjects, only stimuli. The mean evaluation
    is averaged over the three; the variance combines them with the dual-bootstrap formula
    (rsatoolbox's ``eval_dual_bootstrap`` with ``k_pattern = k_rdm = 1``).

    Parameters
    ----------
    model_rdms, data_rdms
        RDM datasets or arrays ``(n_model, n, n)`` and ``(n_data, n, n)`` on the same stimuli.
    key
        JAX PRNG key.
    subjects
        One label per data RDM: RDMs of one subject are drawn together (default: every RDM
        is its own subject, as rsatoolbox's default ``rdm_descriptor='index'``).
    method
        ``corr``, ``cosine``, ``spearman`` or ``rho-a``.
    n_bootstrap
        Number of bootstrap samples.
    batch_size
        Samples evaluated at once (memory vs speed).

    Returns
    -------
    xarray.Dataset
        ``evaluation(bootstrap, model, kind)``, ``noise_ceiling_samples(bootstrap, bound,
        kind)``, ``mean(model)``, ``sem(model)``, ``noise_ceiling(bound)`` (lower, upper),
        ``p_zero(model)`` (one-sided t-test against 0), ``p_noise_ceiling(model)`` (two-sided
        against the lower bound), ``p_pairwise(model, model_)`` and ``diff_variance``.

    Examples
    --------
    >>> import jax, numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(6, 10, 5)); d = ((x[:, :, None] - x[:, None]) ** 2).sum(-1)
    >>> res = dual_bootstrap(d[:2], d[2:], key=jax.random.key(0), n_bootstrap=20)
    >>> res["mean"].shape
    (2,)
    """
    if method not in _VECTOR:
        raise InputDataError(
            f"method={method!r}; the dual bootstrap supports {list(_VECTOR)}."
        )
    models, ids_m = as_rdms(model_rdms, "model_rdms")
    data, ids_d = as_rdms(data_rdms, "data_rdms")
    if models.shape[1] != data.shape[1] or (
        ids_m is not None and ids_d is not None and not np.array_equal(ids_m, ids_d)
    ):
        raise InputDataError(
            "model_rdms and data_rdms have different stimulus sets; select the same stimuli "
            "in the same order in both."
        )
    n_data, n_stim = data.shape[:2]
    labels = np.arange(n_data) if subjects is None else np.asarray(subjects)
    if labels.shape != (n_data,):
        raise InputDataError(
            f"subjects has shape {labels.shape}; give one label per data RDM ({n_data})."
        )
    _, group_of = np.unique(labels, return_inverse=True)
    n_group = int(group_of.max()) + 1
    if n_group < 2:
        raise InputDataError("the dual bootstrap needs data RDMs from at least 2 subjects.")
    if n_bootstrap < 2:
        raise InputDataError(f"n_bootstrap={n_bootstrap}; use at least 2 (1000 is usual).")
    k_group, k_stim = jax.random.split(key)
    group_draws = jax.random.randint(k_group, (n_bootstrap, n_group), 0, n_group)
    stim_draws = jax.random.randint(k_stim, (n_bootstrap, n_stim), 0, n_stim)
    if method in ("corr", "cosine"):
        evals, nc = _bootstrap_linear(jnp.asarray(models), jnp.asarray(data),
                                      jnp.asarray(group_of), group_draws, stim_draws, method)
    else:
        evals, nc = _bootstrap_core(
            jnp.asarray(models), jnp.asarray(data), jnp.asarray(group_of), group_draws,
            stim_draws, method, min(batch_size, n_bootstrap),
        )
    evals, nc = np.asarray(evals), np.asarray(nc)
    # samples with fewer than 3 distinct stimuli cannot be evaluated (rsatoolbox: NaN)
    ok = np.array([len(np.unique(s)) >= 3 for s in np.asarray(stim_draws)])
    evals, nc = evals[ok], nc[ok]
    n_model = models.shape[0]
    stacked = np.concatenate([evals, nc], 1)  # (sample, model + 2, kind)
    centred = stacked - stacked.mean(0, keepdims=True)
    cov = np.einsum("ijk,ilk->jlk", centred, centred) / (stacked.shape[0] - 1)
    model_var = _dual_variance(np.einsum("jjk->jk", cov)[:n_model], n_data, n_stim)
    c = _pairwise_contrast(n_model)
    diff_var = _dual_variance(np.einsum("pj,jlk,pl->pk", c, cov[:n_model, :n_model], c),
                              n_data, n_stim)
    nc_var = _dual_variance(
        np.einsum("jjk->jk", cov)[:n_model, None, :]
        - 2 * cov[:n_model, n_model:, :]
        + np.einsum("jjk->jk", cov[n_model:, n_model:])[None], n_data, n_stim)
    means = evals.mean(-1).mean(0)
    nc_mean = nc.mean(-1).mean(0)
    dof = min(n_data, n_stim) - 1
    eps = np.finfo(float).eps
    p_zero = 1 - scipy.stats.t.cdf(means / np.sqrt(np.maximum(model_var, eps)), dof)
    t_nc = (means - nc_mean[0]) / np.sqrt(np.maximum(nc_var[:, 0], eps))
    p_nc = 2 * (1 - scipy.stats.t.cdf(np.abs(t_nc), dof))
    t_pair = (c @ means) / np.sqrt(np.maximum(diff_var, eps))
    p_pair = np.zeros((n_model, n_model))
    ia, ib = np.triu_indices(n_model, 1)
    p_pair[ia, ib] = p_pair[ib, ia] = 2 * (1 - scipy.stats.t.cdf(np.abs(t_pair), dof))
    names = (np.asarray(model_rdms["rdm_name"]).astype(str)
             if isinstance(model_rdms, xr.Dataset | xr.DataArray)
             and "rdm_name" in model_rdms.coords else np.arange(n_model).astype(str))
    return xr.Dataset(
        {
            "evaluation": (("bootstrap", "model", "kind"), evals),
            "noise_ceiling_samples": (("bootstrap", "bound", "kind"), nc),
            "mean": ("model", means),
            "sem": ("model", np.sqrt(np.maximum(model_var, 0))),
            "noise_ceiling": ("bound", nc_mean),
            "p_zero": ("model", p_zero),
            "p_noise_ceiling": ("model", p_nc),
            "p_pairwise": (("model", "model_"), p_pair),
            "diff_variance": ("pair", diff_var),
        },
        coords={"model": names, "model_": names, "kind": list(_KINDS),
                "bound": ["lower", "upper"]},
        attrs={"method": method, "dof": dof, "n_bootstrap": int(ok.sum()),
               "n_rdm": n_data, "n_stimulus": n_stim},
    )


def noise_ceiling(data_rdms: Any, method: str = "corr", *, subjects: Any = None) -> tuple:
    """Lower and upper noise ceilings of the data RDMs (leave one subject out).

    The lower bound compares each subject's RDMs with the pool of the other subjects, the
    upper bound with the pool of all (pooled as suits ``method``: z-scored mean for
    ``corr``, RMS-normalised mean for ``cosine``, mean rank for rank comparators), as
    ``rsatoolbox.inference.boot_noise_ceiling``.

    Returns
    -------
    tuple of float
        ``(lower, upper)``.
    """
    if method not in _VECTOR:
        raise InputDataError(f"method={method!r}; noise ceilings support {list(_VECTOR)}.")
    data, _ = as_rdms(data_rdms, "data_rdms")
    labels = np.arange(len(data)) if subjects is None else np.asarray(subjects)
    if labels.shape != (len(data),):
        raise InputDataError(f"subjects has shape {labels.shape}; give one label per RDM.")
    _, group_of = np.unique(labels, return_inverse=True)
    if group_of.max() < 1:
        raise InputDataError("noise ceilings need RDMs from at least 2 subjects.")
    counts = jnp.ones(int(group_of.max()) + 1)
    _, nc = _sample_stats_jit(jnp.asarray(data[:1]), jnp.asarray(data), jnp.asarray(group_of),
                              counts, jnp.arange(data.shape[1]), method)
    return float(nc[0]), float(nc[1])


def fdr(p_values: Any, alpha: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg: which p-values are significant at false discovery rate ``alpha``.

    Parameters
    ----------
    p_values
        Any shape; NaNs are never significant.
    alpha
        The FDR level.

    Returns
    -------
    numpy.ndarray
        Boolean array of the same shape.

    Examples
    --------
    >>> fdr([0.001, 0.02, 0.04, 0.5]).tolist()
    [True, True, False, False]
    """
    p = np.asarray(p_values, dtype=float)
    flat = p.ravel()
    ok = np.isfinite(flat)
    vals = flat[ok]
    order = np.argsort(vals)
    m = len(vals)
    passed = vals[order] <= alpha * np.arange(1, m + 1) / max(m, 1)
    k = np.max(np.nonzero(passed)[0]) + 1 if passed.any() else 0
    sig = np.zeros(m, bool)
    sig[order[:k]] = True
    out = np.zeros(flat.shape, bool)
    out[ok] = sig
    return out.reshape(p.shape)


def pairwise_tests(result: xr.Dataset, alpha: float = 0.05) -> xr.DataArray:
    """Pairwise model differences significant after FDR correction (upper triangle tested).

    Parameters
    ----------
    result
        The output of :func:`dual_bootstrap`.
    alpha
        FDR level.

    Returns
    -------
    xarray.DataArray
        Boolean ``significant(model, model_)``, symmetric.
    """
    p = np.asarray(result["p_pairwise"])
    n = p.shape[0]
    ia, ib = np.triu_indices(n, 1)
    sig = np.zeros((n, n), bool)
    sig[ia, ib] = sig[ib, ia] = fdr(p[ia, ib], alpha)
    return xr.DataArray(sig, dims=("model", "model_"),
                        coords={"model": result["model"].values,
                                "model_": result["model_"].values}, name="significant")
