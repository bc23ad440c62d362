"""GPFA: exactness against elephant, recovery, leave-neuron-out, bad input, persistence."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import subspace_angles
from scipy.stats import multivariate_normal

import neurodata  # noqa: F401  (x64)
from neurodata.errors import InputDataError
from neurodata.models.gpfa import GPFA, _core, select_n_latents, simulate


def _elephant_seqs(values: np.ndarray) -> np.ndarray:
    return np.array([(v.shape[0], v.T.copy()) for v in values], dtype=[("T", int), ("y", "O")])


@pytest.mark.reference
def test_em_matches_elephant_with_mixed_lengths():
    """Log-likelihood of each of the first 20 EM iterations equals elephant's ``em``.

    Same data (trials of 7, 12 and 15 bins: odd and even lengths, three buckets), same
    initial C, d, R, gamma, eps; timescale learning ON in both (elephant: L-BFGS-B on log
    gamma to convergence; ours: Newton on log gamma to convergence). Matched: the LL of each
    iteration to 1e-6 relative and the learned gamma to 1e-5 relative.
    """
    from elephant.gpfa import gpfa_core
    from sklearn.decomposition import FactorAnalysis

    rng = np.random.default_rng(1)
    q, p = 12, 3
    C = rng.normal(size=(q, p))
    trials = []
    for T in [12] * 8 + [15] * 5 + [7] * 3:
        t = np.arange(T)
        x = np.stack([np.linalg.cholesky(np.exp(-0.5 * (t[:, None] - t) ** 2 / s**2)
                                         + 1e-6 * np.eye(T)) @ rng.normal(size=T)
                      for s in (1.5, 3.0, 6.0)])
        trials.append((C @ x).T + 1.0 + 0.7 * rng.normal(size=(T, q)))
    seqs = np.array([(v.shape[0], v.T) for v in trials], dtype=[("T", int), ("y", "O")])
    y_all = np.hstack(seqs["y"])
    fa = FactorAnalysis(n_components=p, noise_variance_init=np.var(y_all, axis=1)).fit(y_all.T)
    init = dict(covType="rbf", gamma=np.array([0.5, 0.1, 0.02]), eps=np.full(p, 1e-3),
                d=y_all.mean(1), C=fa.components_.T, R=np.diag(fa.noise_variance_),
                notes={"learnKernelParams": True, "learnGPNoise": False,
                       "RforceDiagonal": True})
    est, _, ref_lls, _ = gpfa_core.em(copy.deepcopy(init), seqs, max_iters=20, tol=-1.0,
                                      freq_ll=1)

    params = _core.GPFAParams(jnp.asarray(init["C"]), jnp.asarray(init["d"]),
                              jnp.asarray(np.diag(init["R"])), jnp.log(init["gamma"]),
                              jnp.asarray(init["eps"]))
    buckets = [_core.make_bucket(jnp.stack([jnp.asarray(v) for v in trials if v.shape[0] == T]))
               for T in (12, 15, 7)]
    var_floor = 0.01 * np.var(y_all, axis=1, ddof=1)
    step = jax.jit(lambda prm: _core.em_step(prm, buckets, var_floor, _core.EMOptions()))
    ours = []
    for _ in range(20):
        params, ll = step(params)
        ours.append(float(ll))
    np.testing.assert_allclose(ours, ref_lls, rtol=1e-6)
    np.testing.assert_allclose(np.exp(params.log_gamma), est["gamma"], rtol=1e-5)
    np.testing.assert_allclose(params.C, est["C"], rtol=1e-5, atol=1e-8)


@pytest.mark.reference
def test_fit_matches_elephant_fit_end_to_end():
    """``GPFA.fit`` on counts vs elephant's ``gpfa_core.fit`` on the same square-rooted counts.

    Both initialise from sklearn FactorAnalysis (same call), 20-bin trials (elephant's
    segmenting is then the identity). Matched: the LL of each of 20 EM iterations to 1e-6
    relative, and the final orthonormalized latents up to sign (correlation > 0.999).
    """
    from elephant.gpfa import gpfa_core, gpfa_util

    ds, _ = simulate(n_trials=20, n_time=20, n_neurons=15, n_latents=2,
                     observation="poisson", seed=3)
    counts = ds["activity"].values.astype(float)
    seqs = _elephant_seqs(np.sqrt(counts))
    est, info = gpfa_core.fit(seqs, x_dim=2, bin_width=20.0, tau_init=100.0,
                              em_max_iters=20, freq_ll=1, em_tol=-1.0)
    model = GPFA(n_latents=2, max_iter=20, tol=0.0, progress=False).fit(ds)
    np.testing.assert_allclose(model.log_likelihoods_, info["log_likelihoods"], rtol=1e-6)
    np.testing.assert_allclose(model.timescales_.values, 0.02 / np.sqrt(est["gamma"]),
                               rtol=1e-4)

    latent_seqs, _ = gpfa_core.exact_inference_with_ll(seqs, est)
    _, orth_seqs = gpfa_core.orthonormalize(est, latent_seqs)
    ref = np.hstack(orth_seqs["latent_variable_orth"])
    ours = model.transform(ds)["latents_orth"].values.reshape(-1, 2).T
    for k in range(2):
        assert abs(np.corrcoef(ref[k], ours[k])[0, 1]) > 0.999
    assert gpfa_util is not None


def test_recovers_timescales_and_subspace():
    ds, truth = simulate(n_trials=100, n_time=50, n_neurons=30, n_latents=3,
                         timescales=[0.04, 0.08, 0.16], bin_size=0.02, noise_std=1.0, seed=0)
    model = GPFA(n_latents=3, max_iter=500, tol=1e-9, progress=False).fit(ds)
    tau = np.sort(model.timescales_.values)
    np.testing.assert_allclose(tau, truth["timescales"], rtol=0.10)
    angles = np.degrees(subspace_angles(model.loadings_.values, truth["loadings"]))
    assert angles.max() < 10.0
    lls = model.log_likelihoods_
    assert np.all(np.diff(lls) > -1e-6 * np.abs(lls[1:]))  # EM never decreases the LL


def test_leave_neuron_out_equals_brute_force():
    ds, _ = simulate(n_trials=3, n_time=7, n_neurons=6, n_latents=2, seed=2)
    model = GPFA(n_latents=2, max_iter=5, progress=False).fit(ds)
    fast = model.predict_leave_neuron_out(ds).values
    params = model._params()
    y = jnp.asarray(ds["activity"].values)
    for j in range(6):
        keep = np.arange(6) != j
        sub = params._replace(C=params.C[keep], d=params.d[keep], R=params.R[keep])
        mean = _core.posterior(sub, _core.make_bucket(y[:, :, keep])).mean
        brute = np.asarray(mean @ params.C[j] + params.d[j])
        np.testing.assert_allclose(fast[:, :, j], brute, rtol=1e-8, atol=1e-10)


def test_leave_neuron_out_picks_true_dimensionality():
    ds, _ = simulate(n_trials=40, n_time=20, n_neurons=24, n_latents=2, noise_std=0.7,
                     seed=5)
    cv = select_n_latents(ds, [1, 2, 3, 4], n_folds=2, max_iter=60, progress=False)
    assert cv.attrs["best_n_latents"] == 2
    assert cv["lno_error"].sel(n_latents=1) > cv["lno_error"].sel(n_latents=2)


def test_transform_score_sample_save_load(tmp_path):
    ds, _ = simulate(n_trials=6, n_time=9, n_neurons=7, n_latents=2, observation="poisson",
                     seed=1)
    model = GPFA(n_latents=2, max_iter=10, progress=False).fit(ds)
    out = model.transform(ds)
    assert out["latents"].shape == (6, 9, 2)
    assert np.all(out["latents_var"].values > 0)
    var_orth = out["latents_orth"].var(dim=("trial", "time")).values
    assert model.variance_explained_.values[0] >= model.variance_explained_.values[1]
    assert var_orth.shape == (2,)
    assert np.isclose(model.score(ds), model.log_likelihoods_[-1], rtol=1e-2)
    path = model.save(tmp_path / "gpfa.nc")
    loaded = GPFA.load(path)
    np.testing.assert_allclose(loaded.transform(ds)["latents"].values, out["latents"].values)
    sample = model.sample(n_trials=3, n_time=11, seed=0)
    assert sample["activity"].shape == (3, 11, 7)


def test_padded_trials_of_different_lengths():
    ds, _ = simulate(n_trials=6, n_time=10, n_neurons=6, n_latents=1, seed=4)
    ds["activity"] = ds["activity"].astype(float)
    ds["activity"][0, 7:] = np.nan
    model = GPFA(n_latents=1, max_iter=5, progress=False).fit(ds)
    out = model.transform(ds)
    assert np.isnan(out["latents"].values[0, 7:]).all()
    assert np.isfinite(out["latents"].values[1:]).all()


def test_bad_input():
    ds, _ = simulate(n_trials=4, n_time=8, n_neurons=5, n_latents=1, observation="poisson",
                     seed=0)
    with pytest.raises(InputDataError, match="cut_windows"):
        GPFA(n_latents=1, progress=False).fit(ds.isel(trial=0))
    with pytest.raises(InputDataError, match="more neurons than latents"):
        GPFA(n_latents=5, progress=False).fit(ds)
    silent = ds.copy(deep=True)
    silent["activity"][:, :, 1] = 0
    with pytest.warns(UserWarning, match="'1'"):
        model = GPFA(n_latents=1, max_iter=3, progress=False).fit(silent)
    assert model.dropped_neurons_.tolist() == ["1"]
    with pytest.raises(InputDataError, match="never fire"):
        dead = ds.copy(deep=True)
        dead["activity"][:, :, :4] = 0
        GPFA(n_latents=1, progress=False).fit(dead)
    nan = ds.copy(deep=True)
    nan["activity"] = nan["activity"].astype(float)
    nan["activity"][2, 3, 0] = np.nan
    with pytest.raises(InputDataError, match=r"NaN inside trials \[2\]"):
        GPFA(n_latents=1, progress=False).fit(nan)


@pytest.mark.reference
def test_timescale_objective_and_gradient_match_elephant():
    """Our M-step objective and its log-gamma gradient equal elephant's ``grad_betgam``."""
    from elephant.gpfa import gpfa_util

    rng = np.random.default_rng(0)
    stats, precomp_seqs = [], []
    for T, n in ((9, 4), (12, 3)):
        mu = rng.normal(size=(n, T))
        cov = np.cov(rng.normal(size=(T, 3 * T))) / 3
        P = n * cov + mu.T @ mu
        Q = np.concatenate([np.asarray(b) for b in _core.rotate(jnp.eye(T))])
        full = Q @ P @ Q.T
        h = (T + 1) // 2
        stats.append((T, n, _core.stack_halves(jnp.asarray(full[:h, :h]),
                                               jnp.asarray(full[h:, h:]), pad=0.0)))
        for i in range(n):
            precomp_seqs.append((T, mu[i:i + 1], cov[:, :, None]))
    seqs = np.empty(len(precomp_seqs), dtype=[("T", int), ("latent_variable", "O"),
                                              ("VsmGP", "O")])
    for k, (T, mu, cov) in enumerate(precomp_seqs):
        seqs[k] = (T, mu, cov)
    precomp = gpfa_util.make_precomp(seqs, 1)
    for log_gamma in (-3.0, -1.0, 0.5):
        f_ref, g_ref = gpfa_util.grad_betgam(log_gamma, precomp[0], {"eps": 1e-3})
        f, g, _ = _core._objective_derivatives(jnp.asarray(log_gamma), 1e-3, stats,
                                               "log_gamma")
        np.testing.assert_allclose(float(f), f_ref, rtol=1e-10)
        np.testing.assert_allclose(float(g), g_ref, rtol=1e-8)


def test_batched_e_step_equals_full_batch():
    """Streaming the E-step over batches of trials gives the full-batch results (1e-10)."""
    ds, _ = simulate(n_trials=7, n_time=9, n_neurons=8, n_latents=2, seed=6)
    full = GPFA(n_latents=2, max_iter=2, progress=False).fit(ds)
    params = full._params()
    y = _core.make_bucket(jnp.asarray(ds["activity"].values))
    post = jax.jit(_core.posterior, static_argnums=2)
    ref = post(params, y, None)
    for size in (1, 3):  # the E-step inside EM (lax.map over batches of trials)
        out = post(params, y, size)
        np.testing.assert_allclose(out.mean, ref.mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out.loglik, ref.loglik, rtol=1e-10)
    # transform, score and leave-neuron-out read ds in batches of 3 trials (last one padded)
    full_out = full.transform(ds)
    batched = copy.deepcopy(full).set_params(batch_size=3)
    batch_out = batched.transform(ds)
    for name in ("latents", "latents_var", "latents_orth"):
        np.testing.assert_allclose(batch_out[name].values, full_out[name].values, rtol=1e-10,
                                   atol=1e-12)
    np.testing.assert_allclose(batched.score(ds), full.score(ds), rtol=1e-10)
    np.testing.assert_allclose(batched.predict_leave_neuron_out(ds).values,
                               full.predict_leave_neuron_out(ds).values, rtol=1e-10, atol=1e-12)
    with pytest.raises(InputDataError, match="batch_size"):
        GPFA(n_latents=2, batch_size=0, progress=False).fit(ds)


def test_gp_noise_and_timescale_derivatives_match_autodiff():
    """The closed-form first and second derivatives used by the Newton M-step equal JAX's
    autodiff of the M-step objective, in ``log gamma`` and in ``logit eps``."""
    rng = np.random.default_rng(4)
    stats = []
    for T, n in ((9, 4),):
        mats = []
        for size in ((T + 1) // 2, T // 2):
            a = rng.normal(size=(size, 2 * size))
            mats.append(jnp.asarray(a @ a.T / size + n * np.eye(size)))
        stats.append((T, n, _core.stack_halves(*mats, pad=0.0)))

    @jax.jit
    def objective(lg, z):
        return _core.timescale_objective(lg, jax.nn.sigmoid(z), stats)

    for which, arg in (("log_gamma", 0), ("eps", 1)):
        ours = jax.jit(lambda lg, z, which=which: _core._objective_derivatives(
            lg, jax.nn.sigmoid(z), stats, which))
        grad = jax.jit(jax.grad(objective, arg))
        hess = jax.jit(jax.grad(jax.grad(objective, arg), arg))
        for lg, z in ((-2.5, -6.0), (-1.0, -2.0), (0.3, 0.5)):
            f, g, H = ours(lg, z)
            np.testing.assert_allclose(f, objective(lg, z), rtol=1e-12)
            np.testing.assert_allclose(g, grad(lg, z), rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(H, hess(lg, z), rtol=1e-7, atol=1e-9)


def test_learned_gp_noise_recovers_planted_value():
    """With ``learn_gp_noise=True`` a planted GP noise variance is recovered.

    Planted eps = 0.2 (started at 0.01): learned within 25%, the timescales within 20% (60
    trials; the white-noise part of the prior trades off against tau), and the final
    log-likelihood beats the fit with eps fixed at its starting value.
    """
    ds, truth = simulate(n_trials=60, n_time=30, n_neurons=30, n_latents=2,
                         timescales=[0.06, 0.12], gp_noise=0.2, noise_std=0.5, seed=8)
    model = GPFA(n_latents=2, learn_gp_noise=True, gp_noise=0.01, max_iter=200, tol=1e-9,
                 progress=False).fit(ds)
    order = np.argsort(model.timescales_.values)
    np.testing.assert_allclose(model.gp_noise_.values[order], [0.2, 0.2], rtol=0.25)
    np.testing.assert_allclose(model.timescales_.values[order], truth["timescales"], rtol=0.2)
    fixed = GPFA(n_latents=2, gp_noise=0.01, max_iter=200, tol=1e-9, progress=False).fit(ds)
    assert model.log_likelihoods_[-1] > fixed.log_likelihoods_[-1]


def test_inverse_cholesky_and_triangle_products_at_recursive_sizes(rng):
    """Sizes past two recursion levels (n >= 128 splits the triangle products), batched too."""
    for shape in [(301, 301), (2, 300, 300)]:
        g = rng.normal(size=shape)
        a = g @ np.swapaxes(g, -1, -2) + shape[-1] * np.eye(shape[-1])
        u = np.asarray(_core.inv_cholesky(jnp.asarray(a)))
        ref = np.swapaxes(np.linalg.inv(np.linalg.cholesky(a)), -1, -2)
        np.testing.assert_allclose(u, ref, atol=1e-10 * np.abs(ref).max())
        x = rng.normal(size=shape)
        np.testing.assert_allclose(np.asarray(_core._times_upper(jnp.asarray(x), jnp.asarray(u))),
                                   x @ u, atol=1e-12)
        np.testing.assert_allclose(np.asarray(_core._upper_times(jnp.asarray(u), jnp.asarray(x))),
                                   u @ x, atol=1e-12)


@pytest.mark.parametrize(("p", "h"), [(5, 50), (25, 8)])
def test_bordered_posterior_covariance_equals_dense_inverse(rng, p, h):
    """The latent-group bordering against a dense inverse of ``blockdiag(K^-1) + W (x) I``.

    ``(5, 50)``: groups of two latents, weighted sums of slices; ``(25, 8)``: groups of 12,
    the weighted sums as a product. Covariance, its latent-diagonal blocks, the traces of
    all its latent blocks and ``log|K| + log|M|`` to 1e-10.
    """
    g = rng.normal(size=(p, h, 2 * h))
    kernels = g @ np.swapaxes(g, 1, 2) / h + 0.1 * np.eye(h)
    c = rng.normal(size=(3 * p, p))
    W = c.T @ c
    f = jax.jit(_core._half_factor)(jnp.asarray(kernels), jnp.asarray(W))
    assert f.tail.shape[0] > 0  # the last update is left unapplied
    k_inv = np.linalg.inv(kernels)
    prec = np.kron(W, np.eye(h))
    for i in range(p):
        prec[i * h:(i + 1) * h, i * h:(i + 1) * h] += k_inv[i]
    cov = np.linalg.inv(prec)
    np.testing.assert_allclose(_core.full_covariance(f), cov, rtol=1e-10, atol=1e-12)
    blocks = cov.reshape(p, h, p, h)
    np.testing.assert_allclose(f.cov_blocks, np.stack([blocks[i, :, i] for i in range(p)]),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(f.cov_sum, np.einsum("itjt->ij", blocks), rtol=1e-10)
    logdet = np.linalg.slogdet(kernels)[1].sum() + np.linalg.slogdet(prec)[1]
    np.testing.assert_allclose(f.logdet, logdet, rtol=1e-10)


def test_posterior_of_long_trials_equals_dense_computation(rng):
    """Means, marginal variances and log-likelihoods of 100-bin trials (three latents: the
    bordering's unapplied last group) against the dense ``pT x pT`` posterior (1e-9)."""
    n, T, q, p = 3, 101, 6, 3
    params = _core.GPFAParams(jnp.asarray(rng.normal(size=(q, p))),
                              jnp.asarray(rng.normal(size=q)), jnp.asarray(rng.uniform(0.5, 2, q)),
                              jnp.log(jnp.array([0.01, 0.05, 0.2])), jnp.full(p, 1e-3))
    y = rng.normal(size=(n, T, q))
    post = jax.jit(_core.posterior)(params, _core.make_bucket(jnp.asarray(y)))
    C, d, R = (np.asarray(a) for a in params[:3])
    t = np.arange(T)
    K = [(1 - 1e-3) * np.exp(-0.5 * np.exp(lg) * (t[:, None] - t) ** 2) + 1e-3 * np.eye(T)
         for lg in np.asarray(params.log_gamma)]
    prec = np.kron((C.T / R) @ C, np.eye(T))
    for i in range(p):
        prec[i * T:(i + 1) * T, i * T:(i + 1) * T] += np.linalg.inv(K[i])
    cov = np.linalg.inv(prec)
    b = np.einsum("ntq,qi->nit", y - d, C / R[:, None]).reshape(n, p * T)
    mean = (b @ cov).reshape(n, p, T).transpose(0, 2, 1)
    np.testing.assert_allclose(post.mean, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(post.var[0], np.diag(cov).reshape(p, T).T, rtol=1e-9)
    # marginal covariance of one trial's (time, neuron) values
    marginal = np.einsum("qi,its,ri->tqsr", C, np.stack(K), C, optimize=True)
    marginal = marginal.reshape(T * q, T * q) + np.kron(np.eye(T), np.diag(R))
    ll = multivariate_normal(np.tile(d, T), marginal).logpdf(y.reshape(n, -1))
    np.testing.assert_allclose(post.loglik, ll, rtol=1e-9)


def test_bordered_covariance_accuracy_with_nearly_collinear_loadings(rng):
    """Ill-conditioned precision (RBF kernels with the default GP noise, loadings collinear to
    1e-3, condition ~6e5): the bordering forms its Schur complements from explicit inverses,
    so it is less accurate than a Cholesky route here (measured 1e-8 of the largest entry
    against a dense inverse; the documented limit). Guards that bound (1e-7)."""
    p, h = 4, 60
    t = np.arange(h)
    gammas = np.exp(rng.uniform(np.log(1e-3), np.log(0.5), p))
    kernels = np.stack([(1 - 1e-3) * np.exp(-0.5 * g * (t[:, None] - t) ** 2) + 1e-3 * np.eye(h)
                        for g in gammas])
    c = rng.normal(size=(40, 1)) + 1e-3 * rng.normal(size=(40, p))
    W = 1e2 * c.T @ c
    f = jax.jit(_core._half_factor)(jnp.asarray(kernels), jnp.asarray(W))
    prec = np.kron(W, np.eye(h))
    for i, k_inv in enumerate(np.linalg.inv(kernels)):
        prec[i * h:(i + 1) * h, i * h:(i + 1) * h] += k_inv
    assert np.linalg.cond(prec) > 1e5
    cov = np.linalg.inv(prec)
    err = np.abs(np.asarray(_core.full_covariance(f)) - cov).max() / np.abs(cov).max()
    print(f"relative error {err:.1e} at condition {np.linalg.cond(prec):.1e}")
    assert err < 1e-7
