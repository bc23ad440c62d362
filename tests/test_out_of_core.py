"""A recording several times larger than the memory it may use goes from disk to disk.

The pipeline runs in a fresh subprocess that measures its own peak resident memory
(``ru_maxrss``) after the imports and a tiny warm-up run, then streams a ~200 MB float32
zarr recording through bin -> smooth -> zscore -> cut_windows -> neurodata.save.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("dask")

SCRIPT = r"""
import json, resource, sys
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

import neurodata
from neurodata import preprocess as pp

folder = Path(sys.argv[1])
n_time, n_neuron, rate, chunk = int(sys.argv[2]), int(sys.argv[3]), 1000.0, 4000
dask.config.set(scheduler="synchronous")


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def recording(n):
    # written chunk by chunk: the random values are a lazy dask array
    values = da.random.RandomState(0).gamma(2.0, 2.5, size=(n, n_neuron),
                                            chunks=(chunk, n_neuron)).astype(np.float32)
    template = neurodata.from_arrays(np.zeros((1, n_neuron), np.float32), rate, signal="rate")
    act = xr.DataArray(values, dims=("time", "neuron"), attrs=template.activity.attrs)
    ds = xr.Dataset({"activity": act}, attrs=template.attrs).assign_coords(
        time=("time", np.arange(n) / rate, {"units": "s"}), neuron_id=template.neuron_id)
    return neurodata.validate(ds)


def pipeline(path, out):
    ds = neurodata.open_dataset(path, chunks={"time": chunk})
    ds = pp.cut_windows(pp.zscore(pp.smooth(pp.bin(ds, 0.002), 0.01)), 1.0)
    lazy = dask.is_dask_collection(ds.activity.data)
    neurodata.save(ds, out)
    return lazy


# warm-up on a tiny recording: loads every lazily imported module before the baseline
neurodata.save(recording(2 * chunk), folder / "tiny.zarr")
pipeline(folder / "tiny.zarr", folder / "tiny_out.zarr")
baseline = peak_mb()

neurodata.save(recording(n_time), folder / "big.zarr")
after_write = peak_mb()
lazy = pipeline(folder / "big.zarr", folder / "big_out.zarr")
after_pipeline = peak_mb()

out = neurodata.open_dataset(folder / "big_out.zarr", chunks={})
mean = float(out.activity.mean().compute())
std = float(out.activity.std().compute())
print(json.dumps({
    "baseline_mb": baseline, "after_write_mb": after_write, "peak_mb": after_pipeline,
    "lazy": lazy, "sizes": dict(out.activity.sizes), "signal": out.activity.attrs["signal"],
    "history": list(out.attrs["history"]), "mean": mean, "std": std,
    "data_mb": n_time * n_neuron * 4 / 2**20,
}))
"""


def test_larger_than_memory_recording_streams_through_preprocessing(tmp_path):
    n_time, n_neuron = 200_000, 256  # 195 MiB of float32 (391 MiB once in float64)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(n_time),
                             str(n_neuron)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["lazy"]
    assert report["sizes"] == {"trial": 200, "time": 500, "neuron": n_neuron}
    assert report["signal"] == "zscore"
    assert report["history"][-4:] == ["bin(bin_size=0.002)", "smooth(sigma=0.01)", "zscore()",
                                      "cut_trials(n_events=200, window=(0.0, 1.0))"]
    # z-scored over the whole recording, and every window kept: mean 0, sd 1
    assert abs(report["mean"]) < 1e-6 and abs(report["std"] - 1.0) < 1e-3
    growth = report["peak_mb"] - report["baseline_mb"]
    # The data is 195 MiB in float32 (391 MiB in the float64 of the filters); the pipeline
    # holds a few 8 MiB float64 chunks at a time: about 60 MiB measured on the dev machine.
    assert growth < report["data_mb"] / 2, report
