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
