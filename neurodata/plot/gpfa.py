"""GPFA figures: single-trial latent trajectories, timescales, CV curve, variance explained."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

__all__ = ["gpfa_cv_curve", "gpfa_latents", "gpfa_timescales", "gpfa_variance_explained"]


def gpfa_latents(
    latents: xr.Dataset,
    color_by: np.ndarray | str | None = None,
    dims: tuple[int, int] = (0, 1),
    n_trials: int = 30,
    variable: str = "latents_orth",
) -> Figure:
    """Single-trial trajectories in two orthonormalized latent dimensions.

    Parameters
    ----------
    latents
        Output of :meth:`neurodata.models.GPFA.transform`.
    color_by
        One value per trial (or the name of a trial coordinate) that colours the traces.
    dims
        The two latent indices to plot.
    n_trials
        At most this many trials are drawn.
    variable
        ``"latents_orth"`` (default) or ``"latents"``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    x = latents[variable].values[:n_trials]
    if isinstance(color_by, str):
        color_by = latents[color_by].values
    values = None if color_by is None else np.asarray(color_by, dtype=float)[:n_trials]
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    lo, hi = (np.nanmin(values), np.nanmax(values)) if values is not None else (0.0, 1.0)
    t = latents["time"].values
    for i, traj in enumerate(x):
        colour = cmap((values[i] - lo) / (hi - lo + 1e-12)) if values is not None else "C0"
        axes[0].plot(traj[:, dims[0]], traj[:, dims[1]], color=colour, lw=0.8, alpha=0.8)
        axes[0].plot(traj[0, dims[0]], traj[0, dims[1]], "o", color=colour, ms=3)
        axes[1].plot(t, traj[:, dims[0]], color=colour, lw=0.8, alpha=0.8)
    axes[0].set(xlabel=f"latent {dims[0]}", ylabel=f"latent {dims[1]}",
                title="single-trial trajectories (dot: start)")
    axes[1].set(xlabel="time (s)", ylabel=f"latent {dims[0]}", title="over time")
    if values is not None:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
        fig.colorbar(sm, ax=axes, label=color_by.name if hasattr(color_by, "name") else None)
    return fig


def gpfa_timescales(model: Any) -> Figure:
    """Bar chart of the learned GP timescales (ms), one bar per latent."""
    tau = np.asarray(model.timescales_.values) * 1e3
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(np.arange(tau.size), tau, color="C1")
    ax.set(xlabel="latent", ylabel="timescale (ms)", title="GP timescales")
    fig.tight_layout()
    return fig


def gpfa_cv_curve(cv: xr.Dataset) -> Figure:
    """Leave-neuron-out error (and co-bps when available) against the number of latents."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    n = cv["n_latents"].values
    ax.plot(n, cv["lno_error"].values, "o-", color="C0")
    ax.axvline(cv.attrs["best_n_latents"], color="0.6", ls="--", lw=1)
    ax.set(xlabel="number of latents", ylabel="leave-neuron-out MSE",
           title="cross-validated dimensionality")
    if np.isfinite(cv["co_bps"].values).any():
        twin = ax.twinx()
        twin.plot(n, cv["co_bps"].values, "s--", color="C3")
        twin.set_ylabel("co-bps", color="C3")
    fig.tight_layout()
    return fig


def gpfa_variance_explained(model: Any) -> Figure:
    """Fraction of variance carried by each orthonormalized latent, and the cumulative sum."""
    ve = np.asarray(model.variance_explained_.values)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar(np.arange(ve.size), ve, color="C2", label="per latent")
    ax.plot(np.arange(ve.size), np.cumsum(ve), "k.-", label="cumulative")
    ax.set(xlabel="orthonormalized latent", ylabel="fraction of variance",
           title="variance explained")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig
