"""Batch planning from the device's free memory."""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

from neurodata.errors import InputDataError
from neurodata.models._jax import memory
from neurodata.models._jax.memory import DeviceMemory, device_memory, plan_batch_size


class FakeGPU:
    """A device whose allocator reports statistics, as a CUDA device does."""

    def __init__(self, limit: int, in_use: int):
        self.stats = {"bytes_limit": limit, "bytes_in_use": in_use, "peak_bytes_in_use": 0}

    def memory_stats(self):
        return self.stats


def test_plan_solves_the_budget_exactly():
    # (0.5 * 1000 - 100) / 7 = 57.1 -> 57, then multiples of 8 -> 56
    assert plan_batch_size(7, free_bytes=1000, fixed_bytes=100) == 57
    assert plan_batch_size(7, free_bytes=1000, fixed_bytes=100, multiple=8) == 56
    assert plan_batch_size(7, free_bytes=1000, fraction=1.0) == 142
    # never more than there are items, never fewer than min_size
    assert plan_batch_size(1, 30, free_bytes=1e9) == 30
    assert plan_batch_size(1e9, 30, free_bytes=1e6) == 1
    assert plan_batch_size(1e9, 30, free_bytes=1e6, min_size=4) == 4
    assert plan_batch_size(1e9, 3, free_bytes=1e6, min_size=4) == 3
    assert plan_batch_size(10, free_bytes=1000, fixed_bytes=2000) == 1


def test_gpu_statistics_drive_the_plan():
    gpu = FakeGPU(limit=80 * 2**30, in_use=16 * 2**30)
    info = device_memory(gpu)
    assert info == DeviceMemory(64 * 2**30, 80 * 2**30, "memory_stats")
    # a 1 GiB item: half of 64 GiB -> 32 items
    assert plan_batch_size(2**30, 1000, device=gpu) == 32


def test_cpu_reads_the_operating_system():
    info = device_memory(jax.devices("cpu")[0])
    assert info.source in ("meminfo", "sysconf", "cgroup")
    assert 0 < info.free <= info.total
    if info.source == "meminfo":
        fields = dict(line.split(":") for line in Path("/proc/meminfo").read_text().splitlines())
        total = int(fields["MemTotal"].split()[0]) * 1024
        assert info.total == total
    # the default device plans from the same figures (free memory moves a little in between)
    assert plan_batch_size(2**20) == pytest.approx(0.5 * device_memory().free / 2**20,
                                                   rel=0.05)


def test_cgroup_limits_are_read_for_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1000000\n")
    (v2 / "memory.current").write_text("250000\n")
    assert memory._cgroup(v2) == (750000, 1000000)
    (v2 / "memory.max").write_text("max\n")
    assert memory._cgroup(v2) is None  # no limit
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(2**20))
    (v1 / "memory.usage_in_bytes").write_text(str(2**18))
    assert memory._cgroup(v1.parent) == (2**20 - 2**18, 2**20)
    (v1 / "memory.limit_in_bytes").write_text(str(2**63 - 4096))  # v1's "unlimited"
    assert memory._cgroup(v1.parent) is None


def test_a_tighter_container_limit_wins(monkeypatch):
    monkeypatch.setattr(memory, "_cgroup", lambda: (10, 100))
    assert device_memory(jax.devices("cpu")[0]) == DeviceMemory(10, 100, "cgroup")


@pytest.mark.parametrize("kwargs, word", [
    ({"bytes_per_item": 0}, "bytes_per_item"),
    ({"bytes_per_item": 1, "fraction": 0}, "fraction"),
    ({"bytes_per_item": 1, "fraction": 1.5}, "fraction"),
    ({"bytes_per_item": 1, "fixed_bytes": -1}, "fixed_bytes"),
    ({"bytes_per_item": 1, "multiple": 0}, "multiple"),
    ({"bytes_per_item": 1, "n_items": 0}, "n_items"),
])
def test_bad_arguments_name_the_argument(kwargs, word):
    with pytest.raises(InputDataError, match=word):
        plan_batch_size(free_bytes=1e6, **kwargs)


def test_host_memory_respects_an_address_space_limit(monkeypatch):
    import resource

    from neurodata.models._jax import memory

    used = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    limit = used + 2**30  # 1 GB of room: below what any test machine has free
    monkeypatch.setattr(memory.resource, "getrlimit",
                        lambda which: (limit, limit) if which == resource.RLIMIT_AS
                        else (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    limited = memory.host_memory()
    assert limited.source == "rlimit_as"
    assert 0.9 * 2**30 < limited.free <= 2**30
    assert memory.device_memory(jax.devices("cpu")[0]).free == limited.free


def test_aligned_empty_starts_on_64_bytes_and_jax_reads_it():
    import jax.numpy as jnp
    import numpy as np

    from neurodata.models._jax.memory import aligned_empty

    for shape, dtype in [((3, 5), np.float64), ((7,), np.float32), ((2, 3, 4), np.int64)]:
        out = aligned_empty(shape, dtype)
        assert out.shape == shape and out.dtype == dtype and out.flags.c_contiguous
        assert out.ctypes.data % 64 == 0
        out[...] = np.arange(out.size).reshape(shape)
        np.testing.assert_array_equal(np.asarray(jnp.asarray(out)), out)
