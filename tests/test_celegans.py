"""C. elegans: the 302 names, label normalisation, the homogenized format, stacking."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import neurodata
from neurodata.errors import FormatError, InputDataError, MissingFieldError, NeurodataError
from neurodata.loaders import celegans
from neurodata.loaders.celegans import NEURONS_302, normalize_label, stack_animals

# --------------------------------------------------------------------------- names


def test_302_names():
    assert len(NEURONS_302) == 302 and len(set(NEURONS_302)) == 302
    for name in ("AVAL", "AVAR", "RIML", "RIMR", "AWCL", "CANL", "VD13", "DB7", "I1L"):
        assert name in NEURONS_302


def test_302_names_match_cect():
    cells = pytest.importorskip("cect.Cells")
    assert set(NEURONS_302) == set(cells.PREFERRED_HERM_NEURON_NAMES)


def test_302_names_match_wormneuroatlas():
    spec = importlib.util.find_spec("wormneuroatlas")
    if spec is None:
        pytest.skip("wormneuroatlas is not installed")
    # Read the packaged file without importing wormneuroatlas (slow, and it goes online).
    text = (Path(spec.origin).parent / "data" / "neuron_ids.txt").read_text()
    atlas = [line.split("\t")[1].strip() for line in text.splitlines() if line.strip()]
    assert len(atlas) == 300
    normalised = [normalize_label(n, strict=True) for n in atlas]
    # The atlas lacks CANL/CANR and keeps the canonical order otherwise.
    assert [n for n in NEURONS_302 if n not in ("CANL", "CANR")] == normalised


@pytest.mark.parametrize(
    "raw, expected",
    [("AVAL ", "AVAL"), (" aval", "AVAL"), ("VB02", "VB2"), ("DD01", "DD1"), ("AS10", "AS10"),
     ("AWCON", "AWCR"), ("AWCOFF", "AWCL"), (b"AWCOF", "AWCL"), ("IL1DL", "IL1DL"),
     ("VA011", "VA11")],
)
def test_normalize_label(raw, expected):
    assert normalize_label(raw) == expected


def test_normalize_label_strict():
    assert normalize_label("unknown-cell") == "UNKNOWN-CELL"
    with pytest.raises(InputDataError, match="XYZ"):
        normalize_label("XYZ", strict=True)


# --------------------------------------------------------------------------- homogenized format

DT = 0.333

# (source_dataset, worm, n_time, original_dt, {neuron: is_labeled})
WORMS = [
    ("Kato2015", "worm0", 30, 0.35, {"AVAL": True, "VB02": True, "AWCON": True, "12": False}),
    ("Kato2015", "worm1", 24, 0.35, {"AVAL": True, "RIML ": True}),
    ("Yemini2021", "worm0", 27, 0.25, {"AVAR": True, "RIML": True, "3": False}),
]


def _rows(rng):
    rows, truth = [], {}
    for source, worm, n, odt, neurons in WORMS:
        t = np.arange(n) * DT
        n_orig = int(np.floor(t[-1] / odt)) + 1
        t_orig = np.arange(n_orig) * odt
        for neuron, labeled in neurons.items():
            x = rng.standard_normal(n).round(4)
            x_orig = np.interp(t_orig, t, x).round(4)
            truth[(f"{source}/{worm}", neuron)] = x
            rows.append({
                "source_dataset": source, "raw_data_file": "x.mat", "worm": worm,
                "neuron": neuron, "slot": 0, "is_labeled_neuron": labeled,
                "smooth_method": "no smoothing", "interpolate_method": "linear",
                "normalization_method": "standard",
                "original_calcium_data": json.dumps(x_orig.tolist()),
                "calcium_data": json.dumps(x.tolist()),
                "original_time_in_seconds": json.dumps(t_orig.tolist()),
                "time_in_seconds": json.dumps(t.tolist()),
                "original_max_timesteps": n_orig, "max_timesteps": n,
            })
    return pd.DataFrame(rows), truth


@pytest.fixture
def worm_file(tmp_path, rng):
    """The homogenized schema in a small file: parquet when pyarrow is there, else CSV."""
    frame, truth = _rows(rng)
    if importlib.util.find_spec("pyarrow") is not None:
        for col in ("original_calcium_data", "calcium_data", "original_time_in_seconds",
                    "time_in_seconds"):
            frame[col] = [np.asarray(json.loads(v), dtype=np.float32) for v in frame[col]]
        path = tmp_path / "worms.parquet"
        frame.to_parquet(path)
    else:
        path = tmp_path / "worms.csv"
        frame.to_csv(path, index=False)
    return path, truth


def test_load_stacks_worms(worm_file):
    path, truth = worm_file
    ds = celegans.load(path)
    assert ds.sizes["animal"] == 3 and ds.sizes["time"] == 30
    # Labeled neurons only, canonical names and order.
    assert list(ds.neuron_id.values) == ["AVAL", "AVAR", "AWCR", "RIML", "VB2"]
    assert list(ds.animal.values) == ["Kato2015/worm0", "Kato2015/worm1", "Yemini2021/worm0"]
    expected_mask = np.array([[1, 0, 1, 0, 1], [1, 0, 0, 1, 0], [0, 1, 0, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(ds.recorded.values, expected_mask)
    act = ds.activity
    assert act.attrs["signal"] == "zscore"
    np.testing.assert_allclose(act.sel(animal="Kato2015/worm0").isel(neuron=4).values,
                               truth[("Kato2015/worm0", "VB02")], atol=1e-4)
    np.testing.assert_allclose(act.sel(animal="Kato2015/worm1").isel(time=slice(0, 24))
                               .values[:, 3], truth[("Kato2015/worm1", "RIML ")], atol=1e-4)
    # NaN where not recorded and after the end of a shorter recording.
    assert np.isnan(act.values[0, :, 1]).all()
    assert np.isnan(act.values[1, 24:, 0]).all() and not np.isnan(act.values[1, :24, 0]).any()
    np.testing.assert_array_equal(ds.n_samples.values, [30, 24, 27])
    np.testing.assert_allclose(ds.attrs["sampling_rate"], 1 / DT, rtol=1e-5)
    neurodata.validate(ds)


def test_load_list_and_selection(worm_file):
    path, _ = worm_file
    worms = celegans.load(path, stack=False, labeled_only=False, source_dataset="Yemini2021")
    assert len(worms) == 1
    assert list(worms[0].neuron_id.values) == ["AVAR", "RIML", "unlabeled:3"]
    assert list(worms[0].is_labeled.values) == [True, True, False]
    one = celegans.load(path, worms=["Kato2015/worm1"])
    assert list(one.animal.values) == ["Kato2015/worm1"]


def test_original_rates_differ_then_resample(worm_file):
    path, _ = worm_file
    with pytest.raises(InputDataError, match="resample_animals"):
        celegans.load(path, signal="original_calcium_data")
    ds = celegans.load(path, signal="original_calcium_data", rate=celegans.DEFAULT_RATE)
    assert ds.sizes["animal"] == 3
    np.testing.assert_allclose(ds.attrs["sampling_rate"], 1 / 0.333)


def test_stack_roundtrip_and_save(tmp_path, worm_file):
    path, _ = worm_file
    ds = celegans.load(path)
    back = neurodata.open_dataset(neurodata.save(ds, tmp_path / "worms.nc"))
    np.testing.assert_array_equal(back.recorded.values, ds.recorded.values)
    assert back.recorded.dtype == bool


# --------------------------------------------------------------------------- bad input


def test_stack_different_rates_raises():
    a = neurodata.from_arrays(np.ones((5, 1)), 3.0, neuron_ids=["AVAL"], signal="dff")
    b = neurodata.from_arrays(np.ones((5, 1)), 4.0, neuron_ids=["AVAL"], signal="dff")
    with pytest.raises(InputDataError, match="4.0 Hz"):
        stack_animals([a, b])


def test_stack_different_signals_raises():
    a = neurodata.from_arrays(np.ones((5, 1)), 3.0, neuron_ids=["AVAL"], signal="dff")
    b = neurodata.from_arrays(np.ones((5, 1)), 3.0, neuron_ids=["AVAL"], signal="zscore")
    with pytest.raises(InputDataError, match="signal"):
        stack_animals([a, b])
    with pytest.raises(InputDataError):
        stack_animals([])


def test_stack_by_label():
    a = neurodata.from_arrays(np.ones((4, 2)), 3.0, signal="dff",
                              neuron_coords={"neuron_label": ["RIML", "AVAL"]})
    b = neurodata.from_arrays(np.full((4, 1), 2.0), 3.0, signal="dff",
                              neuron_coords={"neuron_label": ["AVAL"]})
    s = stack_animals([a, b], match_on="neuron_label")
    assert s.neuron_id.values.tolist() == ["AVAL", "RIML"]
    np.testing.assert_array_equal(s.recorded.values, [[True, True], [True, False]])
    np.testing.assert_array_equal(s.activity.values[1, :, 0], 2.0)
    # By id, the ROI numbers "0" and "1" would be matched across animals: refuse empty labels.
    c = neurodata.from_arrays(np.ones((4, 1)), 3.0, signal="dff",
                              neuron_coords={"neuron_label": [""]})
    with pytest.raises(InputDataError, match="empty or duplicated"):
        stack_animals([a, c], match_on="neuron_label")
    with pytest.raises(InputDataError, match="'region'"):
        stack_animals([a, b], match_on="region")


def test_missing_column(tmp_path, rng):
    frame, _ = _rows(rng)
    path = tmp_path / "bad.csv"
    frame.drop(columns=["time_in_seconds"]).to_csv(path, index=False)
    with pytest.raises(MissingFieldError, match="time_in_seconds"):
        celegans.load(path)


def test_truncated_text_sequence(tmp_path, rng):
    frame, _ = _rows(rng)
    frame.loc[0, "calcium_data"] = "[0.1 0.2 ... 0.3]"
    path = tmp_path / "trunc.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(FormatError, match="truncated"):
        celegans.load(path)


def test_length_mismatch(tmp_path, rng):
    frame, _ = _rows(rng)
    frame.loc[0, "calcium_data"] = "[0.1, 0.2]"
    path = tmp_path / "short.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(FormatError, match="samples"):
        celegans.load(path)


def test_unknown_signal_and_format(tmp_path):
    with pytest.raises(InputDataError, match="signal"):
        celegans.load(tmp_path / "x.csv", signal="spikes")
    (tmp_path / "x.txt").write_text("nothing")
    with pytest.raises(NeurodataError):
        celegans.load(tmp_path / "x.txt")


def test_corrupt_parquet(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(FormatError, match="x.parquet"):
        celegans.load(tmp_path / "x.parquet")


def test_heatmap_of_one_animal(worm_file):
    import matplotlib.pyplot as plt

    path, _ = worm_file
    fig = neurodata.plot.activity_heatmap(celegans.load(path), animal=2)
    assert "Yemini2021/worm0" in fig.axes[0].get_title()
    plt.close("all")
