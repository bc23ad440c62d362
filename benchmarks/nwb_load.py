"""NWB loading: ``neurodata.load`` against pynapple's NWB reader on one large file.

The file (written with pynwb into ``benchmarks/_data/``, gitignored, reused across runs)
holds a Units table (1000 units, 5 million spikes) and a ``Fluorescence`` RoiResponseSeries
(500 ROIs x 100k frames, float32); ``--quick`` makes everything 10x smaller. Each
measurement runs in a fresh subprocess so that its peak memory (``VmHWM``, reset after the
imports) is its own:

- open: build the lazy object (neurodata: the lazy dataset, with dask by default or
  ``chunks=None``; pynapple:
  ``nap.NWBFile(path, lazy_loading=True)``);
- full: open, then materialise the spike times and the ROI traces as numpy arrays
  (neurodata: ``spike_time`` and ``activity.values``; pynapple: ``units`` TsGroup and the
  ``TsdFrame`` values);
- the peak RSS above the process's RSS after imports, relative to the data size.

Run: ``.venv/bin/python -m benchmarks.nwb_load [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "_data"
FULL = {"n_units": 1000, "n_spikes": 5_000_000, "n_rois": 500, "n_frames": 100_000}
QUICK = {k: v // 10 for k, v in FULL.items()}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM, so the peak below is the measurement's
    # own (ru_maxrss would also count the imports and, after fork, the parent's RSS).
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def make_file(path: Path, n_units: int, n_spikes: int, n_rois: int, n_frames: int,
              seed: int = 0) -> Path:
    """Write the benchmark NWB file (seeded) unless it already exists."""
    if path.exists():
        return path
    from hdmf.common import DynamicTableRegion
    from pynwb import NWBHDF5IO
    from pynwb.ophys import Fluorescence, PlaneSegmentation, RoiResponseSeries
    from pynwb.testing.mock.file import mock_NWBFile
    from pynwb.testing.mock.ophys import mock_ImagingPlane

    rng = np.random.default_rng(seed)
    nwbfile = mock_NWBFile()
    duration = n_frames / 30.0
    counts = rng.multinomial(n_spikes, np.full(n_units, 1.0 / n_units))
    for unit, count in enumerate(counts):
        nwbfile.add_unit(spike_times=np.sort(rng.uniform(0, duration, count)), id=unit)
    module = nwbfile.create_processing_module("ophys", "ophys")
    plane = PlaneSegmentation(name="PlaneSegmentation", description="rois",
                              imaging_plane=mock_ImagingPlane(nwbfile=nwbfile))
    for i in range(n_rois):
        plane.add_roi(pixel_mask=[(i % 64, i // 64, 1.0)], id=i)
    module.add(plane)
    data = rng.normal(100.0, 10.0, (n_frames, n_rois)).astype(np.float32)
    rois = DynamicTableRegion(name="rois", description="all", table=plane,
                              data=list(range(n_rois)))
    module.add(Fluorescence(name="Fluorescence", roi_response_series=[RoiResponseSeries(
        name="RoiResponseSeries", data=data, rois=rois, unit="n.a.", rate=30.0)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwbfile)
    tmp.rename(path)
    return path


def _measure(reader: str, what: str, path: str) -> dict:
    """Run in a fresh subprocess: one open or full load, with its time and peak memory.

    The peak is read from ``VmHWM`` after resetting it once the imports are done.
    """
    warnings.simplefilter("ignore")
    import pynwb  # noqa: F401  (imported up front by both: import time is not open time)

    if reader.startswith("neurodata"):
        import dask.array  # noqa: F401
        import dask.threaded  # noqa: F401  (dask imports its scheduler on first compute)

        import neurodata
        import neurodata.loaders.nwb  # noqa: F401
    else:
        import pynapple as nap
    base = _status_mb("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    if reader.startswith("neurodata"):
        ds = neurodata.load(path, chunks=None if reader == "neurodata-nodask" else "auto")
        if what == "full":
            spikes = ds["unit_spike_time"].values
            traces = ds["activity"].values
    else:
        nwb = nap.NWBFile(path, lazy_loading=True)
        if what == "full":
            units = nwb["units"]
            spikes = np.concatenate([units[k].t for k in units.keys()])
            traces = np.asarray(nwb["RoiResponseSeries"].values)
    elapsed = time.perf_counter() - start
    out = {"time_s": elapsed, "peak_mb": _status_mb("VmHWM"), "base_mb": base}
    if what == "full":
        out["n_spikes"] = int(spikes.size)
        out["traces_shape"] = list(traces.shape)
        out["checksum"] = float(np.asarray(traces[::97, ::7], dtype=np.float64).sum())
    return out


def _run(reader: str, what: str, path: Path) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.nwb_load", "--measure", reader, what, str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", nargs=3, metavar=("READER", "WHAT", "PATH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(*args.measure)))
        return
    from benchmarks.common import machine, write_result

    sizes = QUICK if args.quick else FULL
    name = "bench_{n_units}u_{n_spikes}s_{n_rois}r_{n_frames}f.nwb".format(**sizes)
    start = time.perf_counter()
    path = make_file(DATA_DIR / name, **sizes)
    write_s = time.perf_counter() - start
    data_mb = (sizes["n_spikes"] * 8 + sizes["n_rois"] * sizes["n_frames"] * 4) / 2**20
    rows = {}
    readers = ("neurodata", "neurodata-nodask", "pynapple")
    for reader in readers:
        for what in ("open", "full"):
            runs = [_run(reader, what, path) for _ in range(args.repeats)]
            rows[reader, what] = {
                "time_s": statistics.median(r["time_s"] for r in runs),
                "extra_mb": statistics.median(r["peak_mb"] - r["base_mb"] for r in runs),
                "checksum": runs[0].get("checksum"),
            }
            print(reader, what, rows[reader, what], flush=True)
    same = all(np.isclose(rows[r, "full"]["checksum"], rows["pynapple", "full"]["checksum"])
               for r in readers)
    pn_o, pn_f = rows["pynapple", "open"], rows["pynapple", "full"]
    lines = []
    for reader, label in (("neurodata", "neurodata (dask, default)"),
                          ("neurodata-nodask", "neurodata, `chunks=None`"),
                          ("pynapple", "pynapple")):
        o, f = rows[reader, "open"], rows[reader, "full"]
        lines.append(
            f"| {label} | {o['time_s']:.3f} s ({o['time_s'] / pn_o['time_s']:.2f}x) | "
            f"{f['time_s']:.2f} s ({f['time_s'] / pn_f['time_s']:.2f}x) | "
            f"{o['extra_mb']:.0f} MiB | {f['extra_mb']:.0f} MiB ({f['extra_mb'] / data_mb:.2f}x "
            "data) |")
    table = "\n".join(lines)
    md = f"""## NWB loading (neurodata vs pynapple)

Machine: {machine()}

File: {sizes['n_units']} units with {sizes['n_spikes']:,} spikes (float64) and one
RoiResponseSeries of {sizes['n_rois']} ROIs x {sizes['n_frames']:,} frames (float32):
{data_mb:.0f} MiB of array data, {path.stat().st_size / 2**20:.0f} MiB on disk (written by
pynwb{f' in {write_s:.0f} s' if write_s > 0.5 else ' in an earlier run'}). Each figure is the
median of {args.repeats} fresh subprocesses (imports excluded, pynwb imported by both);
"extra memory" is the peak RSS (VmHWM, reset after the imports) above the RSS after
imports. Ratios are against pynapple. All readers give the same traces: {bool(same)}.
{'Quick mode: 10x smaller than the issue sizes.' if args.quick else ''}

| reader | open (lazy) | full load (spikes + traces) | extra memory, open | extra, full |
|---|---|---|---|---|
{table}

Targets (issue): open under 1 s and independent of size; full load no slower than pynapple;
peak memory under 1.5x the data size. neurodata reads the spike times in one bulk read at
open (the spike table must be in memory for `validate`), so "open" includes
{sizes['n_spikes'] * 8 / 2**20:.0f} MiB of spike times plus their int64 unit index, and
keeps the traces on disk until `.values`. With dask (the default), `.values` holds the
chunks and their concatenation at once (about 2x the traces; dask copies even a single
chunk into a new result array) and the extra copy costs time too; `chunks=None` (xarray's
lazy indexing, no dask) reads straight into one array and meets both targets. The machine
is shared with other jobs, so times vary by about 30% between runs.
"""
    print(write_result("nwb_load", md))


if __name__ == "__main__":
    main()
