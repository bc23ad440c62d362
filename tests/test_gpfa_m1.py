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
    """Held-out velocity R2 from 5 GPFA latents beats FA latents and matches PCA of
    Gaussian-smoothed counts (the tutorial's fair protocol at reduced size: every reduction
    fitted on the training trials only, the smoothing width chosen on an inner split of the
    training trials, the same decoder reading bins t-3..t of every method's features).

    Measured: GPFA 0.463, FA 0.395, smoothed PCA 0.475 (width 3 bins chosen). Whether GPFA
    beats the tuned smoothing baselines depends on the dimensionality: at full size it is
    ahead at the CV-selected 30 latents (0.767 vs 0.754 / 0.761) and behind at 12; at this
    reduced size ahead at 20 latents, between them at 30 and behind at 5 and 10, by 0.006-0.03
    either way (tutorials/02_gpfa.md), so only parity with smoothed PCA is asserted.
    """
    ds = neurodata.datasets.load("stevenson2011-m1")
    trials = neurodata.preprocess.cut_windows(ds, 1.0).isel(trial=slice(0, 180))
    alive = trials["activity"].values.reshape(-1, trials.sizes["neuron"]).var(axis=0) > 0
    trials = trials.isel(neuron=np.flatnonzero(alive))
    train, test = np.arange(120), np.arange(120, 180)
    p, n_lags = 5, 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GPFA(n_latents=p, max_iter=25, progress=False).fit(trials.isel(trial=train))
    sq = np.sqrt(trials["activity"].values.astype(float))
    vel = trials["behavior"].sel(behavior_channel=["vel_x", "vel_y"]).values
    n, T, q = sq.shape

    def lagged(f):
        return np.concatenate([f[:, n_lags - 1 - k:T - k] for k in range(n_lags)], axis=-1)

    def r2(f_train, v_train, f_test, v_test):
        a, b = lagged(f_train), lagged(f_test)
        dec = Ridge(1e-3).fit(a.reshape(-1, a.shape[-1]),
                              v_train[:, n_lags - 1:].reshape(-1, 2))
        return dec.score(b.reshape(-1, b.shape[-1]), v_test[:, n_lags - 1:].reshape(-1, 2))

    def reduce(method, data, fit_on, apply_to):
        method.fit(data[fit_on].reshape(-1, q))
        return [method.transform(data[s].reshape(-1, q)).reshape(-1, T, p) for s in apply_to]

    def smoothed_pca_r2(sigma, fit_on, score_on):
        data = gaussian_filter1d(sq, sigma, axis=1)
        f_fit, f_score = reduce(PCA(p), data, fit_on, (fit_on, score_on))
        return r2(f_fit, vel[fit_on], f_score, vel[score_on])

    # the smoothing width is chosen on an inner split of the training trials
    sigma = max([1.0, 2.0, 3.0], key=lambda s: smoothed_pca_r2(s, train[::2], train[1::2]))
    latents = model.transform(trials)["latents_orth"].values
    scores = {"gpfa": r2(latents[train], vel[train], latents[test], vel[test]),
              "smoothed_pca": smoothed_pca_r2(sigma, train, test)}
    f_train, f_test = reduce(FactorAnalysis(p, random_state=0), sq, train, (train, test))
    scores["fa"] = r2(f_train, vel[train], f_test, vel[test])
    print(scores, "sigma", sigma)
    assert scores["gpfa"] > scores["fa"] + 0.05
    assert scores["gpfa"] > scores["smoothed_pca"] - 0.05
    assert scores["gpfa"] > 0.3
