"""Demo step: GPFA on simulated data (recovery) and on the Stevenson 2011 M1 recording."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

TITLE = "GPFA: smooth single-trial latent trajectories"


def run(out: Path) -> list[dict]:
    """Fit GPFA on simulated and M1 data; write figures under ``out/gpfa``."""
    import matplotlib

    matplotlib.use("Agg")
    import neurodata
    from neurodata.models.gpfa import GPFA, select_n_latents, simulate

    folder = out / "gpfa"
    folder.mkdir(parents=True, exist_ok=True)
    sections = []

    ds, truth = simulate(n_trials=60, n_time=30, n_neurons=24, n_latents=3,
                         timescales=[0.04, 0.08, 0.16], seed=0)
    model = GPFA(n_latents=3, max_iter=150, progress=False).fit(ds)
    cv = select_n_latents(ds.isel(trial=slice(0, 30)), [2, 3, 4], n_folds=2,
                          max_iter=40, progress=False)
    figs = []
    for name, fig in (("sim_timescales", neurodata.plot.gpfa_timescales(model)),
                      ("sim_cv", neurodata.plot.gpfa_cv_curve(cv))):
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=90)
        figs.append(str(path))
    sections.append({
        "title": "Simulated data: recovery",
        "text": (f"True timescales {np.round(truth['timescales'] * 1e3).tolist()} ms, learned "
                 f"{np.round(np.sort(model.timescales_.values) * 1e3, 1).tolist()} ms; "
                 f"leave-neuron-out CV picks {cv.attrs['best_n_latents']} latents (truth 3)."),
        "figures": figs})

    os.environ.setdefault("NEURODATA_MIRROR", str(Path(__file__).resolve().parents[3]
                                                  / "shared" / "data"))
    try:
        m1 = neurodata.datasets.load("stevenson2011-m1")
    except neurodata.NeurodataError as exc:
        sections.append({"title": "M1", "text": f"M1 data not available: {exc}",
                         "figures": []})
        return sections
    trials = neurodata.preprocess.cut_windows(m1, 1.0).isel(trial=slice(0, 100))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m1_model = GPFA(n_latents=6, max_iter=25, progress=False).fit(trials)
    lat = m1_model.transform(trials)
    speed = np.linalg.norm(trials["behavior"].sel(behavior_channel=["vel_x", "vel_y"]).values,
                           axis=-1).mean(axis=1)
    figs = []
    for name, fig in (
            ("m1_latents", neurodata.plot.gpfa_latents(lat, color_by=speed, n_trials=25)),
            ("m1_variance", neurodata.plot.gpfa_variance_explained(m1_model)),
            ("m1_timescales", neurodata.plot.gpfa_timescales(m1_model))):
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=90)
        figs.append(str(path))
    sections.append({
        "title": "Stevenson 2011 M1 (100 one-second trials, 6 latents)",
        "text": ("Single-trial trajectories coloured by mean hand speed; learned timescales "
                 f"{np.round(m1_model.timescales_.values * 1e3).tolist()} ms."),
        "figures": figs})
    return sections
