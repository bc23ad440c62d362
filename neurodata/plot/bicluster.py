"""Figures of a fitted :class:`~neurodata.models.bicluster.BiClustering` (no computation)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

__all__ = ["bicluster_coclustering", "bicluster_latents", "bicluster_states",
           "bicluster_traces"]


def bicluster_coclustering(model, *, which: str = "neuron") -> Figure:
    """Posterior co-clustering matrix sorted by the point-estimate labels.

    Parameters
    ----------
    model
        A fitted ``BiClustering``.
    which
        ``"neuron"`` or ``"time"``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    psm = model.neuron_coclustering_ if which == "neuron" else model.time_coclustering_
    labels = (model.neuron_clusters_ if which == "neuron" else model.state_sequence_).values
    order = np.argsort(labels, kind="stable")
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(np.asarray(psm)[np.ix_(order, order)], vmin=0, vmax=1, cmap="viridis",
                   interpolation="nearest")
    edges = np.flatnonzero(np.diff(labels[order])) + 0.5
    for e in edges:
        ax.axhline(e, color="w", lw=0.6)
        ax.axvline(e, color="w", lw=0.6)
    ax.set_title(f"{which} co-clustering (sorted by point estimate)")
    ax.set_xlabel(f"{which} (sorted)")
    ax.set_ylabel(f"{which} (sorted)")
    fig.colorbar(im, ax=ax, label="posterior probability")
    fig.tight_layout()
    return fig


def bicluster_states(model, behavior: xr.DataArray | None = None) -> Figure:
    """Point-estimate state sequence over time, optionally above a behavioural trace.

    Parameters
    ----------
    model
        A fitted ``BiClustering``.
    behavior
        Optional ``(time,)`` DataArray (e.g. hand speed) drawn under the states.

    Returns
    -------
    matplotlib.figure.Figure
    """
    states = model.state_sequence_
    rows = 2 if behavior is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(8, 1.6 * rows + 0.6), sharex=True,
                             squeeze=False)
    t = states["time"].values
    axes[0, 0].imshow(states.values[None, :], aspect="auto", cmap="tab10", vmin=0, vmax=9,
                      extent=(t[0], t[-1], 0, 1), interpolation="nearest")
    axes[0, 0].set_yticks([])
    axes[0, 0].set_title("temporal states (maxPEAR)")
    if behavior is not None:
        axes[1, 0].plot(behavior["time"].values, behavior.values, lw=0.7, color="k")
        axes[1, 0].set_ylabel(str(behavior.name or "behaviour"))
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    return fig


def bicluster_latents(model) -> Figure:
    """Each cluster's aligned trajectories (baseline and factors) with 95 % bands.

    Parameters
    ----------
    model
        A fitted ``BiClustering``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    lat = model.latents_
    n_c, n_l = lat.sizes["cluster"], lat.sizes["latent"]
    fig, axes = plt.subplots(n_c, n_l, figsize=(3.2 * n_l, 1.6 * n_c + 0.5), sharex=True,
                             squeeze=False)
    t = lat["time"].values
    for c in range(n_c):
        for j, name in enumerate(lat["latent"].values):
            ax = axes[c, j]
            sel = lat.isel(cluster=c, latent=j)
            ax.fill_between(t, sel.sel(stat="lower"), sel.sel(stat="upper"), alpha=0.3, lw=0)
            ax.plot(t, sel.sel(stat="mean"), lw=0.8)
            ax.set_title(f"cluster {c}: {name}", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    fig.tight_layout()
    return fig


def bicluster_traces(model) -> Figure:
    """Trace plots of the log-likelihood (all sweeps) and of the numbers of clusters/states.

    Parameters
    ----------
    model
        A fitted ``BiClustering``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
    for c in range(model.loglik_trace_.sizes["chain"]):
        axes[0].plot(model.loglik_trace_.isel(chain=c).values, lw=0.6, label=f"chain {c}")
        axes[1].plot(model.posterior_["n_clusters"].isel(chain=c).values, lw=0.8)
        axes[2].plot(model.posterior_["n_states"].isel(chain=c).values, lw=0.8)
    axes[0].set_title("log-likelihood (every sweep)")
    axes[0].set_xlabel("sweep")
    axes[1].set_title("occupied neuron clusters (kept draws)")
    axes[2].set_title("occupied states (kept draws)")
    for ax in axes[1:]:
        ax.set_xlabel("kept draw")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
