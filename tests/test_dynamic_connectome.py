"""Affinity tensor and the DynamicConnectome pipeline on simulated multi-animal worms."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import neurodata
from neurodata.errors import InputDataError
from neurodata.models.affinity import affinity_tensor, pairs_to_matrix
from neurodata.models.community import nmi
from neurodata.models.ntf import DynamicConnectome, simulate


def _stack(n_animal=2, n_time=120, n_neuron=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_animal, n_time, n_neuron)).cumsum(axis=1)
    rec = np.ones((n_animal, n_neuron), bool)
    return xr.Dataset(
        {"activity": (("animal", "time", "neuron"), x, {"signal": "dff", "units": "1"}),
         "recorded": (("animal", "neuron"), rec)},
        coords={"time": np.arange(n_time) / 10.0,
                "neuron_id": ("neuron", [f"n{i}" for i in range(n_neuron)]),
                "animal": np.arange(n_animal)},
        attrs={"sampling_rate": 10.0},
    )


def test_affinity_matches_brute_force():
    ds = _stack()
    ds["activity"][1, :, 3] = np.nan
    ds["recorded"][1, 3] = False
    aff = affinity_tensor(ds, window=3.0, step=2.0, sigma=0.7)
    assert aff.dims == ("pair", "window", "animal")
    assert aff.sizes["pair"] == 10
    x = ds["activity"].values
    d = np.diff(x, axis=1)
    for w in (0, 3):
        seg = d[0, w * 20: w * 20 + 30]
        rho = np.corrcoef(seg.T)
        expected = np.exp(-(1 - rho) / 0.7**2)[np.triu_indices(5, 1)]
        np.testing.assert_allclose(aff.values[:, w, 0], expected, rtol=1e-5)
    missing = (aff["index_a"] == 3) | (aff["index_b"] == 3)
    assert not aff["mask"].values[missing.values, 1].any()
    assert aff["mask"].values[~missing.values, 1].all()
    assert np.all(aff.values[missing.values, :, 1] == 0)
    corr = affinity_tensor(ds, window=3.0, kernel="correlation")
    seg = x[0, :30]
    expected = np.maximum(np.corrcoef(seg.T), 0)[np.triu_indices(5, 1)]
    np.testing.assert_allclose(corr.values[:, 0, 0], expected, rtol=1e-5, atol=1e-6)
    m = pairs_to_matrix(aff[:, 0, 0])
    assert m.dims == ("neuron_a", "neuron_b")
    pair = ((aff.index_a == 1) & (aff.index_b == 4)).values
    assert float(m.sel(neuron_a="n1", neuron_b="n4")) == pytest.approx(
        float(aff.values[pair, 0, 0][0]))


def test_single_animal_input():
    ds = neurodata.from_arrays(np.random.default_rng(0).normal(size=(200, 4)), 20.0,
                               signal="dff")
    aff = affinity_tensor(ds, window=2.0, step=1.0, kernel="gaussian")
    assert dict(aff.sizes) == {"pair": 6, "window": 9, "animal": 1}
    assert bool(aff["mask"].all())


def test_affinity_bad_input():
    ds = _stack()
    bad = ds.copy(deep=True)
    bad["activity"][0, 10:15, 2] = np.nan  # a NaN run in a recorded trace
    with pytest.raises(InputDataError, match="NaN values in recorded traces"):
        affinity_tensor(bad, window=3.0)
    with pytest.raises(InputDataError, match="shorter window"):
        affinity_tensor(ds, window=100.0)
    lonely = ds.copy(deep=True)
    lonely["recorded"].values[:] = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 1, 1]], bool)
    lonely["activity"].values[~lonely["recorded"].values[:, None, :].repeat(120, 1)] = np.nan
    with pytest.raises(InputDataError, match="share no recorded neuron pair"):
        affinity_tensor(lonely, window=3.0)
    with pytest.raises(InputDataError, match="kernel"):
        affinity_tensor(ds, window=3.0, kernel="cosine")
    with pytest.raises(InputDataError, match="sampling_rate"):
        affinity_tensor(ds.assign_attrs(sampling_rate=-1.0), window=3.0)


@pytest.fixture(scope="module")
def fitted():
    ds = simulate(n_neurons=30, n_animals=4, epoch_duration=60.0, sampling_rate=5.0,
                  missing=0.1, seed=0)
    # streamed over chunks of 12 windows (tests/test_ntf_streaming.py: same factors as in
    # memory), so the recovery, atlas and figure tests run on the streaming pipeline
    dc = DynamicConnectome(rank=3, window=10.0, step=5.0, n_init=4, stream=True, chunk_size=12,
                           seed=0).fit(ds)
    return ds, dc


def test_pipeline_recovers_epoch_communities(fitted):
    ds, dc = fitted
    assert (~ds["recorded"].values).any()  # some neurons are missing in some animals
    comps = dc.epoch_components()
    assert sorted(comps.values()) == [0, 1, 2]  # one component per epoch
    for j, epoch in enumerate(ds["epoch"].values):
        labels = dc.communities_.values[comps[str(epoch)]]
        assert nmi(labels, ds["planted_community"].values[j]) >= 0.85
    # animal loadings follow the planted gains
    load = dc.animal_loading_.values.mean(1)
    assert np.corrcoef(load, ds["animal_gain"].values)[0, 1] > 0.8


def test_atlas_and_save(fitted, tmp_path):
    _, dc = fitted
    atlas = dc.atlas()
    assert set(atlas.data_vars) >= {"time_course", "animal_loading", "community",
                                    "epoch_activity"}
    back = DynamicConnectome.load(dc.save(tmp_path / "dc.nc"))
    np.testing.assert_array_equal(back.communities_.values, dc.communities_.values)
    assert back.epoch_components() == dc.epoch_components()


def test_figures(fitted):
    import matplotlib.pyplot as plt

    import neurodata.plot as ndplot

    ds, dc = fitted
    figs = [ndplot.ntf_components(dc), ndplot.ntf_time_courses(dc.time_course_, dc.weights_)]
    diag = xr.Dataset({name: (("rank", "replicate"), np.random.default_rng(0).random((3, 2)))
                       for name in ("error", "similarity", "heldout_error")},
                      coords={"rank": [1, 2, 3], "replicate": [0, 1]})
    figs.append(ndplot.ntf_rank_selection(diag))
    graph = np.random.default_rng(0).random((6, 6))
    figs.append(ndplot.community_graph(graph + graph.T, [0, 0, 1, 1, 2, 2], names=list("abcdef")))
    assert len(figs[0].axes) == 4 * dc.communities_.sizes["component"]
    for fig in figs:
        plt.close(fig)


def test_unequal_recording_lengths():
    """A stack_animals-style stack: animal 1 is shorter and NaN-padded (n_samples)."""
    from neurodata.models.ntf import _as_tensor

    ds = _stack()
    ds["activity"][1, 80:, :] = np.nan
    ds["n_samples"] = ("animal", np.array([120, 80]))
    aff = affinity_tensor(ds, window=3.0, step=2.0)
    wm = aff["window_mask"].values
    assert wm[:, 0].all()
    starts = np.arange(0, 119 - 30 + 1, 20)
    np.testing.assert_array_equal(wm[:, 1], starts + 30 <= 79)
    assert np.all(aff.values[:, ~wm[:, 1], 1] == 0)
    _, mask, _ = _as_tensor(aff, None)
    assert mask.shape == (1, *wm.shape)  # every neuron recorded: a (1, window, animal) mask
    assert np.broadcast_to(mask, aff.shape).sum() == wm.sum() * aff.sizes["pair"]


def test_leiden_backend_and_bad_option(fitted):
    pytest.importorskip("leidenalg", reason="the Leiden backend needs neurodata[community]")
    ds, dc = fitted
    # same NTF settings as the fixture (compiled solver reused), Leiden communities
    dcl = DynamicConnectome(rank=3, window=10.0, step=5.0, n_init=4, seed=0,
                            community="leiden").fit(ds)
    comps = dcl.epoch_components()
    assert comps == dc.epoch_components()
    scores = [nmi(dcl.communities_.values[comps[str(e)]], ds["planted_community"].values[j])
              for j, e in enumerate(ds["epoch"].values)]
    assert min(scores) > 0.7
    with pytest.raises(InputDataError, match="community"):
        DynamicConnectome(community="louvain").fit(ds)


def test_window_batches_and_lazy_tensor_equal_the_one_shot_tensor(monkeypatch):
    """Batched construction: same numbers, bounded batches, one compilation, dask chunks."""
    import dask

    from neurodata.models import affinity

    ds = _stack(n_animal=2, n_time=150, n_neuron=6)
    ds["activity"][1, :, 2] = np.nan
    ds["recorded"][1, 2] = False
    whole = affinity_tensor(ds, window=2.0, step=0.7, batch_windows=10**6)
    n_win = whole.sizes["window"]
    calls = []
    kernel = affinity._affinities

    def spy(x, starts, *args):
        calls.append((x.shape, starts.shape))
        return kernel(x, starts, *args)

    monkeypatch.setattr(affinity, "_affinities", spy)
    for batch in (1, 4, 7):
        calls.clear()
        got = affinity_tensor(ds, window=2.0, step=0.7, batch_windows=batch)
        np.testing.assert_array_equal(got.values, whole.values)
        assert got.dtype == np.float32
        assert len(calls) == -(-n_win // batch)
        # same shapes every batch (one compilation), a stretch of 20 + (batch - 1) * 7 frames
        assert set(calls) == {((2, 20 + (batch - 1) * 7, 6), (batch,))}
        for name in ("mask", "window_mask", "window_start"):
            np.testing.assert_array_equal(got[name].values, whole[name].values)
    calls.clear()
    lazy = affinity_tensor(ds, window=2.0, step=0.7, batch_windows=4, lazy=True)
    assert dask.is_dask_collection(lazy.data) and not calls  # nothing computed yet
    assert lazy.data.chunks[1] == (4,) * (n_win // 4) + ((n_win % 4,) if n_win % 4 else ())
    np.testing.assert_array_equal(lazy.values, whole.values)
    with pytest.raises(InputDataError, match="batch_windows"):
        affinity_tensor(ds, window=2.0, batch_windows=0)
