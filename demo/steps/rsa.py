"""Demo step: human and monkey IT against model RDMs and a JAX CNN; topological RSA."""

from __future__ import annotations

import html
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

TITLE = "RSA: human IT, monkey IT, model RDMs and a small JAX CNN"


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def run(out: Path) -> list[dict]:
    """Model comparison with noise ceiling, MDS, CNN layers vs IT, and a tRSA heat map."""
    import jax

    import neurodata
    import neurodata.plot as ndplot
    from neurodata.models import rsa
    from neurodata.models.rsa import networks

    folder = out / "rsa"
    folder.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("NEURODATA_MIRROR"):
        shared = Path(__file__).resolve().parents[3] / "shared" / "data"
        if shared.is_dir():
            os.environ["NEURODATA_MIRROR"] = str(shared)
    ds = neurodata.datasets.load("kriegeskorte2008-92images")
    kind = ds["rdm_kind"].values
    brain = ds.isel(rdm=np.where((kind == "brain") & (ds["subject"].values != ""))[0])
    models = ds.isel(rdm=np.where(kind == "model")[0]).drop_vars("image")
    monkey = ds.isel(rdm=np.where(ds["region"].values == "mIT")[0]).drop_vars("image")
    sections = []

    # 1. model comparison ---------------------------------------------------------------
    res = rsa.dual_bootstrap(models, brain.drop_vars("image"), key=jax.random.key(0),
                             subjects=brain["subject"].values, n_bootstrap=300)
    sig = rsa.pairwise_tests(res)
    figs = [_save(ndplot.model_comparison_bars(res, significant=sig),
                  folder / "model_comparison.png"),
            _save(ndplot.rdm_panel(brain.drop_vars("image")), folder / "hit_rdms.png")]
    animate = ds["animate"].values if "animate" in ds.coords else None
    groups = None if animate is None else np.where(animate, "animate", "inanimate")
    figs.append(_save(ndplot.rdm_mds(rsa.mds(brain.drop_vars("image")), groups=groups,
                                     title="MDS of the mean hIT RDM"), folder / "mds.png"))
    rows = "".join(
        f"<tr><td>{html.escape(str(m))}</td><td>{v:.3f}</td><td>{s:.3f}</td></tr>"
        for m, v, s in zip(res["model"].values, res["mean"].values, res["sem"].values,
                           strict=True))
    lo, up = res["noise_ceiling"].values
    sections.append({
        "title": "Human IT (4 subjects x 2 sessions) vs 8 model RDMs",
        "text": ("Dual bootstrap over subjects and stimuli (N = 300, Pearson on RDM vectors). "
                 f"Noise ceiling [{lo:.3f}, {up:.3f}]. Published (rsatoolbox, N = 1000): "
                 "animacy 0.313 (s.e. 0.065), monkeyIT 0.270, V1 0.021."
                 "<table><tr><th>model</th><th>mean r</th><th>s.e.</th></tr>"
                 f"{rows}</table>"),
        "figures": figs,
    })

    # 2. a small CNN on the 92 images ---------------------------------------------------
    nets, acc = networks.train_digits_cnn(jax.random.split(jax.random.key(1), 3),
                                          n_steps=150, width=4, batch_size=32)
    small = networks.to_digit_images(ds["image"].values)
    ids = ds["stimulus_id"].values
    layer_rdms = {}
    for acts in networks.network_activations(nets, small, ids):
        for layer, layer_ds in acts.items():
            layer_rdms.setdefault(layer, []).append(
                rsa.calc_rdm(layer_ds, "correlation")["dissimilarity"].values[0])
    layers = {name: rsa.rdm_dataset(np.mean(v, 0)[None], rdm_name=[name], stimulus_id=ids)
              for name, v in layer_rdms.items()}
    areas = {"hIT": rsa.rdm_dataset(brain["dissimilarity"].values.mean(0)[None],
                                    stimulus_id=ids),
             "mIT": rsa.rdm_dataset(monkey["dissimilarity"].values, stimulus_id=ids)}
    amap = rsa.layer_area_map(areas, layers, n_subsamples=20, key=jax.random.key(2))
    candidates = rsa.rdm_dataset(
        np.concatenate([models["dissimilarity"].values]
                       + [v["dissimilarity"].values for v in layers.values()]),
        rdm_name=[*models["rdm_name"].values.astype(str), *(f"CNN {k}" for k in layers)],
        stimulus_id=ids)
    both = rsa.dual_bootstrap(candidates, brain.drop_vars("image"), key=jax.random.key(4),
                              subjects=brain["subject"].values, n_bootstrap=300)
    mit_r = rsa.compare(monkey, candidates, "corr").values[0]
    cells = "".join(f"<td>{html.escape(str(name))}<br>{r:.3f}</td>"
                    for name, r in zip(candidates["rdm_name"].values, mit_r, strict=True))
    sections.append({
        "title": "Digits CNN layers vs IT (pipeline check)",
        "text": (f"Three CNNs (accuracy on held-out digits {np.round(acc, 2).tolist()}) run "
                 "on the 92 images converted to 8 x 8 grayscale. Layer RDMs (mean over seeds) "
                 "against hIT / mIT, Pearson; numbers are how often each layer wins over 20 "
                 "subsamples of 80 % of the stimuli. The second figure adds the layers to the "
                 "hIT model comparison (dual bootstrap, N = 300); the table gives the "
                 "correlations with the single mIT RDM (one animal: no bootstrap over "
                 "subjects, no noise ceiling). Digit networks are not models of IT: "
                 "this checks the plumbing, not a scientific claim."
                 f"<table><tr>{cells}</tr></table>"),
        "figures": [_save(ndplot.layer_area_heatmap(amap), folder / "layer_area_map.png"),
                    _save(ndplot.model_comparison_bars(both, significant=rsa.pairwise_tests(
                        both)), folder / "model_comparison_cnn.png")],
    })

    # 3. topological RSA: layer identification under noise -----------------------------
    images, labels = networks.digits()
    probe = np.concatenate([np.where(labels[1500:] == c)[0][:3] + 1500 for c in range(10)])
    acts = [networks.layer_activations(net, images[probe]) for net in nets]
    region = [name for _ in nets for name in networks.LAYERS]
    subject = [s for s in range(len(nets)) for _ in networks.LAYERS]
    rng = np.random.default_rng(0)
    grids = []
    for k in (0.0, 2.0):
        rdms = []
        for layer_acts in acts:
            for v in layer_acts.values():
                v = v.reshape(len(probe), -1)
                v = v + k * v.std() * rng.normal(size=v.shape)
                rdms.append(rsa.calc_rdm(v, "correlation")["dissimilarity"].values[0])
        grids.append(rsa.topology_grid(np.array(rdms), region, subject,
                                       levels=np.linspace(0, 1, 11)))
    sections.append({
        "title": "Topological RSA: identifying the layer of each RDM",
        "text": ("Leave-one-seed-out nearest-centroid identification of the layer (chance "
                 f"{1 / 4:.2f}) for GT(l, u) statistics of the layer RDMs on 30 digits, without "
                 "noise and with Gaussian noise of 2 x each layer's SD added to the "
                 "activations. The diagonal l = u holds adjacency matrices, the corner (0, 1) "
                 "the rank RDM."),
        "figures": [_save(ndplot.topology_heatmap(grids, titles=["no noise", "noise 2 SD"],
                                                  chance=0.25), folder / "trsa.png")],
    })
    return sections
