"""NWB loader: real pynapple file, pynwb mock fixtures for every edge case, bad input."""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

import neurodata
from neurodata.errors import FormatError, InputDataError, MissingFieldError, NeurodataError
from neurodata.loaders import detect_format
from neurodata.loaders import nwb as nwb_loader

pynwb = pytest.importorskip("pynwb")

from pynwb import NWBHDF5IO  # noqa: E402
from pynwb.base import TimeSeries  # noqa: E402
from pynwb.behavior import Position, SpatialSeries  # noqa: E402
from pynwb.ophys import DfOverF, Fluorescence, PlaneSegmentation, RoiResponseSeries  # noqa: E402
from pynwb.testing.mock.ecephys import mock_ElectrodesTable  # noqa: E402
from pynwb.testing.mock.file import mock_NWBFile  # noqa: E402
from pynwb.testing.mock.ophys import mock_ImagingPlane, mock_PlaneSegmentation  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The linked table:UserWarning")

N_T = 40
RATE = 20.0
START = 1.5


def _write(nwbfile, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwbfile)
    return path


def _rrs(name, data, plane, **time):
    from hdmf.common import DynamicTableRegion

    rois = DynamicTableRegion(name="rois", description="rois", table=plane,
                              data=list(range(data.shape[1])))
    return RoiResponseSeries(name=name, data=data, rois=rois, unit="n.a.", **time)


def _units(nwbfile, rng):
    mock_ElectrodesTable(n_rows=4, nwbfile=nwbfile)
    nwbfile.add_unit_column(name="quality", description="sorter label")
    nwbfile.add_unit_column(name="depth", description="um")
    trains = [np.sort(rng.uniform(0, 2.0, 7)), np.array([]), np.sort(rng.uniform(0, 2.0, 3))]
    for i, train in enumerate(trains):
        nwbfile.add_unit(spike_times=train, obs_intervals=[[0.0, 2.0]], electrodes=[i],
                         quality=["good", "mua", "good"][i], depth=10.0 * i, id=100 + i,
                         waveform_mean=np.zeros((5, 2)))
    return trains


@pytest.fixture
def ophys_file(tmp_path, rng):
    """Two planes in DfOverF and Fluorescence, behaviour on and off the clock, trials."""
    nwbfile = mock_NWBFile()
    module = nwbfile.create_processing_module("ophys", "ophys")
    planes = []
    for k, n in enumerate((3, 2)):
        plane = PlaneSegmentation(name=f"Plane{k}", description="rois",
                                  imaging_plane=mock_ImagingPlane(nwbfile=nwbfile))
        for i in range(n):
            plane.add_roi(image_mask=np.zeros((4, 4)), id=10 * k + i)
        module.add(plane)
        planes.append(plane)
    raw = [rng.integers(0, 1000, (N_T, 3)).astype(np.int16),
           rng.integers(0, 1000, (N_T, 2)).astype(np.int16)]
    dff = [rng.normal(size=(N_T, 3)), rng.normal(size=(N_T, 2))]
    fluo = Fluorescence(name="Fluorescence")
    df = DfOverF(name="DfOverF")
    for k in range(2):
        fluo.add_roi_response_series(_rrs(f"plane{k}", raw[k], planes[k], rate=RATE,
                                          starting_time=START, conversion=0.5, offset=-3.0))
        df.add_roi_response_series(_rrs(f"plane{k}", dff[k], planes[k], rate=RATE,
                                        starting_time=START))
    module.add(fluo)
    module.add(df)
    beh = nwbfile.create_processing_module("behavior", "behaviour")
    lick = TimeSeries(name="lick", data=rng.integers(0, 5, N_T).astype(np.int32), unit="V",
                      rate=RATE, starting_time=START, conversion=2.0, offset=0.25)
    beh.add(lick)
    pos_t = np.sort(rng.uniform(0, 5, 25)) + np.arange(25) * 1e-3
    pos = SpatialSeries(name="pos", data=rng.normal(size=(25, 2)), timestamps=pos_t,
                        reference_frame="origin", unit="m")
    beh.add(Position(name="Position", spatial_series=[pos]))
    nwbfile.add_trial_column(name="condition", description="stimulus")
    nwbfile.add_trial_column(name="correct", description="outcome")
    for i in range(4):
        nwbfile.add_trial(start_time=2.0 + i * 0.4, stop_time=2.3 + i * 0.4,
                          condition=["a", "b"][i % 2], correct=bool(i % 3))
    nwbfile.add_epoch(start_time=0.0, stop_time=5.0, tags=["wake", "run"])
    nwbfile.add_invalid_time_interval(start_time=1.0, stop_time=1.2)
    path = _write(nwbfile, tmp_path / "ophys.nwb")
    return path, {"raw": raw, "dff": dff, "lick": lick.data, "pos": pos.data, "pos_t": pos_t}


@pytest.fixture
def units_file(tmp_path, rng):
    nwbfile = mock_NWBFile()
    trains = _units(nwbfile, rng)
    nwbfile.add_trial_column(name="condition", description="stimulus")
    for i in range(3):
        nwbfile.add_trial(start_time=0.5 * i, stop_time=0.5 * i + 0.3, condition=str(i))
    return _write(nwbfile, tmp_path / "units.nwb"), trains


def test_real_pynapple_file(mirror):
    path = mirror / "pynapple_phy_nwb" / "A8604-211122.nwb"
    assert detect_format(path) == "nwb"
    ds = neurodata.load(path)
    assert list(ds.neuron_id.values) == ["6", "191", "206"]
    assert ds.sizes["spike"] == 21354
    t = ds.spike_time.values
    assert 0.0 < t.min() < 0.05 and 1087.0 < t.max() < 1087.4
    assert ds.sizes["epoch"] == 1 and ds.epoch_tags.values[0] == "wake"
    assert ds.epoch_stop.values[0] == pytest.approx(1087.5289)
    assert list(ds.group.values) == [int(v) for v in ds.group.values]
    assert set(ds.electrode_group.values) == {"group0_psb"}
    # Same spikes as pynapple's reader, unit by unit.
    nap = pytest.importorskip("pynapple")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        units = nap.load_file(str(path))["units"]
    for i, uid in enumerate([6, 191, 206]):
        mine = t[ds.spike_neuron.values == i]
        np.testing.assert_allclose(mine, units[uid].t, atol=1e-9)
    binned = neurodata.load(path, bin_size=1.0)
    assert int(binned.activity.sum()) <= 21354
    assert binned.activity.attrs["signal"] == "spike_count"


def test_units_mock(units_file):
    path, trains = units_file
    ds = neurodata.load(path)
    assert list(ds.neuron_id.values) == ["100", "101", "102"]
    assert ds.spike_count_total.values.tolist() == [7, 0, 3]  # the empty unit is kept
    for i, train in enumerate(trains):
        np.testing.assert_array_equal(ds.spike_time.values[ds.spike_neuron.values == i], train)
    assert ds.valid_intervals.values.tolist() == [[0.0, 2.0]]
    assert ds.electrode.values.tolist() == [0, 1, 2]
    assert ds.quality.values.tolist() == ["good", "mua", "good"]
    assert ds.depth.values.tolist() == [0.0, 10.0, 20.0]
    assert "waveform_mean" not in ds.variables
    assert ds.trial_start.values.tolist() == [0.0, 0.5, 1.0]
    assert ds.condition.values.tolist() == ["0", "1", "2"]
    back = neurodata.open_dataset(neurodata.save(ds, path.with_suffix(".zarr")))
    np.testing.assert_array_equal(back.spike_time.values, ds.spike_time.values)
    binned = neurodata.load(path, bin_size=0.5)
    assert binned.sizes["time"] == 4
    assert binned.activity.sum("time").values.tolist() == [7, 0, 3]


def test_per_unit_obs_intervals(tmp_path):
    nwbfile = mock_NWBFile()
    nwbfile.add_unit(spike_times=[0.5, 1.0], obs_intervals=[[0.0, 2.0]])
    nwbfile.add_unit(spike_times=[3.5], obs_intervals=[[0.0, 1.0], [3.0, 4.0]])
    ds = neurodata.load(_write(nwbfile, tmp_path / "obs.nwb"))
    assert ds.valid_intervals.values.tolist() == [[0.0, 4.0]]
    obs = ds.obs_intervals.values
    assert obs.shape == (2, 2, 2)
    np.testing.assert_array_equal(obs[1], [[0.0, 1.0], [3.0, 4.0]])
    assert np.isnan(obs[0, 1]).all()


def test_ophys_lazy_dff_default(ophys_file):
    path, truth = ophys_file
    ds = neurodata.load(path)
    assert isinstance(ds.activity.data, da.Array)  # lazy until computed
    assert ds.activity.attrs["signal"] == "dff"
    assert ds.neuron_id.values.tolist() == ["0", "1", "2", "10", "11"]
    assert ds.plane.values.tolist() == ["Plane0"] * 3 + ["Plane1"] * 2
    np.testing.assert_array_equal(ds.time.values, START + np.arange(N_T) / RATE)
    np.testing.assert_array_equal(ds.activity.values, np.concatenate(truth["dff"], axis=1))
    # behaviour on the same clock joins behavior(time, behavior_channel), converted
    assert ds.behavior_channel.values.tolist() == ["lick"]
    np.testing.assert_array_equal(ds.behavior.values[:, 0], truth["lick"] * 2.0 + 0.25)
    # timestamped behaviour keeps its own clock
    np.testing.assert_array_equal(ds.time_pos.values, truth["pos_t"])
    assert ds.channel_pos.values.tolist() == ["pos_x", "pos_y"]
    np.testing.assert_array_equal(ds.behavior_pos.values, truth["pos"])
    assert ds.trial_start.values.tolist() == pytest.approx([2.0, 2.4, 2.8, 3.2])
    assert ds.condition.values.tolist() == ["a", "b", "a", "b"]
    assert ds.correct.values.dtype == bool
    assert ds.epoch_tags.values.tolist() == ["wake,run"]
    assert ds.invalid_times_start.values.tolist() == [1.0]
    assert ds.invalid_times_stop.dims == ("invalid_times",)
    back = neurodata.open_dataset(neurodata.save(ds, path.with_suffix(".nc")))
    np.testing.assert_array_equal(back.activity.values, ds.activity.values)
    assert back.attrs["session_start_time"] == ds.attrs["session_start_time"]
    ds.close()


def test_ophys_fluorescence_conversion_offset(ophys_file):
    path, truth = ophys_file
    ds = neurodata.load(path, ophys_series="Fluorescence/plane1")
    assert ds.activity.attrs["signal"] == "fluorescence"
    assert ds.neuron_id.values.tolist() == ["10", "11"]
    assert isinstance(ds.activity.data, da.Array)
    expected = truth["raw"][1].astype(np.float64) * 0.5 - 3.0
    np.testing.assert_array_equal(ds.activity.values, expected)
    both = neurodata.load(path, ophys_series="Fluorescence")
    assert both.sizes["neuron"] == 5
    with pytest.raises(MissingFieldError, match="ophys_series"):
        neurodata.load(path, ophys_series="Deconvolved")


def test_lazy_graph_pickles_and_reopens_by_path(ophys_file):
    path, truth = ophys_file
    ds = neurodata.load(path, ophys_series="DfOverF/plane0")
    graph = pickle.loads(pickle.dumps(ds.activity.data))  # no h5py object in the graph
    ds.close()
    np.testing.assert_array_equal(graph.compute(), truth["dff"][0])
    np.testing.assert_array_equal(ds.activity.values, truth["dff"][0])  # reopens after close


def test_timestamps_win_over_rate_and_are_logged(tmp_path, caplog):
    nwbfile = mock_NWBFile()
    ts = TimeSeries(name="speed", data=np.arange(5.0), unit="m/s", timestamps=np.arange(5.0) / 4)
    nwbfile.add_acquisition(ts)
    path = _write(nwbfile, tmp_path / "ts.nwb")
    import h5py

    with h5py.File(path, "a") as f:  # a file holding both, as old writers produced
        f["acquisition/speed"].create_dataset("starting_time", data=0.0)
        f["acquisition/speed/starting_time"].attrs["rate"] = 100.0
        f["acquisition/speed/starting_time"].attrs["unit"] = "seconds"
    with caplog.at_level(logging.INFO, logger="neurodata.loaders.nwb"):
        ds = neurodata.load(path)
    np.testing.assert_array_equal(ds.time_speed.values, np.arange(5.0) / 4)
    assert "using the timestamps" in caplog.text


def test_nan_in_traces(tmp_path):
    nwbfile = mock_NWBFile()
    module = nwbfile.create_processing_module("ophys", "ophys")
    plane = mock_PlaneSegmentation(name="Plane", n_rois=3,
                                   imaging_plane=mock_ImagingPlane(nwbfile=nwbfile))
    module.add(plane)
    data = np.ones((10, 3))
    data[4, 2] = np.nan
    module.add(Fluorescence(name="Fluorescence",
                            roi_response_series=[_rrs("F", data, plane, rate=10.0)]))
    path = _write(nwbfile, tmp_path / "nan.nwb")
    ds = neurodata.load(path)
    with pytest.raises(InputDataError, match=r"nan\.nwb.*ROI 2"):
        ds.activity.load()
    assert np.isnan(neurodata.load(path, allow_nan=True).activity.values[4, 2])


def test_transposed_and_non_monotonic(tmp_path):
    nwbfile = mock_NWBFile()
    nwbfile.add_acquisition(TimeSeries(name="bad", data=np.arange(4.0), unit="V",
                                       timestamps=[0.0, 2.0, 1.0, 3.0]))
    with pytest.raises(InputDataError, match=r"nonmono\.nwb.*'bad'.*not strictly increasing"):
        neurodata.load(_write(nwbfile, tmp_path / "nonmono.nwb"))
    nwbfile = mock_NWBFile()
    nwbfile.add_acquisition(TimeSeries(name="short", data=np.zeros((2, 6)), unit="V",
                                       timestamps=np.arange(2.0)))
    path = _write(nwbfile, tmp_path / "transposed.nwb")
    import h5py

    with h5py.File(path, "a") as f:  # data stored (channel, time): pynwb only warns on read
        del f["acquisition/short/data"]
        f["acquisition/short"].create_dataset("data", data=np.zeros((6, 2)))
        f["acquisition/short/data"].attrs.update({"unit": "V", "conversion": 1.0,
                                                  "offset": 0.0, "resolution": -1.0})
    with pytest.raises(FormatError, match=r"transposed\.nwb.*'short'.*first axis"):
        neurodata.load(path)


def test_corrupt_files(tmp_path, units_file):
    junk = tmp_path / "random.nwb"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(FormatError, match="random.nwb"):
        neurodata.load(junk)
    good, _ = units_file
    cut = tmp_path / "truncated.nwb"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(NeurodataError, match="truncated.nwb"):
        neurodata.load(cut)
    with pytest.raises(FormatError, match="missing.nwb"):
        nwb_loader.load(tmp_path / "missing.nwb")


def test_chunks_none_reads_without_dask(ophys_file):
    path, truth = ophys_file
    ds = neurodata.load(path, ophys_series="Fluorescence", chunks=None)
    assert not isinstance(ds.activity.data, da.Array)
    assert type(ds.activity.variable._data).__name__ == "LazilyIndexedArray"  # not read yet
    expected = np.concatenate(truth["raw"], axis=1).astype(np.float64) * 0.5 - 3.0
    np.testing.assert_array_equal(ds.activity.isel(time=slice(5, 9), neuron=3).values,
                                  expected[5:9, 3])
    np.testing.assert_array_equal(ds.activity.values, expected)
    ds.close()


def test_columns_indexing(ophys_file):
    path, truth = ophys_file
    ds = neurodata.load(path, ophys_series="DfOverF")
    full = np.concatenate(truth["dff"], axis=1)
    view = pickle.loads(pickle.dumps(ds.activity.data)).compute()
    np.testing.assert_array_equal(view, full)
    from neurodata.loaders.nwb import Columns

    columns = next(v for v in ds.activity.data.dask.values() if isinstance(v, Columns))
    np.testing.assert_array_equal(columns[3:7, [4, 0, 3]], full[3:7][:, [4, 0, 3]])
    np.testing.assert_array_equal(columns[2, 1:4], full[2, 1:4])
    np.testing.assert_array_equal(columns[:, 4], full[:, 4])


def test_unsorted_spike_times_are_sorted(tmp_path):
    nwbfile = mock_NWBFile()
    nwbfile.add_unit(spike_times=[0.5, 0.1, 0.3])
    nwbfile.add_unit(spike_times=[0.05, 0.2])
    ds = neurodata.load(_write(nwbfile, tmp_path / "unsorted.nwb"))
    assert ds.spike_time.values.tolist() == [0.1, 0.3, 0.5, 0.05, 0.2]
    assert ds.spike_neuron.values.tolist() == [0, 0, 0, 1, 1]


def test_pynwb_mock_helpers(tmp_path):
    from pynwb.testing.mock.base import mock_TimeSeries
    from pynwb.testing.mock.ecephys import mock_Units
    from pynwb.testing.mock.ophys import mock_RoiResponseSeries

    nwbfile = mock_NWBFile()
    units = mock_Units(num_units=4, max_spikes_per_unit=6, seed=0, nwbfile=nwbfile)
    rrs = mock_RoiResponseSeries(name="RoiResponseSeries", data=np.arange(60.0).reshape(20, 3),
                                 rate=50.0, nwbfile=nwbfile)
    mock_TimeSeries(name="wheel", data=np.arange(20, dtype=np.int16), rate=50.0,
                    starting_time=0.0, conversion=0.1, offset=1.0, nwbfile=nwbfile)
    mock_TimeSeries(name="late", data=np.arange(8.0), rate=4.0, starting_time=2.5,
                    nwbfile=nwbfile)
    path = _write(nwbfile, tmp_path / "mock.nwb")
    ds = neurodata.load(path)
    # a RoiResponseSeries outside DfOverF/Fluorescence is found in its processing module
    assert ds.activity.attrs["nwb_series"] == ["ophys/RoiResponseSeries"]
    np.testing.assert_array_equal(ds.activity.values, rrs.data)
    np.testing.assert_array_equal(ds.time.values, np.arange(20) / 50.0)
    np.testing.assert_array_equal(ds.behavior.sel(behavior_channel="wheel").values,
                                  np.arange(20) * 0.1 + 1.0)
    np.testing.assert_array_equal(ds.time_late.values, 2.5 + np.arange(8) / 4.0)
    # units sit on their own dims beside the ROIs
    assert ds.sizes["unit"] == 4
    np.testing.assert_array_equal(ds.unit_spike_time.values,
                                  np.concatenate([units.get_unit_spike_times(i)
                                                  for i in range(4)]))
    assert ds.unit_unit_name.values.tolist() == [f"unit_{i}" for i in range(4)]
