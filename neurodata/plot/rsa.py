"""Figures for RSA: RDM panels, MDS, model comparison bars, (l, u) heat maps, layer maps.

Every function takes results computed by :mod:`neurodata.models.rsa` and returns a
:class:`matplotlib.figure.Figure`; nothing is fitted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

__all__ = [
    "layer_area_heatmap",
    "model_comparison_bars",
    "rdm_mds",
    "rdm_panel",
    "topology_heatmap",
]


def rdm_panel(rdms: xr.Dataset | np.ndarray, *, titles: Sequence[str] | None = None,
              ncols: int = 4, rank: bool = True, cmap: str = "viridis") -> Figure:
    """A grid of RDMs (rank-scaled per RDM by default, so panels share one colour scale).

    Parameters
    ----------
    rdms
        RDM dataset or array ``(n_rdm, n, n)``.
    titles
        One title per RDM (default: ``rdm_name``).
    ncols
        Panels per row.
    rank
        Show per-RDM percentiles of the dissimilarities instead of raw values.
    cmap
        Matplotlib colour map.
    """
    if isinstance(rdms, xr.Dataset):
        values = rdms["dissimilarity"].values
        names = [str(v) for v in rdms["rdm_name"].values] if "rdm_name" in rdms.coords else None
    else:
        values = np.asarray(rdms)
        values = values[None] if values.ndim == 2 else values
        names = None
    titles = list(titles) if titles is not None else names or [str(i) for i in
                                                                range(len(values))]
    n = len(values)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows), squeeze=False)
    iu = np.triu_indices(values.shape[1], 1)
    for ax, rdm, title in zip(axes.ravel(), values, titles, strict=False):
        shown = rdm
        if rank:
            from scipy.stats import rankdata
            r = rankdata(rdm[iu]) / len(iu[0])
            shown = np.zeros_like(rdm)
            shown[iu] = r
            shown = shown + shown.T
        ax.imshow(shown, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def rdm_mds(position: xr.DataArray, *, groups: Any = None, title: str = "",
            ax: plt.Axes | None = None) -> Figure:
    """Scatter of an MDS embedding (:func:`neurodata.models.rsa.mds`), coloured by group."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
    else:
        fig = ax.figure
    pos = np.asarray(position)
    if groups is None:
        ax.scatter(pos[:, 0], pos[:, 1], s=18)
    else:
        g = np.asarray(groups)
        for label in np.unique(g):
            sel = g == label
            ax.scatter(pos[sel, 0], pos[sel, 1], s=18, label=str(label))
        ax.legend(fontsize=7, frameon=False)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "MDS")
    return fig


def model_comparison_bars(result: xr.Dataset, *, significant: xr.DataArray | None = None,
                          sort: bool = True, ax: plt.Axes | None = None) -> Figure:
    """Model evaluations with s.e.m., the noise-ceiling band and pairwise significance.

    Parameters
    ----------
    result
        Output of :func:`neurodata.models.rsa.dual_bootstrap`.
    significant
        Boolean ``(model, model_)`` from :func:`neurodata.models.rsa.pairwise_tests`: for
        every significant pair, a line above the bars runs from the better model to the
        worse one, which it marks with a triangle (rsatoolbox's "Golan wings", simplified).
    sort
        Order bars by mean evaluation, best first.
    ax
        Axes to draw into.
    """
    means = result["mean"].values
    sem = result["sem"].values
    names = [str(n) for n in result["model"].values]
    order = np.argsort(-means) if sort else np.arange(len(means))
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(means), 4.2))
    else:
        fig = ax.figure
    x = np.arange(len(means))
    lower, upper = result["noise_ceiling"].values
    ax.axhspan(lower, upper, color="0.85", zorder=0, label="noise ceiling")
    ax.bar(x, means[order], yerr=sem[order], color="tab:blue", capsize=3, zorder=2)
    stars = result["p_zero"].values[order] < 0.05 / len(means)
    top = (means + sem)[order]
    for xi, ok, t in zip(x, stars, top, strict=True):
        if ok:
            ax.text(xi, t + 0.01, "*", ha="center", va="bottom")
    if significant is not None:
        names_ = result["model"].values
        sig = np.asarray(significant.sel(model=names_, model_=names_))
        sig = sig[np.ix_(order, order)]
        base = max(upper, top.max()) + 0.05
        step = 0.025
        for i in range(len(means)):
            beaten = [j for j in range(len(means)) if sig[i, j] and means[order][i] >
                      means[order][j]]
            for j in beaten:
                ax.plot([i, j], [base + step * i] * 2, color="0.3", lw=0.8)
                ax.plot(j, base + step * i, marker="v", color="0.3", ms=3)
    ax.set_xticks(x)
    ax.set_xticklabels([names[i] for i in order], rotation=45, ha="right")
    method = result.attrs.get("method", "")
    ax.set_ylabel(f"RDM correlation [{method}]")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def topology_heatmap(accuracy: xr.DataArray | Sequence[xr.DataArray], *,
                     titles: Sequence[str] | None = None, chance: float | None = None) -> Figure:
    """Identification accuracy over the (l, u) grid (:func:`~neurodata.models.rsa.topology_grid`).

    Several grids (e.g. growing noise levels) are drawn side by side on one colour scale.
    """
    grids = [accuracy] if isinstance(accuracy, xr.DataArray) else list(accuracy)
    fig, axes = plt.subplots(1, len(grids), figsize=(3.4 * len(grids) + 0.8, 3.3),
                             squeeze=False)
    vmin = chance if chance is not None else np.nanmin([np.nanmin(g) for g in grids])
    for k, (ax, g) in enumerate(zip(axes[0], grids, strict=True)):
        lo, up = g["lower"].values, g["upper"].values
        im = ax.imshow(g.values.T, origin="lower", cmap="magma", vmin=vmin, vmax=1.0,
                       extent=(lo[0], lo[-1], up[0], up[-1]), aspect="equal")
        ax.set_xlabel("lower quantile l")
        if k == 0:
            ax.set_ylabel("upper quantile u")
        if titles is not None:
            ax.set_title(titles[k], fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="identification accuracy", shrink=0.85)
    return fig


def layer_area_heatmap(result: xr.Dataset) -> Figure:
    """Scores of every (area, layer) pair with the best layer per area and its robustness.

    Takes the output of :func:`neurodata.models.rsa.layer_area_map`; each cell is annotated
    with how often that layer was the best match over the subsamples.
    """
    score = result["score"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * score.sizes["layer"],
                                    1.0 + 0.6 * score.sizes["area"]))
    im = ax.imshow(score.values, cmap="viridis", aspect="auto")
    frac = result["best_fraction"].values
    for i in range(score.sizes["area"]):
        j = int(np.argmax(score.values[i]))
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="w", lw=2))
        for jj in range(score.sizes["layer"]):
            if np.isfinite(frac[i, jj]):
                ax.text(jj, i, f"{frac[i, jj]:.2f}", ha="center", va="center", fontsize=7,
                        color="w")
    ax.set_xticks(range(score.sizes["layer"]))
    ax.set_xticklabels([str(v) for v in score["layer"].values], rotation=45, ha="right")
    ax.set_yticks(range(score.sizes["area"]))
    ax.set_yticklabels([str(v) for v in score["area"].values])
    fig.colorbar(im, ax=ax, label=f"score [{result.attrs.get('measure', '')}]")
    ax.set_title("best layer per area (box); fraction of subsamples", fontsize=8)
    fig.tight_layout()
    return fig
