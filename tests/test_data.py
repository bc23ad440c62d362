"""The data model: constructors, validation errors, spike binning, storage round trips."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import neurodata
from neurodata.errors import (
    FormatError,
    InputDataError,
    NeurodataError,
    OutputExistsError,
    SchemaError,
)


def _spikes():
    return neurodata.from_spike_times(
        {"u1": np.array([0.05, 0.25, 0.26, 0.9]), "u2": np.array([0.5]), "u3": np.array([])},
        t_start=0.0, t_stop=1.0, neuron_coords={"region": ["M1", "M1", "PMd"]},
        attrs={"source": "test", "subject": "m1"},
    )


def test_from_arrays_layout_and_attrs():
    ds = neurodata.from_arrays(np.arange(12).reshape(4, 3), sampling_rate=2.0, start_time=1.0,
                               behavior=np.ones((4, 2)), behavior_channels=["x", "y"])
    assert ds.activity.dims == ("time", "neuron")
    np.testing.assert_allclose(ds.time.values, [1.0, 1.5, 2.0, 2.5])
    assert ds.neuron_id.values.tolist() == ["0", "1", "2"]
    assert ds.activity.attrs == {"signal": "spike_count", "units": "count"}
    assert ds.attrs["sampling_rate"] == 2.0 and ds.attrs["history"] == []
    assert ds.behavior.dims == ("time", "behavior_channel")
    trials = neurodata.from_arrays(np.zeros((2, 4, 3)), 10.0, trial_conditions=["a", "b"])
    assert trials.activity.dims == ("trial", "time", "neuron")
    assert trials.condition.values.tolist() == ["a", "b"]


def test_from_spike_times_ragged_table():
    ds = _spikes()
    assert ds.sizes == {"spike": 5, "neuron": 3, "interval": 1, "bound": 2}
    assert ds.spike_neuron.values.tolist() == [0, 0, 0, 0, 1]
    assert ds.spike_count_total.values.tolist() == [4, 1, 0]
    np.testing.assert_allclose(ds.valid_intervals.values, [[0.0, 1.0]])


def test_bin_spikes_counts_and_centres():
    binned = neurodata.bin_spikes(_spikes(), 0.25)
    np.testing.assert_allclose(binned.time.values, [0.125, 0.375, 0.625, 0.875])
    assert binned.activity.values.T.tolist() == [[1, 2, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert binned.attrs["sampling_rate"] == 4.0
    assert binned.attrs["history"][-1].startswith("bin_spikes(bin_size=0.25")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ds: ds.assign_coords(time=ds.time.values[::-1]), "strictly increasing"),
        (lambda ds: ds.drop_vars("neuron_id"), "neuron_id"),
        (lambda ds: ds.assign_coords(neuron_id=("neuron", ["a", "a", "b"])), "duplicated"),
        (lambda ds: ds.assign(activity=ds.activity.assign_attrs(signal="volts")), "signal"),
        (lambda ds: ds.assign(activity=ds.activity.T), "allowed layouts"),
        (lambda ds: ds.assign_attrs(meta={"a": 1}), "JSON"),
        (lambda ds: ds.assign_attrs(flag=True), "attr 'flag'"),
        (lambda ds: ds.assign_coords(time=ds.time.values * np.nan), "NaN"),
    ],
)
def test_validate_names_the_problem(mutate, message):
    ds = neurodata.from_arrays(np.zeros((5, 3)), sampling_rate=1.0)
    with pytest.raises(SchemaError, match=message):
        neurodata.validate(mutate(ds))


def test_validate_rejects_non_dataset_and_bad_spike_index():
    with pytest.raises(SchemaError, match="xarray.Dataset"):
        neurodata.validate(np.zeros(3))
    ds = _spikes()
    bad = ds.assign(spike_neuron=("spike", np.array([0, 0, 0, 0, 7])))
    with pytest.raises(SchemaError, match="outside"):
        neurodata.validate(bad)


def test_constructor_input_errors():
    with pytest.raises(InputDataError, match="shape"):
        neurodata.from_arrays(np.zeros(5), 1.0)
    with pytest.raises(InputDataError, match="sampling_rate"):
        neurodata.from_arrays(np.zeros((5, 2)), 0.0)
    with pytest.raises(InputDataError, match="neuron_ids"):
        neurodata.from_arrays(np.zeros((5, 2)), 1.0, neuron_ids=["a"])
    with pytest.raises(InputDataError, match="NaN"):
        neurodata.from_spike_times([np.array([0.1, np.nan])])
    with pytest.raises(InputDataError, match="shorter than one bin"):
        neurodata.bin_spikes(_spikes(), 5.0)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_round_trip_is_lossless(tmp_path, suffix):
    ds = neurodata.bin_spikes(_spikes(), 0.25)
    ds = ds.assign_coords(iscell=("neuron", np.array([True, False, True])))
    ds.attrs["tags"] = ["a", "b"]
    path = neurodata.save(ds, tmp_path / f"rec{suffix}")
    back = neurodata.open_dataset(path)
    xr.testing.assert_identical(back, ds)
    assert back.attrs["history"] == ds.attrs["history"]
    assert back.iscell.dtype == bool
    assert back.spike_time.values.tolist() == ds.spike_time.values.tolist()


def test_save_refuses_existing_and_leaves_nothing_partial(tmp_path, monkeypatch):
    ds = neurodata.from_arrays(np.zeros((3, 2)), 1.0)
    path = neurodata.save(ds, tmp_path / "a.nc")
    with pytest.raises(OutputExistsError, match="a.nc"):
        neurodata.save(ds, path)
    neurodata.save(ds, path, overwrite=True)

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", explode)
    with pytest.raises(RuntimeError):
        neurodata.save(ds, tmp_path / "b.nc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nc"]


def test_open_dataset_errors(tmp_path):
    with pytest.raises(FormatError, match="does not exist"):
        neurodata.open_dataset(tmp_path / "missing.nc")
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"not a netcdf file at all")
    with pytest.raises(NeurodataError, match="junk.nc"):
        neurodata.open_dataset(junk)
    with pytest.raises(FormatError, match="unknown output format"):
        neurodata.save(neurodata.from_arrays(np.zeros((3, 2)), 1.0), tmp_path / "x.csv")


def test_lazy_open_stays_lazy(tmp_path):
    ds = neurodata.from_arrays(np.random.default_rng(0).poisson(2.0, (1000, 4)), 100.0)
    path = neurodata.save(ds, tmp_path / "big.zarr")
    lazy = neurodata.open_dataset(path, chunks={})
    assert lazy.activity.chunks is not None
    assert int(lazy.activity.sum()) == int(ds.activity.sum())
