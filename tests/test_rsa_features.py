"""CKA, shape metrics, encoding models and the layer-to-area map."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.stats import ortho_group

from neurodata.errors import InputDataError, NotFittedError
from neurodata.models import rsa


def _cka_reference(x, y):
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def test_linear_cka_closed_form_and_invariances(rng):
    x = rng.normal(size=(40, 10))
    y = np.tanh(x @ rng.normal(size=(10, 7))) + 0.3 * rng.normal(size=(40, 7))
    value = rsa.cka(x, y)
    assert value == pytest.approx(_cka_reference(x, y), rel=1e-10)
    q = ortho_group.rvs(7, random_state=1)
    assert rsa.cka(x, 5.0 * y @ q) == pytest.approx(value, rel=1e-10)
    assert rsa.cka(x, y @ q + 3.0) == pytest.approx(value, rel=1e-10)
    # not invariant to a general invertible map
    assert abs(rsa.cka(x, y @ np.diag([1, 20, 1, 1, 1, 1, 0.1])) - value) > 1e-3
    # RBF CKA: rotation and scale invariant (median-distance bandwidth)
    r = rsa.cka(x, y, kernel="rbf")
    assert rsa.cka(x, 2.0 * y @ q, kernel="rbf") == pytest.approx(r, rel=1e-8)
    assert 0 < r <= 1


def test_debiased_cka_matches_formula_and_is_near_zero_for_independent_features(rng):
    n = 30
    x = rng.normal(size=(n, 2000))
    y = rng.normal(size=(n, 2000))
    biased = rsa.cka(x, y)
    debiased = rsa.cka(x, y, debiased=True)
    assert biased > 0.5  # the biased estimator is inflated when features >> stimuli
    assert abs(debiased) < 0.05
    # brute-force unbiased HSIC (Song et al. 2012) on a tiny problem
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 4))
    k, l = a @ a.T, b @ b.T  # noqa: E741
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    m = 6
    one = np.ones(m)
    ref = (np.trace(kt @ lt) + one @ kt @ one * (one @ lt @ one) / ((m - 1) * (m - 2))
           - 2 / (m - 2) * one @ kt @ lt @ one) / (m * (m - 3))
    assert float(rsa.hsic(k, l, debiased=True)) == pytest.approx(ref, rel=1e-10)


def test_cka_equals_whitened_cosine_of_euclidean_rdms(rng):
    # rsatoolbox identity: cosine_cov on squared-Euclidean RDMs = linear CKA
    x, y = rng.normal(size=(15, 6)), rng.normal(size=(15, 9))
    dx = rsa.calc_rdm(x, "euclidean")
    dy = rsa.calc_rdm(y, "euclidean")
    assert float(rsa.compare(dx, dy, "cosine_cov")[0, 0]) == pytest.approx(rsa.cka(x, y),
                                                                           rel=1e-8)
    # and NBS (bures) = cos(angular Procrustes distance)
    assert float(rsa.compare(dx, dy, "bures")[0, 0]) == pytest.approx(
        np.cos(rsa.procrustes_distance(x, y)), rel=1e-6)


def test_procrustes_closed_form_invariances_and_shape_metric(rng):
    x = rng.normal(size=(50, 5))
    q = ortho_group.rvs(5, random_state=2)
    assert rsa.procrustes_distance(x, 3 * x @ q + 1) == pytest.approx(0, abs=1e-6)
    y = x + rng.normal(size=x.shape)
    d = rsa.procrustes_distance(x, y)
    xc, yc = x - x.mean(0), y - y.mean(0)
    # brute force: the best rotation from the SVD, then the angle
    u, _, vt = np.linalg.svd(xc.T @ yc)
    cos = np.sum((xc @ u @ vt) * yc) / (np.linalg.norm(xc) * np.linalg.norm(yc))
    assert d == pytest.approx(np.arccos(cos), rel=1e-8)
    assert rsa.ShapeMetric(alpha=1.0).fit_score(x, y) == pytest.approx(d, rel=1e-6)
    # alpha = 0 (full whitening) is invariant to any invertible linear map
    a = rng.normal(size=(5, 5)) + 3 * np.eye(5)
    assert rsa.ShapeMetric(alpha=0.0).fit_score(x, x @ a) == pytest.approx(0, abs=1e-5)
    assert rsa.ShapeMetric(alpha=1.0).fit_score(x, x @ a) > 0.05
    # symmetric, and cross-validated scoring on held-out stimuli
    m = rsa.ShapeMetric(alpha=0.5).fit(x[:40], y[:40])
    assert 0 < m.score(x[40:], y[40:]) < np.pi / 2
    assert rsa.ShapeMetric(0.5).fit_score(y, x) == pytest.approx(
        rsa.ShapeMetric(0.5).fit_score(x, y), rel=1e-6)
    with pytest.raises(NotFittedError):
        rsa.ShapeMetric().score(x, y)
    with pytest.raises(InputDataError, match="alpha"):
        rsa.ShapeMetric(alpha=2.0).fit(x, y)


def test_cca_recovers_shared_dimensions(rng):
    z = rng.normal(size=(200, 2))
    x = np.c_[z, rng.normal(size=(200, 3))] @ rng.normal(size=(5, 5))
    y = np.c_[z, rng.normal(size=(200, 2))] @ rng.normal(size=(4, 4))
    rho = rsa.cca(x, y)
    assert rho[:2] == pytest.approx([1, 1], abs=1e-8)
    assert rho[2] < 0.4


def test_svcca_drops_noise_directions_and_matches_pca_plus_cca(rng):
    from sklearn.decomposition import PCA
    z = rng.normal(size=(200, 3))
    x = np.c_[z @ rng.normal(size=(3, 6)), 0.01 * rng.normal(size=(200, 10))]
    y = np.c_[z @ rng.normal(size=(3, 4)), 0.01 * rng.normal(size=(200, 10))]
    # the shared 3-d signal carries > 99 % of the variance: SVCCA sees only it
    assert rsa.svcca(x, y) == pytest.approx(1.0, abs=1e-6)
    assert rsa.cca(x, y).mean() < 0.8  # plain CCA also aligns the independent noise
    # independent reference: sklearn PCA, then canonical correlations from
    # eig(Sxx^-1 Sxy Syy^-1 Syx)
    x2 = x + 0.5 * rng.normal(size=x.shape)
    px = PCA(n_components=0.9, svd_solver="full").fit_transform(x2)
    py = PCA(n_components=0.9, svd_solver="full").fit_transform(y)
    sxx, syy, sxy = px.T @ px, py.T @ py, px.T @ py
    ev = np.linalg.eigvals(np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T))
    rho = np.sort(np.sqrt(np.clip(ev.real, 0, 1)))[::-1][:min(px.shape[1], py.shape[1])]
    assert rsa.svcca(x2, y, variance=0.9) == pytest.approx(rho.mean(), abs=1e-8)
    q = ortho_group.rvs(16, random_state=1)
    assert rsa.svcca(x, 3 * x @ q) == pytest.approx(1.0, abs=1e-8)
    with pytest.raises(InputDataError, match="variance"):
        rsa.svcca(x, y, variance=1.5)
    with pytest.raises(InputDataError, match="n_components"):
        rsa.svcca(x, y, n_components=20)


def test_ridge_and_pls_predictivity_and_ceiling(rng):
    n_stim, n_trial = 80, 6
    feats = rng.normal(size=(n_stim, 12))
    signal = feats @ rng.normal(size=(12, 5))
    trials = signal[None] + 1.0 * rng.normal(size=(n_trial, n_stim, 5))
    brain = trials.mean(0)
    ridge = rsa.ridge_predictivity(feats, brain)
    pls = rsa.pls_predictivity(feats, brain, n_components=10)
    noise = rsa.ridge_predictivity(rng.normal(size=(n_stim, 12)), brain)
    assert ridge.attrs["score"] > 0.8 and pls.attrs["score"] > 0.8
    assert abs(noise.attrs["score"]) < 0.3
    # the split-half ceiling: true reliability of the trial mean
    ceiling = rsa.split_half_ceiling(trials, n_splits=20)
    var_s = signal.var(0)
    expected = var_s / (var_s + 1.0 / n_trial)
    np.testing.assert_allclose(ceiling.values, expected, atol=0.1)
    ceiled = rsa.ridge_predictivity(feats, brain, ceiling=np.sqrt(ceiling.values))
    assert ceiled.attrs["ceiled_score"] > ridge.attrs["score"]
    rev = rsa.reverse_predictivity(feats, brain)
    assert rev.attrs["score"] < ridge.attrs["score"]  # 5 neurons cannot predict 12 features
    # the chosen ridge penalty minimises the exact leave-one-out error (brute force)
    from sklearn.linear_model import Ridge
    alphas = np.logspace(-2, 3, 6)
    res = rsa.ridge_predictivity(feats, brain[:, :1], alphas=alphas, n_splits=1)
    from sklearn.model_selection import ShuffleSplit
    train, _ = next(ShuffleSplit(1, test_size=0.1, random_state=1).split(feats))
    errs = []
    for a in alphas:
        e = 0
        for i in train:
            rest = train[train != i]
            m = Ridge(alpha=a).fit(feats[rest], brain[rest, 0])
            e += (m.predict(feats[[i]])[0] - brain[i, 0]) ** 2
        errs.append(e)
    assert res["alpha"].values[0, 0] == alphas[int(np.argmin(errs))]


def test_kernel_analysis_separable_beats_random(rng):
    labels = np.repeat(np.arange(4), 15)
    good = np.eye(4)[labels] * 3 + 0.3 * rng.normal(size=(60, 4))
    bad = rng.normal(size=(60, 4))
    ka_good = rsa.kernel_analysis(good, labels)
    ka_bad = rsa.kernel_analysis(bad, labels)
    assert ka_good.attrs["auc"] > ka_bad.attrs["auc"] + 0.2
    assert ka_good.values[-1] == pytest.approx(1.0, abs=1e-6)  # all eigenvectors: exact fit
    assert np.all(np.diff(ka_good.values) >= -1e-9)


def test_layer_area_map_finds_planted_match(rng):
    stim = 40
    base = rng.normal(size=(stim, 20))
    layers = {"l1": base, "l2": np.tanh(base @ rng.normal(size=(20, 20))),
              "l3": rng.normal(size=(stim, 20))}
    brain = {"early": layers["l1"] @ rng.normal(size=(20, 30)) + 0.5 * rng.normal(size=(stim, 30)),
             "late": layers["l2"] @ rng.normal(size=(20, 30)) + 0.5 * rng.normal(size=(stim, 30))}
    for measure in ("rsa", "cka", "procrustes"):
        res = rsa.layer_area_map(brain, layers, measure=measure, n_subsamples=5,
                                 key=jax.random.key(0))
        assert list(res["best_layer"].values) == ["l1", "l2"], measure
        assert res["best_fraction"].sel(area="early", layer="l1") >= 0.8
    with pytest.raises(InputDataError, match="stimulus counts"):
        rsa.layer_area_map({"a": base[:30]}, layers, n_subsamples=0)
    with pytest.raises(InputDataError, match="measure"):
        rsa.layer_area_map(brain, layers, measure="svcca")
    with pytest.raises(InputDataError, match="key"):
        rsa.layer_area_map(brain, layers, n_subsamples=2)


def test_feature_inputs_are_checked(rng):
    x = rng.normal(size=(10, 3))
    with pytest.raises(InputDataError, match="same stimuli"):
        rsa.cka(x, x[:9])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputDataError, match="NaN"):
        rsa.procrustes_distance(bad, x)
    with pytest.raises(InputDataError, match="kernel"):
        rsa.cka(x, x, kernel="poly")
    with pytest.raises(InputDataError, match="trial"):
        rsa.split_half_ceiling(x)
