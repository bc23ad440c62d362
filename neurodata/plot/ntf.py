"""Figures of the dynamic functional connectome: NTF components, communities, rank selection.

Functions take fitted results (a :class:`~neurodata.models.ntf.DynamicConnectome`, an
:class:`~neurodata.models.ntf.NTF`, the dataset of
:func:`~neurodata.models.ntf.rank_diagnostics`) and return a matplotlib Figure.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from neurodata.models.affinity import pairs_to_matrix
from neurodata.models.community import sort_by_community

__all__ = [
    "community_graph",
    "community_matrix",
    "ntf_components",
    "ntf_rank_selection",
    "ntf_time_courses",
]


def _shade_epochs(ax, time_course: xr.DataArray) -> None:
    if "epoch" not in time_course.coords:
        return
    labels = np.asarray(time_course["epoch"].values).astype(str)
    t = np.asarray(time_course["window"].values, dtype=float)
    names = list(dict.fromkeys(labels.tolist()))
    colors = plt.get_cmap("Pastel1")(np.arange(len(names)) % 9)
    start = 0
    for i in range(1, labels.size + 1):
        if i == labels.size or labels[i] != labels[start]:
            c = colors[names.index(labels[start])]
            ax.axvspan(t[start], t[i - 1], color=c, alpha=0.6, lw=0)
            ax.text((t[start] + t[i - 1]) / 2, 0.97, labels[start], ha="center", va="top",
                    transform=ax.get_xaxis_transform(), fontsize=7)
            start = i


def community_matrix(graph, labels, ax=None, title: str = "") -> Figure:
    """A weighted adjacency matrix sorted by community, with community boundaries.

    Parameters
    ----------
    graph
        Symmetric ``(N, N)`` weights (array or DataArray).
    labels
        Community of each node.
    ax
        Axes to draw in (default: a new figure).
    title
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    w = np.asarray(getattr(graph, "values", graph), dtype=float)
    labels = np.asarray(labels)
    order = sort_by_community(labels, w.sum(1))
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4))
    fig = ax.figure
    ax.imshow(w[np.ix_(order, order)], cmap="magma", interpolation="nearest")
    bounds = np.flatnonzero(np.diff(labels[order])) + 0.5
    for b in bounds:
        ax.axhline(b, color="c", lw=0.8)
        ax.axvline(b, color="c", lw=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{labels.max() + 1} communities", fontsize=9)
    return fig


def community_graph(graph, labels, ax=None, top: float = 0.1, names=None,
                    title: str = "") -> Figure:
    """The community graph: nodes on a circle grouped by community, strongest edges drawn.

    Parameters
    ----------
    graph
        Symmetric ``(N, N)`` weights.
    labels
        Community of each node.
    ax
        Axes to draw in.
    top
        Fraction of the strongest edges drawn.
    names
        Optional node names (drawn when there are at most 60 nodes).
    title
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    w = np.asarray(getattr(graph, "values", graph), dtype=float)
    labels = np.asarray(labels)
    n = w.shape[0]
    order = sort_by_community(labels)
    angle = np.empty(n)
    angle[order] = 2 * np.pi * np.arange(n) / n
    xy = np.c_[np.cos(angle), np.sin(angle)]
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
    fig = ax.figure
    ia, ib = np.triu_indices(n, k=1)
    vals = w[ia, ib]
    keep = vals >= np.quantile(vals, 1 - top) if vals.size else np.zeros(0, bool)
    vmax = vals.max() if vals.size and vals.max() > 0 else 1.0
    colors = plt.get_cmap("tab10")(labels % 10)
    for a, b, v in zip(ia[keep], ib[keep], vals[keep], strict=True):
        same = labels[a] == labels[b]
        ax.plot(*xy[[a, b]].T, color=colors[a] if same else "0.6", alpha=0.2 + 0.6 * v / vmax,
                lw=0.5 + 1.5 * v / vmax, zorder=1)
    ax.scatter(*xy.T, c=colors, s=30, zorder=2, edgecolor="k", linewidth=0.3)
    if names is not None and n <= 60:
        for (x, y), name in zip(xy, names, strict=True):
            ax.text(1.12 * x, 1.12 * y, str(name), fontsize=6, ha="center", va="center")
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title or f"strongest {100 * top:.0f}% of edges", fontsize=9)
    return fig


def ntf_time_courses(time_course: xr.DataArray, weights=None) -> Figure:
    """Component time courses over windows, with stimulus epochs shaded.

    Parameters
    ----------
    time_course
        ``(window, component)`` factor (``DynamicConnectome.time_course_`` or
        ``NTF.factors_[1]``), optionally with an ``epoch`` coordinate.
    weights
        Optional component weights to scale the curves by.

    Returns
    -------
    matplotlib.figure.Figure
    """
    tc = time_course.values * (1.0 if weights is None else np.asarray(weights)[None, :])
    n_comp = tc.shape[1]
    fig, axes = plt.subplots(n_comp, 1, figsize=(7, 1.2 * n_comp + 0.6), sharex=True,
                             squeeze=False)
    t = np.asarray(time_course["window"].values, dtype=float)
    for r, ax in enumerate(axes[:, 0]):
        _shade_epochs(ax, time_course)
        ax.plot(t, tc[:, r], color="k", lw=1)
        ax.set_ylabel(f"C{r}", rotation=0, labelpad=12)
        ax.set_yticks([])
    axes[-1, 0].set_xlabel("window centre (s)")
    fig.tight_layout()
    return fig


def ntf_components(dc, max_components: int | None = None, top: float = 0.1) -> Figure:
    """One row per component: sorted affinity matrix, community graph, time course, loadings.

    Parameters
    ----------
    dc
        A fitted :class:`~neurodata.models.ntf.DynamicConnectome`.
    max_components
        Draw at most this many components.
    top
        Fraction of edges drawn in the community graph.

    Returns
    -------
    matplotlib.figure.Figure
    """
    n_comp = dc.communities_.sizes["component"]
    if max_components is not None:
        n_comp = min(n_comp, max_components)
    fig, axes = plt.subplots(n_comp, 4, figsize=(13, 3.0 * n_comp), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 2.2, 1]})
    n_neuron = dc.communities_.sizes["neuron"]
    t = np.asarray(dc.time_course_["window"].values, dtype=float)
    for r in range(n_comp):
        graph = pairs_to_matrix(dc.pair_pattern_[:, r], n_neuron).values
        labels = dc.communities_.values[r]
        community_matrix(graph, labels, ax=axes[r, 0],
                         title=f"C{r}: {labels.max() + 1} communities")
        community_graph(graph, labels, ax=axes[r, 1], top=top)
        ax = axes[r, 2]
        _shade_epochs(ax, dc.time_course_)
        ax.plot(t, dc.time_course_.values[:, r], color="k", lw=1)
        ax.set_xlabel("window centre (s)")
        ax.set_title(f"time course (weight {dc.weights_[r]:.3g})", fontsize=9)
        load = dc.animal_loading_
        ax = axes[r, 3]
        ax.bar(np.arange(load.sizes["animal"]), load.values[:, r], color="0.4")
        ax.set_xticks(np.arange(load.sizes["animal"]))
        ax.set_xticklabels([str(a) for a in load["animal"].values], fontsize=7)
        ax.set_title("animal loadings", fontsize=9)
    fig.tight_layout()
    return fig


def ntf_rank_selection(diagnostics: xr.Dataset) -> Figure:
    """Rank diagnostics: training error, replicate similarity and held-out error vs rank.

    Parameters
    ----------
    diagnostics
        Output of :func:`~neurodata.models.ntf.rank_diagnostics`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    ranks = np.asarray(diagnostics["rank"].values)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    panels = [("error", "relative error (train)"), ("similarity", "replicate similarity"),
              ("heldout_error", "relative error (held out)")]
    for ax, (name, label) in zip(axes, panels, strict=True):
        vals = diagnostics[name].values
        for j in range(vals.shape[1]):
            ax.scatter(ranks, vals[:, j], color="0.5", s=12)
        ax.plot(ranks, np.nanmin(vals, 1) if name != "similarity" else np.nanmean(vals, 1),
                color="k")
        ax.set_xlabel("rank")
        ax.set_title(label, fontsize=10)
        ax.set_xticks(ranks)
    axes[1].set_ylim(0, 1.05)
    fig.tight_layout()
    return fig
