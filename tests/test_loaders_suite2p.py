"""Suite2p loader: the real plane folder and synthetic folders for each option and failure."""

from __future__ import annotations

import numpy as np
import pytest

import neurodata
from neurodata.errors import FormatError, InputDataError, MissingFieldError, UnsafeFileError
from neurodata.loaders import detect_format
from neurodata.loaders.suite2p import running_baseline


def _plane(folder, rng, n_roi=6, n_frames=300, ops=None, stat=True):
    folder.mkdir(parents=True)
    F = rng.uniform(50, 100, (n_roi, n_frames)).astype(np.float32)
    Fneu = rng.uniform(0, 20, (n_roi, n_frames)).astype(np.float32)
    spks = rng.exponential(1.0, (n_roi, n_frames)).astype(np.float32)
    iscell = np.c_[np.arange(n_roi) % 2 == 0, np.linspace(0.1, 0.9, n_roi)].astype(np.float64)
    for name, arr in (("F", F), ("Fneu", Fneu), ("spks", spks), ("iscell", iscell)):
        np.save(folder / f"{name}.npy", arr)
    if stat:
        stat_arr = np.array([{"med": [10 + i, 20 + 2 * i], "npix": 30 + i, "xpix": np.arange(3)}
                             for i in range(n_roi)], dtype=object)
        np.save(folder / "stat.npy", stat_arr, allow_pickle=True)
    if ops is not None:
        np.save(folder / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)
    return {"F": F, "Fneu": Fneu, "spks": spks, "iscell": iscell}


def test_real_plane_folder(mirror):
    folder = mirror / "suite2p_plane0"
    assert detect_format(folder) == "suite2p"
    with pytest.raises(MissingFieldError, match="sampling_rate"):
        neurodata.load(folder)
    ds = neurodata.load(folder, sampling_rate=30.0)
    assert dict(ds.sizes) == {"time": 2000, "neuron": 219}
    assert ds.activity.dtype == np.float32
    assert ds.time.values[-1] == pytest.approx(1999 / 30.0)
    assert int(ds.iscell.sum()) == 20 and ds.iscell.dtype == bool
    F = np.load(folder / "F.npy")
    Fneu = np.load(folder / "Fneu.npy")
    np.testing.assert_allclose(ds.activity.values, (F - 0.7 * Fneu).T, rtol=1e-6, atol=1e-5)
    assert "x" not in ds.coords  # stat.npy is a pickle: not read without the opt-in
    cells = neurodata.load(folder, sampling_rate=30.0, only_cells=True, allow_pickle=True)
    assert cells.sizes["neuron"] == 20
    stat = np.load(folder / "stat.npy", allow_pickle=True)
    first = int(np.flatnonzero(np.load(folder / "iscell.npy")[:, 0])[0])
    assert cells.y.values[0] == stat[first]["med"][0] and cells.x.values[0] == stat[first]["med"][1]
    assert cells.neuron_id.values[0] == str(first)
    spks = neurodata.load(folder, sampling_rate=30.0, signal="deconvolved")
    np.testing.assert_array_equal(spks.activity.values, np.load(folder / "spks.npy").T)


def test_signals_and_options(tmp_path, rng):
    truth = _plane(tmp_path / "plane0", rng)
    ds = neurodata.load(tmp_path / "plane0", sampling_rate=10.0, neuropil_coef=0.5)
    np.testing.assert_array_equal(ds.activity.values, (truth["F"] - 0.5 * truth["Fneu"]).T)
    assert ds.activity.attrs["signal"] == "fluorescence"
    assert ds.iscell.values.tolist() == [True, False] * 3
    np.testing.assert_allclose(ds.iscell_prob.values, np.linspace(0.1, 0.9, 6))
    dff = neurodata.load(tmp_path / "plane0", sampling_rate=10.0, signal="dff",
                         baseline_window=5.0, baseline_percentile=10.0)
    fc = truth["F"] - 0.7 * truth["Fneu"]
    base = running_baseline(fc, 50, 10.0)
    np.testing.assert_allclose(dff.activity.values, ((fc - base) / base).T, rtol=1e-5, atol=1e-6)
    # at the evaluation centres the baseline is the exact windowed percentile
    np.testing.assert_allclose(base[:, 100], np.percentile(fc[:, 75:126], 10.0, axis=1),
                               rtol=1e-6)
    assert dff.activity.attrs["signal"] == "dff"
    only = neurodata.load(tmp_path / "plane0", sampling_rate=10.0, only_cells=True,
                          allow_pickle=True)
    assert only.neuron_id.values.tolist() == ["0", "2", "4"]
    assert only.x.values.tolist() == [20.0, 24.0, 28.0] and only.y.values.tolist() == [10, 12, 14]
    # the parent of plane0/ is accepted
    parent = neurodata.load(tmp_path, sampling_rate=10.0, neuropil_coef=0.5)
    np.testing.assert_array_equal(parent.activity.values, ds.activity.values)
    assert parent.plane.values.tolist() == ["plane0"] * 6


def test_two_planes(tmp_path, rng):
    _plane(tmp_path / "plane0", rng, n_roi=3)
    _plane(tmp_path / "plane1", rng, n_roi=2)
    ds = neurodata.load(tmp_path, sampling_rate=10.0)
    assert ds.neuron_id.values.tolist() == ["plane0/0", "plane0/1", "plane0/2", "plane1/0",
                                            "plane1/1"]
    assert ds.plane.values.tolist() == ["plane0"] * 3 + ["plane1"] * 2


def test_ops_rate_needs_opt_in(tmp_path, rng):
    _plane(tmp_path / "a", rng, ops={"fs": 15.0})
    with pytest.raises(UnsafeFileError, match=r"ops\.npy.*allow_pickle=True"):
        neurodata.load(tmp_path / "a")
    assert neurodata.load(tmp_path / "a", allow_pickle=True).attrs["sampling_rate"] == 15.0
    assert neurodata.load(tmp_path / "a", sampling_rate=7.5).attrs["sampling_rate"] == 7.5
    _plane(tmp_path / "b", rng, ops={"fs": 1.0})
    with pytest.raises(InputDataError, match="placeholder"):
        neurodata.load(tmp_path / "b", allow_pickle=True)


def test_bad_folders(tmp_path, rng):
    _plane(tmp_path / "nofneu", rng)
    (tmp_path / "nofneu" / "Fneu.npy").unlink()
    with pytest.raises(MissingFieldError, match=r"nofneu/Fneu\.npy"):
        neurodata.load(tmp_path / "nofneu", sampling_rate=10.0)
    ok = neurodata.load(tmp_path / "nofneu", sampling_rate=10.0, neuropil_coef=0.0)
    assert ok.sizes["neuron"] == 6

    truth = _plane(tmp_path / "nan", rng)
    F = truth["F"].copy()
    F[3, 17] = np.inf
    np.save(tmp_path / "nan" / "F.npy", F)
    with pytest.raises(InputDataError, match=r"nan/F\.npy.*ROI 3"):
        neurodata.load(tmp_path / "nan", sampling_rate=10.0)
    kept = neurodata.load(tmp_path / "nan", sampling_rate=10.0, allow_nan=True)
    assert np.isinf(kept.activity.values[17, 3])

    _plane(tmp_path / "pickled", rng)
    np.save(tmp_path / "pickled" / "F.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match=r"pickled/F\.npy"):
        neurodata.load(tmp_path / "pickled", sampling_rate=10.0)

    _plane(tmp_path / "cut", rng)
    raw = (tmp_path / "cut" / "F.npy").read_bytes()
    (tmp_path / "cut" / "F.npy").write_bytes(raw[:200])
    with pytest.raises(FormatError, match=r"cut/F\.npy"):
        neurodata.load(tmp_path / "cut", sampling_rate=10.0)

    _plane(tmp_path / "short", rng)
    np.save(tmp_path / "short" / "Fneu.npy", np.zeros((6, 10), np.float32))
    with pytest.raises(FormatError, match=r"Fneu\.npy.*shape"):
        neurodata.load(tmp_path / "short", sampling_rate=10.0)

    _plane(tmp_path / "iscell", rng)
    np.save(tmp_path / "iscell" / "iscell.npy", np.ones((5, 2)))
    with pytest.raises(FormatError, match=r"iscell\.npy has 5 rows"):
        neurodata.load(tmp_path / "iscell", sampling_rate=10.0)

    _plane(tmp_path / "neg", rng)
    np.save(tmp_path / "neg" / "Fneu.npy", np.full((6, 300), 500, np.float32))
    with pytest.raises(InputDataError, match="baseline"):
        neurodata.load(tmp_path / "neg", sampling_rate=10.0, signal="dff")
    with pytest.raises(InputDataError, match="signal"):
        neurodata.load(tmp_path / "neg", sampling_rate=10.0, signal="raw")
