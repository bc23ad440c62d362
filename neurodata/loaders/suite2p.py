"""Suite2p plane folders (``F.npy``, ``Fneu.npy``, ``spks.npy``, ``iscell.npy``, ...).

Suite2p stores traces as ``(roi, frame)`` float32 arrays; they become ``activity(time,
neuron)``. Plain arrays are read with ``allow_pickle=False``; ``ops.npy`` and ``stat.npy``
are pickled dicts, read only when the caller passes ``allow_pickle=True`` (they could run
code when unpickled). Without ``ops.npy`` the frame rate is unknown, so ``sampling_rate=``
is required; a rate given by the caller wins over ``ops["fs"]``, and ``ops["fs"] == 1`` is
refused as the placeholder it usually is.

Signals (``signal=``):

- ``"fluorescence"`` (default): neuropil-corrected ``F - neuropil_coef * Fneu``.
- ``"dff"``: ``(Fc - F0) / F0`` where ``F0`` is a running percentile of the corrected trace
  (``baseline_percentile`` over ``baseline_window`` seconds, evaluated every tenth of a
  window and linearly interpolated, which costs a few percentiles per ROI instead of one per
  frame). A baseline that is not positive makes dF/F meaningless and raises, naming the ROIs.
- ``"deconvolved"``: ``spks``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from neurodata.data import from_arrays
from neurodata.errors import (
    FormatError,
    InputDataError,
    MissingFieldError,
    UnsafeFileError,
)

log = logging.getLogger(__name__)

SIGNALS = ("fluorescence", "dff", "deconvolved")


def _plane_folders(path: Path) -> list[Path]:
    if not path.is_dir():
        raise FormatError(f"{path}: not a folder; give a Suite2p plane folder (with F.npy) or "
                          "its parent (with plane0/).")
    if (path / "F.npy").exists():
        return [path]
    planes = sorted((p for p in path.iterdir() if p.is_dir() and re.fullmatch(r"plane\d+", p.name)),
                    key=lambda p: int(p.name[5:]))
    if not planes:
        raise MissingFieldError(f"{path}: no F.npy and no plane0/ folder; this is not a Suite2p "
                                "output folder.")
    return planes


def _npy(path: Path, *, required: bool = True, allow_pickle: bool = False) -> Any:
    if not path.exists():
        if required:
            raise MissingFieldError(f"{path} is missing; a Suite2p plane folder needs it.")
        return None
    try:
        return np.load(path, allow_pickle=allow_pickle, mmap_mode=None if allow_pickle else "r")
    except ValueError as exc:
        if any(m in str(exc) for m in ("allow_pickle", "Object arrays", "Python objects")):
            raise UnsafeFileError(
                f"{path} is a pickle (object array); unpickling can run code, so it is read "
                "only with allow_pickle=True, for files you trust."
            ) from exc
        raise FormatError(f"{path}: not a readable .npy file ({exc}).") from exc
    except (OSError, EOFError) as exc:
        raise FormatError(f"{path}: not a readable .npy file, perhaps truncated ({exc}).") from exc


def _pickled_dict(path: Path, allow_pickle: bool, why: str) -> Any:
    if not path.exists():
        return None
    if not allow_pickle:
        raise UnsafeFileError(
            f"{path} is a pickle, needed here for {why}; unpickling can run code, so pass "
            "allow_pickle=True if you trust the file (or give the value yourself)."
        )
    obj = _npy(path, allow_pickle=True)
    return obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0 \
        else obj


def _sampling_rate(folder: Path, sampling_rate: float | None, allow_pickle: bool) -> float:
    if sampling_rate is not None:
        if not (np.isfinite(sampling_rate) and sampling_rate > 0):
            raise InputDataError(f"sampling_rate={sampling_rate!r}; give the frame rate in Hz.")
        return float(sampling_rate)
    ops_path = folder / "ops.npy"
    if not ops_path.exists():
        raise MissingFieldError(
            f"{folder}: no ops.npy, so the frame rate is unknown; pass sampling_rate=<Hz>."
        )
    ops = _pickled_dict(ops_path, allow_pickle, "the frame rate ops['fs'] (or pass "
                        "sampling_rate=<Hz>)")
    fs = ops.get("fs") if isinstance(ops, dict) else None
    if fs is None or not np.isfinite(fs) or fs <= 0:
        raise MissingFieldError(f"{ops_path}: no usable 'fs' ({fs!r}); pass sampling_rate=<Hz>.")
    if float(fs) == 1.0:
        raise InputDataError(
            f"{ops_path}: ops['fs'] is 1.0, Suite2p's placeholder rather than a measured rate; "
            "pass sampling_rate=<Hz>."
        )
    log.info("%s: frame rate %s Hz from ops['fs']", folder, fs)
    return float(fs)


def _check_finite(arr: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        roi, frame = (int(v) for v in np.argwhere(bad)[0])
        raise InputDataError(
            f"{path}: NaN or Inf in ROI {roi} (frame {frame}; {int(bad.any(1).sum())} ROIs "
            "affected); fix the traces or pass allow_nan=True to keep them."
        )


def running_baseline(traces: np.ndarray, window: int, percentile: float) -> np.ndarray:
    """Running percentile of ``traces`` (``(roi, frame)``) over ``window`` frames.

    The percentile is evaluated on windows centred every ``window // 10`` frames and
    linearly interpolated in between.

    Parameters
    ----------
    traces
        Array ``(roi, frame)``.
    window
        Window length in frames.
    percentile
        Percentile in [0, 100].

    Returns
    -------
    numpy.ndarray
        Baseline of the same shape.

    Examples
    --------
    >>> import numpy as np
    >>> running_baseline(np.ones((2, 50)), window=10, percentile=8).shape
    (2, 50)
    """
    n = traces.shape[1]
    half = max(1, window // 2)
    step = max(1, window // 10)
    centres = np.unique(np.r_[np.arange(0, n, step), n - 1])
    knots = np.stack([np.nanpercentile(traces[:, max(0, c - half): c + half + 1], percentile,
                                       axis=1) for c in centres], axis=1)
    frames = np.arange(n)
    return np.stack([np.interp(frames, centres, k) for k in knots])


def _plane(folder: Path, *, signal: str, neuropil_coef: float, allow_pickle: bool,
           allow_nan: bool, window: int, percentile: float) -> dict[str, Any]:
    f_path = folder / "F.npy"
    if signal == "deconvolved":
        traces = np.asarray(_npy(folder / "spks.npy"), dtype=np.float32)
        if not allow_nan:
            _check_finite(traces, folder / "spks.npy")
    else:
        F = _npy(f_path)
        if not allow_nan:
            _check_finite(F, f_path)
        traces = np.asarray(F, dtype=np.float32)
        if neuropil_coef:
            Fneu = _npy(folder / "Fneu.npy")
            if Fneu.shape != F.shape:
                raise FormatError(f"{folder / 'Fneu.npy'} has shape {Fneu.shape} but F.npy "
                                  f"{F.shape}; both must be (roi, frame).")
            if not allow_nan:
                _check_finite(Fneu, folder / "Fneu.npy")
            traces = traces - np.float32(neuropil_coef) * np.asarray(Fneu, dtype=np.float32)
    if traces.ndim != 2:
        raise FormatError(f"{folder}: traces have shape {traces.shape}; expected (roi, frame).")
    n_roi = traces.shape[0]
    if signal == "dff":
        base = running_baseline(traces, window, percentile).astype(np.float32)
        bad = np.flatnonzero(~(np.nanmin(base, axis=1) > 0))
        if bad.size and not allow_nan:
            raise InputDataError(
                f"{f_path}: the running baseline F0 is not positive for {bad.size} ROIs "
                f"(e.g. {bad[:5].tolist()}), so dF/F is undefined there; use signal="
                "'fluorescence', a smaller neuropil_coef, only_cells=True, or allow_nan=True "
                "(NaN for those ROIs)."
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            traces = (traces - base) / base
        traces[bad] = np.nan
    coords: dict[str, np.ndarray] = {}
    iscell = _npy(folder / "iscell.npy", required=False)
    if iscell is not None:
        iscell = np.asarray(iscell)
        iscell = iscell[:, None] if iscell.ndim == 1 else iscell
        if iscell.ndim != 2 or iscell.shape[0] != n_roi:
            raise FormatError(f"{folder / 'iscell.npy'} has {iscell.shape[0]} rows but the traces "
                              f"{n_roi} ROIs.")
        coords["iscell"] = iscell[:, 0].astype(bool)
        if iscell.shape[1] > 1:
            coords["iscell_prob"] = iscell[:, 1].astype(np.float64)
    stat_path = folder / "stat.npy"
    if stat_path.exists() and allow_pickle:
        stat = _npy(stat_path, allow_pickle=True)
        if len(stat) != n_roi:
            raise FormatError(f"{stat_path} has {len(stat)} ROIs but the traces {n_roi}.")
        if not all(isinstance(s, dict) and "med" in s for s in stat):
            raise MissingFieldError(f"{stat_path}: an ROI has no 'med' (centroid) entry.")
        med = np.array([s["med"] for s in stat], dtype=np.float64)  # (y, x) in pixels
        coords["y"], coords["x"] = med[:, 0], med[:, 1]
        coords["npix"] = np.array([s.get("npix", len(s.get("xpix", []))) for s in stat])
    elif stat_path.exists():
        log.info("%s not read (a pickle): pass allow_pickle=True for ROI centroids", stat_path)
    return {"traces": traces.T, "coords": coords}


def load(path: Path, *, sampling_rate: float | None = None, signal: str = "fluorescence",
         neuropil_coef: float = 0.7, only_cells: bool = False, allow_pickle: bool = False,
         allow_nan: bool = False, baseline_window: float = 60.0,
         baseline_percentile: float = 8.0) -> xr.Dataset:
    """Load a Suite2p plane folder (or the parent of ``plane0/``, ``plane1/``, ...).

    Parameters
    ----------
    path
        A plane folder holding ``F.npy`` or a folder holding ``planeN/`` folders (planes are
        stacked along ``neuron``, ids ``"planeN/i"``).
    sampling_rate
        Frame rate in Hz; required unless ``ops.npy`` exists and ``allow_pickle=True``.
    signal
        ``"fluorescence"`` (neuropil-corrected F), ``"dff"`` or ``"deconvolved"`` (spks).
    neuropil_coef
        Neuropil scaling: ``F - neuropil_coef * Fneu`` (Suite2p's default 0.7; 0 skips Fneu).
    only_cells
        Keep only ROIs classified as cells (``iscell``).
    allow_pickle
        Read the pickled ``ops.npy`` (frame rate) and ``stat.npy`` (centroids ``x``, ``y``,
        ``npix``). Only for files you trust.
    allow_nan
        Keep NaN/Inf (and NaN dF/F where the baseline is not positive) instead of raising.
    baseline_window, baseline_percentile
        Running percentile baseline for ``signal="dff"`` (seconds, percent).

    Returns
    -------
    xarray.Dataset
        ``activity(time, neuron)`` float32 with ``iscell`` (bool), ``iscell_prob`` and, with
        ``allow_pickle``, ``x``/``y`` coordinates on ``neuron``.

    Examples
    --------
    >>> import neurodata
    >>> ds = neurodata.load("suite2p/plane0", sampling_rate=30.0)  # doctest: +SKIP
    """
    path = Path(path)
    if signal not in SIGNALS:
        raise InputDataError(f"signal={signal!r}; choose one of {list(SIGNALS)}.")
    folders = _plane_folders(path)
    rate = _sampling_rate(folders[0], sampling_rate, allow_pickle)
    window = max(3, int(round(baseline_window * rate)))
    planes = [_plane(f, signal=signal, neuropil_coef=neuropil_coef, allow_pickle=allow_pickle,
                     allow_nan=allow_nan, window=window, percentile=baseline_percentile)
              for f in folders]
    n_frames = {p["traces"].shape[0] for p in planes}
    if len(n_frames) > 1:
        raise FormatError(f"{path}: planes have different numbers of frames {sorted(n_frames)}; "
                          "load each plane folder on its own.")
    names = sorted(set().union(*(p["coords"] for p in planes)))
    if any(set(p["coords"]) != set(names) for p in planes):
        raise FormatError(f"{path}: the plane folders hold different files (iscell/stat).")
    coords = {k: np.concatenate([p["coords"][k] for p in planes]) for k in names}
    if len(folders) > 1 or folders[0] != path:
        coords["plane"] = np.concatenate([np.full(p["traces"].shape[1], f.name)
                                          for p, f in zip(planes, folders, strict=True)])
    ids = [str(i) for p in planes for i in range(p["traces"].shape[1])]
    if len(folders) > 1:
        ids = [f"{plane}/{i}" for plane, i in zip(coords["plane"], ids, strict=True)]
    traces = np.concatenate([p["traces"] for p in planes], axis=1)
    if only_cells:
        if "iscell" not in coords:
            raise MissingFieldError(f"{path}: only_cells=True needs iscell.npy, which is missing.")
        keep = coords["iscell"]
        traces = traces[:, keep]
        coords = {k: v[keep] for k, v in coords.items()}
        ids = [i for i, k in zip(ids, keep, strict=True) if k]
    units = {"fluorescence": "a.u.", "dff": "1", "deconvolved": "a.u."}[signal]
    ds = from_arrays(
        traces, rate, neuron_ids=ids, signal=signal, units=units, neuron_coords=coords,
        attrs={"source": path.name, "format": "suite2p", "neuropil_coef": float(neuropil_coef),
               "only_cells": int(only_cells)},
    )
    if signal == "dff":
        ds["activity"].attrs.update(baseline_window=float(baseline_window),
                                    baseline_percentile=float(baseline_percentile))
    return ds
