"""RDMs, comparators, topological RSA and inference, against rsatoolbox 0.3.2."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.spatial.distance import squareform

import neurodata
from neurodata.errors import InputDataError
from neurodata.models import rsa

rsatoolbox = pytest.importorskip("rsatoolbox")
from rsatoolbox.data import Dataset  # noqa: E402
from rsatoolbox.rdm import RDMs  # noqa: E402

METHODS = ["cosine", "corr", "spearman", "rho-a", "tau-a", "kendall", "corr_cov", "cosine_cov",
           "bures", "bures_metric"]


@pytest.fixture(scope="module")
def data92():
    import os
    from pathlib import Path

    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    path = os.environ.get("NEURODATA_MIRROR", str(shared))
    old = os.environ.get("NEURODATA_MIRROR")
    os.environ["NEURODATA_MIRROR"] = path
    try:
        ds = neurodata.datasets.load("kriegeskorte2008-92images")
    except neurodata.NeurodataError:
        pytest.skip("the 92-image data is not in the mirror")
    finally:
        if old is None:
            os.environ.pop("NEURODATA_MIRROR")
    kind = ds["rdm_kind"].values
    brain = ds.isel(rdm=np.where((kind == "brain") & (ds["subject"].values != ""))[0])
    models = ds.isel(rdm=np.where(kind == "model")[0])
    return brain.drop_vars("image"), models.drop_vars("image")


def _vectors(ds):
    return np.array([squareform(m, checks=False) for m in ds["dissimilarity"].values])


@pytest.mark.reference
@pytest.mark.parametrize("method", METHODS)
def test_comparators_match_rsatoolbox_on_92_images(data92, method):
    brain, models = data92
    if method.startswith("bures") or method == "kendall":  # rsatoolbox loops over pairs
        brain, models = brain.isel(rdm=slice(0, 3)), models.isel(rdm=slice(2, 5))
    ours = rsa.compare(brain, models, method).values
    ref = rsatoolbox.rdm.compare(RDMs(_vectors(brain)), RDMs(_vectors(models)), method)
    scale = max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6 * scale)


def test_compare_output_and_input_forms(data92):
    # the labelled output is built from cached indexes: it must equal a plainly built one,
    # and results must not share attrs; every input layout gives the same numbers
    import xarray as xr
    brain, models = data92
    sim = rsa.compare(brain, models, "corr")
    expected = xr.DataArray(sim.values, dims=("rdm_a", "rdm_b"),
                            coords={"rdm_a": brain["rdm_name"].values.astype(str),
                                    "rdm_b": models["rdm_name"].values.astype(str)},
                            name="similarity", attrs={"method": "corr"})
    xr.testing.assert_identical(sim, expected)
    sim.attrs["note"] = 1
    sim["rdm_a"].attrs["note"] = 1
    again = rsa.compare(brain, models, "corr")
    assert "note" not in again.attrs and "note" not in again["rdm_a"].attrs
    assert float(again.sel(rdm_a=str(brain["rdm_name"].values[0]), rdm_b="animacy")) == float(
        sim[0, 0])
    a = brain["dissimilarity"].values[:3]
    b = models["dissimilarity"].values[:2]
    ref = rsa.compare(a, b, "spearman").values
    swapped = brain["dissimilarity"].isel(rdm=slice(0, 3)).transpose("stimulus", "stimulus_",
                                                                     "rdm")
    strided = np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)  # a, not C-order
    for x in (np.asfortranarray(a), strided, swapped):
        np.testing.assert_array_equal(rsa.compare(x, b, "spearman").values, ref)
    f32 = a.astype(np.float32)
    np.testing.assert_allclose(rsa.compare(f32, b, "cosine").values,
                               rsa.compare(f32.astype(float), b, "cosine").values, rtol=1e-14,
                               atol=0)  # float32 input is computed in float64, not float32
    # asymmetry within rounding is accepted (the upper triangle is used), inf anywhere is not
    near = a.copy()
    near[:, 0, 1] *= 1 + 1e-12
    np.testing.assert_allclose(rsa.compare(near, b, "cosine").values,
                               rsa.compare(a, b, "cosine").values, atol=1e-10)
    for i, j in ((1, 0), (2, 2)):
        bad = a.copy()
        bad[0, i, j] = np.inf
        with pytest.raises(InputDataError, match="rdms_b holds NaN or infinite"):
            rsa.compare(b, bad, "corr")


@pytest.mark.reference
@pytest.mark.parametrize("n", [4, 41])
def test_kendall_taus_equal_scipy_with_and_without_ties(rng, n):
    # the sub-quadratic count (lexicographic sort, inversions by square-root blocks) has
    # four paths: ties in neither, either or both RDM sets (p = 820 pairs: 13 blocks of 64,
    # padded); ties in both for p = 6 (one block); -0.0 must tie with 0.0
    import scipy.stats
    from rsatoolbox.rdm.compare import _tau_a
    p = n * (n - 1) // 2
    cont = rng.normal(size=(2, p))
    tied = rng.integers(0, 3, (2, p)).astype(float)
    tied[1, : p // 2] = 0.0  # a large tie group
    tied[1, 0] = -0.0  # equal to 0.0
    cases = ((cont, cont[::-1]), (tied, cont), (cont, tied), (tied, tied[::-1]))
    for va, vb in cases if n > 10 else cases[3:]:  # one block: the general path only
        a = np.array([squareform(v) for v in va])
        b = np.array([squareform(v) for v in vb])
        ref_a = [[_tau_a(x, y) for y in vb] for x in va]
        ref_b = [[scipy.stats.kendalltau(x, y).statistic for y in vb] for x in va]
        np.testing.assert_allclose(rsa.compare(a, b, "tau-a").values, ref_a, atol=1e-12)
        np.testing.assert_allclose(rsa.compare(a, b, "kendall").values, ref_b, atol=1e-12)


def test_whitened_comparators_with_sigma_k_use_the_rdm_covariance(data92, rng):
    brain, models = data92
    n = 20
    a = brain["dissimilarity"].values[:3, :n, :n]
    b = models["dissimilarity"].values[2:5, :n, :n]
    iu, ju = np.triu_indices(n, 1)
    contrast = np.zeros((len(iu), n))
    contrast[np.arange(len(iu)), iu] = 1
    contrast[np.arange(len(iu)), ju] = -1
    x = rng.normal(size=(n, 40))
    for sig in (rng.uniform(0.5, 2, n), x @ x.T / 40 + np.eye(n), None):
        s = np.eye(n) if sig is None else np.diag(sig) if sig.ndim == 1 else sig
        xi = contrast @ s @ contrast.T
        v = xi * xi  # the RDM covariance (C Sigma C^T) o (C Sigma C^T), solved exactly
        for method in ("cosine_cov", "corr_cov"):
            va = a[:, iu, ju]
            vb = b[:, iu, ju]
            if method == "corr_cov":
                va = va - va.mean(1, keepdims=True)
                vb = vb - vb.mean(1, keepdims=True)
            wa, wb = np.linalg.solve(v, va.T), np.linalg.solve(v, vb.T)
            exact = (va @ wb) / np.sqrt(np.einsum("ij,ji->i", va, wa))[:, None]
            exact /= np.sqrt(np.einsum("ij,ji->i", vb, wb))[None]
            np.testing.assert_allclose(rsa.compare(a, b, method, sigma_k=sig).values, exact,
                                       atol=1e-6)
    # rsatoolbox's fast path for a diagonal sigma_k whitens G, which is not this metric
    sig = rng.uniform(0.5, 2, n)
    ref = rsatoolbox.rdm.compare(RDMs(a[:, iu, ju]), RDMs(b[:, iu, ju]), "cosine_cov",
                                 sigma_k=sig)
    assert np.abs(ref - rsa.compare(a, b, "cosine_cov", sigma_k=sig).values).max() > 1e-4


def _patterns(rng, k=4, n=10, p=30):
    x = np.abs(rng.poisson(3, (k, n, p)) + rng.normal(size=(k, n, p)) * 0.1)
    obs = x.reshape(k * n, p)
    stim = np.tile(np.arange(n), k)
    fold = np.repeat(np.arange(k), n)
    return x, obs, stim, fold


@pytest.mark.reference
@pytest.mark.parametrize("method", ["euclidean", "correlation", "mahalanobis", "crossnobis",
                                    "poisson"])
def test_dissimilarities_match_rsatoolbox(rng, method):
    x, obs, stim, fold = _patterns(rng)
    prec = rsa.precision_from_residuals(rng.normal(size=(60, x.shape[2])))
    ds = Dataset(obs, obs_descriptors={"stim": stim, "fold": fold})
    kw = {"noise": prec} if method in ("mahalanobis", "crossnobis") else {}
    if method == "crossnobis":
        kw["cv_descriptor"] = "fold"
    ref = rsatoolbox.rdm.calc_rdm(ds, method=method, descriptor="stim", **kw).get_vectors()[0]
    ours = rsa.calc_rdm(obs, method, stimuli=stim,
                        folds=fold if method == "crossnobis" else None,
                        precision=kw.get("noise"))
    np.testing.assert_allclose(squareform(ours["dissimilarity"].values[0], checks=False), ref,
                               atol=1e-10)
    if method == "crossnobis":  # the (trial, stimulus, neuron) form gives the same RDM
        ours3 = rsa.calc_rdm(x, method, precision=prec)["dissimilarity"].values[0]
        np.testing.assert_allclose(ours3, ours["dissimilarity"].values[0], atol=1e-12)


@pytest.mark.reference
def test_crossnobis_dense_precision_over_channel_blocks(rng):
    # a dense precision is multiplied block by block (512 channels) over its upper block
    # triangle only: 1100 channels give two full blocks, the remainder and cross blocks
    p = 1100
    x = rng.normal(size=(3, 6, p))
    prec = rsa.precision_from_residuals(rng.normal(size=(30, p)))
    ds = Dataset(x.reshape(-1, p), obs_descriptors={"stim": np.tile(np.arange(6), 3),
                                                    "fold": np.repeat(np.arange(3), 6)})
    ref = rsatoolbox.rdm.calc_rdm(ds, method="crossnobis", descriptor="stim",
                                  cv_descriptor="fold", noise=prec).get_vectors()[0]
    ours = rsa.calc_rdm(x, "crossnobis", precision=prec)["dissimilarity"].values[0]
    np.testing.assert_allclose(squareform(ours, checks=False), ref, rtol=0,
                               atol=1e-10 * np.abs(ref).max())
    # the RDM sees only the symmetric part of the precision, in rsatoolbox's kernels too:
    # an asymmetric one (both triangles differ, in and across blocks) gives the same answer
    skew = rng.normal(size=(p, p))
    asym = prec + 1e-3 * np.abs(prec).max() * (skew - skew.T)
    ref = rsatoolbox.rdm.calc_rdm(ds, method="crossnobis", descriptor="stim",
                                  cv_descriptor="fold", noise=asym).get_vectors()[0]
    ours = rsa.calc_rdm(x, "crossnobis", precision=asym)["dissimilarity"].values[0]
    np.testing.assert_allclose(squareform(ours, checks=False), ref, rtol=0,
                               atol=1e-10 * np.abs(ref).max())


@pytest.mark.reference
def test_precisions_match_rsatoolbox(rng):
    from rsatoolbox.data.noise import prec_from_residuals
    res = rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12))
    for method in ("shrinkage_diag", "shrinkage_eye", "diag", "full"):
        np.testing.assert_allclose(rsa.precision_from_residuals(res, method=method),
                                   prec_from_residuals(res.copy(), method=method), rtol=1e-8)


@pytest.mark.reference
def test_crossnobis_unbalanced_and_per_fold_precisions(rng):
    x, obs, stim, fold = _patterns(rng)
    x = rng.normal(size=x.shape)
    obs = x.reshape(obs.shape)
    keep = rng.random(len(obs)) > 0.15
    ds = Dataset(obs[keep], obs_descriptors={"stim": stim[keep], "fold": fold[keep]})
    ref = rsatoolbox.rdm.calc_rdm_unbalanced(ds, method="crossnobis", descriptor="stim",
                                             cv_descriptor="fold")
    ref.sort_by(stim="alpha")
    ours = rsa.calc_rdm(obs[keep], "crossnobis", stimuli=stim[keep], folds=fold[keep])
    np.testing.assert_allclose(squareform(ours["dissimilarity"].values[0], checks=False),
                               ref.get_vectors()[0], atol=1e-10)
    # per-fold precisions (balanced: equals rsatoolbox's list of noises)
    precs = np.stack([rsa.precision_from_residuals(rng.normal(size=(40, x.shape[2])))
                      for _ in range(x.shape[0])])
    dsb = Dataset(obs, obs_descriptors={"stim": stim, "fold": fold})
    ref = rsatoolbox.rdm.calc_rdm(dsb, method="crossnobis", descriptor="stim",
                                  cv_descriptor="fold", noise=list(precs)).get_vectors()[0]
    ours = rsa.calc_rdm(x, "crossnobis", precision=precs)["dissimilarity"].values[0]
    np.testing.assert_allclose(squareform(ours, checks=False), ref, atol=1e-10)
    # ... and per-fold precisions on the unbalanced design, which rsatoolbox rejects (#491)
    unb = rsa.calc_rdm(obs[keep], "crossnobis", stimuli=stim[keep], folds=fold[keep],
                       precision=precs)["dissimilarity"].values[0]
    assert np.all(np.isfinite(unb))


@pytest.mark.reference
def test_poisson_cv_averages_all_folds_where_rsatoolbox_keeps_the_last(rng):
    x, obs, stim, fold = _patterns(rng, k=3)
    ds = Dataset(obs, obs_descriptors={"stim": stim, "fold": fold})
    ref = rsatoolbox.rdm.calc_rdm(ds, method="poisson_cv", descriptor="stim",
                                  cv_descriptor="fold").get_vectors()[0]

    def fold_term(k):
        sm = lambda u: (u + 0.1) / 1.1  # noqa: E731
        train = sm(np.delete(x, k, 0).mean(0))
        kern = train @ np.log(sm(x[k])).T
        d = np.diag(kern)
        return (d[:, None] + d[None] - kern - kern.T) / x.shape[2]

    np.testing.assert_allclose(squareform(fold_term(2), checks=False), ref, atol=1e-10)
    ours = rsa.calc_rdm(x, "poisson_cv")["dissimilarity"].values[0]
    expected = np.mean([fold_term(k) for k in range(3)], 0)
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(ours, expected, atol=1e-10)


def test_crossnobis_is_unbiased_for_identical_patterns(rng):
    signal = rng.normal(size=(1, 50))
    x = signal + rng.normal(size=(40, 6, 50))  # 6 stimuli with the same true pattern
    d = rsa.calc_rdm(x, "crossnobis")["dissimilarity"].values[0]
    e = rsa.calc_rdm(x.mean(0), "euclidean")["dissimilarity"].values[0]
    iu = np.triu_indices(6, 1)
    assert abs(d[iu].mean()) < 0.01 < e[iu].mean()


def test_bad_inputs_raise(rng):
    d = np.abs(rng.normal(size=(5, 5)))
    d = d + d.T
    np.fill_diagonal(d, 0)
    with pytest.raises(InputDataError, match="square"):
        rsa.compare(np.ones((2, 5, 4)), d)
    asym = d.copy()
    asym[0, 1] += 1
    with pytest.raises(InputDataError, match="asymmetric"):
        rsa.compare(asym, d)
    nan = d.copy()
    nan[0, 1] = nan[1, 0] = np.nan
    with pytest.raises(InputDataError, match="NaN"):
        rsa.compare(nan, d)
    with pytest.raises(InputDataError, match="at least 3"):
        rsa.compare(d[:2, :2], d[:2, :2])
    with pytest.raises(InputDataError, match="same stimulus set"):
        rsa.compare(d, d[:4, :4])
    a = rsa.rdm_dataset(d, stimulus_id=list("abcde"))
    b = rsa.rdm_dataset(d, stimulus_id=list("abcdf"))
    with pytest.raises(InputDataError, match="different stimulus ids"):
        rsa.compare(a, b)
    with pytest.raises(InputDataError, match="method"):
        rsa.compare(d, d, "pearson")
    x = rng.normal(size=(12, 20))
    with pytest.raises(InputDataError, match="folds"):
        rsa.calc_rdm(x, "crossnobis")
    with pytest.raises(InputDataError, match="fewer than 2 folds"):
        rsa.calc_rdm(x, "crossnobis", stimuli=np.arange(12) % 6,
                     folds=np.r_[np.zeros(6), np.ones(5), 0])
    with pytest.raises(InputDataError, match="at least 2 folds"):
        rsa.calc_rdm(x, "crossnobis", stimuli=np.arange(12) % 6, folds=np.zeros(12))
    # every stimulus in 2 folds, but stimuli 0 and 1 together in fold 1 only
    with pytest.raises(InputDataError, match="pairs are measured together in fewer than 2"):
        rsa.calc_rdm(x[:7], "crossnobis", stimuli=[0, 2, 0, 1, 2, 1, 2],
                     folds=[0, 0, 1, 1, 1, 2, 2])
    with pytest.raises(InputDataError, match="NaN"):
        rsa.calc_rdm(np.full((4, 3), np.nan))
    with pytest.raises(InputDataError, match="at least 3"):
        rsa.calc_rdm(x[:2])


# --------------------------------------------------------------------------- topology


def test_gt_thresholds_are_per_rdm_quantiles_unlike_rsatoolbox(data92):
    brain, _ = data92
    values = brain["dissimilarity"].values
    ours = rsa.gt_transform(values, 0.2, 0.8)
    iu = np.triu_indices(92, 1)
    zero_frac = np.array([(g[iu] == 0).mean() for g in ours])
    np.testing.assert_allclose(zero_frac, 0.2, atol=0.002)
    np.testing.assert_allclose([(g[iu] == 1).mean() for g in ours], 0.2, atol=0.002)
    from rsatoolbox.rdm.transform import geotopological_transform
    ref = geotopological_transform(RDMs(_vectors(brain)), 0.2, 0.8).get_vectors()
    ref_frac = (ref == 0).mean(1)
    assert ref_frac.min() < 0.15 and ref_frac.max() > 0.25  # pooled quantiles: 11 % .. 30 %
    # rank-based: any per-RDM monotone transform leaves the RGTM unchanged
    warped = values.copy()
    warped[0] = np.exp(3 * warped[0]) - 1
    np.testing.assert_allclose(rsa.gt_transform(warped, 0.2, 0.8), ours)
    # l = 0, u = 1 is the rank RDM; l = u is binary
    rank = rsa.rank_transform(values[:1])[0]
    r = squareform(rank, checks=False)
    from scipy.stats import rankdata
    expected = rankdata(values[0][iu])
    np.testing.assert_allclose(r, (expected - 1) / (expected.max() - 1))
    adj = rsa.adjacency(values[:1], 0.3)[0]
    assert set(np.unique(adj)) == {0.0, 1.0}
    assert abs(adj[iu].mean() - 0.3) < 0.002


def test_geodesic_keeps_zero_weight_edges_unlike_rsatoolbox():
    d = np.array([[0, 1, 2, 3, 4], [1, 0, 5, 6, 7], [2, 5, 0, 8, 9], [3, 6, 8, 0, 10],
                  [4, 7, 9, 10, 0.0]])
    geo = rsa.geodesic(d, 0.2, 0.8, rank_after=False)
    g = rsa.gt_transform(d, 0.2, 0.8)
    assert g[0, 1] == 0.0 and geo[0, 1] == 0.0  # the closest pair: weight-0 edge, distance 0
    from rsatoolbox.rdm.transform import geodesic_transform
    ref = squareform(geodesic_transform(RDMs(squareform(g)[None])).get_vectors()[0])
    assert ref[0, 1] > 0  # networkx dropped the zero-weight edge
    # brute force shortest paths over the masked graph
    import itertools
    w = np.where(g < 1, g, np.inf)
    np.fill_diagonal(w, 0)
    for k, i, j in itertools.product(range(5), repeat=3):
        w[i, j] = min(w[i, j], w[i, k] + w[k, j])
    np.testing.assert_allclose(geo, w)


def test_transforms_do_not_mutate_inputs(data92):
    brain = data92[0].isel(rdm=slice(0, 3), stimulus=slice(0, 30), stimulus_=slice(0, 30))
    before = brain["dissimilarity"].values.copy()
    arr = before.copy()
    for fn in (rsa.gt_transform, rsa.geodesic, rsa.rank_transform):
        out = fn(brain)
        assert out is not brain
        fn(arr)
    rsa.knn_geodesic(arr, 3)
    rsa.compare(brain, arr, "bures")
    np.testing.assert_array_equal(brain["dissimilarity"].values, before)
    np.testing.assert_array_equal(arr, before)
    # rsatoolbox writes into its RDMs object
    from rsatoolbox.rdm.transform import geotopological_transform
    ref = RDMs(_vectors(brain))
    vec = ref.get_vectors().copy()
    geotopological_transform(ref, 0.2, 0.8)
    assert not np.allclose(ref.get_vectors(), vec)


def test_rgtm_classes():
    assert rsa.rgtm_class(0.0, 0.2) == "local"
    assert rsa.rgtm_class(0.8, 1.0) == "global"
    assert rsa.rgtm_class(0.0, 1.0) == "geometry-sensitive"
    assert rsa.rgtm_class(0.45, 0.55) == "topology-sensitive"
    assert rsa.rgtm_class(0.3, 0.6) == "intermediate"


def test_identification_accuracy_brute_force(rng):
    from sklearn.neighbors import NearestCentroid
    x = rng.normal(size=(24, 15))
    region = np.tile(np.arange(4), 6)
    subject = np.repeat(np.arange(6), 4)
    x += region[:, None] * 0.3
    hits = 0
    for s in range(6):
        clf = NearestCentroid().fit(x[subject != s], region[subject != s])
        hits += (clf.predict(x[subject == s]) == region[subject == s]).sum()
    assert rsa.identification_accuracy(x, region, subject) == pytest.approx(hits / 24)


# --------------------------------------------------------------------------- inference


@pytest.mark.reference
def test_dual_bootstrap_reproduces_published_model_comparison(data92):
    brain, models = data92
    res = rsa.dual_bootstrap(models, brain, key=jax.random.key(0), subjects=brain["subject"],
                             method="corr", n_bootstrap=200)
    reference = {"animacy": 0.313, "FaceBodyManmadeNatobj": 0.229, "monkeyIT": 0.270,
                 "EVA": 0.198, "HMAX": 0.124, "V1": 0.021, "Silhouette": 0.094, "RADON": 0.026}
    means = dict(zip(res["model"].values, res["mean"].values, strict=True))
    # s.e. ~0.05 over 8 RDMs; the mean of 200 resamples of the same data moves by < 0.01
    for name, value in reference.items():
        assert means[name] == pytest.approx(value, abs=0.012), name
    # the standard error of animacy (0.065 with N = 1000); with N = 200 the s.e. of a
    # variance estimate is ~10 %, so allow 25 %
    assert res["sem"].sel(model="animacy") == pytest.approx(0.065, rel=0.25)
    lower, upper = res["noise_ceiling"].values
    assert 0 < lower < upper < 1
    sig = rsa.pairwise_tests(res)
    assert sig.sel(model="animacy", model_="V1")  # the largest gap is significant
    assert res["p_zero"].sel(model="animacy") < 0.01


@pytest.mark.reference
def test_noise_ceiling_matches_rsatoolbox(data92):
    brain, _ = data92
    for method in ("corr", "cosine", "spearman"):
        ref = rsatoolbox.inference.boot_noise_ceiling(RDMs(_vectors(brain)), method=method)
        np.testing.assert_allclose(rsa.noise_ceiling(brain, method), ref, atol=1e-6)


def test_masked_bootstrap_comparisons_equal_nan_dropping(data92, rng):
    brain, models = data92
    idx = rng.integers(0, 92, 92)
    iu, ju = np.triu_indices(92, 1)
    a, b = idx[iu], idx[ju]
    mask = a != b
    mv = models["dissimilarity"].values[:, a, b]
    dv = brain["dissimilarity"].values[:, a, b]
    for method in ("corr", "cosine", "spearman", "rho-a"):
        ours = rsa.vector_similarity(mv, dv, mask, method)
        ref = rsatoolbox.rdm.compare(RDMs(mv[:, mask]), RDMs(dv[:, mask]), method)
        np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_linear_bootstrap_path_equals_gathered_rdms(rng):
    # corr / cosine use quadratic forms of the stimulus counts; rank methods gather the
    # resampled RDMs with a duplicate mask; both must agree on the same draws
    import jax.numpy as jnp

    from neurodata.models.rsa import inference
    x = rng.normal(size=(7, 9, 4))
    d = jnp.asarray(((x[:, :, None] - x[:, None]) ** 2).sum(-1))
    groups = jnp.asarray([0, 0, 1, 2, 2])
    g = jax.random.randint(jax.random.key(0), (6, 3), 0, 3).at[0].set(1)  # one subject
    s = jax.random.randint(jax.random.key(1), (6, 9), 0, 9)
    # corr only: cosine shares every step but the centring (and compiling is the cost here)
    fast = inference._bootstrap_linear(d[:2], d[2:], groups, g, s, "corr")
    slow = inference._bootstrap_core(d[:2], d[2:], groups, g, s, "corr", 3)
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_rank_bootstrap_equals_explicit_ranking(rng):
    # the rank bootstrap ranks every resampled RDM from integer rank keys and histograms
    # (no sort) and shares them between kinds; compare with scipy on the gathered vectors
    import jax.numpy as jnp
    import scipy.stats

    from neurodata.models.rsa import inference
    x = rng.normal(size=(7, 9, 3))
    d = ((x[:, :, None] - x[:, None]) ** 2).sum(-1).round(1)  # rounding makes ties
    groups = np.array([0, 0, 1, 2, 2])
    g = np.asarray(jax.random.randint(jax.random.key(0), (4, 3), 0, 3))
    s = np.asarray(jax.random.randint(jax.random.key(1), (4, 9), 0, 9))
    ev, nc = inference._bootstrap_core(jnp.asarray(d[:2]), jnp.asarray(d[2:]),
                                       jnp.asarray(groups), g, s, "spearman", 2)
    iu, ju = np.triu_indices(9, 1)

    def spearman(u, v):
        return scipy.stats.spearmanr(u, v).statistic

    for b in range(4):
        counts = np.bincount(g[b], minlength=3).astype(float)
        for kind, (c, idx) in enumerate([(counts, s[b]), (counts, np.arange(9)),
                                         (np.ones(3), s[b])]):
            a_, b_ = idx[iu], idx[ju]
            ok = a_ != b_
            mv, dv = d[:2][:, a_, b_][:, ok], d[2:][:, a_, b_][:, ok]
            w = c[groups]
            sims = np.array([[spearman(m, v) for v in dv] for m in mv])
            np.testing.assert_allclose(ev[b, :, kind], sims @ w / w.sum(), atol=1e-10)
            ranks = scipy.stats.rankdata(dv, axis=1)
            lower, upper = [], []
            for grp in np.where(c > 0)[0]:
                mine = groups == grp
                rest = w * ~mine
                pool_all = w @ ranks / w.sum()
                pool = rest @ ranks / rest.sum() if rest.sum() > 0 else pool_all
                lower.append(np.mean([spearman(pool, v) for v in dv[mine]]))
                upper.append(np.mean([spearman(pool_all, v) for v in dv[mine]]))
            np.testing.assert_allclose(nc[b, :, kind], [np.mean(lower), np.mean(upper)],
                                       atol=1e-10)


def test_fdr():
    from scipy.stats import false_discovery_control
    p = np.random.default_rng(1).uniform(0, 0.1, 30)
    adjusted = false_discovery_control(p)
    np.testing.assert_array_equal(rsa.fdr(p, 0.05), adjusted <= 0.05)


@pytest.mark.reference
def test_low_rank_precision_equals_rsatoolbox(rng):
    from rsatoolbox.data.noise import prec_from_residuals
    for n_res, p in ((60, 30), (20, 50)):  # more and fewer residual rows than channels
        res = rng.normal(size=(n_res, p)) @ rng.normal(size=(p, p)) * 0.3 + rng.normal(
            size=(n_res, p))
        for method in ("shrinkage_diag", "shrinkage_eye", "diag")[:3 if p == 50 else 1]:
            low = rsa.precision_from_residuals(res, method=method, low_rank=True)
            ref = prec_from_residuals(res.copy(), method=method)
            np.testing.assert_allclose(low.dense(), ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    with pytest.raises(InputDataError, match="low_rank"):
        rsa.precision_from_residuals(res, method="full", low_rank=True)
    # crossnobis and Mahalanobis with the Woodbury form equal rsatoolbox with the dense one
    x, obs, stim, fold = _patterns(rng, p=50)
    ds = Dataset(obs, obs_descriptors={"stim": stim, "fold": fold})
    low = rsa.precision_from_residuals(res, low_rank=True)
    dense = prec_from_residuals(res.copy())
    for method, kw in (("crossnobis", {"cv_descriptor": "fold"}), ("mahalanobis", {})):
        ref = rsatoolbox.rdm.calc_rdm(ds, method=method, descriptor="stim", noise=dense,
                                      **kw).get_vectors()[0]
        ours = rsa.calc_rdm(x if method == "crossnobis" else obs, method, precision=low,
                            stimuli=None if method == "crossnobis" else stim)
        np.testing.assert_allclose(squareform(ours["dissimilarity"].values[0], checks=False),
                                   ref, atol=1e-10)
    with pytest.raises(InputDataError, match="channels"):
        rsa.calc_rdm(x[..., :10], "crossnobis", precision=low)


@pytest.mark.reference
@pytest.mark.parametrize(("method", "k_pattern", "k_rdm"), [("corr", 3, 2), ("spearman", 2, 3)])
def test_cross_validated_sample_equals_rsatoolbox_internal_cv(data92, rng, method, k_pattern,
                                                              k_rdm):
    # one bootstrap sample, the folds rsatoolbox drew: fold evaluations and the
    # cross-validated noise ceiling agree exactly
    import jax.numpy as jnp
    from rsatoolbox.inference.crossvalsets import sets_k_fold
    from rsatoolbox.inference.evaluate import _internal_cv
    from rsatoolbox.model import ModelFixed

    from neurodata.models.rsa import inference
    brain, models = data92
    n = 30
    mod = models["dissimilarity"].values[:, :n, :n]
    dat = brain["dissimilarity"].values[:, :n, :n]
    subj = brain["subject"].values
    labels, group_of = np.unique(subj, return_inverse=True)
    ms = [ModelFixed(str(i), RDMs(squareform(m, checks=False)[None])) for i, m in enumerate(mod)]
    data = RDMs(np.array([squareform(m, checks=False) for m in dat]),
                rdm_descriptors={"subject": subj})
    g_draw, s_draw = np.array([3, 0, 2, 3]), rng.integers(0, n, n)  # 3 distinct subjects
    sample = data.subsample("subject", labels[g_draw]).subsample_pattern("index", s_draw)
    np.random.seed(3)
    ref_eval, ref_nc = _internal_cv(ms, sample, "index", "subject", s_draw, k_pattern, k_rdm,
                                    method, None)
    np.random.seed(3)  # the same folds again, to read them off
    _, test_set, _ = sets_k_fold(sample, k_pattern=k_pattern, k_rdm=k_rdm, random=True,
                                 rdm_descriptor="subject")
    s_fold, g_fold = -np.ones((k_rdm, n), int), -np.ones(4, int)
    for i, (rdms, stims) in enumerate(test_set):
        r, f = divmod(i, k_pattern)
        s_fold[r, np.unique(stims)] = f
        g_fold[np.searchsorted(labels, np.unique(rdms.rdm_descriptors["subject"]))] = r
    core = inference._cv_linear if method in ("corr", "cosine") else inference._cv_gather
    ev, nc = core(jnp.asarray(mod), jnp.asarray(dat), jnp.asarray(group_of),
                  jnp.asarray(g_draw[None]), jnp.asarray(s_draw[None]),
                  jnp.asarray(np.broadcast_to(s_fold, (1, 3, 1, k_rdm, n))),
                  jnp.asarray(np.broadcast_to(g_fold, (1, 3, 1, 4))), method, k_pattern, k_rdm,
                  4)
    np.testing.assert_allclose(np.asarray(ev)[0, 0, 0], ref_eval[0].mean(-1), atol=1e-10)
    np.testing.assert_allclose(np.asarray(nc)[0, 0, 0], ref_nc, atol=1e-10)


def test_cv_correction_removes_fold_variance(rng):
    # x_br = m_b + e_br: the correction recovers var(m) from 2 repetitions; the plain
    # covariance of repetition means keeps var(e) / 2
    m = rng.normal(size=(20000, 1, 1, 1)) * 0.5
    x = m + rng.normal(size=(20000, 1, 1, 2))
    corrected = rsa.cv_corrected_covariance(x)[0, 0, 0]
    plain = rsa.cv_corrected_covariance(x, use_correction=False)[0, 0, 0]
    assert corrected == pytest.approx(0.25, abs=0.02)
    assert plain == pytest.approx(0.25 + 0.5, abs=0.03)


@pytest.mark.reference
def test_cv_correction_formula_equals_rsatoolbox(data92):
    # rsatoolbox's own evaluations through our correction give its variances exactly
    from rsatoolbox.inference import eval_dual_bootstrap
    from rsatoolbox.model import ModelFixed
    brain, models = data92
    n = 20
    sub = lambda ds: ds["dissimilarity"].values[:, :n, :n]  # noqa: E731
    ms = [ModelFixed(str(i), RDMs(squareform(m, checks=False)[None]))
          for i, m in enumerate(sub(models)[:3])]
    data = RDMs(np.array([squareform(m, checks=False) for m in sub(brain)]),
                rdm_descriptors={"subject": brain["subject"].values})
    np.random.seed(0)
    import contextlib
    import io
    with contextlib.redirect_stderr(io.StringIO()):
        ref = eval_dual_bootstrap(ms, data, method="corr", N=6, k_pattern=2, k_rdm=2,
                                  rdm_descriptor="subject")
    ok = ~np.isnan(ref.evaluations[:, 0, 0, 0, 0])
    evals = ref.evaluations[ok].mean(2)  # (B, model, cv, kind)
    nc = ref.noise_ceiling[:, ok].transpose(1, 0, 2, 3)  # (B, bound, cv, kind)
    x = np.concatenate([evals, nc], 1).transpose(0, 1, 3, 2)  # (B, var, kind, cv)
    ours = rsa.cv_corrected_covariance(x)
    np.testing.assert_allclose(ours.transpose(2, 0, 1), ref.variances, atol=1e-12)


@pytest.mark.reference
def test_cross_validated_dual_bootstrap_matches_rsatoolbox(data92):
    # rsatoolbox 0.3.2 eval_dual_bootstrap(method='corr', k_pattern=2, k_rdm=2, n_cv=2,
    # rdm_descriptor='subject', N=1000), run once (1100 s on the shared 2-core machine)
    ref_mean = [0.3138, 0.2293, 0.2670, 0.1960, 0.1236, 0.0222, 0.0894, 0.0255]
    ref_sem = [0.0577, 0.0424, 0.0397, 0.0365, 0.0397, 0.0435, 0.0413, 0.0321]
    brain, models = data92
    res = rsa.dual_bootstrap(models, brain, key=jax.random.key(1), subjects=brain["subject"],
                             method="corr", n_bootstrap=400, k_pattern=2, k_rdm=2)
    # Monte-Carlo error of a mean over 400 samples ~ 0.05 / 20; of a s.e. ~ 5 %
    np.testing.assert_allclose(res["mean"].values, ref_mean, atol=0.012)
    np.testing.assert_allclose(res["sem"].values, ref_sem, rtol=0.2)
    np.testing.assert_allclose(res["noise_ceiling"].values, [0.2661, 0.5639], atol=0.01)
    assert res.attrs["cv_correction"] == 1
    with pytest.raises(InputDataError, match="n_cv"):
        rsa.dual_bootstrap(models, brain, key=jax.random.key(0), k_pattern=2, n_cv=1)
    with pytest.raises(InputDataError, match="k_rdm"):
        rsa.dual_bootstrap(models, brain, key=jax.random.key(0), k_rdm=9)


def test_ldt_equals_explicit_discriminant_t_values(rng):
    # 3 folds x 5 stimuli x 4 replicates, 12 channels: LD-t from the vectorised kernels
    # equals the textbook computation pair by pair (Fisher discriminant on the training
    # folds, t of the test-fold difference with the pooled within-condition variance)
    n_fold, n_stim, n_rep, p = 3, 5, 4, 12
    signal = rng.normal(size=(n_stim, p))
    stim = np.tile(np.repeat(np.arange(n_stim), n_rep), n_fold)
    fold = np.repeat(np.arange(n_fold), n_stim * n_rep)
    x = signal[stim] + rng.normal(size=(len(stim), p)) * 2
    for given in (rsa.precision_from_residuals(rng.normal(size=(40, p))), None):
        ours = rsa.calc_rdm(x, "ldt", stimuli=stim, folds=fold,
                            precision=given)["dissimilarity"].values[0]
        expected = np.zeros((n_stim, n_stim))
        for f in range(n_fold):
            tr, te = fold != f, fold == f
            m_tr = np.array([x[tr & (stim == s)].mean(0) for s in range(n_stim)])
            resid = x[tr] - m_tr[stim[tr]]
            lam = given if given is not None else rsa.precision_from_residuals(
                resid, dof=int(tr.sum() - n_stim))
            for i in range(n_stim):
                for j in range(i + 1, n_stim):
                    y = x[te] @ lam @ (m_tr[i] - m_tr[j])
                    s_te = stim[te]
                    beta = np.array([y[s_te == s].mean() for s in range(n_stim)])
                    sigma2 = np.sum((y - beta[s_te]) ** 2) / (te.sum() - n_stim)
                    t = (beta[i] - beta[j]) / np.sqrt(sigma2 * 2 / n_rep)
                    expected[i, j] += t / n_fold
                    expected[j, i] += t / n_fold
        np.testing.assert_allclose(ours, expected, atol=1e-8)
    # identical conditions: LD-t is centred on zero, distinct ones are far above
    same = rng.normal(size=(len(stim), p))
    d_same = rsa.calc_rdm(same, "ldt", stimuli=stim, folds=fold)["dissimilarity"].values[0]
    assert abs(d_same[np.triu_indices(n_stim, 1)].mean()) < 1.0 < ours[0, 1]
    with pytest.raises(InputDataError, match="more observations than stimuli"):
        rsa.calc_rdm(rng.normal(size=(3, 6, 10)), "ldt")
