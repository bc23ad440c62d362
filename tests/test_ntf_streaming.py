"""Streaming NTF: the fit over chunks of the tensor equals the in-memory fit; bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys

import dask.array as da
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import neurodata  # noqa: F401  (x64)
from neurodata.errors import InputDataError
from neurodata.models import ntf as ntf_module
from neurodata.models.ntf import (
    NTF,
    DynamicConnectome,
    TensorStream,
    affinity_tensor,
    fit_cp,
    fit_cp_stream,
    plan_stream,
    random_init,
    simulate,
)

SHAPE = (21, 17, 3)
RANK = 3


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = np.einsum("ir,jr,kr->ijk", *[rng.random((n, RANK)) for n in SHAPE])
    x = x + 0.1 * rng.random(SHAPE)
    init = random_init(jax.random.PRNGKey(0), SHAPE, RANK, 3, float(np.linalg.norm(x)),
                       jnp.float64)
    masks = {"pair": rng.random((SHAPE[0], 1, SHAPE[2])) > 0.2,
             "window": rng.random((1, SHAPE[1], SHAPE[2])) > 0.1}
    return x, init, masks


def _max_rel_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(p) - np.asarray(q))) / np.max(np.abs(p)))
               for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize(("method", "names", "chunk"), [
    ("hals", ("pair", "window"), 5),  # a mask that varies along the chunks; last chunk padded
    ("mu", ("pair",), 1),  # a mask that does not: its Grams come from the factors alone
])
def test_streamed_fit_equals_in_memory_fit(problem, method, names, chunk):
    x, init, masks = problem
    chosen = [masks[n] for n in names]
    mask = np.broadcast_to(np.logical_and.reduce(np.broadcast_arrays(*chosen)), SHAPE)
    # tol > 0: the replicates stop at different iterations, as in the vmapped while_loop
    kwargs = dict(method=method, max_iter=40, tol=1e-4)
    ref = fit_cp(jnp.asarray(x), init, jnp.asarray(mask), **kwargs)
    stream = TensorStream(x, axis=1, chunk=chunk, masks=chosen, dtype="float64")
    norm_sq, seen = stream.scan()
    np.testing.assert_allclose(norm_sq, np.sum(np.where(mask, x, 0) ** 2), rtol=1e-12)
    got = fit_cp_stream(stream, init, norm_sq, **kwargs)
    np.testing.assert_array_equal(got.n_iter, ref.n_iter)
    assert len(set(np.asarray(ref.n_iter).tolist())) > 1 or method == "mu"
    assert _max_rel_diff(ref.factors, got.factors) < 1e-10
    np.testing.assert_allclose(got.errors, ref.errors, rtol=1e-10, atol=0)
    for k, rows in enumerate(seen):
        np.testing.assert_array_equal(rows, mask.any(axis=tuple(j for j in range(3) if j != k)))


def test_lazy_affinity_and_zarr_tensors_stream_to_the_in_memory_factors(tmp_path):
    """From the activity (windows recomputed per chunk) and from zarr: same NTF as in memory."""
    ds = simulate(n_neurons=10, n_animals=3, epoch_duration=30.0, seed=1)
    kwargs = dict(window=4.0, step=2.0, dtype="float64")
    whole = affinity_tensor(ds, **kwargs)
    assert not bool(whole["mask"].all())  # neurons missing in some animals
    settings = dict(rank=3, n_init=3, max_iter=25, tol=0.0, dtype="float64", seed=2)
    ref = NTF(stream=False, **settings).fit(whole)
    assert ref.stream_chunk_ == 0
    lazy = affinity_tensor(ds, lazy=True, batch_windows=8, **kwargs)
    streamed = NTF(stream=True, chunk_size=8, **settings).fit(lazy)
    assert streamed.stream_chunk_ == 8
    whole.chunk({"window": 8}).to_dataset(name="affinity").to_zarr(tmp_path / "aff.zarr",
                                                                    zarr_format=2)
    on_disk = xr.open_zarr(tmp_path / "aff.zarr")["affinity"]
    from_zarr = NTF(stream=True, chunk_size=8, **settings).fit(on_disk)
    # the pipeline streams its lazily built tensor (Leiden communities: fast)
    dc = DynamicConnectome(rank=3, window=4.0, step=2.0, n_init=3, max_iter=25, tol=0.0,
                           dtype="float64", stream=True, chunk_size=8, community="leiden",
                           seed=2).fit(ds)
    for factors in (streamed.factors_, from_zarr.factors_,
                    [dc.pair_pattern_, dc.time_course_, dc.animal_loading_]):
        assert _max_rel_diff([f.values for f in ref.factors_], [f.values for f in factors]) < 1e-10
        assert factors[1].dims == ("window", "component")
        np.testing.assert_array_equal(factors[0]["neuron_a"], ref.factors_[0]["neuron_a"])
    for err in (streamed.error_, from_zarr.error_, dc.ntf_error_):
        assert err == pytest.approx(ref.error_, rel=1e-10)


def test_chunk_plan(monkeypatch, problem):
    # 6 copies of a window's 19900 float32 entries in half of 400 MB
    assert plan_stream((19900, 2000, 1), 4, axis=1, free_bytes=400e6) == 418
    # rounded down to whole storage chunks; never below one window, never above all
    assert plan_stream((19900, 2000, 1), 4, axis=1, native=100, free_bytes=400e6) == 400
    assert plan_stream((19900, 2000, 1), 4, axis=1, free_bytes=1.0) == 1
    assert plan_stream((19900, 2000, 1), 4, axis=1, free_bytes=1e12) == 2000
    x = problem[0]
    # "auto" fits in memory when the tensor fits, and streams when it does not
    model = NTF(rank=2)
    assert model._stream_plan(x) is None
    per_row = 6 * 4 * SHAPE[1] * SHAPE[2]  # float32 rows of the longest mode, axis 0
    monkeypatch.setattr(ntf_module, "_free_memory", lambda: 2 * 5 * per_row)
    assert model._stream_plan(x) == (0, 5)
    assert NTF(rank=2, stream=False)._stream_plan(x) is None
    # a dask tensor streams along the mode cut into most chunks, in whole chunks
    lazy = xr.DataArray(da.from_array(x, chunks=(21, 2, 3)))
    assert model._stream_plan(lazy) == (1, 4)


def test_streaming_bad_input(problem):
    x = problem[0]
    with pytest.raises(InputDataError, match="stream"):
        NTF(rank=2, stream="yes").fit(x)
    with pytest.raises(InputDataError, match="chunk_size"):
        NTF(rank=2, chunk_size=0).fit(x)
    y = x.copy()
    y[3, 12, 1] = np.nan
    with pytest.raises(InputDataError, match="NaN"):
        NTF(rank=2, chunk_size=4).fit(y)
    with pytest.raises(InputDataError, match="negative"):
        NTF(rank=2, chunk_size=4).fit(-x)
    with pytest.raises(InputDataError, match="does not broadcast"):
        NTF(rank=2, chunk_size=4, mask=np.ones((2, 1, 3), bool)).fit(x)


SCRIPT = r"""
import json, resource, sys

import numpy as np

import neurodata
from neurodata.models.ntf import NTF, affinity_tensor

n_time, room_mb = int(sys.argv[1]), float(sys.argv[2])


def recording(n):
    rng = np.random.default_rng(0)
    groups = rng.normal(size=(n, 4)).cumsum(0)[:, rng.integers(0, 4, 200)]
    return neurodata.from_arrays((groups + rng.normal(size=(n, 200))).astype(np.float32), 10.0,
                                 signal="dff")


def lazy(ds):
    # 4-frame windows, computed 16 at a time when read
    return affinity_tensor(ds, window=0.4, step=0.4, lazy=True, batch_windows=16)


def fit(aff, **kw):
    return NTF(rank=2, n_init=1, max_iter=2, tol=0.0, stream=True, **kw).fit(aff)


def vm(key):
    status = open("/proc/self/status").read()
    return int(status.split(key + ":")[1].split()[0]) * 1024


fit(lazy(recording(400)), chunk_size=48)  # warm-up: imports and compiled kernels
aff = lazy(recording(n_time))
base_rss, base_vm = vm("VmRSS"), vm("VmSize")
limit = int(base_vm + room_mb * 2**20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
model = fit(aff)  # the chunk size is planned from the room left under the limit
try:
    NTF(rank=2, n_init=1, max_iter=2, stream=False).fit(aff)
    in_memory = "fitted"
except MemoryError:
    in_memory = "MemoryError"
print(json.dumps({"tensor_mb": aff.size * 4 / 2**20, "growth_mb": (vm("VmHWM") - base_rss) / 2**20,
                  "chunk": model.stream_chunk_, "error": model.error_, "in_memory": in_memory,
                  "n_iter": int(model.n_iter_[0])}))
"""


def test_streamed_fit_runs_under_an_address_space_limit_smaller_than_the_tensor():
    room_mb = 100
    # 200 neurons (19,900 pairs) x 3999 windows: a 304 MB float32 tensor, 3x the room
    result = subprocess.run([sys.executable, "-c", SCRIPT, "16000", str(room_mb)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tensor_mb"] > 3 * room_mb
    # the limit binds: the in-memory fit cannot even allocate the tensor
    assert report["in_memory"] == "MemoryError"
    # planned from the room: 6 float32 copies of a window in half of it, whole batches of 16
    assert report["chunk"] % 16 == 0 and 16 <= report["chunk"] <= 128
    assert report["n_iter"] == 2 and 0 < report["error"] < 1
    assert report["growth_mb"] < report["tensor_mb"] / 4, report
