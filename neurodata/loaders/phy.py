"""Phy / Kilosort output folders: sorted spikes as the flat ragged spike table.

Reads ``spike_times.npy`` (sample indices, any integer dtype, shape ``(N,)`` or ``(N, 1)``,
C or Fortran order), ``spike_clusters.npy`` (falling back to ``spike_templates.npy``, the
Kilosort assignment before manual curation), and the cluster tables ``cluster_group.tsv``,
``cluster_KSLabel.tsv`` and ``cluster_info.tsv``, whose columns become coordinates on
``neuron`` (``group``, ``KSLabel``, ``ch``, ``depth``, ...). ``params.py`` is parsed as
data and never executed: only top-level ``name = <literal>`` assignments are read, with
:func:`ast.literal_eval`; anything else (imports, calls) is ignored and logged.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from neurodata.data import bin_spikes, from_spike_times
from neurodata.errors import FormatError, InputDataError, MissingFieldError, UnsafeFileError

log = logging.getLogger(__name__)

_TABLES = ("cluster_info.tsv", "cluster_group.tsv", "cluster_KSLabel.tsv")


def read_params(path: Path) -> dict[str, Any]:
    r"""Read the literal assignments of a phy ``params.py`` without executing it.

    Parameters
    ----------
    path
        The ``params.py`` file.

    Returns
    -------
    dict
        ``{name: value}`` for each top-level ``name = <python literal>`` line.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "params.py"
    >>> _ = p.write_text("sample_rate = 25000.\nimport os\n")
    >>> read_params(p)
    {'sample_rate': 25000.0}
    """
    params: dict[str, Any] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            tree = ast.parse(line.strip())
        except SyntaxError:
            log.warning("%s:%d is not a one-line assignment: ignored", path, number)
            continue
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)):
                try:
                    params[node.targets[0].id] = ast.literal_eval(node.value)
                    continue
                except (ValueError, TypeError, SyntaxError, RecursionError):
                    pass
            log.warning("%s:%d is not a literal assignment (not executed): %s", path, number,
                        line.strip()[:80])
    return params


def _load_npy(path: Path) -> np.ndarray:
    if not path.exists():
        raise MissingFieldError(f"{path} is missing; a Phy/Kilosort folder needs it.")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise UnsafeFileError(f"{path} is a pickle (object array), which is never read "
                                  "here; Phy arrays are plain integer arrays.") from exc
        raise FormatError(f"{path}: not a readable .npy file ({exc}).") from exc
    except (OSError, EOFError) as exc:
        raise FormatError(f"{path}: not a readable .npy file, perhaps truncated ({exc}).") from exc
    if arr.ndim == 2 and 1 in arr.shape or arr.ndim == 1:
        return np.ascontiguousarray(arr).ravel()
    raise FormatError(f"{path} has shape {arr.shape}; expected (N,) or (N, 1).")


def _cluster_table(folder: Path) -> pd.DataFrame | None:
    table = None
    for name in _TABLES:
        f = folder / name
        if not f.exists():
            continue
        try:
            df = pd.read_csv(f, sep="\t")
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise FormatError(f"{f}: not a readable tab-separated table ({exc}).") from exc
        key = "cluster_id" if "cluster_id" in df.columns else "id" if "id" in df.columns else None
        if key is None:
            raise MissingFieldError(f"{f} has no 'cluster_id' column (columns: "
                                    f"{list(df.columns)}).")
        df = df.rename(columns={key: "cluster_id"}).set_index("cluster_id")
        if table is None:
            table = df
        else:  # cluster_info.tsv already merges the others; add only new columns
            table = table.join(df[[c for c in df.columns if c not in table.columns]], how="outer")
    return table


def _coord(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values):
        return values.to_numpy(bool)
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(np.float64 if values.isna().any() else values.dtype)
    return values.fillna("").astype(str).to_numpy(str)


def load(path: Path, *, sampling_rate: float | None = None,
         exclude_groups: tuple[str, ...] | list[str] = (), bin_size: float | None = None
         ) -> xr.Dataset:
    """Load a Phy/Kilosort output folder as the ragged spike table (optionally binned).

    Parameters
    ----------
    path
        The folder holding ``spike_times.npy``.
    sampling_rate
        Sample rate of ``spike_times`` in Hz; required when ``params.py`` has no
        ``sample_rate``, and wins over it when given.
    exclude_groups
        Cluster labels to drop, e.g. ``("noise",)``; the curated ``group`` column is used,
        else Kilosort's ``KSLabel``.
    bin_size
        Also bin the spikes into ``activity(time, neuron)`` counts (seconds).

    Returns
    -------
    xarray.Dataset
        ``spike_time(spike)`` in seconds, ``spike_neuron(spike)``, ``neuron_id`` (the cluster
        id as str), ``cluster_id`` and the cluster table columns as coordinates on ``neuron``.

    Examples
    --------
    >>> import neurodata
    >>> ds = neurodata.load("kilosort_out/", exclude_groups=("noise",))  # doctest: +SKIP
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FormatError(f"{folder}: not a folder; give the Phy/Kilosort output folder.")
    params_path = folder / "params.py"
    params = read_params(params_path) if params_path.exists() else {}
    rate = sampling_rate if sampling_rate is not None else params.get("sample_rate")
    if rate is None:
        raise MissingFieldError(
            f"{folder}: the sample rate is unknown (no params.py with sample_rate); pass "
            "sampling_rate=<Hz>, e.g. sampling_rate=30000.0."
        )
    if not isinstance(rate, int | float) or not np.isfinite(rate) or rate <= 0:
        raise InputDataError(f"{folder}: sample rate {rate!r} is not a positive number.")
    if sampling_rate is not None and "sample_rate" in params and params["sample_rate"] != rate:
        log.info("%s: sampling_rate=%s overrides params.py sample_rate=%s", folder, rate,
                 params["sample_rate"])

    samples = _load_npy(folder / "spike_times.npy")
    if samples.dtype.kind not in "iuf":
        raise FormatError(f"{folder / 'spike_times.npy'} has dtype {samples.dtype}; expected "
                          "integer sample indices.")
    clusters_file = folder / "spike_clusters.npy"
    if not clusters_file.exists() and (folder / "spike_templates.npy").exists():
        log.info("%s: no spike_clusters.npy; using spike_templates.npy", folder)
        clusters_file = folder / "spike_templates.npy"
    clusters = _load_npy(clusters_file).astype(np.int64)
    if clusters.size != samples.size:
        raise FormatError(
            f"{folder}: spike_times.npy has {samples.size} spikes but {clusters_file.name} "
            f"{clusters.size}; they must have one entry per spike."
        )
    times = samples.astype(np.float64) / float(rate)
    if times.size and (not np.all(np.isfinite(times)) or times.min() < 0):
        raise InputDataError(f"{folder / 'spike_times.npy'}: negative or non-finite samples.")

    table = _cluster_table(folder)
    ids = np.unique(clusters)
    if table is not None:
        ids = np.union1d(ids, table.index.to_numpy(np.int64))
        table = table.reindex(ids)
    if exclude_groups:
        label = next((c for c in ("group", "KSLabel") if table is not None and c in table), None)
        if label is None:
            raise MissingFieldError(f"{folder}: exclude_groups={list(exclude_groups)} needs "
                                    "cluster_group.tsv, cluster_KSLabel.tsv or cluster_info.tsv.")
        keep = ~table[label].isin(list(exclude_groups)).to_numpy()
        ids, table = ids[keep], table[keep]
    order = np.argsort(clusters, kind="stable")
    sorted_clusters = clusters[order]
    starts = np.searchsorted(sorted_clusters, ids, side="left")
    stops = np.searchsorted(sorted_clusters, ids, side="right")
    trains = [times[order[a:b]] for a, b in zip(starts, stops, strict=True)]
    coords = {"cluster_id": ids}
    if table is not None:
        coords.update({str(c): _coord(table[c]) for c in table.columns
                       if str(c) not in ("neuron_id", "cluster_id")})
    attrs = {"source": folder.name, "format": "phy", "spike_sample_rate": float(rate)}
    attrs.update({f"phy_{k}": v for k, v in params.items()
                  if k != "sample_rate" and isinstance(v, str | int | float)
                  and not isinstance(v, bool)})
    t_stop = float(times.max()) if times.size else 0.0
    ds = from_spike_times(trains, neuron_ids=[str(i) for i in ids], t_start=0.0, t_stop=t_stop,
                          neuron_coords=coords, attrs=attrs)
    if bin_size is not None:
        ds = bin_spikes(ds, bin_size)
    return ds
