"""The digits CNN, layer activations, layer identification (tRSA) and the 92-image pipeline."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from neurodata.errors import InputDataError
from neurodata.models import rsa
from neurodata.models.rsa import networks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained():
    nets, acc = networks.train_digits_cnn(jax.random.split(jax.random.key(0), 4), n_steps=100,
                                          width=4, batch_size=32)
    images, labels = networks.digits()
    probe = np.concatenate([np.where(labels[1500:] == c)[0][:3] + 1500 for c in range(10)])
    return nets, acc, images[probe]


def _layer_rdms(nets, probe):
    rdms, region, subject = [], [], []
    for s, acts in enumerate(networks.network_activations(nets, probe,
                                                           [f"d{i}" for i in range(len(probe))])):
        for layer, ds in acts.items():
            rdms.append(rsa.calc_rdm(ds, "correlation")["dissimilarity"].values[0])
            region.append(layer)
            subject.append(s)
    return np.array(rdms), np.array(region), np.array(subject)


def test_networks_learn_and_give_layer_datasets(trained):
    nets, acc, probe = trained
    assert np.all(acc > 0.6)  # chance is 0.1
    acts = networks.network_activations(nets[:1], probe, [f"d{i}" for i in range(len(probe))])
    assert list(acts[0]) == list(networks.LAYERS)
    assert dict(acts[0]["fc1"].sizes) == {"stimulus": len(probe), "neuron": 64}
    with pytest.raises(InputDataError, match="8, 8"):
        networks.layer_activations(nets[0], np.zeros((3, 9, 9)))


def test_rank_statistics_identify_layers_under_monotone_distortions(trained):
    nets, _, probe = trained
    rdms, region, subject = _layer_rdms(nets, probe)
    base = rdms / rdms.max((1, 2), keepdims=True)
    rng = np.random.default_rng(0)
    clean = {name: rsa.identification_accuracy(f(base), region, subject) for name, f in
             (("rdm", lambda d: d), ("rgtm", lambda d: rsa.gt_transform(d, 0.4, 0.6)))}
    assert min(clean.values()) > 0.5  # chance is 0.25
    # individual idiosyncrasy as a per-RDM monotone distortion of growing spread: the
    # topology-sensitive RGTM is exactly unchanged, the RDM degrades
    acc = {"rdm": [], "rgtm": []}
    for k in (1.0, 2.0):
        distorted = base ** np.exp(k * rng.normal(size=(len(base), 1, 1)))
        acc["rdm"].append(rsa.identification_accuracy(distorted, region, subject))
        acc["rgtm"].append(rsa.identification_accuracy(rsa.gt_transform(distorted, 0.4, 0.6),
                                                       region, subject))
    assert acc["rgtm"] == [clean["rgtm"]] * 2
    assert acc["rdm"][-1] < clean["rdm"] - 0.1
    assert acc["rgtm"][-1] > acc["rdm"][-1]
    # noise on the activations (the realistic nuisance): at 2 SD the topology-sensitive
    # RGTM identifies layers better than the RDM (full size: 0.55 vs 0.40, see tutorial).
    # The ordering is not asserted for the paper's noise on the RDM entries (SD = pooled
    # std x k / 10, clipped at 0): there the RDM is the more robust statistic on these
    # networks (tutorial 07: 0.83 -> 0.84 at k = 4 against 0.96 -> 0.79 for RGTM(0.4, 0.6))
    acts = [networks.layer_activations(n, probe) for n in nets]
    rdm_acc, rgtm_acc = [], []
    for _ in range(3):
        noisy = []
        for a in acts:
            for v in a.values():
                v = v.reshape(len(probe), -1)
                v = v + 2.0 * v.std() * rng.normal(size=v.shape)
                noisy.append(rsa.calc_rdm(v, "correlation")["dissimilarity"].values[0])
        noisy = np.array(noisy)
        rdm_acc.append(rsa.identification_accuracy(noisy, region, subject))
        rgtm_acc.append(rsa.identification_accuracy(rsa.gt_transform(noisy, 0.4, 0.6), region,
                                                    subject))
    assert np.mean(rgtm_acc) > np.mean(rdm_acc)
    # the (l, u) grid reproduces the single-statistic accuracies
    grid = rsa.topology_grid(base, region, subject, levels=[0.0, 0.4, 0.6, 1.0])
    assert float(grid.sel(lower=0.4, upper=0.6)) == pytest.approx(clean["rgtm"])
    assert float(grid.sel(lower=0.0, upper=1.0)) == pytest.approx(
        rsa.identification_accuracy(rsa.rank_transform(base), region, subject))


def test_same_layer_of_another_seed_matches_best(trained):
    nets, _, probe = trained
    ids = [f"d{i}" for i in range(len(probe))]
    a, b = networks.network_activations(nets[:2], probe, ids)
    score = rsa.layer_area_map(a, b, measure="cka", n_subsamples=0)["score"].values
    off = ~np.eye(len(score), dtype=bool)
    assert np.diag(score).mean() > score[off].mean()


def test_92_images_pipeline(trained):
    import os
    from pathlib import Path

    import neurodata
    os.environ.setdefault("NEURODATA_MIRROR", str(
        Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    try:
        ds = neurodata.datasets.load("kriegeskorte2008-92images")
    except neurodata.NeurodataError:
        pytest.skip("the 92-image data is not in the mirror")
    nets, _, _ = trained
    small = networks.to_digit_images(ds["image"].values)
    assert small.shape == (92, 8, 8) and small.min() == 0 and small.max() == 1
    ids = ds["stimulus_id"].values
    acts = networks.network_activations(nets[:2], small, ids)
    layers = {k: rsa.calc_rdm(v, "correlation") for k, v in acts[0].items()}
    hit = ds.isel(rdm=np.where(ds["region"].values == "hIT")[0][:8]).drop_vars("image")
    res = rsa.dual_bootstrap(
        rsa.rdm_dataset(np.concatenate([v["dissimilarity"].values for v in layers.values()]),
                        rdm_name=list(layers), stimulus_id=ids),
        hit, key=jax.random.key(0), subjects=hit["subject"].values, n_bootstrap=50)
    assert np.all(np.abs(res["mean"].values) < 0.5)
    assert np.all(np.isfinite(res["sem"].values))
