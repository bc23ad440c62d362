"""MATLAB loader: the Stevenson 2011 M1 file and the Kriegeskorte 2008 92-image folder."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

import neurodata
from neurodata.errors import FormatError, MissingFieldError
from neurodata.loaders import detect_format
from neurodata.loaders.matlab import load_kriegeskorte2008


def test_stevenson2011(mirror):
    path = mirror / "m1_stevenson_2011" / "m1_stevenson_2011.mat"
    assert detect_format(path) == "matlab"
    ds = neurodata.load(path)
    assert dict(ds.activity.sizes) == {"time": 15536, "neuron": 171}
    assert ds.activity.dtype == np.uint8
    assert ds.behavior_channel.values.tolist() == ["pos_x", "pos_y", "vel_x", "vel_y"]
    assert ds.attrs["bin_size"] == pytest.approx(0.05)


def test_kriegeskorte2008_schema(mirror):
    folder = mirror / "rsa_92images"
    assert detect_format(folder) == "matlab"
    ds = neurodata.load(folder)
    assert dict(ds.sizes) == {"rdm": 18, "stimulus": 92, "stimulus_": 92, "y": 175, "x": 175,
                              "channel": 3}
    d = ds.dissimilarity.values
    assert ds.dissimilarity.dims == ("rdm", "stimulus", "stimulus_") and d.dtype == np.float64
    np.testing.assert_allclose(d, d.transpose(0, 2, 1))
    assert np.all(np.diagonal(d, axis1=1, axis2=2) == 0)
    assert ds.rdm_kind.values.tolist() == ["brain"] * 8 + ["model"] * 8 + ["brain"] * 2
    assert ds.region.values.tolist() == ["hIT"] * 8 + [""] * 8 + ["mIT", "hIT"]
    assert ds.subject.values.tolist()[:8] == ["BE", "BE", "KO", "KO", "SN", "SN", "TI", "TI"]
    assert ds.session.values.tolist() == [1, 2] * 4 + [0] * 10
    assert ds.rdm_name.values.tolist()[8:16] == ["animacy", "FaceBodyManmadeNatobj", "monkeyIT",
                                                 "EVA", "HMAX", "V1", "Silhouette", "RADON"]
    # values straight from the raw files
    raw = scipy.io.loadmat(folder / "92_brainRDMs.mat")["RDMs"]
    np.testing.assert_array_equal(d[3], raw[0, 1, 1]["RDM"])  # subject 2, session 2
    # the condensed monkey IT vector of the supplement equals the 'monkeyIT' model RDM
    np.testing.assert_array_equal(d[16], d[10])
    assert ds.stimulus_id.values.tolist() == [str(i) for i in range(92)]
    assert int(ds.animate.sum()) == 48 and ds.animate.dtype == bool
    assert int(ds.face.sum()) == 24 and int(ds.human.sum()) == 24
    assert ds.category.values[0] == "human bodypart"
    assert ds.image.dtype == np.uint8 and ds.image.dims == ("stimulus", "y", "x", "channel")
    # any file of the folder also works (the registry passes a file path)
    one = neurodata.load(folder / "92_modelRDMs.mat")
    assert one.sizes["rdm"] == 18


def test_kriegeskorte2008_bad(tmp_path, mirror):
    (tmp_path / "92_brainRDMs.mat").write_bytes((mirror / "rsa_92images" /
                                                 "92_brainRDMs.mat").read_bytes())
    with pytest.raises(MissingFieldError, match="92_modelRDMs.mat"):
        load_kriegeskorte2008(tmp_path)
    bad = tmp_path / "junk.mat"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(FormatError, match="junk.mat"):
        neurodata.load(bad)
    with pytest.raises(FormatError, match="layout"):
        neurodata.load(tmp_path / "92_brainRDMs.mat", layout="nope")
