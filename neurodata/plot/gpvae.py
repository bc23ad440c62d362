"""Figures for the MM-GPVAE: latent trajectories by group, reconstructions, length scales."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

__all__ = ["gpvae_latents", "gpvae_length_scales", "gpvae_reconstruction"]


def _groups(latents: xr.Dataset) -> list[str]:
    return [str(v)[: -len("_mean")] for v in latents.data_vars if str(v).endswith("_mean")]


def gpvae_latents(
    latents: xr.Dataset,
    trial: int = 0,
    truth: Mapping[str, xr.DataArray | np.ndarray] | None = None,
) -> Figure:
    """Posterior latent trajectories of one trial, one panel per latent group.

    Parameters
    ----------
    latents
        Output of :meth:`MMGPVAE.transform` (``<group>_mean`` and ``<group>_var``).
    trial
        Position of the trial to draw.
    truth
        Optional group name to a true ``(trial, time)`` signal (e.g. the simulation's
        angle); it is drawn after the best affine map onto the group's first latent, on a
        twin axis so that scale and sign do not matter.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> z = xr.Dataset({"shared_mean": (("trial", "time", "shared_latent"), np.zeros((1, 5, 1))),
    ...                 "shared_var": (("trial", "time", "shared_latent"), np.ones((1, 5, 1)))})
    >>> fig = gpvae_latents(z)
    """
    groups = _groups(latents)
    fig, axes = plt.subplots(len(groups), 1, figsize=(6.5, 2.0 * len(groups)), sharex=True,
                             squeeze=False)
    time = np.asarray(latents["time"]) if "time" in latents.coords else None
    for ax, group in zip(axes[:, 0], groups, strict=True):
        mean = np.asarray(latents[f"{group}_mean"])[trial]
        sd = np.sqrt(np.asarray(latents[f"{group}_var"])[trial])
        t = time if time is not None else np.arange(mean.shape[0])
        for k in range(mean.shape[1]):
            line, = ax.plot(t, mean[:, k], lw=1.5, label=f"{group} {k}")
            ax.fill_between(t, mean[:, k] - 2 * sd[:, k], mean[:, k] + 2 * sd[:, k],
                            color=line.get_color(), alpha=0.2, lw=0)
        if truth is not None and group in truth:
            true = np.asarray(truth[group])[trial]
            ok = np.isfinite(mean[:, 0]) & np.isfinite(true)
            design = np.column_stack([true[ok], np.ones(ok.sum())])
            coef, *_ = np.linalg.lstsq(design, mean[ok, 0], rcond=None)
            ax.plot(t, np.where(ok, true * coef[0] + coef[1], np.nan), "k--", lw=1,
                    label="truth (affine)")
        ax.set_ylabel(group)
        ax.legend(fontsize=7, loc="upper right", frameon=False)
    axes[-1, 0].set_xlabel("time (s)" if time is not None else "bin")
    fig.suptitle(f"MM-GPVAE posterior latents, trial {trial} (mean +/- 2 sd)")
    fig.tight_layout()
    return fig


def gpvae_reconstruction(
    observed: xr.DataArray,
    predicted: xr.DataArray,
    trial: int = 0,
    features: Sequence[int] | None = None,
    image_shape: tuple[int, int] | None = None,
    n_frames: int = 6,
) -> Figure:
    """Observed vs reconstructed (or cross-modally predicted) data of one trial.

    Parameters
    ----------
    observed, predicted
        ``(trial, time, feature)`` arrays, e.g. ``ds["behavior"]`` and
        ``model.reconstruct(ds)["behavior"]``.
    trial
        Position of the trial to draw.
    features
        Feature positions to draw as traces (default: the first four).
    image_shape
        When given, draw ``n_frames`` evenly spaced frames as images (top: observed, bottom:
        predicted) instead of traces.
    n_frames
        Number of frames for images.

    Returns
    -------
    matplotlib.figure.Figure
    """
    obs = np.asarray(observed)[trial]
    pred = np.asarray(predicted)[trial]
    if image_shape is not None:
        frames = np.linspace(0, obs.shape[0] - 1, n_frames).astype(int)
        fig, axes = plt.subplots(2, n_frames, figsize=(1.3 * n_frames, 2.9), squeeze=False)
        for j, f in enumerate(frames):
            for i, arr in enumerate((obs, pred)):
                axes[i, j].imshow(arr[f].reshape(image_shape), cmap="gray",
                                  vmin=np.nanmin(obs), vmax=np.nanmax(obs))
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
            axes[0, j].set_title(f"bin {f}", fontsize=8)
        axes[0, 0].set_ylabel("observed")
        axes[1, 0].set_ylabel("predicted")
        fig.tight_layout()
        return fig
    features = list(range(min(4, obs.shape[1]))) if features is None else list(features)
    fig, axes = plt.subplots(len(features), 1, figsize=(6.5, 1.6 * len(features)),
                             sharex=True, squeeze=False)
    names = (np.asarray(observed[observed.dims[2]]) if observed.dims[2] in observed.coords
             else np.arange(obs.shape[1]))
    for ax, k in zip(axes[:, 0], features, strict=True):
        ax.plot(obs[:, k], color="0.5", lw=1, label="observed")
        ax.plot(pred[:, k], color="C3", lw=1.5, label="predicted")
        ax.set_ylabel(str(names[k]), fontsize=8)
    axes[0, 0].legend(fontsize=7, frameon=False, loc="upper right")
    axes[-1, 0].set_xlabel("bin")
    fig.tight_layout()
    return fig


def gpvae_length_scales(
    length_scales: Mapping[str, np.ndarray],
    init: float | None = None,
    truth: float | None = None,
) -> Figure:
    """Learned GP length scale of every latent, grouped (``model.length_scales_``).

    Parameters
    ----------
    length_scales
        Group name to length scales in seconds.
    init
        Initial length scale to mark (seconds).
    truth
        True length scale to mark (seconds), e.g. on the simulation.

    Returns
    -------
    matplotlib.figure.Figure
    """
    labels, values = [], []
    for group, ell in length_scales.items():
        for k, v in enumerate(np.atleast_1d(np.asarray(ell))):
            labels.append(f"{group} {k}")
            values.append(float(v))
    fig, ax = plt.subplots(figsize=(max(3.0, 0.7 * len(values) + 1.5), 3.0))
    ax.bar(range(len(values)), values, color="C0")
    if init is not None:
        ax.axhline(init, color="0.4", ls=":", label="initial")
    if truth is not None:
        ax.axhline(truth, color="k", ls="--", label="true")
    if init is not None or truth is not None:
        ax.legend(fontsize=8, frameon=False)
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right")
    ax.set_ylabel("length scale (s)")
    ax.set_title("Learned GP length scales")
    fig.tight_layout()
    return fig
