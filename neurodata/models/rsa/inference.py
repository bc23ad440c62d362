"""Inference for RSA model comparison: dual bootstrap, noise ceilings, model tests, FDR.

:func:`dual_bootstrap` is the one bootstrap entry point. It resamples subjects (or RDMs) and
stimuli jointly, and alone, in one vmapped pass (Schuett et al., eLife 2023, as
``rsatoolbox.inference.eval_dual_bootstrap`` with fixed models), and combines the three
variance estimates with the small-sample dual-bootstrap formula. Pairs of a stimulus drawn
twice are removed with a mask, so every bootstrap sample has the same array shape. For the
``corr`` and ``cosine`` comparators every sum over resampled pairs is a quadratic form of
the stimulus counts, so all samples are evaluated with one matrix product and no resampled
RDM is ever materialised; the rank comparators gather the resampled RDMs (vmapped, in
batches) as integer rank keys of the original RDMs, so that a histogram ranks them without
a sort (only the pooled noise-ceiling RDMs are sorted), and the stimuli-only and joint kinds
share one ranking per sample. Both paths agree to 1e-10 on the same draws, and the rank path
equals scipy's ranking of the gathered vectors (tested).

With ``k_pattern``/``k_rdm`` > 1 every sample is cross-validated inside (random stimulus and
subject folds, ``n_cv`` assignments per sample) and the variance of the random folds is
removed with :func:`cv_corrected_covariance`; every fold evaluation and cross-validated
noise ceiling equals rsatoolbox's ``_internal_cv`` on the same sample and folds (tested).
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
from neurodata.models.rsa.compare import (
    _VECTOR,
    _low_ranks,
    masked_ranks,
    rank_similarity,
    vector_similarity,
)
from neurodata.models.rsa.rdm import as_rdms

__all__ = ["cv_corrected_covariance", "dual_bootstrap", "fdr", "noise_ceiling",
           "pairwise_tests"]

_KINDS = ("both", "rdm", "pattern")
_RANKED = ("spearman", "rho-a")


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


def _rank_keys(rdms: jax.Array) -> jax.Array:
    """Each RDM's entries replaced by their rank among its pairs (ties share the lowest).

    Resampling only repeats and drops pairs, so these integer keys order (and tie) any
    resampled or masked RDM vector exactly as its values: :func:`_ranks_from_keys` then
    ranks it without sorting.
    """
    n = rdms.shape[-1]
    iu, ju = np.triu_indices(n, 1)
    low, _ = _low_ranks(rdms[:, iu, ju])
    return jnp.zeros(rdms.shape, jnp.int32).at[:, iu, ju].set(low).at[:, ju, iu].set(low)


def _ranks_from_keys(keys: jax.Array, mask: jax.Array) -> jax.Array:
    """:func:`masked_ranks` of vectors given by their :func:`_rank_keys` ``(rows, p)``.

    A histogram of the masked keys and its cumulative sum give, for every entry, the
    masked entries below it and tied with it: O(p) per row instead of a sort.
    """
    n_keys = keys.shape[-1]  # resampled RDMs have as many pairs as the original ones

    def one(k):
        hist = jnp.zeros(n_keys).at[k].add(mask.astype(jnp.float64))
        below = jax.lax.associative_scan(jnp.add, hist) - hist
        return jnp.where(mask, below[k] + (hist[k] + 1) / 2, 0.0)

    return jax.vmap(one)(keys.reshape(-1, n_keys)).reshape(keys.shape)


def _pair_vectors(models, data, idx, method):
    """Resampled RDM vectors (ranked for the rank comparators) and the pair mask.

    For the rank comparators ``models`` and ``data`` are :func:`_rank_keys`.
    """
    n = idx.shape[0]
    iu, ju = np.triu_indices(n, 1)
    a, b = idx[iu], idx[ju]
    mask = a != b
    mv, dv = models[:, a, b], data[:, a, b]
    if method in _RANKED:
        mv, dv = _ranks_from_keys(mv, mask), _ranks_from_keys(dv, mask)
    return mv, dv, mask


def _vector_stats(mv, dv, mask, group_of, group_counts, method):
    """Model evaluations and (lower, upper) noise ceiling from :func:`_pair_vectors`."""
    w = group_counts[group_of]  # how often each RDM was drawn
    ranked = method in _RANKED
    sims = (rank_similarity(mv, dv, mask, method) if ranked
            else vector_similarity(mv, dv, mask, method))
    evals = (sims @ w) / jnp.sum(w)
    # noise ceiling: each drawn subject against the pool of the others (lower) and of all
    # (upper); all pools at once as one weighted sum of the normalised RDMs (for the rank
    # comparators the mean rank, ranked again)
    z = dv if ranked else _normalise(dv, mask, method)
    mine = (group_of[None, :] == jnp.arange(group_counts.shape[0])[:, None]).astype(dv.dtype)
    w_rest = w[None, :] * (1.0 - mine)
    pools = jnp.concatenate([w_rest, w[None]]) @ z
    pools = pools / jnp.maximum(jnp.concatenate([w_rest.sum(1), w.sum()[None]]), 1e-300)[:, None]
    s = (rank_similarity(masked_ranks(pools, mask), dv, mask, method) if ranked
         else vector_similarity(pools, dv, mask, method))  # (n_group + 1, n_data)
    per_mine = jnp.maximum(mine.sum(1), 1.0)
    lower = jnp.sum(s[:-1] * mine, 1) / per_mine
    upper = (mine @ s[-1]) / per_mine
    lower = jnp.where(w_rest.sum(1) > 0, lower, upper)  # one subject drawn: pool all
    present = (group_counts > 0).astype(dv.dtype)
    nc = jnp.stack([lower @ present, upper @ present]) / jnp.sum(present)
    return evals, nc


def _sample_stats(models, data, group_of, group_counts, idx, method):
    """Model evaluations and (lower, upper) noise ceiling for one resampled data set."""
    if method in _RANKED:
        models, data = _rank_keys(models), _rank_keys(data)
    return _vector_stats(*_pair_vectors(models, data, idx, method), group_of, group_counts,
                         method)


_sample_stats_jit = jax.jit(_sample_stats, static_argnames="method")


@partial(jax.jit, static_argnames=("method", "batch_size"))
def _bootstrap_core(models, data, group_of, group_draws, stim_draws, method, batch_size):
    n_group = int(group_draws.shape[1])
    n_stim = data.shape[1]
    all_groups = jnp.ones(n_group)
    if method in _RANKED:
        models, data = _rank_keys(models), _rank_keys(data)
    # the subjects-only kind keeps every stimulus: its (ranked) vectors are the same for
    # every sample
    full = _pair_vectors(models, data, jnp.arange(n_stim), method)

    def one(draw):
        g, s = draw
        counts = jnp.zeros(n_group).at[g].add(1.0)
        # the three kinds (both, subjects only, stimuli only) as one vmapped evaluation;
        # "both" and "stimuli only" share the resampled (ranked) vectors
        drawn = _pair_vectors(models, data, s, method)
        vectors = jax.tree.map(lambda x, y: jnp.stack([x, y, x]), drawn, full)
        e, nc = jax.vmap(lambda v, c: _vector_stats(*v, group_of, c, method))(
            vectors, jnp.stack([counts, counts, all_groups]))
        return e.T, nc.T

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


def _pool_similarity(c_mat: jax.Array, v: jax.Array, c_norm: jax.Array | None = None) -> jax.Array:
    # similarity of each RDM with the pool sum_k v_k z_k, z_k normalised by sqrt(N_kk) (N the
    # second moments on the pairs the pool was normalised on: ``c_norm``, default ``c_mat``);
    # the comparator is invariant to the pool's scale and offset, so the second moments C on
    # the compared pairs (centred for corr, uncentred for cosine) are all it needs
    a = v / jnp.sqrt(jnp.diag(c_mat if c_norm is None else c_norm))
    num = a @ c_mat
    den = jnp.sqrt((a @ c_mat @ a) * jnp.diag(c_mat))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _split_moments(q: jax.Array, n_m: int, n_d: int, method: str):
    """Second moments (model-model diag, model-data, data-data) from the pair sums ``q``."""
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
    return smm, smd, sdd


def _linear_stats(q: jax.Array, n_m: int, n_d: int, w: jax.Array, group_of: jax.Array,
                  group_counts: jax.Array, method: str):
    """Evaluations and noise ceiling from the quadratic forms ``q`` of one sample."""
    smm, smd, sdd = _split_moments(q, n_m, n_d, method)
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
        # the three kinds (both, subjects only, stimuli only) as one vmapped evaluation
        e, nc = jax.vmap(lambda q, g: _linear_stats(q, n_m, n_d, g[group_of], group_of, g,
                                                    method))(
            jnp.stack([qb, q_all, qb]), jnp.stack([gc, gc, ones]))
        return e.T, nc.T

    return jax.vmap(one)(q, g_counts)


def _assign_folds(u: jax.Array, present: jax.Array, k: int) -> jax.Array:
    """Random k-fold assignment of the present items, as rsatoolbox's ``sets_k_fold``.

    The present items in the random order of ``u`` fill folds of ``n // k`` items; the
    ``n % k`` left over (the last ones) go to folds 0, 1, ... Absent items get fold -1.
    """
    # position of each present item in the random order (a comparison count: XLA's CPU
    # sort is slow for many short rows)
    j = jnp.arange(u.shape[-1])
    before = (u[..., None, :] < u[..., :, None]) | (
        (u[..., None, :] == u[..., :, None]) & (j[None, :] < j[:, None]))
    pos = jnp.sum(present[..., None, :] & before, -1)
    n_u = jnp.sum(present, -1, keepdims=True)
    size = jnp.maximum(n_u // k, 1)
    fold = jnp.where(pos < k * (n_u // k), pos // size, n_u - 1 - pos)
    return jnp.where(present, fold, -1)


def _fold_weights(w: jax.Array, rdm_fold: jax.Array, k_rdm: int):
    # test RDMs of each RDM fold, and the RDMs whose pool gives the lower bound: the other
    # folds (with k_rdm = 1 rsatoolbox trains on the test RDMs themselves)
    test = w[None] * (rdm_fold[None] == jnp.arange(k_rdm)[:, None])
    train = w[None] - test if k_rdm > 1 else test
    return test, train


def _linear_cv_stats(q_folds, q_full, n_m, n_d, w, rdm_fold, k_rdm, method):
    """Fold-averaged evaluations and cross-validated noise ceiling of one sample.

    ``q_folds[r, f]`` are the pair sums over the test stimuli of pattern fold f within RDM
    fold r (rsatoolbox draws the pattern folds afresh for every RDM fold), ``q_full`` over
    all sampled stimuli: the upper bound pools RDMs normalised on these, as rsatoolbox's
    ``cv_noise_ceiling``; the lower bound pools the training RDMs normalised on the test
    stimuli.
    """
    sdd_full = _split_moments(q_full, n_m, n_d, method)[2]
    test, train = _fold_weights(w, rdm_fold, k_rdm)

    def one(q, w_test, w_train):
        smm, smd, sdd = _split_moments(q, n_m, n_d, method)
        den = jnp.sqrt(smm[:, None] * jnp.diag(sdd)[None])
        sims = jnp.where(den > 0, smd / jnp.where(den > 0, den, 1.0), 0.0)
        bounds = jnp.stack([_pool_similarity(sdd, w_train), _pool_similarity(sdd, w, sdd_full)])
        return sims @ w_test / w_test.sum(), bounds @ w_test / w_test.sum()

    ev, nc = jax.vmap(jax.vmap(one, (0, None, None)))(q_folds, test, train)
    return ev.mean((0, 1)), nc.mean((0, 1))


def _kind_inputs(counts, g_counts):
    # the three resampling kinds: both, subjects only (all stimuli), stimuli only (all RDMs)
    ones_s, ones_g = jnp.ones_like(counts), jnp.ones_like(g_counts)
    return jnp.stack([counts, ones_s, counts], 1), jnp.stack([g_counts, g_counts, ones_g], 1)


@partial(jax.jit, static_argnames=("method", "k_pattern", "k_rdm", "batch_size"))
def _cv_linear(models, data, group_of, group_draws, stim_draws, stim_folds, group_folds,
               method, k_pattern, k_rdm, batch_size):
    """Dual bootstrap with internal k-fold cross-validation, corr / cosine.

    ``stim_folds (B, 3, n_cv, k_rdm, n)`` and ``group_folds (B, 3, n_cv, n_group)`` give the
    fold of every stimulus (within each RDM fold) and subject for each sample, kind and
    cross-validation repetition. Returns
    evaluations ``(B, 3, n_cv, n_model)`` and noise ceilings ``(B, 3, n_cv, 2)``.
    """
    n_m, n = models.shape[:2]
    n_d, n_group = data.shape[0], group_draws.shape[1]
    prods = _linear_products(models, data)
    counts = jax.vmap(lambda s: jnp.zeros(n).at[s].add(1.0))(stim_draws)
    g_counts = jax.vmap(lambda g: jnp.zeros(n_group).at[g].add(1.0))(group_draws)
    s_counts, g_kind = _kind_inputs(counts, g_counts)  # (B, 3, n), (B, 3, n_group)
    in_fold = stim_folds[..., None, :] == jnp.arange(k_pattern)[:, None]  # (B,3,R,kr,kp,n)
    rows = jnp.concatenate([s_counts.reshape(-1, n),
                            (s_counts[:, :, None, None, None] * in_fold).reshape(-1, n)])
    q = jax.lax.map(lambda c: jnp.outer(c, c).reshape(-1) @ prods.T / 2, rows,
                    batch_size=batch_size)
    n_full = s_counts.shape[0] * 3
    q_full = q[:n_full].reshape(*s_counts.shape[:2], -1)
    q_folds = q[n_full:].reshape(*in_fold.shape[:5], -1)

    def one(qf, qa, gc, gf):
        return _linear_cv_stats(qf, qa, n_m, n_d, gc[group_of], gf[group_of], k_rdm, method)

    per_rep = jax.vmap(one, (0, None, None, 0))
    return jax.vmap(jax.vmap(per_rep))(q_folds, q_full, g_kind, group_folds)


def _gather_cv_stats(models, data, w, rdm_fold, idx, stim_fold, method, k_pattern, k_rdm):
    """As :func:`_linear_cv_stats` for any masked comparator, on gathered RDM vectors."""
    n = idx.shape[0]
    iu, ju = np.triu_indices(n, 1)
    a, b = idx[iu], idx[ju]
    full = a != b
    mv, dv = models[:, a, b], data[:, a, b]
    ranked = method in _RANKED  # then models and data are _rank_keys
    pool_all = w @ (_ranks_from_keys(dv, full) if ranked else _normalise(dv, full, method))
    test, train = _fold_weights(w, rdm_fold, k_rdm)

    def one(slot_fold, f, w_test, w_train):
        inside = slot_fold == f
        mask = full & inside[iu] & inside[ju]
        if ranked:  # rank the data once for both uses
            rd = _ranks_from_keys(dv, mask)
            sims = rank_similarity(_ranks_from_keys(mv, mask), rd, mask, method)
            pools = masked_ranks(jnp.stack([w_train @ rd, pool_all]), mask)
            bounds = rank_similarity(pools, rd, mask, method)
        else:
            sims = vector_similarity(mv, dv, mask, method)
            pools = jnp.stack([w_train @ _normalise(dv, mask, method), pool_all])
            bounds = vector_similarity(pools, dv, mask, method)
        return sims @ w_test / w_test.sum(), bounds @ w_test / w_test.sum()

    folds = jnp.arange(k_pattern)
    ev, nc = jax.vmap(lambda sf, te, tr: jax.vmap(one, (None, 0, None, None))(
        sf[idx], folds, te, tr))(stim_fold, test, train)
    return ev.mean((0, 1)), nc.mean((0, 1))


@partial(jax.jit, static_argnames=("method", "k_pattern", "k_rdm", "batch_size"))
def _cv_gather(models, data, group_of, group_draws, stim_draws, stim_folds, group_folds,
               method, k_pattern, k_rdm, batch_size):
    """:func:`_cv_linear` for the rank comparators (resampled RDMs gathered, in batches)."""
    n = data.shape[1]
    n_group = group_draws.shape[1]
    all_stim = jnp.arange(n)
    if method in _RANKED:
        models, data = _rank_keys(models), _rank_keys(data)

    def sample(draw):
        g, s, sf, gf = draw
        gc = jnp.zeros(n_group).at[g].add(1.0)
        idx = jnp.stack([s, all_stim, s])
        gk = jnp.stack([gc, gc, jnp.ones(n_group)])

        def kind(i, gck, sfk, gfk):
            return jax.vmap(lambda a, b: _gather_cv_stats(
                models, data, gck[group_of], b[group_of], i, a, method, k_pattern, k_rdm))(
                    sfk, gfk)

        return jax.vmap(kind)(idx, gk, sf, gf)

    return jax.lax.map(sample, (group_draws, stim_draws, stim_folds, group_folds),
                       batch_size=batch_size)


def _bits(key: jax.Array, shape: tuple) -> jax.Array:
    # random uint32 from XLA's RngBitGenerator seeded by the caller's key: compiling a
    # threefry draw of ~10^6 numbers takes seconds on CPU, this takes milliseconds
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    data = data.astype(jnp.uint32).reshape(-1)[:2]
    rbg = jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)]),
                                   impl="rbg")
    return jax.random.bits(rbg, shape, dtype=jnp.uint32)


@partial(jax.jit, static_argnums=(4, 5, 6, 7, 8))
def _random_folds(key_s, key_g, group_draws, stim_draws, n_group, n_stim, n_cv, k_pattern,
                  k_rdm):
    """Random fold assignments ``(B, 3, n_cv, k_rdm, n)`` and ``(B, 3, n_cv, n_group)``."""
    n_b = stim_draws.shape[0]
    counts = jax.vmap(lambda s: jnp.zeros(n_stim).at[s].add(1.0))(stim_draws)
    g_counts = jax.vmap(lambda g: jnp.zeros(n_group).at[g].add(1.0))(group_draws)
    s_kind, g_kind = _kind_inputs(counts, g_counts)
    u_s = _bits(key_s, (n_b, 3, n_cv, k_rdm, n_stim))
    u_g = _bits(key_g, (n_b, 3, n_cv, n_group))
    return (_assign_folds(u_s, (s_kind > 0)[:, :, None, None], k_pattern),
            _assign_folds(u_g, (g_kind > 0)[:, :, None], k_rdm))


def cv_corrected_covariance(samples: Any, *, use_correction: bool = True) -> np.ndarray:
    """Bootstrap covariance corrected for the variance of random cross-validation folds.

    With ``R`` random fold assignments per bootstrap sample, an evaluation is
    ``x_br = m_b + e_br``: ``m_b`` the mean over all possible assignments (what the bootstrap
    should measure) and ``e_br`` the assignment noise (mean 0, covariance ``S_e``). The
    covariance over samples of the mean over repetitions estimates ``S_m + S_e / R``; the
    covariance of single repetitions (averaged over them) estimates ``S_m + S_e``. Solving
    the two for ``S_m`` gives ``(R V_mean - V_1) / (R - 1)``, rsatoolbox's correction
    (``bootstrap_crossval`` / ``eval_dual_bootstrap``).

    Parameters
    ----------
    samples
        ``(n_bootstrap, n_variable, n_kind, R)``.
    use_correction
        If False (or ``R == 1``), return the covariance of the repetition means.

    Returns
    -------
    numpy.ndarray
        ``(n_variable, n_variable, n_kind)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)  # var(m) = 1, var(e) = 1, 2 repetitions
    >>> m = rng.normal(size=(100000, 1, 1, 1)); x = m + rng.normal(size=(100000, 1, 1, 2))
    >>> round(float(cv_corrected_covariance(x)[0, 0, 0]), 2)
    1.0
    >>> round(float(cv_corrected_covariance(x, use_correction=False)[0, 0, 0]), 2)
    1.5
    """
    x = np.asarray(samples, dtype=float)
    n_b, n_rep = x.shape[0], x.shape[-1]
    mean = x.mean(-1)
    c = mean - mean.mean(0)
    v_mean = np.einsum("ijk,ilk->jlk", c, c) / (n_b - 1)
    if not use_correction or n_rep == 1:
        return v_mean
    c1 = x - x.mean(0)
    v_1 = np.einsum("ijkr,ilkr->jlk", c1, c1) / (n_b - 1) / n_rep
    return (n_rep * v_mean - v_1) / (n_rep - 1)


def _dual_variance(v: np.ndarray, n_rdm: int, n_pattern: int) -> np.ndarray:
    # v[..., kind]: variances under (both, rdm, pattern) resampling; small-sample formula
    both, rdm, pat = v[..., 0], v[..., 1], v[..., 2]
    cr, cp = n_rdm / (n_rdm - 1), n_pattern / (n_pattern - 1)
    var = cr * rdm + cp * pat - cr * cp * (both - rdm - pat)
    var = np.maximum(np.maximum(var, cr * rdm), cp * pat)
    return np.minimum(var, both)


def _n_distinct(draws: np.ndarray) -> np.ndarray:
    return (np.diff(np.sort(draws, 1), axis=1) != 0).sum(1) + 1


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
    k_pattern: int = 1,
    k_rdm: int = 1,
    n_cv: int = 2,
    use_correction: bool = True,
    batch_size: int = 64,
) -> xr.Dataset:
    """Evaluate fixed model RDMs on data RDMs with the dual bootstrap.

    Each bootstrap sample draws subjects and stimuli with replacement and evaluates the
    models three times: resampling both, only subjects, only stimuli. The mean evaluation
    is averaged over the three; the variance combines them with the dual-bootstrap formula
    (rsatoolbox's ``eval_dual_bootstrap``).

    With ``k_pattern > 1`` or ``k_rdm > 1`` every evaluation is cross-validated inside the
    sample: stimuli (and subjects) are split at random into k folds, models are evaluated on
    the pairs within each test fold (and the RDMs of the test subjects), and the noise
    ceiling is the cross-validated one (lower bound: the pool of the training subjects;
    upper: the pool of all). This is repeated ``n_cv`` times per sample with fresh folds,
    and the variance caused by the random folds is removed with
    :func:`cv_corrected_covariance` (the cross-validation correction).

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
    k_pattern, k_rdm
        Cross-validation folds over stimuli and subjects inside each sample (1: none). A
        sample with fewer than ``3 k_pattern`` distinct stimuli or ``k_rdm`` distinct
        subjects is dropped, as in rsatoolbox.
    n_cv
        Random fold assignments per sample (used when a k exceeds 1).
    use_correction
        Apply the cross-validation correction (needs ``n_cv >= 2``).
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
    cv = k_pattern > 1 or k_rdm > 1
    if not (1 <= k_rdm <= n_group and 1 <= k_pattern <= n_stim // 3):
        raise InputDataError(
            f"k_rdm={k_rdm} and k_pattern={k_pattern}; use 1 <= k_rdm <= {n_group} subjects "
            f"and 1 <= k_pattern <= {n_stim // 3} (every test fold needs 3 stimuli)."
        )
    if cv and n_cv < 1:
        raise InputDataError(f"n_cv={n_cv}; use at least 1 fold assignment (2 is usual).")
    if cv and use_correction and n_cv < 2:
        raise InputDataError(
            "the cross-validation correction needs n_cv >= 2 fold assignments per sample; "
            "set n_cv=2 or use_correction=False."
        )
    keys = jax.random.split(key, 4 if cv else 2)
    group_draws = jax.random.randint(keys[0], (n_bootstrap, n_group), 0, n_group)
    stim_draws = jax.random.randint(keys[1], (n_bootstrap, n_stim), 0, n_stim)
    args = (jnp.asarray(models), jnp.asarray(data), jnp.asarray(group_of), group_draws,
            stim_draws)
    batch = min(batch_size, n_bootstrap)
    if cv:
        folds = _random_folds(keys[2], keys[3], group_draws, stim_draws, n_group, n_stim,
                              n_cv, k_pattern, k_rdm)
        core = _cv_linear if method in ("corr", "cosine") else _cv_gather
        # the gathered path holds 3 n_cv k_rdm k_pattern ranked (n_model + n_data, n_pair)
        # blocks per sample: a few samples at a time keep it to a few hundred MB
        evals, nc = core(*args, *folds, method, k_pattern, k_rdm,
                         batch * 8 if core is _cv_linear else max(1, batch // 16))
        # (B, 3, R, J) -> (B, J, 3, R)
        evals, nc = (np.moveaxis(np.asarray(x), (1, 2), (2, 3)) for x in (evals, nc))
    else:
        if method in ("corr", "cosine"):
            evals, nc = _bootstrap_linear(*args, method)
        else:
            evals, nc = _bootstrap_core(*args, method, batch)
        evals, nc = np.asarray(evals)[..., None], np.asarray(nc)[..., None]
    # samples that cannot be evaluated (too few distinct stimuli or subjects for the folds)
    # are dropped, as rsatoolbox's NaN samples
    ok = (_n_distinct(np.asarray(stim_draws)) >= 3 * k_pattern) & (
        _n_distinct(np.asarray(group_draws)) >= k_rdm)
    evals, nc = evals[ok], nc[ok]
    n_model = models.shape[0]
    cov = cv_corrected_covariance(np.concatenate([evals, nc], 1),
                                  use_correction=use_correction)
    evals, nc = evals.mean(-1), nc.mean(-1)
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
               "n_rdm": n_data, "n_stimulus": n_stim, "k_pattern": k_pattern, "k_rdm": k_rdm,
               "n_cv": n_cv if cv else 1, "cv_correction": int(cv and use_correction)},
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
