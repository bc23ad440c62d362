"""Many sessions on dask.distributed: results, resume, per-session errors, a killed worker."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import xarray as xr

import neurodata
from neurodata.models._base import NeurodataModel
from neurodata.parallel import fit_sessions, session_name

distributed = pytest.importorskip("distributed")

# Workers import by name what is pickled by reference; this test module is not importable
# there, so ship its classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class MeanRate(NeurodataModel):
    """Mean activity per neuron; with ``crash_marker`` it kills its worker once."""

    def __init__(self, crash_marker: str = ""):
        self.crash_marker = crash_marker

    def fit(self, ds):
        if self.crash_marker and not Path(self.crash_marker).exists():
            Path(self.crash_marker).write_text("crashed once")
            os._exit(1)  # the worker process dies mid-task, as if killed
        self.mean_ = ds.activity.mean("time").values
        return self


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture
def sessions(tmp_path):
    paths = {}
    for i in range(3):
        ds = neurodata.from_arrays(np.full((20, 2), float(i)), 10.0, signal="rate")
        paths[f"s{i}"] = neurodata.save(ds, tmp_path / "data" / f"s{i}.nc")
    return paths


def test_fit_sessions_writes_each_result_with_provenance(client, sessions, tmp_path):
    out = tmp_path / "fits"
    summary = fit_sessions(MeanRate(), list(sessions.values()), out=out, scheduler=client,
                           progress=False)
    assert summary.session.tolist() == ["s0", "s1", "s2"]
    assert summary.status.tolist() == ["done"] * 3
    for i in range(3):
        model = MeanRate.load(out / f"s{i}.zarr")
        np.testing.assert_allclose(model.mean_, [i, i])
        attrs = xr.open_zarr(out / f"s{i}.zarr").attrs
        assert attrs["session"] == f"s{i}" and "jax_version" in attrs
    again = fit_sessions(MeanRate(), list(sessions.values()), out=out, scheduler=client,
                         progress=False)
    assert again.status.tolist() == ["skipped"] * 3


def test_errors_are_collected_per_session(client, sessions, tmp_path):
    sources = {**sessions, "broken": tmp_path / "missing.nwb"}
    summary = fit_sessions(MeanRate(), sources, out=tmp_path / "fits", scheduler=client,
                           file_format="nc", retries=0, progress=False).set_index("session")
    assert summary.loc["broken", "status"] == "failed"
    assert "missing.nwb" in summary.loc["broken", "error"]
    assert (summary.drop("broken").status == "done").all()


def test_killed_worker_task_is_retried(client, sessions, tmp_path):
    marker = tmp_path / "crash-marker"
    summary = fit_sessions(MeanRate(crash_marker=str(marker)), {"s1": sessions["s1"]},
                           out=tmp_path / "fits", scheduler=client, retries=2, progress=False)
    assert marker.exists()  # the first attempt did kill its worker
    assert summary.status.tolist() == ["done"]
    np.testing.assert_allclose(MeanRate.load(tmp_path / "fits" / "s1.zarr").mean_, [1, 1])


def test_session_names():
    assert session_name("stevenson2011-m1") == "stevenson2011-m1"
    assert session_name("/data/mouse1/session.nwb") == "session"


def _responses(seed: int, n_trial: int = 4, n_stim: int = 6, n_neuron: int = 25):
    x = np.random.default_rng(seed).normal(size=(n_trial, n_stim, n_neuron))
    x[:, :3] += 1.0  # two groups of stimuli
    return xr.Dataset(
        {"activity": (("trial", "stimulus", "neuron"), x, {"signal": "rate", "units": "Hz"})},
        coords={"stimulus_id": ("stimulus", [f"s{i}" for i in range(n_stim)]),
                "neuron_id": ("neuron", [str(i) for i in range(n_neuron)])},
        attrs={"schema_version": "1.0", "history": []})


def test_session_rsa_equals_the_rsa_functions_and_round_trips(tmp_path):
    from neurodata.errors import InputDataError
    from neurodata.models import rsa
    from neurodata.parallel import SessionRSA

    ds = _responses(0)
    groups = np.repeat([0, 1], 3)
    categorical = (groups[:, None] != groups[None]).astype(float)
    noise = rsa.calc_rdm(_responses(9).activity[0], "euclidean")["dissimilarity"].values[0]
    models = rsa.rdm_dataset(np.stack([categorical, noise]), rdm_name=["category", "noise"])
    path = neurodata.save(models, tmp_path / "models.nc")
    fitted = SessionRSA("crossnobis", model_rdms=str(path), comparator="corr").fit(ds)
    want = rsa.calc_rdm(ds, "crossnobis")
    np.testing.assert_allclose(fitted.rdm_.values, want["dissimilarity"].values[0])
    sim = rsa.compare(want, models["dissimilarity"].values, "corr").values[0]
    np.testing.assert_allclose(fitted.similarity_.values, sim)
    assert fitted.similarity_["model"].values.tolist() == ["category", "noise"]
    assert fitted.similarity_.sel(model="category") > 0.5 > abs(sim[1])
    back = SessionRSA.load(fitted.save(tmp_path / "fit.zarr"))
    np.testing.assert_allclose(back.similarity_.values, fitted.similarity_.values)
    assert back.method == "crossnobis"
    # without models: only the RDM
    assert not hasattr(SessionRSA().fit(ds.isel(trial=0)), "similarity_")
    with pytest.raises(InputDataError, match="method 'cosine'"):
        SessionRSA("cosine").fit(ds)
    with pytest.raises(InputDataError, match="comparator 'pearson'"):
        SessionRSA(comparator="pearson").fit(ds)
    with pytest.raises(InputDataError, match="no variable 'response'"):
        SessionRSA(variable="response").fit(ds)
    with pytest.raises(InputDataError, match="models.nc"):
        SessionRSA(model_rdms=str(path)).fit(_responses(0, n_stim=7))
