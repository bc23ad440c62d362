"""MM-GPVAE: Fourier prior, exact ELBO terms, recovery of the paper's simulation, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import neurodata  # noqa: F401  (switches on x64 for the float64 oracles)
from neurodata.errors import InputDataError, NeurodataError
from neurodata.models._jax.fourier import (
    angular_frequencies,
    fourier_basis,
    n_frequencies,
    rbf_spectral_variances,
)
from neurodata.models._jax.gp import rbf_kernel
from neurodata.models.gpvae import (
    MMGPVAE,
    _fourier_posterior,
    affine_r2,
    fourier_kl,
    mask_time_prior,
    poisson_expected_loglik,
    simulate,
    time_kl,
    time_prior,
)

MODALITIES = {"neural": "activity", "image": "image"}
N_TRAIN = 80


def _dense_kl(m0, s0, m1, s1):
    """KL(N(m0, s0) || N(m1, s1)) with dense matrices."""
    n = len(m0)
    diff = m1 - m0
    return 0.5 * (np.trace(np.linalg.solve(s1, s0)) + diff @ np.linalg.solve(s1, diff) - n
                  + np.linalg.slogdet(s1)[1] - np.linalg.slogdet(s0)[1])


# --------------------------------------------------------------------------- Fourier prior


def test_frequency_cutoff_matches_reference_counts():
    # T = 60 padded by 20% (the reference's window) with minlens 10 keeps W = 6.
    assert n_frequencies(72, 10.0) == 6
    assert fourier_basis(60, 72, 6).shape == (13, 60)


@pytest.mark.parametrize("n_circ", [37, 48])
def test_full_basis_is_orthonormal(n_circ):
    basis = fourier_basis(n_circ, n_circ, n_circ // 2)
    np.testing.assert_allclose(basis @ basis.T, np.eye(n_circ), atol=1e-12)


def test_fourier_prior_covariance_equals_rbf_kernel():
    n_time, ell = 30, 3.0
    n_circ = n_time + int(np.ceil(6 * ell))  # padding: wrap-around correlation exp(-18)
    w = n_circ // 2  # every frequency kept
    basis = fourier_basis(n_time, n_circ, w)
    c = np.asarray(rbf_spectral_variances(angular_frequencies(n_circ, w), ell))
    t = np.arange(n_time, dtype=float)
    np.testing.assert_allclose(basis.T @ np.diag(c) @ basis, rbf_kernel(t, t, ell), atol=1e-6)


def test_fourier_kl_equals_dense_kl(rng):
    n_circ, ell = 24, 2.5
    basis = fourier_basis(n_circ, n_circ, n_circ // 2)  # all frequencies: B orthogonal
    c = np.asarray(rbf_spectral_variances(angular_frequencies(n_circ, n_circ // 2), ell,
                                          jitter=1e-2))
    mu, var = rng.normal(size=n_circ), rng.uniform(0.05, 2.0, n_circ)
    # The same two Gaussians in the time domain, with dense covariances.
    dense = _dense_kl(basis.T @ mu, basis.T @ np.diag(var) @ basis, np.zeros(n_circ),
                      basis.T @ np.diag(c) @ basis)
    np.testing.assert_allclose(float(fourier_kl(mu, var, c)), dense, rtol=1e-8)
    # Also against the diagonal form computed densely in the Fourier domain.
    np.testing.assert_allclose(
        float(fourier_kl(mu, var, c)),
        _dense_kl(mu, np.diag(var), np.zeros(n_circ), np.diag(c)), rtol=1e-8)


def test_time_domain_kl_equals_dense_kl(rng):
    n, n_obs, ell, jitter = 15, 11, 3.0, 1e-2
    t = np.arange(n, dtype=float)
    mask = (t < n_obs).astype(float)
    mu, var = rng.normal(size=n), rng.uniform(0.05, 1.0, n)
    # The prior of the whole window, factorised once, then cut to a trial of n_obs bins.
    prior = mask_time_prior(time_prior(jnp.asarray(t, jnp.float32), jnp.float32([ell]),
                                       jitter), jnp.asarray(mask, jnp.float32))
    kern = np.asarray(rbf_kernel(t, t, ell))[:n_obs, :n_obs] + jitter * np.eye(n_obs)
    np.testing.assert_allclose(prior.kern[0][:n_obs, :n_obs], kern, rtol=1e-5, atol=1e-6)
    # Padded bins left at the prior (mean 0, variance 1) add nothing to the KL.
    mu[n_obs:], var[n_obs:] = 0.0, 1.0
    # The model runs in float32, hence the tolerance.
    got = float(time_kl(jnp.asarray(mu, jnp.float32), jnp.asarray(var, jnp.float32),
                        prior.log_diag_chol[0], prior.inv_chol[0]))
    dense = _dense_kl(mu[:n_obs], np.diag(var[:n_obs]), np.zeros(n_obs), kern)
    np.testing.assert_allclose(got, dense, rtol=1e-3)


def test_posterior_mean_is_exact_gaussian_conditional(rng):
    n_time, n_circ, w = 20, 35, 6
    basis = fourier_basis(n_time, n_circ, w)
    c = np.asarray(rbf_spectral_variances(angular_frequencies(n_circ, w), 4.0, jitter=1e-2))
    prec, obs = rng.uniform(0.5, 3.0, n_time), rng.normal(size=n_time)
    mu, var = _fourier_posterior(jnp.asarray(prec), jnp.asarray(obs), jnp.asarray(basis),
                                 jnp.asarray(c))
    # Dense conditioning of z~ ~ N(0, diag c) on obs ~ N(B^T z~, diag 1/prec).
    cov_obs = basis.T @ np.diag(c) @ basis + np.diag(1 / prec)
    exact = np.diag(c) @ basis @ np.linalg.solve(cov_obs, obs)
    np.testing.assert_allclose(mu, exact, rtol=1e-6, atol=1e-9)
    precision = np.diag(1 / c) + basis @ np.diag(prec) @ basis.T
    np.testing.assert_allclose(var, 1 / np.diag(precision), rtol=1e-8)


def test_poisson_term_matches_monte_carlo(rng):
    n_time, n_neurons, k, f = 12, 6, 2, 7
    basis = fourier_basis(n_time, 20, 3)
    coef_mu = rng.normal(0, 0.5, (k, f))
    coef_var = rng.uniform(0.01, 0.3, (k, f))
    w, b = rng.normal(0, 0.7, (n_neurons, k)), rng.normal(0, 0.3, n_neurons)
    mean, var = basis.T @ coef_mu.T, (basis**2).T @ coef_var.T
    y = rng.poisson(np.exp(mean @ w.T + b)).astype(float)
    mask = np.ones(n_time)
    closed = float(poisson_expected_loglik(y, w, b, mean, var, mask))
    draws = coef_mu + np.sqrt(coef_var) * rng.standard_normal((20000, k, f))
    z = np.einsum("skf,ft->stk", draws, basis)
    eta = z @ w.T + b
    samples = (y * eta - np.exp(eta)).sum((1, 2)) - float(
        jax.scipy.special.gammaln(y + 1).sum())
    err = samples.std() / np.sqrt(len(samples))
    assert abs(samples.mean() - closed) < 4 * err


def test_affine_r2_recovers_affine_maps(rng):
    x = rng.normal(size=(50, 2))
    assert affine_r2(x, 2 * x[:, 1] + 3) == pytest.approx(1.0)
    assert affine_r2(x, rng.normal(size=50)) < 0.2


# --------------------------------------------------------------------------- simulation


@pytest.fixture(scope="module")
def sim():
    return simulate(n_trials=100, n_time=40, n_neurons=40, seed=1)


@pytest.fixture(scope="module")
def fitted(sim):
    ds, _ = sim
    model = MMGPVAE(1, {"neural": 1, "image": 1}, modalities=MODALITIES,
                    decoder={"image": "mlp"}, length_scale_init=0.5, max_epochs=150,
                    patience=150, progress=False, random_state=0)
    return model.fit(ds.isel(trial=slice(0, N_TRAIN)))


def test_simulation_shapes(sim):
    ds, truth = sim
    assert ds["activity"].dims == ("trial", "time", "neuron")
    assert ds["image"].shape == (100, 40, 144)
    assert float(ds["image"].max()) <= 1.0 + 1e-9
    np.testing.assert_allclose(truth["angle"], truth["shared"] * 120.0)


def test_recovers_planted_latents_on_held_out_trials(sim, fitted):
    ds, truth = sim
    test, true = ds.isel(trial=slice(N_TRAIN, None)), truth.isel(trial=slice(N_TRAIN, None))
    z = fitted.transform(test)
    r2_shared = affine_r2(z["shared_mean"].values, true["angle"].values)
    r2_neural = affine_r2(z["neural_mean"].values, true["neural"].values)
    r2_image = affine_r2(z["image_mean"].values, np.log(true["zoom"].values))
    print(f"held-out affine R2: shared {r2_shared:.3f} neural {r2_neural:.3f} "
          f"image {r2_image:.3f}")
    assert r2_shared >= 0.8
    assert r2_neural >= 0.7
    assert r2_image >= 0.7
    rates = fitted.reconstruct(test)["activity"]
    assert rates.dims == ("trial", "time", "neuron")
    r2_rates = 1 - float(((rates - true["rate"]) ** 2).sum()
                         / ((true["rate"] - true["rate"].mean()) ** 2).sum())
    assert r2_rates >= 0.5


def test_predict_modality_from_spikes(sim, fitted):
    ds, _ = sim
    test = ds.isel(trial=slice(N_TRAIN, None))
    pred = fitted.predict_modality(test.drop_vars("image"), source="neural")
    assert set(pred.data_vars) == {"image"}
    assert pred["image"].dims == ("trial", "time", "pixel")
    np.testing.assert_array_equal(pred["time"], test["time"])
    # Predicted frames correlate with the real ones beyond the mean image.
    real = test["image"].values - test["image"].values.mean((0, 1))
    guess = pred["image"].values - pred["image"].values.mean((0, 1))
    assert np.corrcoef(real.ravel(), guess.ravel())[0, 1] > 0.3


def test_save_load_roundtrip(sim, fitted, tmp_path):
    ds, _ = sim
    path = fitted.save(tmp_path / "gpvae.nc")
    loaded = MMGPVAE.load(path)
    a = fitted.transform(ds.isel(trial=slice(N_TRAIN, N_TRAIN + 5)))
    b = loaded.transform(ds.isel(trial=slice(N_TRAIN, N_TRAIN + 5)))
    xr.testing.assert_allclose(a, b)
    assert loaded.length_scales_["shared"] == pytest.approx(fitted.length_scales_["shared"])


def test_variable_lengths_match_unpadded_trials(sim, fitted):
    ds, _ = sim
    part = ds.isel(trial=slice(N_TRAIN, N_TRAIN + 3)).astype(float)
    padded = part.copy(deep=True)
    padded["activity"][1, 25:] = np.nan
    padded["image"][1, 25:] = np.nan
    alone = part.isel(trial=[1], time=slice(0, 25))
    a = fitted.transform(padded)["shared_mean"].isel(trial=1)
    b = fitted.transform(alone)["shared_mean"].isel(trial=0)
    np.testing.assert_allclose(a.values[:25], b.values, rtol=1e-4, atol=1e-5)
    assert np.isnan(a.values[25:]).all()
    # The other trials are untouched by their neighbour's padding.
    np.testing.assert_allclose(fitted.transform(padded)["shared_mean"].isel(trial=0),
                               fitted.transform(part)["shared_mean"].isel(trial=0), rtol=1e-5)


def test_batched_inference_equals_unbatched(sim, fitted):
    ds, _ = sim
    test = ds.isel(trial=slice(N_TRAIN, None)).astype(float)
    test["activity"][3, 30:] = np.nan  # a shorter trial inside the first block
    test["image"][3, 30:] = np.nan
    whole, blocks = fitted.transform(test), fitted.transform(test, batch_size=10)
    xr.testing.assert_allclose(whole, blocks, rtol=1e-4, atol=1e-5)
    xr.testing.assert_allclose(fitted.reconstruct(test),
                               fitted.reconstruct(test, batch_size=10), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputDataError, match="batch_size"):
        fitted.transform(test, batch_size=0)


def test_time_domain_fit_with_variable_lengths(sim):
    ds, _ = sim
    data = ds.isel(trial=slice(0, 12), time=slice(0, 16)).astype(float)
    data["activity"][0, 12:] = np.nan
    data["image"][0, 12:] = np.nan
    model = MMGPVAE(1, {"neural": 1, "image": 0}, modalities=MODALITIES, fourier=False,
                    combine="average", max_epochs=3, validation_fraction=0.0,
                    progress=False).fit(data)
    assert np.isfinite(model.history_["train"]).all()
    out = model.transform(data)
    assert "image_mean" not in out  # no private image latents
    assert np.isnan(out["shared_mean"].values[0, 12:]).all()
    assert np.isfinite(out["shared_mean"].values[1:]).all()


# --------------------------------------------------------------------------- bad input


def _model(**kw):
    return MMGPVAE(1, {"neural": 1, "image": 1}, modalities=MODALITIES, max_epochs=1,
                   progress=False, **kw)


def test_missing_modality_is_named(sim):
    ds, _ = sim
    with pytest.raises(InputDataError, match="'image'"):
        _model().fit(ds.drop_vars("image"))


def test_mismatched_time_axis(sim):
    ds, _ = sim
    bad = ds.copy()
    bad["image"] = (("trial", "frame", "pixel"), ds["image"].values[:, :20])
    with pytest.raises(InputDataError, match="'image'.*shared trial and time"):
        _model().fit(bad)


def test_mismatched_trial_counts(sim):
    ds, _ = sim
    bad = ds.copy()
    bad["image"] = (("session_trial", "time", "pixel"), ds["image"].values[:40])
    with pytest.raises(InputDataError, match="image"):
        _model().fit(bad)


def test_nan_inside_a_trial(sim):
    ds, _ = sim
    bad = ds.astype(float)
    bad["image"][2, 5, 7] = np.nan
    with pytest.raises(InputDataError, match="NaN.*trial 2, time bin 5"):
        _model().fit(bad)


def test_non_count_spikes_with_poisson(sim):
    ds, _ = sim
    bad = ds.astype(float)
    bad["activity"] = bad["activity"] + 0.5
    with pytest.raises(InputDataError, match="Poisson"):
        _model().fit(bad)


def test_bad_options():
    with pytest.raises(InputDataError, match="combine"):
        MMGPVAE(combine="mean")._config()
    with pytest.raises(InputDataError, match="Poisson likelihood needs the linear"):
        MMGPVAE(decoder={"neural": "mlp"})._config()
    with pytest.raises(InputDataError, match="not in `modalities`"):
        MMGPVAE(n_private={"lfp": 1})._config()


def test_unfitted_and_wrong_features(sim, fitted):
    ds, _ = sim
    with pytest.raises(NeurodataError, match="not fitted"):
        MMGPVAE().transform(ds)
    with pytest.raises(InputDataError, match="features"):
        fitted.transform(ds.isel(neuron=slice(0, 10)))
    with pytest.raises(InputDataError, match="source="):
        fitted.predict_modality(ds, source="behavior")
