"""C. elegans connectomes: weights against the raw packaged arrays, symmetry, bad names."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import neurodata
from neurodata.errors import DatasetNotFoundError, InputDataError
from neurodata.loaders.celegans import NEURONS_302
from neurodata.loaders.connectome import connectome, functional_atlas

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("cect") is None or importlib.util.find_spec("wormneuroatlas") is None,
    reason="the C. elegans extra (cect, wormneuroatlas) is not installed",
)


def _atlas_file(name: str) -> Path:
    return Path(importlib.util.find_spec("wormneuroatlas").origin).parent / "data" / name


def _w(ds, kind, pre, post):
    return float(ds.weight.sel(synapse_type=kind, pre=pre, post=post))


def test_names_listed():
    names = connectome()
    for name in ("white1986", "witvliet2020", "cook2019", "consensus", "randi2023"):
        assert name in names
    assert neurodata.loaders.connectome() == names  # the lazy attribute of the package


@pytest.mark.parametrize("name", ["white1986", "witvliet2020", "cook2019", "consensus",
                                  "varshney2011", "witvliet2020-7"])
def test_anatomical_layout_and_symmetry(name):
    ds = connectome(name)
    neurodata.validate(ds)
    assert ds.weight.dims == ("synapse_type", "pre", "post")
    assert list(ds.synapse_type.values) == ["chemical", "gap_junction"]
    assert set(ds.pre.values) <= set(NEURONS_302)
    np.testing.assert_array_equal(ds.pre.values, ds.post.values)
    gap = ds.weight.sel(synapse_type="gap_junction").values
    np.testing.assert_array_equal(gap, gap.T)
    assert np.all(ds.weight.values >= 0) and ds.weight.sel(synapse_type="chemical").sum() > 1000


def _cect(reader):
    module = importlib.import_module(f"cect.readers.{reader}")
    with contextlib.redirect_stdout(io.StringIO()):
        return module.get_instance(from_cache=True)


@pytest.mark.parametrize("name, reader", [("white1986", "White_whole"),
                                          ("witvliet2020", "WitvlietDataReader8"),
                                          ("cook2019", "Cook2019HermReader")])
def test_weights_equal_the_cect_arrays(name, reader):
    raw = _cect(reader)
    ds = connectome(name)
    nodes = list(raw.nodes)
    pre = [n for n in ds.pre.values if n in nodes]
    idx = [nodes.index(n) for n in pre]
    for kind, key in (("chemical", "Generic_CS"), ("gap_junction", "Generic_GJ")):
        expected = np.asarray(raw.connections[key])[np.ix_(idx, idx)]
        got = ds.weight.sel(synapse_type=kind, pre=pre, post=pre).values
        np.testing.assert_array_equal(got, np.fmax(expected, expected.T) if key == "Generic_GJ"
                                      else expected)


@pytest.mark.parametrize("name, csv", [("white1986", "aconnectome_white_1986_whole.csv"),
                                       ("witvliet2020-7", "aconnectome_witvliet_2020_7.csv")])
def test_chemical_weights_equal_the_wormneuroatlas_edge_lists(name, csv):
    table = pd.read_csv(_atlas_file(csv), sep="\t")
    table = table[(table.type == "chemical") & table.pre.isin(NEURONS_302)
                  & table.post.isin(NEURONS_302)]
    ds = connectome(name)
    got = ds.weight.sel(synapse_type="chemical").to_pandas()
    values = [got.loc[a, b] for a, b in zip(table.pre, table.post, strict=True)]
    assert len(values) > 1800
    np.testing.assert_array_equal(values, table.synapses.values)


def test_known_pairs():
    white = connectome("white1986")
    assert _w(white, "chemical", "ADAL", "AIBL") == 1.0  # listed once in White's table
    assert _w(white, "chemical", "AIBL", "ADAL") == 0.0  # direction matters
    assert _w(connectome("witvliet2020"), "chemical", "ADAL", "AVAL") == 2.0
    assert _w(connectome("cook2019"), "chemical", "AVAL", "AVAR") == 12.0


def test_consensus_is_the_transposed_h5():
    import h5py

    ids = [line.split("\t")[1].strip() for line in
           _atlas_file("neuron_ids.txt").read_text().splitlines() if line.strip()]
    with h5py.File(_atlas_file("aconnectome_default.h5"), "r") as f:
        chem, gap = f["chem"][:], f["gap"][:]
    ds = connectome("consensus")
    for pre, post in [("AVAL", "AVAR"), ("ADAL", "AIBL"), ("RIML", "AVAL"), ("AVBL", "DB3")]:
        i, j = ids.index(post), ids.index(pre)  # wormneuroatlas: A[post, pre]
        assert _w(ds, "chemical", pre, post) == chem[i, j]
        assert _w(ds, "gap_junction", pre, post) == gap[i, j]
    # AWCOFF/AWCON of the atlas are AWCL/AWCR here.
    assert "AWCL" in ds.pre.values and "AWCOFF" not in ds.pre.values
    assert ds.weight.sel(synapse_type="chemical").sum() == chem.sum()


def test_all_neurons_pads_with_nan():
    ds = connectome("witvliet2020", neurons="all")
    assert ds.sizes["pre"] == 302 and list(ds.pre.values) == list(NEURONS_302)
    # The adult EM volume covers the nerve ring: ventral cord motor neurons are unknown.
    assert np.isnan(_w(ds, "chemical", "VA12", "DD6"))
    assert _w(ds, "chemical", "ADAL", "AVAL") == 2.0


def test_functional_atlas():
    import h5py

    fa = connectome("randi2023")
    neurodata.validate(fa)
    with h5py.File(_atlas_file("funatlas.h5"), "r") as f:
        ids = [n.decode() for n in f["neuron_ids"][:]]
        dff, q, occ = f["wt/dFF"][:], f["wt/q"][:], f["wt/occ1"][:]
    # funatlas: M[responder, stimulated]; ours: response(pre=stimulated, post=responder).
    measured = np.argwhere(np.isfinite(dff))
    for i, j in measured[:: max(len(measured) // 25, 1)]:
        pre, post = ids[j], ids[i]
        pre = {"AWCOF": "AWCL", "AWCON": "AWCR"}.get(pre, pre)
        post = {"AWCOF": "AWCL", "AWCON": "AWCR"}.get(post, post)
        assert float(fa.response.sel(pre=pre, post=post)) == dff[i, j]
        assert float(fa.q.sel(pre=pre, post=post)) == q[i, j]
        assert int(fa.n_observations.sel(pre=pre, post=post)) == occ[i, j]
    assert np.isnan(fa.response.values).mean() == pytest.approx(np.isnan(dff).mean())
    unc = functional_atlas("unc31")
    assert unc.attrs["strain"] == "unc31"


def test_bad_names():
    with pytest.raises(DatasetNotFoundError, match="white1987"):
        connectome("white1987")
    with pytest.raises(InputDataError, match="neurons"):
        connectome("white1986", neurons="some")
    with pytest.raises(InputDataError, match="strain"):
        functional_atlas("mutant")


def test_connectome_figures():
    import matplotlib.pyplot as plt

    fig = neurodata.plot.connectome_matrix(connectome("witvliet2020"), "gap_junction")
    assert "gap_junction" in fig.axes[0].get_title()
    fig = neurodata.plot.connectome_matrix(connectome("randi2023"))
    assert "functional" in fig.axes[0].get_title()
    with pytest.raises(InputDataError, match="synapse_type"):
        neurodata.plot.connectome_matrix(connectome("white1986"), "electrical")
    plt.close("all")
