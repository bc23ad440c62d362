"""Weighted DC-SBM communities (neurodata.models.community) on planted partitions."""

from __future__ import annotations

import numpy as np
import pytest

import neurodata  # noqa: F401
from neurodata.errors import InputDataError
from neurodata.models.community import (
    WeightedSBM,
    leiden,
    nmi,
    planted_partition,
    sort_by_community,
)

SIZES = [30, 15, 9]  # unequal group sizes


@pytest.mark.parametrize("spread", [0.0, 0.5])
def test_moderate_mixing_recovers_groups(spread):
    w, truth = planted_partition(SIZES, 0.4, degree_spread=spread, distribution="gamma",
                                 shape=4.0, seed=1)
    model = WeightedSBM(max_groups=5, distribution="gamma", seed=0).fit(w)
    assert model.n_groups_ == 3  # chosen by ICL, no ground truth
    assert nmi(model.labels_, truth) >= 0.9
    assert abs(model.alpha_ - 4.0) < 0.6


def test_exponential_weights_moderate_mixing():
    w, truth = planted_partition(SIZES, 0.3, degree_spread=0.3, seed=2)
    model = WeightedSBM(max_groups=5, seed=0).fit(w)
    assert model.n_groups_ == 3
    assert nmi(model.labels_, truth) >= 0.9


def test_high_mixing_beats_leiden():
    pytest.importorskip("leidenalg", reason="the Leiden baseline needs neurodata[community]")
    w, truth = planted_partition(SIZES, 0.7, degree_spread=0.3, distribution="gamma",
                                 shape=4.0, seed=3)
    sbm = nmi(WeightedSBM(max_groups=5, distribution="gamma", seed=0).fit(w).labels_, truth)
    base = nmi(leiden(w, seed=0), truth)
    assert sbm > base + 0.2


def test_no_structure_gives_one_group():
    w, _ = planted_partition([40], 0.0, distribution="gamma", shape=4.0, seed=4)
    model = WeightedSBM(max_groups=5, distribution="gamma").fit(w)
    assert model.n_groups_ == 1


def test_nested_and_sorting():
    # two super-groups, each made of two groups
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, 3], 12)
    mean = np.array([[8, 4, 1, 1], [4, 8, 1, 1], [1, 1, 8, 4], [1, 1, 4, 8]], float)
    w = rng.gamma(4.0, mean[labels][:, labels] / 4.0)
    w = np.triu(w, 1) + np.triu(w, 1).T
    model = WeightedSBM(max_groups=5, distribution="gamma", nested=True).fit(w)
    finest = model.levels_[-1]
    assert nmi(finest, labels) >= 0.9
    order = sort_by_community(model.labels_)
    assert np.all(np.diff(model.labels_[order]) >= 0)


def test_bad_graphs():
    with pytest.raises(InputDataError, match="square"):
        WeightedSBM().fit(np.ones((3, 4)))
    with pytest.raises(InputDataError, match="negative"):
        WeightedSBM().fit(-np.ones((3, 3)))
    with pytest.raises(InputDataError, match="symmetric"):
        WeightedSBM().fit(np.triu(np.ones((4, 4))))
    with pytest.raises(InputDataError, match="NaN"):
        WeightedSBM().fit(np.full((3, 3), np.nan))
