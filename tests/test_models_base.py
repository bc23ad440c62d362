"""The estimator base (pickle-free save/load, fitted checks) and the chunked iteration loop."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import neurodata  # noqa: F401  (switches on x64)
from neurodata.errors import FormatError, NotFittedError, OutputExistsError
from neurodata.models._base import NeurodataModel
from neurodata.models._jax.loop import iterate, make_chunk_runner


class Toy(NeurodataModel):
    def __init__(self, n_latents: int = 2, kernel: str = "rbf", tau_init: float = 0.1):
        self.n_latents = n_latents
        self.kernel = kernel
        self.tau_init = tau_init

    def fit(self, ds=None):
        self.loadings_ = np.arange(6.0).reshape(3, 2)
        self.timescales_ = xr.DataArray([0.1, 0.2], dims="latent",
                                        coords={"latent": [0, 1]}, attrs={"units": "s"})
        self.factors_ = [np.ones((2, 2)), jnp.zeros(3)]
        self.groups_ = {"neural": np.ones(2), "behavior": np.zeros(1)}
        self.n_iter_ = 7
        self.converged_ = True
        return self


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_save_load_round_trip(tmp_path, suffix):
    model = Toy(n_latents=3, kernel="matern").fit()
    path = model.save(tmp_path / f"toy{suffix}")
    back = Toy.load(path)
    assert back.get_params() == {"n_latents": 3, "kernel": "matern", "tau_init": 0.1}
    np.testing.assert_array_equal(back.loadings_, model.loadings_)
    xr.testing.assert_identical(back.timescales_, model.timescales_)
    assert [f.shape for f in back.factors_] == [(2, 2), (3,)]
    assert set(back.groups_) == {"neural", "behavior"}
    assert back.n_iter_ == 7 and back.converged_ is True
    with pytest.raises(OutputExistsError):
        model.save(path)


def test_unfitted_and_bad_files(tmp_path):
    with pytest.raises(NotFittedError, match="Toy"):
        Toy().save(tmp_path / "x.nc")
    with pytest.raises(FormatError, match="does not exist"):
        Toy.load(tmp_path / "missing.nc")
    neurodata.save(neurodata.from_arrays(np.zeros((2, 2)), 1.0), tmp_path / "data.nc")
    with pytest.raises(FormatError, match="not a saved neurodata model"):
        Toy.load(tmp_path / "data.nc")


def test_iterate_runs_chunks_and_records_objectives():
    res = iterate(lambda x: (x + 1.0, x), jnp.array(0.0), max_iter=23, chunk_size=5,
                  progress=False)
    np.testing.assert_array_equal(res.objectives, np.arange(23.0))
    assert float(res.state) == 23.0 and not res.converged


def test_iterate_stops_early_at_tolerance():
    # x_{k+1} = x_k / 2 + 1 converges to 2; objective = x_k.
    res = iterate(lambda x: (x / 2 + 1, x), jnp.array(0.0), max_iter=500, tol=1e-6,
                  chunk_size=8, progress=False)
    assert res.converged
    k = len(res.objectives)
    rel = np.abs(np.diff(res.objectives)) / np.abs(res.objectives[1:])
    assert rel[-1] < 1e-6 and np.all(rel[:-1] >= 1e-6)
    assert 15 < k < 30


def test_iterate_callback_and_runner_reuse():
    seen = []
    runner = make_chunk_runner(lambda x: (x * 2, x), 4)
    res = iterate(lambda x: (x * 2, x), jnp.array(1.0), max_iter=10, chunk_size=4,
                  progress=False, runner=runner,
                  on_chunk=lambda state, objs: seen.append((float(state), len(objs))))
    assert seen == [(16.0, 4), (256.0, 8), (1024.0, 10)]
    assert res.objectives.tolist() == [2.0**k for k in range(10)]
