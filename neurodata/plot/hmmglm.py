"""Figures for the HMM-GLM: state raster, coupling matrices, connection graph, selection curve.

Functions take fitted outputs (xarray) and return a matplotlib Figure; nothing is fitted here.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

__all__ = ["hmmglm_states", "hmmglm_coupling", "hmmglm_graph", "hmmglm_selection"]


def hmmglm_states(
    activity: xr.DataArray,
    proba: xr.DataArray,
    *,
    behavior: xr.DataArray | None = None,
    true_states: np.ndarray | None = None,
    max_neurons: int = 40,
) -> Figure:
    """Spike raster above the posterior state probabilities over time (one trial).

    Parameters
    ----------
    activity
        ``(time, neuron)`` counts of one trial or session.
    proba
        ``(time, state)`` from :meth:`HMMGLM.predict_proba`.
    behavior
        Optional ``(time,)`` trace (e.g. hand speed) drawn under the states.
    true_states
        Optional ``(time,)`` true labels (simulations), drawn as a strip.
    max_neurons
        Neurons shown in the raster.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> act = xr.DataArray(np.random.poisson(0.2, (100, 5)), dims=("time", "neuron"))
    >>> p = xr.DataArray(np.full((100, 2), 0.5), dims=("time", "state"))
    >>> fig = hmmglm_states(act, p)
    """
    t = np.asarray(proba["time"].values if "time" in proba.coords else np.arange(proba.shape[0]))
    p = np.asarray(proba.transpose("time", "state").values)
    x = np.asarray(activity.transpose("time", "neuron").values)[:, :max_neurons]
    rows = 2 + (behavior is not None)
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2 + 1.5 * rows), sharex=True,
                             height_ratios=[2, 1] + [1] * (behavior is not None))
    colors = plt.get_cmap("tab10")(np.arange(p.shape[1]) % 10)
    state = p.argmax(1)
    for k in range(p.shape[1]):
        axes[0].fill_between(t, 0, x.shape[1], where=state == k, color=colors[k], alpha=0.12,
                             step="mid", linewidth=0)
    tt, nn = np.nonzero(x)
    axes[0].scatter(t[tt], nn, s=2, c="k", marker="|")
    axes[0].set_ylabel("neuron")
    axes[0].set_ylim(-0.5, x.shape[1] - 0.5)
    axes[1].stackplot(t, p.T, colors=colors, step="mid")
    if true_states is not None:
        axes[1].scatter(t, np.full(t.shape, 1.05), c=colors[np.asarray(true_states) %
                                                           len(colors)], s=3, marker="s",
                        clip_on=False)
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("p(state)")
    if behavior is not None:
        axes[2].plot(t, np.asarray(behavior.values), color="0.3", lw=0.8)
        axes[2].set_ylabel(behavior.name or "behaviour")
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    return fig


def hmmglm_coupling(coupling: xr.DataArray, global_structure: xr.DataArray | None = None
                    ) -> Figure:
    """Per-state coupling matrices (summed over the basis) beside the global prior structure.

    Parameters
    ----------
    coupling
        ``(state, post, pre, basis)`` from ``HMMGLM.coupling_``.
    global_structure
        ``HMMGLM.global_structure_``: a ``(post, pre)`` mean matrix or ``(post, pre,
        edge_class)`` class probabilities (shown as ``p(exc) - p(inh)``).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> w = xr.DataArray(np.random.randn(2, 4, 4, 1), dims=("state", "post", "pre", "basis"))
    >>> fig = hmmglm_coupling(w)
    """
    w = np.asarray(coupling.sum("basis").transpose("state", "post", "pre").values)
    panels = [(f"state {int(s)}", w[i]) for i, s in enumerate(coupling["state"].values)]
    if global_structure is not None:
        g = global_structure
        if "edge_class" in g.dims:
            g = g.sel(edge_class="exc") - g.sel(edge_class="inh")
            panels.append(("global p(exc) - p(inh)", np.asarray(g.values)))
        else:
            panels.append(("global mean", np.asarray(g.values)))
    vmax = max(float(np.max(np.abs(m))) for _, m in panels) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 0.8, 3),
                             squeeze=False)
    for ax, (title, m) in zip(axes[0], panels, strict=True):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("pre")
    axes[0, 0].set_ylabel("post")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return fig


def hmmglm_graph(weights: xr.DataArray | np.ndarray, *, threshold: float = 0.0,
                 title: str = "", ax=None) -> Figure:
    """Directed connection graph on a circle: red excitatory, blue inhibitory edges.

    Parameters
    ----------
    weights
        ``(post, pre)`` matrix (one state's coupling summed over the basis, or the global
        structure).
    threshold
        Edges with ``|w| <= threshold`` are not drawn.
    title
        Axes title.
    ax
        Draw into this axes instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> fig = hmmglm_graph(np.array([[0, 1.0], [-0.5, 0]]))
    """
    w = np.asarray(getattr(weights, "values", weights), dtype=float)
    n = w.shape[0]
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4))
    else:
        fig = ax.figure
    angle = 2 * np.pi * np.arange(n) / n
    xy = np.c_[np.cos(angle), np.sin(angle)]
    scale = np.max(np.abs(w)) or 1.0
    for post in range(n):
        for pre in range(n):
            if post == pre or abs(w[post, pre]) <= threshold:
                continue
            ax.annotate("", xy=xy[post], xytext=xy[pre],
                        arrowprops=dict(arrowstyle="->", lw=0.5 + 2 * abs(w[post, pre]) / scale,
                                        color="tab:red" if w[post, pre] > 0 else "tab:blue",
                                        alpha=0.7, shrinkA=4, shrinkB=4))
    ax.scatter(xy[:, 0], xy[:, 1], s=60, c="0.85", edgecolors="k", zorder=3)
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig


def hmmglm_selection(selection: xr.Dataset) -> Figure:
    """Held-out bits/spike against the number of states (from ``select_n_states``).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> res = xr.Dataset({"bits_per_spike": (("n_states", "fold"), np.ones((2, 2))),
    ...                   "mean": ("n_states", np.ones(2))}, coords={"n_states": [1, 2]},
    ...                  attrs={"best_n_states": 1})
    >>> fig = hmmglm_selection(res)
    """
    s = selection["n_states"].values
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(s, selection["bits_per_spike"].values, "o", color="0.7", ms=3)
    ax.plot(s, selection["mean"].values, "o-", color="k")
    ax.axvline(selection.attrs.get("best_n_states", s[0]), color="tab:red", ls="--", lw=1)
    ax.set_xlabel("number of states")
    ax.set_ylabel("held-out bits / spike")
    fig.tight_layout()
    return fig
