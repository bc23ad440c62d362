"""The RSA figures draw from computed results."""

from __future__ import annotations

import jax
import matplotlib.pyplot as plt
import numpy as np

import neurodata.plot as ndplot
from neurodata.models import rsa


def test_rsa_figures(rng):
    x = rng.normal(size=(6, 12, 8))
    d = ((x[:, :, None] - x[:, None]) ** 2).sum(-1)
    data = rsa.rdm_dataset(d[2:], rdm_name=list("abcd"))
    models = rsa.rdm_dataset(d[:2] + d[2:4], rdm_name=["m1", "m2"])
    res = rsa.dual_bootstrap(models, data, key=jax.random.key(0), n_bootstrap=20)
    figs = [
        ndplot.rdm_panel(data),
        ndplot.rdm_mds(rsa.mds(data), groups=np.arange(12) % 2),
        ndplot.model_comparison_bars(res, significant=rsa.pairwise_tests(res)),
        ndplot.topology_heatmap(rsa.topology_grid(d, [0, 1] * 3, [0, 0, 1, 1, 2, 2],
                                                  levels=[0, 0.5, 1]), chance=0.5),
        ndplot.layer_area_heatmap(rsa.layer_area_map({"a": x[0]}, {"l1": x[1], "l2": x[2]},
                                                     n_subsamples=3, key=jax.random.key(1))),
    ]
    for fig in figs:
        assert isinstance(fig, plt.Figure) and fig.axes
        plt.close(fig)
    assert np.allclose(rsa.mds(d[0]).values.shape, (12, 2))
