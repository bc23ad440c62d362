"""Masked non-negative CP (neurodata.models.ntf.NTF): peer agreement, recovery, bad input."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import neurodata  # noqa: F401  (x64)
from neurodata.errors import InputDataError
from neurodata.models.ntf import NTF, _as_tensor, congruence, fit_cp, rank_diagnostics

SHAPE = (24, 16, 6)
RANK = 3


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(3)
    true = [rng.random((n, RANK)) ** 2 for n in SHAPE]
    x = np.einsum("ir,jr,kr->ijk", *true)
    return x + 0.01 * x.std() * rng.random(SHAPE), true


def _peer_problem():
    rng = np.random.default_rng(0)
    x = np.einsum("ir,jr,kr->ijk", *[rng.random((n, RANK)) for n in SHAPE])
    x = x + 0.1 * rng.random(SHAPE)
    init = [rng.random((n, RANK)) for n in SHAPE]
    return x, init


def test_hals_matches_tensorly():
    from tensorly.decomposition import non_negative_parafac_hals

    x, init = _peer_problem()
    k = 15
    _, errs = non_negative_parafac_hals(x, RANK, n_iter_max=k, tol=1e-300, return_errors=True,
                                        init=(np.ones(RANK), [f.copy() for f in init]))
    # tensorly: 5 inner sweeps, inner early stop at 1e-8, plain G_kk denominator
    res = fit_cp(jnp.asarray(x), tuple(jnp.asarray(f)[None] for f in init), method="hals",
                 max_iter=k, tol=0.0, inner_iter=5, inner_tol=1e-8, floor=0.0)
    ours = np.asarray(res.errors[0])
    ref = np.asarray(errs, dtype=float)
    assert ref.size == k
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_hals_matches_tensortools():
    from tensortools.optimize import ncp_hals
    from tensortools.tensors import KTensor

    x, init = _peer_problem()
    k = 15
    ref = ncp_hals(x, RANK, init=KTensor([f.copy() for f in init]), tol=0.0, max_iter=k - 1,
                   min_iter=k, verbose=False)
    # tensortools: 3 inner sweeps, max(G_kk, 1e-6) denominator
    res = fit_cp(jnp.asarray(x), tuple(jnp.asarray(f)[None] for f in init), method="hals",
                 max_iter=k, tol=0.0, inner_iter=3, inner_tol=0.0, floor=1e-6)
    hist = np.asarray(ref.obj_hist)
    assert hist.size == k
    np.testing.assert_allclose(np.asarray(res.errors[0]), hist, rtol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_planted_recovery(planted, masked):
    x, true = planted
    mask = np.random.default_rng(1).random(SHAPE) >= 0.2 if masked else None
    model = NTF(rank=RANK, n_init=4, mask=mask, dtype="float64", tol=1e-8, max_iter=400,
                seed=0).fit(x)
    score, _ = congruence(model.factors_, true)
    assert score >= 0.95
    assert model.error_ < 0.02
    # the reported error is the exact masked objective (brute force)
    m = np.ones(SHAPE, bool) if mask is None else mask
    brute = np.linalg.norm((x - model.reconstruct())[m]) / np.linalg.norm(x[m])
    np.testing.assert_allclose(model.error_, brute, rtol=1e-6)
    assert np.all(np.diff(model.weights_) <= 0)
    np.testing.assert_allclose([np.linalg.norm(f, axis=0) for f in model.factors_], 1.0)


def test_structured_mask_and_mu(planted):
    """A (pair, 1, animal)-shaped mask (unrecorded neurons) and the MU solver."""
    x, true = planted
    mask = np.random.default_rng(2).random((SHAPE[0], 1, SHAPE[2])) >= 0.2
    model = NTF(rank=RANK, method="mu", n_init=3, mask=mask, dtype="float64", tol=1e-9,
                max_iter=1500, seed=1).fit(x)
    assert congruence(model.factors_, true)[0] >= 0.95
    full = np.broadcast_to(mask, SHAPE)
    brute = np.linalg.norm((x - model.reconstruct())[full]) / np.linalg.norm(x[full])
    np.testing.assert_allclose(model.error_, brute, rtol=1e-6)


def test_unobserved_rows_are_zero(planted):
    """A pair never recorded in any animal has no data: its factor row is 0, not the init."""
    x, _ = planted
    mask = np.ones((SHAPE[0], 1, SHAPE[2]), bool)
    mask[5] = False
    model = NTF(rank=RANK, method="mu", n_init=3, mask=mask, dtype="float64", tol=1e-9,
                max_iter=1500, seed=1).fit(x)
    assert np.all(model.factors_[0][5] == 0)
    assert np.all(model.factors_[0].sum(1)[np.arange(SHAPE[0]) != 5] > 0)


def test_rank_diagnostics(planted):
    x, _ = planted
    # n_init, max_iter, dtype and a full-shape mask as in test_planted_recovery[True]: the
    # rank-3 solver compiled there is reused
    diag = rank_diagnostics(x, [1, 3], n_init=4, heldout=0.1, dtype="float64", max_iter=400,
                            seed=0)
    err = diag["error"].min("replicate").values
    assert err[1] < err[0]
    assert diag["heldout_error"].sel(rank=3).min() < 0.05
    assert diag["similarity"].sel(rank=3).min() > 0.9


def test_labelled_factors_and_save(planted, tmp_path):
    import xarray as xr

    x = xr.DataArray(planted[0], dims=("pair", "window", "animal"),
                     coords={"window": np.arange(SHAPE[1]) * 2.0,
                             "animal": [f"a{i}" for i in range(SHAPE[2])]})
    # same static settings as test_planted_recovery: the compiled solver is reused
    model = NTF(rank=RANK, n_init=4, dtype="float64", tol=1e-8, max_iter=400, seed=0).fit(x)
    assert [f.dims for f in model.factors_] == [("pair", "component"), ("window", "component"),
                                                ("animal", "component")]
    assert model.factors_[2]["animal"].values.tolist() == list(x["animal"].values)
    back = NTF.load(model.save(tmp_path / "ntf.nc"))
    np.testing.assert_allclose(back.factors_[1].values, model.factors_[1].values)
    np.testing.assert_allclose(back.weights_, model.weights_)


def test_bad_input():
    x = np.random.default_rng(0).random((5, 4, 3))
    with pytest.raises(InputDataError, match="rank=6 is larger than every mode"):
        NTF(rank=6).fit(x)
    y = x.copy()
    y[0, 0, 0] = np.nan
    with pytest.raises(InputDataError, match="NaN"):
        NTF(rank=2).fit(y)
    _as_tensor(y, ~np.isnan(y))  # a masked NaN is fine
    with pytest.raises(InputDataError, match="negative"):
        NTF(rank=2).fit(-x)
    with pytest.raises(InputDataError, match="does not broadcast"):
        NTF(rank=2, mask=np.ones((5, 2, 3), bool)).fit(x)
    with pytest.raises(InputDataError, match="method"):
        NTF(rank=2, method="als").fit(x)


def test_lazy_and_float32_tensors_need_no_extra_copy(planted):
    """A dask tensor is read chunk by chunk into the solver's dtype; the fit is identical."""
    import dask.array as da
    import xarray as xr

    x = planted[0].astype(np.float32)
    got, mask, _ = _as_tensor(x, None, "float32")
    assert got is x  # already in the solver's dtype: used as is
    lazy = xr.DataArray(da.from_array(x, chunks=(5, 4, 6)), dims=("pair", "window", "animal"))
    got, _, labels = _as_tensor(lazy, None, "float32")
    assert got.dtype == np.float32 and labels is lazy
    np.testing.assert_array_equal(got, x)
    eager = NTF(rank=RANK, n_init=2, max_iter=30, seed=1).fit(x)
    streamed = NTF(rank=RANK, n_init=2, max_iter=30, seed=1).fit(lazy)
    assert streamed.error_ == eager.error_
    for a, b in zip(eager.factors_, streamed.factors_, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # masked NaNs are zeroed in a copy; the caller's array is untouched
    y = x.copy()
    y[0, 0, 0] = np.nan
    got, _, _ = _as_tensor(y, ~np.isnan(y), "float32")
    assert got[0, 0, 0] == 0 and np.isnan(y[0, 0, 0])
