"""Preprocessing: exact values on small cases, invariants by hypothesis, and bad input."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import neurodata
from neurodata import preprocess as pp
from neurodata.errors import InputDataError, SchemaError

settings.register_profile("neurodata", max_examples=40, deadline=None)
settings.load_profile("neurodata")

spike_lists = st.lists(
    st.lists(st.floats(0.0, 9.999, allow_nan=False), max_size=30), min_size=1, max_size=6
)


@given(spike_lists, st.sampled_from([0.01, 0.1, 0.25, 1.0]))
def test_binning_preserves_spike_counts(trains, bin_size):
    ds = neurodata.from_spike_times([np.array(t) for t in trains], t_start=0.0, t_stop=10.0)
    binned = pp.bin(ds, bin_size)
    # [0, 10) splits into whole bins; every spike lands in exactly one bin.
    assert binned.activity.sum("time").values.tolist() == [len(t) for t in trains]


@given(st.floats(-50, 50, allow_nan=False), st.floats(0.2, 40.0), st.integers(5, 80))
def test_resampling_a_constant_gives_the_constant(value, rate, n):
    ds = neurodata.from_arrays(np.full((n, 2), value), sampling_rate=7.0, signal="dff")
    out = pp.resample(ds, rate)
    np.testing.assert_allclose(out.activity.values, value, rtol=1e-12, atol=1e-12)
    assert out.attrs["sampling_rate"] == rate


@given(arrays(np.float64, st.tuples(st.integers(3, 40), st.integers(1, 4)),
              elements=st.floats(-1e3, 1e3)))
def test_zscore_gives_zero_mean_unit_sd(values):
    values = values + np.arange(values.shape[0])[:, None]  # no constant neuron
    out = pp.zscore(neurodata.from_arrays(values, 1.0, signal="rate")).activity
    np.testing.assert_allclose(out.mean("time"), 0.0, atol=1e-9)
    np.testing.assert_allclose(out.std("time"), 1.0, rtol=1e-9)


@given(st.integers(2, 12), st.integers(1, 5))
def test_cut_windows_tiles_the_recording(n_windows, length_bins):
    n = n_windows * length_bins
    values = np.arange(n * 2, dtype=float).reshape(n, 2)
    ds = neurodata.from_arrays(values, sampling_rate=4.0, signal="rate")
    tr = pp.cut_windows(ds, length_bins / 4.0)
    np.testing.assert_array_equal(tr.activity.values.reshape(n, 2), values)
    np.testing.assert_allclose(tr.trial_start.values, np.arange(n_windows) * length_bins / 4)


@given(arrays(np.int64, st.tuples(st.integers(4, 40), st.integers(1, 3)),
              elements=st.integers(0, 20)), st.sampled_from([2, 4]))
def test_rebinning_counts_preserves_totals_of_whole_bins(counts, factor):
    ds = neurodata.from_arrays(counts, sampling_rate=20.0)
    out = pp.bin(ds, factor / 20.0)
    whole = (counts.shape[0] // factor) * factor
    np.testing.assert_array_equal(out.activity.values.sum(0), counts[:whole].sum(0))


def test_smooth_counts_to_rate_keeps_mean_rate():
    counts = np.zeros((200, 1))
    counts[100] = 1.0
    out = pp.smooth(neurodata.from_arrays(counts, sampling_rate=100.0), sigma=0.05)
    assert out.activity.attrs["signal"] == "rate" and out.activity.attrs["units"] == "Hz"
    # one spike smoothed to a rate integrates back to one spike
    np.testing.assert_allclose(out.activity.values.sum() / 100.0, 1.0, rtol=1e-6)
    peak = 100.0 / (np.sqrt(2 * np.pi) * 5.0)  # sigma = 5 bins
    np.testing.assert_allclose(out.activity.values.max(), peak, rtol=1e-3)


def test_dff_running_percentile_baseline():
    t = np.arange(600)
    f = 100.0 + 10.0 * (t % 100 == 50)[:, None]
    ds = neurodata.from_arrays(f, sampling_rate=10.0, signal="fluorescence")
    out = pp.dff(ds, window=5.0, percentile=10.0)
    np.testing.assert_allclose(out.activity.values[50, 0], 0.1)
    np.testing.assert_allclose(out.activity.values[51, 0], 0.0)
    assert out.activity.attrs["signal"] == "dff"
    with pytest.raises(InputDataError, match="fluorescence"):
        pp.dff(out)
    with pytest.raises(InputDataError, match="baseline"):
        pp.dff(neurodata.from_arrays(f - 200, 10.0, signal="fluorescence"))


def test_cut_trials_from_events_with_behaviour_and_conditions():
    values = np.arange(100.0)[:, None] * np.array([1.0, -1.0])
    ds = neurodata.from_arrays(values, 10.0, signal="rate", behavior=np.arange(100.0))
    tr = pp.cut_trials(ds, [1.0, 4.0, 7.0], window=(-0.2, 0.3), conditions=["a", "b", "a"])
    assert tr.activity.dims == ("trial", "time", "neuron")
    np.testing.assert_allclose(tr.time.values, [-0.2, -0.1, 0.0, 0.1, 0.2])
    np.testing.assert_allclose(tr.activity.values[1, :, 0], [38, 39, 40, 41, 42])
    np.testing.assert_allclose(tr.behavior.values[2, :, 0], [68, 69, 70, 71, 72])
    np.testing.assert_allclose(tr.trial_start.values, [0.8, 3.8, 6.8])
    assert tr.condition.values.tolist() == ["a", "b", "a"]
    with pytest.raises(InputDataError, match="outside the recording"):
        pp.cut_trials(ds, [9.9], window=(0.0, 1.0))
    with pytest.raises(InputDataError, match="stop > start"):
        pp.cut_trials(ds, [1.0], window=(1.0, 0.0))


def test_split_and_select():
    ds = neurodata.from_arrays(np.zeros((10, 4, 3)), 1.0, neuron_ids=["a", "b", "c"],
                               neuron_coords={"region": ["V1", "V1", "LM"]})
    train, test = pp.split_trials(ds, 0.2, seed=1)
    assert sorted(train.trial.values.tolist() + test.trial.values.tolist()) == list(range(10))
    assert test.sizes["trial"] == 2
    assert pp.select_neurons(ds, {"region": "V1"}).neuron_id.values.tolist() == ["a", "b"]
    assert pp.select_neurons(ds, np.array([False, True, True])).sizes["neuron"] == 2
    with pytest.raises(InputDataError, match="unknown neuron ids"):
        pp.select_neurons(ds, ["z"])
    with pytest.raises(InputDataError, match="keeps no neuron"):
        pp.select_neurons(ds, np.zeros(3, bool))
    with pytest.raises(InputDataError, match="trial"):
        pp.split_trials(neurodata.from_arrays(np.zeros((4, 2)), 1.0))


def test_select_neurons_reindexes_the_spike_table():
    ds = neurodata.from_spike_times({"a": [0.1, 0.2], "b": [0.3], "c": [0.4, 0.5]})
    out = pp.select_neurons(ds, ["a", "c"])
    assert out.spike_neuron.values.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(out.spike_time.values, [0.1, 0.2, 0.4, 0.5])


def test_history_and_no_mutation():
    ds = neurodata.from_arrays(np.ones((20, 2)), 10.0)
    before = ds.copy(deep=True)
    out = pp.sqrt(pp.bin(ds, 0.2))
    assert out.attrs["history"] == ["bin(bin_size=0.2)", "sqrt()"]
    assert ds.identical(before)


def test_bad_inputs():
    counts = neurodata.from_arrays(np.ones((20, 2)), 10.0)
    with pytest.raises(InputDataError, match="interpolated"):
        pp.resample(counts, 5.0)
    with pytest.raises(InputDataError, match="whole multiple"):
        pp.bin(counts, 0.15)
    with pytest.raises(InputDataError, match="constant"):
        pp.zscore(counts)
    with pytest.raises(InputDataError, match="longer than the recording"):
        pp.cut_windows(counts, 5.0)
    with pytest.raises(SchemaError, match="activity"):
        pp.smooth(counts.drop_vars("activity"), 0.1)
    with pytest.raises(InputDataError, match="non-negative"):
        pp.sqrt(neurodata.from_arrays(-np.ones((3, 1)), 1.0, signal="zscore"))


def test_rounded_timestamps_count_as_even_but_gaps_do_not():
    ds = neurodata.from_arrays(np.ones((40, 1)), sampling_rate=20.0)
    jitter = np.where(np.arange(40) % 2, 0.0005, 0.0)  # 49.5 / 50.5 ms steps
    jittered = ds.assign_coords(time=("time", ds.time.values + jitter, {"units": "s"}))
    assert pp.bin(jittered, 0.1).sizes["time"] == 20
    gap = ds.time.values.copy()
    gap[20:] += 1.0
    with pytest.raises(InputDataError, match="not evenly sampled"):
        pp.bin(ds.assign_coords(time=("time", gap, {"units": "s"})), 0.1)


# --------------------------------------------------------------------- dask-backed input

LAZY_STEPS = {
    "bin": (lambda ds: pp.bin(ds, 0.03), "spike_count"),
    "smooth_counts": (lambda ds: pp.smooth(ds, 0.05), "spike_count"),
    "smooth_rate": (lambda ds: pp.smooth(ds, 0.12), "rate"),
    "dff": (lambda ds: pp.dff(ds, window=0.5, percentile=10.0), "fluorescence"),
    "zscore": (pp.zscore, "rate"),
    "sqrt": (pp.sqrt, "spike_count"),
    "resample_down": (lambda ds: pp.resample(ds, 30.0), "rate"),
    "resample_up": (lambda ds: pp.resample(ds, 170.0), "rate"),
    "cut_trials": (lambda ds: pp.cut_trials(ds, [0.5, 1.05, 2.0], window=(-0.2, 0.3)),
                   "rate"),
    "cut_windows": (lambda ds: pp.cut_windows(ds, 0.25, step=0.1), "rate"),
    "select_neurons": (lambda ds: pp.select_neurons(ds, ["1", "3"]), "rate"),
}


def _recording(kind):
    rng = np.random.default_rng(3)
    if kind == "spike_count":
        values = rng.poisson(2.0, (300, 4))
    elif kind == "fluorescence":
        values = 100.0 + rng.gamma(2.0, 5.0, (300, 4))
    else:
        values = rng.normal(5.0, 2.0, (300, 4))
    return neurodata.from_arrays(values, sampling_rate=100.0, signal=kind,
                                 behavior=rng.normal(size=(300, 2)))


@pytest.mark.parametrize("name", sorted(LAZY_STEPS))
@pytest.mark.parametrize("chunk", [7, 64])
def test_dask_backed_input_stays_lazy_and_gives_the_numpy_numbers(name, chunk):
    step, kind = LAZY_STEPS[name]
    ds = _recording(kind)
    want = step(ds)
    got = step(ds.chunk({"time": chunk, "neuron": 2}))
    assert dask.is_dask_collection(got["activity"].data), name  # nothing computed yet
    assert got.activity.dims == want.activity.dims
    assert got.attrs["history"] == want.attrs["history"]
    assert got.activity.attrs == want.activity.attrs
    np.testing.assert_allclose(got.activity.values, want.activity.values, rtol=1e-12,
                               atol=1e-12)
    if "behavior" in want:
        np.testing.assert_allclose(got.behavior.values, want.behavior.values, rtol=1e-12,
                                   atol=1e-12)
    for coord in want.coords:
        np.testing.assert_array_equal(got[coord].values, want[coord].values)


def test_lazy_value_checks_raise_when_computed():
    negative = neurodata.from_arrays(-np.ones((30, 1)), 10.0, signal="zscore")
    with pytest.raises(InputDataError, match="non-negative"):
        pp.sqrt(negative.chunk({"time": 10})).activity.values  # noqa: B018
    f = np.full((60, 1), -100.0)
    low = neurodata.from_arrays(f, 10.0, signal="fluorescence").chunk({"time": 20})
    with pytest.raises(InputDataError, match="baseline"):
        pp.dff(low, window=1.0).activity.values  # noqa: B018
    with pytest.raises(InputDataError, match="constant"):  # zscore reads its statistics
        pp.zscore(neurodata.from_arrays(np.ones((20, 2)), 10.0).chunk({"time": 5}))


def test_trial_shaped_dask_input_matches_numpy():
    values = np.random.default_rng(5).gamma(2.0, 1.0, (6, 120, 3))
    ds = neurodata.from_arrays(values, sampling_rate=50.0, signal="fluorescence")
    lazy = ds.chunk({"trial": 4, "time": 25})
    for step in (lambda d: pp.smooth(d, 0.1), lambda d: pp.dff(d, window=0.6),
                 pp.zscore, pp.sqrt, lambda d: pp.select_neurons(d, ["0", "2"])):
        got, want = step(lazy), step(ds)
        assert dask.is_dask_collection(got.activity.data)
        np.testing.assert_allclose(got.activity.values, want.activity.values, rtol=1e-12,
                                   atol=1e-12)
