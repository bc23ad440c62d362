"""NWB files (via pynwb): sorted units, ophys ROI traces, behaviour, trials and epochs.

What becomes what:

- ``units``: the flat ragged spike table ``spike_time(spike)``, ``spike_neuron(spike)`` (the
  layout of :func:`neurodata.data.from_spike_times`), read in ONE bulk read of
  ``spike_times`` split at the ``spike_times_index`` offsets. Unit ids become ``neuron_id``;
  1-D columns become coordinates on ``neuron`` (strings, numbers, bools; object references
  such as ``electrode_group`` become the referenced object's name; a ragged ``electrodes``
  region with one electrode per unit becomes an int ``electrode`` coordinate; other ragged
  or multi-dimensional columns such as ``waveform_mean`` are skipped). ``obs_intervals``
  shared by every unit become ``valid_intervals(interval, bound)``; when they differ they are
  also kept per unit as ``obs_intervals(neuron, obs_interval, bound)`` padded with NaN.
  ``bin_size=`` adds the binned ``activity(time, neuron)`` (:func:`neurodata.bin_spikes`).
- ophys ``RoiResponseSeries`` (inside ``DfOverF``/``Fluorescence`` or directly in a
  processing module): ``activity(time, neuron)``, lazy, with ``neuron_id`` from the
  PlaneSegmentation ids (``roi_id`` keeps the int id, ``plane`` the PlaneSegmentation).
  Choose with ``ophys_series=``: a container name (``"DfOverF"``), a series name or
  ``"container/series"``; the default prefers ``DfOverF`` over ``Fluorescence``. Several
  chosen series on the same clock (planes) are stacked along ``neuron``.
- plain ``TimeSeries``/``SpatialSeries`` (acquisition and processing modules): when on the
  same clock as ``activity`` they are the columns of ``behavior(time, behavior_channel)``;
  otherwise each is ``behavior_<name>(time_<name>, channel_<name>)`` on its own time
  coordinate ``time_<name>`` (seconds).
- ``trials``: a ``trial`` dimension with ``trial_start``, ``trial_stop`` and every 1-D column
  as coordinates; ``epochs``: an ``epoch`` dimension with ``epoch_start``, ``epoch_stop``,
  ``epoch_tags`` (comma-joined) and ``epoch_<column>``; any other interval table (e.g.
  ``invalid_times``) the same way under its own name: ``invalid_times_start``, ...

Values are ``data * conversion + offset`` (float64 when either is not the identity),
computed lazily when read. Time is ``timestamps`` when present (they win over ``rate``; the
choice is logged), else ``starting_time + k / rate`` (a plain float64 coordinate: xarray's
``RangeIndex`` would save the memory but refuses ``sel(time=slice(...))``). Time must be
the first axis: a timestamp count that differs from the data's first axis, or ROI counts
that differ from its second, raise :class:`FormatError`.

Arrays stay on disk until used. Every read goes through :class:`Columns` over
:class:`H5Array` objects, which hold the file path and dataset name (no h5py object), so
the dask graph pickles and workers reopen the file by path; the handles opened in this
process stay open while the dataset lives, and ``ds.close()`` releases them. NaN/Inf in ROI
traces raise :class:`InputDataError` when the values are read, unless ``allow_nan=True``.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import h5py
import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from neurodata.data import SCHEMA_VERSION, bin_spikes, validate
from neurodata.errors import FormatError, InputDataError, MissingFieldError

log = logging.getLogger(__name__)

_CHUNK_BYTES = 64 * 2**20
_RESERVED = {"neuron", "neuron_id", "time", "spike", "trial", "epoch", "interval", "bound"}


class H5Array:
    """A picklable, lazily opened view of one HDF5 dataset (path + dataset name).

    Dask reads chunks through ``__getitem__``. The file is opened on first access and kept
    open in this process (``close`` releases it); pickling drops the handle, so a dask
    worker in another process reopens the file from its path.

    Parameters
    ----------
    path
        The HDF5/NWB file.
    name
        The dataset's absolute name inside the file, e.g. ``/units/spike_times``.

    Examples
    --------
    >>> arr = H5Array("recording.nwb", "/units/spike_times")  # doctest: +SKIP
    >>> arr[:10]  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, name: str):
        self.path = str(path)
        self.name = name
        self._file: h5py.File | None = None
        self._lock = threading.Lock()
        with h5py.File(self.path, "r") as f:
            dset = f[name]
            self.shape = tuple(dset.shape)
            self.dtype = dset.dtype
        self.ndim = len(self.shape)

    def _dataset(self) -> h5py.Dataset:
        with self._lock:
            if self._file is None or not self._file.id.valid:
                self._file = h5py.File(self.path, "r")
            return self._file[self.name]

    def __getitem__(self, key: Any) -> np.ndarray:
        dset = self._dataset()
        key = key if isinstance(key, tuple) else (key,)
        if len(key) == self.ndim and all(isinstance(k, slice) and k.step in (None, 1)
                                         for k in key):
            # read_direct into one new array: h5py's __getitem__ path is several times
            # slower on large contiguous reads.
            out = np.empty(tuple(len(range(*k.indices(n))) for k, n in zip(key, self.shape,
                                                                            strict=True)),
                           dtype=self.dtype)
            if out.size:
                dset.read_direct(out, source_sel=key)
            return out
        return dset[key]

    def close(self) -> None:
        """Close the file handle held in this process (a later read reopens it)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "name": self.name, "shape": self.shape, "dtype": self.dtype}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.ndim = len(self.shape)
        self._file = None
        self._lock = threading.Lock()

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, self.path, self.name, self.shape, str(self.dtype))


class Columns:
    """Lazy ``(time, column)`` view of one or more HDF5 datasets side by side, in physical units.

    Each part is an :class:`H5Array` (1-D parts are one column) with its NWB ``conversion``
    and ``offset``; reads return ``data * conversion + offset`` (float64 when either is not
    the identity) and, with ``check``, raise :class:`InputDataError` naming the file, series
    and column id on NaN/Inf. Picklable: dask workers reopen the files by path.

    Parameters
    ----------
    parts
        ``(array, conversion, offset)`` per dataset, all with the same first axis length.
    labels
        Id of each column (for error messages).
    series
        Name of the series (for error messages).
    check
        Raise on NaN/Inf when values are read.

    Examples
    --------
    >>> cols = Columns([(H5Array("f.nwb", "/acquisition/x/data"), 2.0, 0.0)],  # doctest: +SKIP
    ...                labels=["x"], series="x", check=True)
    >>> cols[:10, :]  # doctest: +SKIP
    """

    def __init__(self, parts: list[tuple[H5Array, float, float]], labels: np.ndarray,
                 series: str, check: bool):
        lengths = {p[0].shape[0] for p in parts}
        if len(lengths) != 1:
            raise FormatError(f"{series}: the parts have different lengths {sorted(lengths)}.")
        self.parts = parts
        self.widths = [1 if a.ndim == 1 else a.shape[1] for a, _, _ in parts]
        self.starts = np.cumsum([0, *self.widths[:-1]])
        self.shape = (lengths.pop(), int(sum(self.widths)))
        self.ndim = 2
        scaled = any(c != 1.0 or o != 0.0 for _, c, o in parts)
        self.dtype = np.dtype(np.float64) if scaled else np.result_type(
            *[a.dtype for a, _, _ in parts])
        self.labels = np.asarray(labels)
        self.series = series
        self.check = check

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        k0, k1 = (*key, slice(None))[:2] if len(key) < 2 else key
        cols = np.arange(self.shape[1])[k1]
        scalar = np.ndim(cols) == 0
        cols = np.atleast_1d(cols)
        blocks, order = [], []
        for (arr, conversion, offset), start, width in zip(self.parts, self.starts, self.widths,
                                                           strict=True):
            mine = np.flatnonzero((cols >= start) & (cols < start + width))
            if not mine.size:
                continue
            local = cols[mine] - start
            lo, hi = int(local.min()), int(local.max()) + 1
            raw = np.asarray(arr[k0])[..., None] if arr.ndim == 1 else np.asarray(
                arr[k0, lo:hi])
            block = raw if (lo == 0 and hi == raw.shape[-1] and np.array_equal(
                local, np.arange(hi))) else raw[..., local - lo]
            if conversion != 1.0 or offset != 0.0:
                block = block.astype(np.float64) * conversion + offset
            blocks.append(block.astype(self.dtype, copy=False))
            order.append(mine)
        out = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=-1)
        order = np.concatenate(order)
        if not np.array_equal(order, np.arange(order.size)):
            final = np.empty_like(out)
            final[..., order] = out
            out = final
        if self.check and out.dtype.kind == "f" and out.size:
            self._check(out, k0, cols)
        return out[..., 0] if scalar else out

    def _check(self, out: np.ndarray, k0: Any, cols: np.ndarray) -> None:
        # One float64 reduction instead of a full boolean temporary: a sum of finite float32
        # values cannot overflow, so a non-finite sum means a NaN/Inf somewhere.
        if np.isfinite(np.add.reduce(out, axis=None, dtype=np.float64)):
            return
        bad = np.argwhere(~np.isfinite(out.reshape(-1, out.shape[-1])))
        if not bad.size:
            return
        row, col = bad[0]
        rows = np.arange(self.shape[0])[k0]
        sample = int(np.atleast_1d(rows)[row])
        raise InputDataError(
            f"{self.series} holds NaN or Inf (ROI {self.labels[cols[col]]}, sample {sample}); "
            "fix the file or pass allow_nan=True to keep them."
        )

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, [(a.__dask_tokenize__(), c, o) for a, c, o in self.parts],
                self.check)


class _Backend(BackendArray):
    """xarray's lazy indexing over :class:`Columns` (``chunks=None``: no dask)."""

    def __init__(self, columns: Columns):
        self.columns = columns
        self.shape = columns.shape
        self.dtype = columns.dtype

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC,
                                                  self.columns.__getitem__)


class _Reader:
    """Wraps the datasets of one file as lazy arrays and closes their handles at the end."""

    def __init__(self, path: Path, chunks: Any):
        self.path = path
        self.chunks = chunks
        self.arrays: list[H5Array] = []

    def part(self, series: Any) -> tuple[H5Array, float, float]:
        dset = series.data
        if not isinstance(dset, h5py.Dataset):
            raise FormatError(f"{self.path}: series {series.name!r} is not stored in this HDF5 "
                              "file (external or in-memory data is not supported).")
        arr = H5Array(self.path, dset.name)
        self.arrays.append(arr)
        conversion = float(getattr(series, "conversion", 1.0) or 1.0)
        offset = float(getattr(series, "offset", 0.0) or 0.0)
        return arr, conversion, offset

    def wrap(self, columns: Columns) -> Any:
        if self.chunks is None:
            return indexing.LazilyIndexedArray(_Backend(columns))
        chunks = self.chunks
        if chunks == "auto":
            row_bytes = max(1, columns.shape[1] * columns.dtype.itemsize)
            chunks = (max(1, min(columns.shape[0], _CHUNK_BYTES // row_bytes)), -1)
        return da.from_array(columns, chunks=chunks, meta=np.empty((0, 0), columns.dtype),
                             name=f"nwb-{da.core.tokenize(columns)}")

    def close(self) -> None:
        for arr in self.arrays:
            arr.close()


# --------------------------------------------------------------------------- tables


def _column_values(col: Any, n_rows: int) -> np.ndarray | None:
    """One column of a DynamicTable as a 1-D coordinate array, or None when it cannot be one."""
    from hdmf.common import DynamicTableRegion, VectorIndex

    if isinstance(col, VectorIndex):
        ends = np.asarray(col.data[:], dtype=np.int64)
        counts = np.diff(np.concatenate([[0], ends]))
        if isinstance(col.target, DynamicTableRegion) and np.all(counts == 1):
            return np.asarray(col.target.data[:], dtype=np.int64)[ends - 1]
        return None
    values = col.data[:]
    if isinstance(col, DynamicTableRegion):
        values = np.asarray(values, dtype=np.int64)
    values = np.asarray(values) if not isinstance(values, list) else np.array(values, dtype=object)
    if values.ndim != 1 or values.shape[0] != n_rows:
        return None
    if values.dtype.kind == "S":
        return values.astype(str)
    if values.dtype.kind == "O":
        items = values.tolist()
        if all(isinstance(v, bytes) for v in items):
            return np.array([v.decode() for v in items], dtype=str)
        if all(isinstance(v, str) for v in items):
            return np.array(items, dtype=str)
        if all(hasattr(v, "name") and hasattr(v, "object_id") for v in items):
            return np.array([v.name for v in items], dtype=str)
        return None
    if values.dtype.kind in "biufU":
        return values
    return None


def _table_coords(table: Any, dim: str, *, skip: set[str], prefix: str,
                  taken: set[str]) -> dict[str, tuple]:
    """The 1-D columns of an hdmf DynamicTable as coordinates on ``dim``."""
    n = len(table.id)
    coords = {}
    for colname in table.colnames:
        if colname in skip:
            continue
        values = _column_values(table[colname], n)
        if values is None:
            log.debug("column %r of %r is ragged or not 1-D: skipped", colname, table.name)
            continue
        name = f"{prefix}{colname}"
        if colname == "electrodes":
            name = f"{prefix}electrode"
        if name in _RESERVED or name in taken:
            name = f"{dim}_{colname}"
        coords[name] = (dim, values)
        taken.add(name)
    return coords


def _units(nwb: Any, path: Path, taken: set[str]) -> xr.Dataset:
    units = nwb.units
    ids = np.asarray(units.id.data[:])
    if "spike_times" not in units.colnames:
        raise MissingFieldError(f"{path}: the units table has no 'spike_times' column.")
    index = units["spike_times"]
    flat = np.asarray(index.target.data[:], dtype=np.float64)  # one bulk read
    ends = np.asarray(index.data[:], dtype=np.int64)
    if ends.size != ids.size or (ends.size and ends[-1] != flat.size) or np.any(np.diff(ends) < 0):
        raise FormatError(
            f"{path}: units/spike_times_index ({ends.size} rows, last offset "
            f"{ends[-1] if ends.size else None}) does not match {ids.size} units and "
            f"{flat.size} spike times; the file is corrupt."
        )
    counts = np.diff(ends, prepend=0)
    owner = np.repeat(np.arange(ids.size, dtype=np.int64), counts)  # unit position per spike
    if not np.all(np.isfinite(flat)):
        bad = ids[owner[np.argmax(~np.isfinite(flat))]]
        raise InputDataError(f"{path}: units/spike_times holds NaN or Inf (unit {bad}); drop "
                             "those spikes or fix the file.")
    unsorted = flat[1:] < flat[:-1]  # a bool temporary, not a float64 np.diff
    inner = ends[:-1][(ends[:-1] > 0) & (ends[:-1] < flat.size)]
    unsorted[inner - 1] = False  # the next unit may start earlier
    if unsorted.any():
        log.info("%s: spike times are not sorted within units; sorting them", path)
        order = np.lexsort((flat, owner))
        flat, owner = flat[order], owner[order]
    del unsorted
    coords = _table_coords(units, "neuron", skip={"spike_times", "obs_intervals"}, prefix="",
                           taken=taken)
    obs = None
    if "obs_intervals" in units.colnames:
        obs_index = units["obs_intervals"]
        obs_flat = np.asarray(obs_index.target.data[:], dtype=np.float64).reshape(-1, 2)
        obs_ends = np.asarray(obs_index.data[:], dtype=np.int64)
        obs = np.split(obs_flat, obs_ends[:-1])
    if obs is not None and any(o.size for o in obs):
        t_start = float(min(o[:, 0].min() for o in obs if o.size))
        t_stop = float(max(o[:, 1].max() for o in obs if o.size))
    else:
        t_start = float(flat.min()) if flat.size else 0.0
        t_stop = float(flat.max()) if flat.size else 0.0
    # The layout of neurodata.from_spike_times (sorted by unit, then time), built from the
    # bulk read without per-unit copies.
    ds = xr.Dataset(
        {
            "spike_time": ("spike", flat, {"units": "s"}),
            "spike_neuron": ("spike", owner),
            "spike_count_total": ("neuron", counts),
            "valid_intervals": (("interval", "bound"), np.array([[t_start, t_stop]]),
                                {"units": "s"}),
        },
        coords={"neuron_id": ("neuron", np.array([str(i) for i in ids])), **coords},
        attrs={"schema_version": SCHEMA_VERSION, "history": []},
    )
    if obs is not None:
        same = all(o.shape == obs[0].shape and np.array_equal(o, obs[0]) for o in obs)
        if same and obs[0].size:
            ds["valid_intervals"] = (("interval", "bound"), obs[0], {"units": "s"})
        elif not same:
            width = max(o.shape[0] for o in obs)
            padded = np.full((len(obs), width, 2), np.nan)
            for i, o in enumerate(obs):
                padded[i, : o.shape[0]] = o
            ds["obs_intervals"] = (("neuron", "obs_interval", "bound"), padded, {"units": "s"})
    return ds


def _intervals(table: Any, dim: str, prefix: str, taken: set[str]) -> dict[str, tuple]:
    coords: dict[str, tuple] = {
        f"{prefix}start": (dim, np.asarray(table["start_time"].data[:], dtype=np.float64),
                           {"units": "s"}),
        f"{prefix}stop": (dim, np.asarray(table["stop_time"].data[:], dtype=np.float64),
                          {"units": "s"}),
        dim: (dim, np.asarray(table.id.data[:])),
    }
    skip = {"start_time", "stop_time", "timeseries"}
    if "tags" in table.colnames:
        tags = [",".join(str(t) for t in row) for row in table["tags"][:]]
        coords[f"{prefix}tags"] = (dim, np.array(tags, dtype=str))
        skip.add("tags")
    prefix_cols = "" if dim == "trial" else prefix
    coords.update(_table_coords(table, dim, skip=skip, prefix=prefix_cols, taken=taken))
    return coords


# --------------------------------------------------------------------------- time series


def _series_time(series: Any, path: Path) -> np.ndarray:
    """Time in seconds of each sample of ``series``: timestamps win over rate."""
    n = int(series.data.shape[0])
    where = f"{path}: series {series.name!r}"
    if series.timestamps is not None:
        if series.rate is not None:
            log.info("%s has both timestamps and rate; using the timestamps", where)
        t = np.asarray(series.timestamps[:], dtype=np.float64)
        if t.shape != (n,):
            raise FormatError(
                f"{where}: {t.size} timestamps for {n} samples along the first axis of data "
                f"(shape {series.data.shape}); time must be the first axis (is data transposed?)."
            )
        if not np.all(np.isfinite(t)):
            raise InputDataError(f"{where}: timestamps contain NaN or Inf.")
        if n > 1 and not np.all(np.diff(t) > 0):
            k = int(np.argmax(~(np.diff(t) > 0)))
            raise InputDataError(
                f"{where}: timestamps are not strictly increasing (index {k}: {t[k]} then "
                f"{t[k + 1]}); sort the samples or fix the file."
            )
        return t
    rate = series.rate
    if rate is None or not np.isfinite(rate) or rate <= 0:
        raise FormatError(f"{where}: neither timestamps nor a positive rate ({rate!r}).")
    start = float(series.starting_time or 0.0)
    return start + np.arange(n) / float(rate)


def _series_attrs(series: Any, part: tuple[H5Array, float, float]) -> dict[str, Any]:
    return {"nwb_path": part[0].name, "nwb_unit": str(series.unit), "conversion": part[1],
            "offset": part[2]}


def _roi_ids(series: Any, path: Path) -> tuple[np.ndarray, str]:
    rois = series.rois
    table = rois.table
    rows = np.asarray(rois.data[:], dtype=np.int64)
    ids = np.asarray(table.id.data[:])[rows]
    n_cols = series.data.shape[1] if len(series.data.shape) > 1 else 1
    if n_cols != rows.size:
        raise FormatError(
            f"{path}: series {series.name!r} has data of shape {series.data.shape} but "
            f"{rows.size} ROIs; time must be the first axis and ROIs the second."
        )
    return ids, table.name


def _ophys_candidates(nwb: Any) -> dict[str, Any]:
    from pynwb.ophys import RoiResponseSeries

    found = {}
    for obj in nwb.objects.values():
        if isinstance(obj, RoiResponseSeries):
            parent = obj.parent.name if obj.parent is not None else ""
            found[f"{parent}/{obj.name}"] = obj
    return dict(sorted(found.items()))


def _choose_ophys(candidates: dict[str, Any], choice: str | None, path: Path) -> list[str]:
    if not candidates:
        return []
    if choice is None:
        for container in ("DfOverF", "Fluorescence"):
            keys = [k for k in candidates if k.split("/")[0] == container]
            if keys:
                return keys
        return [next(iter(candidates))]
    keys = [k for k in candidates if choice in (k, k.split("/")[0], k.split("/")[1])]
    if not keys:
        raise MissingFieldError(
            f"{path}: no RoiResponseSeries matches ophys_series={choice!r}; available: "
            f"{list(candidates)} (give a container name, a series name or 'container/series')."
        )
    return keys


def _signal_of(key: str) -> tuple[str, str]:
    container, name = key.split("/", 1)
    if "deconvolved" in name.lower() or "deconvolved" in container.lower():
        return "deconvolved", "a.u."
    if "dff" in container.lower().replace("over", "") or "dfoverf" in name.lower():
        return "dff", "1"
    return "fluorescence", "a.u."


def _ophys(nwb: Any, path: Path, reader: _Reader, choice: str | None,
           allow_nan: bool) -> tuple[xr.Dataset | None, list[str]]:
    candidates = _ophys_candidates(nwb)
    keys = _choose_ophys(candidates, choice, path)
    if not keys:
        return None, []
    parts, times, ids, planes, attrs_list = [], None, [], [], []
    for key in keys:
        series = candidates[key]
        t = _series_time(series, path)
        if times is not None and (t.shape != times.shape or not np.allclose(t, times, atol=1e-9)):
            raise InputDataError(
                f"{path}: series {keys} are on different clocks; choose one with "
                f"ophys_series=<one of {keys}>."
            )
        times = t
        roi, plane = _roi_ids(series, path)
        part = reader.part(series)
        parts.append(part)
        attrs_list.append(_series_attrs(series, part))
        ids.append(roi)
        planes.append(np.full(roi.size, plane))
    roi_ids = np.concatenate(ids)
    plane = np.concatenate(planes)
    neuron_id = roi_ids.astype(str)
    if len(set(neuron_id.tolist())) != neuron_id.size:
        neuron_id = np.array([f"{p}/{i}" for p, i in zip(plane, roi_ids, strict=True)])
    data = reader.wrap(Columns(parts, roi_ids, f"{path}: series {', '.join(keys)}",
                               check=not allow_nan))
    signal, units = _signal_of(keys[0])
    nwb_unit = attrs_list[0]["nwb_unit"]
    if signal == "fluorescence" and nwb_unit not in ("n.a.", "", "no unit"):
        units = nwb_unit
    attrs = {"signal": signal, "units": units, "nwb_series": list(keys),
             "conversion": [a["conversion"] for a in attrs_list],
             "offset": [a["offset"] for a in attrs_list]}
    ds = xr.Dataset(
        {"activity": (("time", "neuron"), data, attrs)},
        coords={"time": ("time", times, {"units": "s"}), "neuron_id": ("neuron", neuron_id),
                "roi_id": ("neuron", roi_ids), "plane": ("neuron", plane)},
    )
    return ds, keys


def _safe(name: str) -> str:
    return re.sub(r"\W", "_", name)


def _behavior(nwb: Any, path: Path, reader: _Reader,
              clock: np.ndarray | None) -> dict[str, tuple]:
    from pynwb.base import TimeSeries
    from pynwb.behavior import SpatialSeries

    series = [o for o in nwb.objects.values() if type(o) in (TimeSeries, SpatialSeries)
              and not _is_stimulus(nwb, o)]
    on_clock, own = [], {}
    for s in sorted(series, key=lambda o: o.name):
        if len(s.data.shape) > 2:
            log.info("%s: series %r has %d dims; only 1-D and 2-D behaviour is loaded", path,
                     s.name, len(s.data.shape))
            continue
        t = _series_time(s, path)
        part = reader.part(s)
        n_col = 1 if len(s.data.shape) == 1 else s.data.shape[1]
        suffixes = ["x", "y", "z"] if isinstance(s, SpatialSeries) and n_col <= 3 else None
        channels = [s.name] if n_col == 1 else [
            f"{s.name}_{suffixes[i] if suffixes else i}" for i in range(n_col)]
        if clock is not None and t.shape == clock.shape and np.allclose(t, clock, atol=1e-9):
            on_clock.append((part, channels, _series_attrs(s, part)))
            continue
        name = _safe(s.name)
        data = reader.wrap(Columns([part], np.array(channels), f"{path}: series {s.name!r}",
                                   check=False))
        own[f"time_{name}"] = (f"time_{name}", t, {"units": "s"})
        own[f"channel_{name}"] = (f"channel_{name}", np.array(channels, dtype=str))
        own[f"behavior_{name}"] = ((f"time_{name}", f"channel_{name}"), data,
                                   _series_attrs(s, part))
    if on_clock:
        channels = [c for _, cs, _ in on_clock for c in cs]
        data = reader.wrap(Columns([p for p, _, _ in on_clock], np.array(channels),
                                   f"{path}: behaviour", check=False))
        own["behavior"] = (("time", "behavior_channel"), data,
                           {"nwb_series": [a["nwb_path"] for _, _, a in on_clock]})
        own["behavior_channel"] = ("behavior_channel", np.array(channels, dtype=str))
    return own


def _is_stimulus(nwb: Any, obj: Any) -> bool:
    return any(obj is s for s in list(nwb.stimulus.values()) + list(
        nwb.stimulus_template.values()))


def _as_units(spikes: xr.Dataset) -> xr.Dataset:
    # ROIs and sorted units are different cells: with ophys activity on 'neuron', the units
    # go on their own 'unit' dim (and 'unit_spike') so that neither indexes the other.
    names = {"spike_time": "unit_spike_time", "spike_neuron": "unit_spike_unit",
             "spike_count_total": "unit_spike_count", "neuron_id": "unit_id"}
    names.update({c: f"unit_{c}" for c in spikes.coords if c not in names})
    return spikes.rename(names).rename_dims({"neuron": "unit", "spike": "unit_spike"})


# --------------------------------------------------------------------------- entry point


def _open(path: Path):
    from pynwb import NWBHDF5IO

    if not path.is_file():
        raise FormatError(f"{path} does not exist or is not a file.")
    if not h5py.is_hdf5(path):
        raise FormatError(f"{path}: not an HDF5 file, so not an NWB file (it may be truncated, "
                          "or an NWB-zarr folder, which this loader does not read).")
    io = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            io = NWBHDF5IO(str(path), "r", load_namespaces=True)
            return io, io.read()
    except Exception as exc:  # h5py/hdmf raise many types on corrupt files
        if io is not None:
            io.close()
        raise FormatError(f"{path}: cannot be read as NWB ({type(exc).__name__}: {exc}). "
                          "The file may be truncated or corrupt.") from exc


def _file_attrs(nwb: Any, path: Path) -> dict[str, Any]:
    subject = getattr(nwb, "subject", None)
    attrs = {
        "source": path.name,
        "format": "nwb",
        "identifier": nwb.identifier,
        "session_description": nwb.session_description,
        "session_start_time": nwb.session_start_time.isoformat(),
        "session": nwb.session_id,
        "subject": getattr(subject, "subject_id", None) or None,
        "species": getattr(subject, "species", None) or None,
    }
    return {k: str(v) for k, v in attrs.items() if v not in (None, "")}


def load(path: Path, *, ophys_series: str | None = None, bin_size: float | None = None,
         allow_nan: bool = False, behavior: bool = True, chunks: Any = "auto") -> xr.Dataset:
    """Load an NWB file lazily into the neurodata data model.

    Parameters
    ----------
    path
        An ``.nwb`` (HDF5) file.
    ophys_series
        Which ``RoiResponseSeries`` becomes ``activity``: a container (``"DfOverF"``,
        ``"Fluorescence"``), a series name or ``"container/series"``. Default: every series
        of ``DfOverF`` if present, else of ``Fluorescence``.
    bin_size
        Also bin the spike table into ``activity(time, neuron)`` counts (seconds); only for
        files without ophys activity.
    allow_nan
        Keep NaN/Inf in ROI traces; by default reading them raises :class:`InputDataError`
        naming the series and ROI (checked lazily, when the values are computed).
    behavior
        Load plain ``TimeSeries``/``SpatialSeries`` as behaviour variables.
    chunks
        ``"auto"`` (default): dask arrays in chunks of about 64 MiB along time; a dask chunks
        spec; or ``None``: xarray's lazy indexing without dask, which reads a full
        ``.values`` straight into one array (half the peak memory of dask's compute, which
        holds the chunks and their concatenation at once).

    Returns
    -------
    xarray.Dataset
        Validated; ROI traces and behaviour are lazy (dask by default) arrays reading from
        the file.
        ``ds.close()`` releases the file.

    Examples
    --------
    >>> import neurodata
    >>> ds = neurodata.load("A8604-211122.nwb", bin_size=0.1)  # doctest: +SKIP
    """
    path = Path(path)
    io, nwb = _open(path)
    reader = _Reader(path, chunks)
    try:
        taken: set[str] = set()
        parts: list[xr.Dataset] = []
        ophys, keys = _ophys(nwb, path, reader, ophys_series, allow_nan)
        if ophys is not None:
            taken.update(ophys.coords)
            parts.append(ophys)
        if nwb.units is not None:
            spikes = _units(nwb, path, taken)
            if ophys is not None:
                if bin_size is not None:
                    raise InputDataError(f"{path}: bin_size= was given but the file has ophys "
                                         f"activity ({keys}); load one or the other.")
                spikes = _as_units(spikes)
            parts.append(spikes)
        ds = xr.merge(parts, compat="override", combine_attrs="drop_conflicts") if parts \
            else xr.Dataset()
        if bin_size is not None:
            if "spike_time" not in ds:
                raise MissingFieldError(f"{path}: bin_size= needs a units table; there is none.")
            ds = bin_spikes(ds, bin_size)
        clock = np.asarray(ds["time"].values) if "time" in ds.coords else None
        if behavior:
            ds = ds.assign(_behavior(nwb, path, reader, clock))
        if nwb.trials is not None and len(nwb.trials.id):
            ds = ds.assign_coords(_intervals(nwb.trials, "trial", "trial_", taken))
        if nwb.epochs is not None and len(nwb.epochs.id):
            ds = ds.assign_coords(_intervals(nwb.epochs, "epoch", "epoch_", taken))
        for name, table in (nwb.intervals or {}).items():
            dim = _safe(name)
            if name not in ("trials", "epochs") and len(table.id) and dim not in ds.dims:
                ds = ds.assign_coords(_intervals(table, dim, f"{dim}_", taken))
        ds.attrs = {**ds.attrs, **_file_attrs(nwb, path), "schema_version": "1.0",
                    "history": list(ds.attrs.get("history", []))}
        if ophys is not None:
            period = np.median(np.diff(ds["time"].values)) if ds.sizes["time"] > 1 else 0
            if period > 0:
                ds.attrs["sampling_rate"] = float(1.0 / period)
    except BaseException:
        reader.close()
        io.close()
        raise
    io.close()  # every remaining lazy array reads through its own H5Array handle
    ds.set_close(reader.close)
    return validate(ds)
