"""The RSA figures draw from computed results (results built by hand: no fitting here)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

import neurodata.plot as ndplot
from neurodata.models import rsa


def test_rsa_figures(rng):
    x = rng.normal(size=(4, 12, 8))
    d = ((x[:, :, None] - x[:, None]) ** 2).sum(-1)
    data = rsa.rdm_dataset(d, rdm_name=list("abcd"))
    names = ["m1", "m2", "m3"]
    res = xr.Dataset(
        {"mean": ("model", [0.3, 0.2, 0.05]), "sem": ("model", [0.05, 0.04, 0.03]),
         "noise_ceiling": ("bound", [0.35, 0.5]), "p_zero": ("model", [0.001, 0.01, 0.2])},
        coords={"model": names, "bound": ["lower", "upper"]}, attrs={"method": "corr"})
    sig = xr.DataArray(np.array([[0, 0, 1], [0, 0, 1], [1, 1, 0]], bool),
                       dims=("model", "model_"), coords={"model": names, "model_": names})
    levels = np.linspace(0, 1, 5)
    grid = xr.DataArray(np.triu(rng.uniform(0.3, 1, (5, 5))), dims=("lower", "upper"),
                        coords={"lower": levels, "upper": levels})
    amap = xr.Dataset({"score": (("area", "layer"), rng.uniform(size=(2, 3))),
                       "best_fraction": (("area", "layer"), rng.uniform(size=(2, 3)))},
                      coords={"area": ["V1", "IT"], "layer": ["l1", "l2", "l3"]},
                      attrs={"measure": "rsa"})
    figs = [
        ndplot.rdm_panel(data),
        ndplot.rdm_mds(rsa.mds(data), groups=np.arange(12) % 2),
        ndplot.model_comparison_bars(res, significant=sig),
        ndplot.topology_heatmap([grid, grid], titles=["a", "b"], chance=0.25),
        ndplot.layer_area_heatmap(amap),
    ]
    for fig in figs:
        assert isinstance(fig, plt.Figure) and fig.axes
        plt.close(fig)
    pos = rsa.mds(d[0]).values
    # classical MDS of a Euclidean RDM reproduces the centred configuration's distances
    full = rsa.mds(d[0], n_components=8).values
    np.testing.assert_allclose(((full[:, None] - full[None]) ** 2).sum(-1), d[0], atol=1e-8)
    assert pos.shape == (12, 2)
