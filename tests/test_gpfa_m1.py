"""GPFA on the Stevenson 2011 M1 recording (reduced size): decoding hand velocity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d
from sklearn.decomposition import PCA, FactorAnalysis
from sklearn.linear_model import Ridge

import neurodata
from neurodata.models.gpfa import GPFA


@pytest.mark.slow
def test_gpfa_latents_decode_velocity_better_than_fa(mirror):
    """Held-out velocity R2 (100 ms lag) from 5 GPFA latents beats FA latents and matches
    PCA of Gaussian-smoothed counts (the tutorial's protocol at reduced size: GPFA fitted
    on all trials' activity, reductions and decoders on the training trials).

    At full size GPFA does not beat a smoothing baseline whose width is tuned (see
    tutorials/02_gpfa.md), so only parity with it is asserted.
    """
    ds = neurodata.datasets.load("stevenson2011-m1")
    trials = neurodata.preprocess.cut_windows(ds, 1.0).isel(trial=slice(0, 180))
    alive = trials["activity"].values.reshape(-1, trials.sizes["neuron"]).var(axis=0) > 0
    trials = trials.isel(neuron=np.flatnonzero(alive))
    train, test = np.arange(180) < 120, np.arange(180) >= 120
    p, lag = 5, 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GPFA(n_latents=p, max_iter=25, progress=False).fit(trials)
    sq = np.sqrt(trials["activity"].values.astype(float))
    vel = trials["behavior"].sel(behavior_channel=["vel_x", "vel_y"]).values
    n, T, q = sq.shape

    def r2(feats):
        f_train, f_test = feats
        dec = Ridge(1e-3).fit(f_train[:, :T - lag].reshape(-1, p),
                              vel[train, lag:].reshape(-1, 2))
        return dec.score(f_test[:, :T - lag].reshape(-1, p), vel[test, lag:].reshape(-1, 2))

    def reduce(method, data):
        method.fit(data[train].reshape(-1, q))
        return [method.transform(data[s].reshape(-1, q)).reshape(-1, T, p)
                for s in (train, test)]

    latents = model.transform(trials)["latents_orth"].values
    scores = {"gpfa": r2((latents[train], latents[test])),
              "fa": r2(reduce(FactorAnalysis(p, random_state=0), sq)),
              "smoothed_pca": r2(reduce(PCA(p), gaussian_filter1d(sq, 1.5, axis=1)))}
    print(scores)
    assert scores["gpfa"] > scores["fa"] + 0.05
    assert scores["gpfa"] > scores["smoothed_pca"] - 0.05
    assert scores["gpfa"] > 0.3
