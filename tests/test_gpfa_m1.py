"""GPFA on the Stevenson 2011 M1 recording (reduced size): decoding hand velocity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.decomposition import FactorAnalysis
from sklearn.linear_model import Ridge

import neurodata
from neurodata.models.gpfa import GPFA


@pytest.mark.slow
def test_gpfa_latents_decode_velocity_better_than_fa(mirror):
    ds = neurodata.datasets.load("stevenson2011-m1")
    trials = neurodata.preprocess.cut_windows(ds, 1.0)
    train, test = trials.isel(trial=slice(0, 120)), trials.isel(trial=slice(120, 180))
    p = 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GPFA(n_latents=p, max_iter=25, progress=False).fit(train)
    keep = np.isin(trials["neuron_id"].values, model.loadings_["neuron_id"].values)

    def velocity(d):
        return d["behavior"].sel(behavior_channel=["vel_x", "vel_y"]).values.reshape(-1, 2)

    def sqrt_counts(d):
        return np.sqrt(d["activity"].values[:, :, keep].astype(float)).reshape(-1, keep.sum())

    gpfa = [model.transform(d)["latents_orth"].values.reshape(-1, p) for d in (train, test)]
    fa = FactorAnalysis(p, random_state=0).fit(sqrt_counts(train))
    fa_x = [fa.transform(sqrt_counts(d)) for d in (train, test)]
    r2 = {name: Ridge(1e-3).fit(x[0], velocity(train)).score(x[1], velocity(test))
          for name, x in (("gpfa", gpfa), ("fa", fa_x))}
    assert r2["gpfa"] > r2["fa"] + 0.05
    assert r2["gpfa"] > 0.2
