"""Demo step: HMM-GLM state switching on simulated data and on Stevenson M1 (reduced)."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TITLE = "HMM-GLM: switching coupled GLMs with one-hot and Gaussian priors"


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def _simulated(out: Path) -> dict:
    from neurodata.models.hmmglm import HMMGLM, match_states, simulate
    from neurodata.plot.hmmglm import hmmglm_coupling, hmmglm_states

    ds, truth = simulate(n_states=3, n_neurons=12, n_time=400, n_trials=10, seed=0)
    train, test = ds.isel(trial=slice(0, 8)), ds.isel(trial=slice(8, None))
    model = HMMGLM(3, prior="onehot", link="sigmoid", n_restarts=2, max_iter=40).fit(train)
    proba = model.predict_proba(test)
    perm = match_states(truth["states"][8:], proba.values)
    acc = float(np.mean(perm[truth["states"][8:]] == proba.values.argmax(-1)))
    figs = [
        _save(hmmglm_states(test.activity.isel(trial=0), proba.isel(trial=0),
                            true_states=perm[truth["states"][8]]), out / "sim_states.png"),
        _save(hmmglm_coupling(model.coupling_, model.global_structure_),
              out / "sim_coupling.png"),
    ]
    text = (f"Simulated one-hot HMM-GLM (3 states, 12 neurons, 8 training trials of 400 "
            f"bins). One-hot prior fit: held-out state accuracy after Hungarian matching "
            f"<b>{acc:.3f}</b>, held-out {model.score(test):.3f} bits/spike.")
    return {"title": "Simulated data", "text": text, "figures": figs}


def _m1(out: Path) -> dict:
    import xarray as xr

    import neurodata
    from neurodata import preprocess
    from neurodata.models.hmmglm import HMMGLM, select_n_states
    from neurodata.plot.hmmglm import hmmglm_coupling, hmmglm_graph, hmmglm_states

    ds = neurodata.datasets.load("stevenson2011-m1")
    rates = ds.activity.mean("time").values
    # active but not saturated neurons (0.3-1.5 spikes per 50 ms bin)
    keep = np.flatnonzero((rates > 0.3) & (rates < 1.5))[:12]
    ds = preprocess.select_neurons(ds, list(ds.neuron_id.values[keep]))
    ds = preprocess.cut_windows(ds.isel(time=slice(0, 6000)), length=30.0)
    kw = dict(link="softplus", prior="gaussian", n_restarts=1, max_iter=25, history_bins=3)
    sel = select_n_states(ds, (1, 2), n_folds=2, **kw)
    best = int(sel.attrs["best_n_states"])
    model = HMMGLM(max(best, 2), **kw).fit(ds)
    proba = model.predict_proba(ds)
    vel = ds.behavior.sel(behavior_channel=["vel_x", "vel_y"])
    speed = xr.DataArray(np.hypot(*vel.transpose("behavior_channel", ...).values),
                         dims=("trial", "time"), name="hand speed")
    fig, axes = plt.subplots(1, model.n_states, figsize=(3.2 * model.n_states, 3.2))
    for k, ax in enumerate(np.atleast_1d(axes)):
        hmmglm_graph(model.coupling_.sum("basis").isel(state=k), threshold=0.1,
                     title=f"state {k}", ax=ax)
    figs = [
        _save(hmmglm_states(ds.activity.isel(trial=0), proba.isel(trial=0),
                            behavior=speed.isel(trial=0)), out / "m1_states.png"),
        _save(hmmglm_coupling(model.coupling_, model.global_structure_),
              out / "m1_coupling.png"),
        _save(fig, out / "m1_graph.png"),
    ]
    occupancy = proba.mean(("trial", "time")).values
    speed_by_state = [float(speed.values[proba.values.argmax(-1) == k].mean())
                      for k in range(model.n_states)]
    rows = "".join(f"<tr><td>{s}</td><td>{m:.4f}</td></tr>"
                   for s, m in zip(sel.n_states.values, sel["mean"].values, strict=True))
    text = (f"Stevenson 2011 M1, {ds.sizes['neuron']} neurons with 0.3-1.5 spikes/bin, "
            f"50 ms bins, first 5 min cut into {ds.sizes['trial']} windows of 30 s; Gaussian "
            "prior, 2-fold CV over windows:<table><tr><th>states</th><th>held-out bits/spike"
            f"</th></tr>{rows}</table>Selected S = {best}; shown S = {model.n_states}. "
            f"Occupancy {np.round(occupancy, 2).tolist()}, mean hand speed per state "
            f"{html.escape(str(np.round(speed_by_state, 3).tolist()))}.")
    return {"title": "Stevenson M1 (reduced)", "text": text, "figures": figs}


def run(out: Path) -> list[dict]:
    """Fit on simulated data and on a reduced M1 recording; return the report sections."""
    folder = Path(out) / "hmmglm"
    folder.mkdir(parents=True, exist_ok=True)
    return [_simulated(folder), _m1(folder)]
