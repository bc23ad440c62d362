"""Memory planning: how many items (trials, windows, bootstrap samples) fit in one batch.

A model that streams over batches asks :func:`plan_batch_size` for the largest batch whose
working memory fits in a fraction of the device's free memory. On a GPU the free memory
comes from XLA's allocator (``device.memory_stats()``: ``bytes_limit - bytes_in_use``); on
a CPU, which reports no allocator statistics, from the operating system: ``MemAvailable``
in ``/proc/meminfo`` (else ``os.sysconf``), lowered to the room left under a cgroup (v2 or
v1) memory limit when the process runs in a container. The arithmetic is pure Python, so
planning costs nothing and never allocates on the device.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from neurodata.errors import InputDataError

__all__ = ["DeviceMemory", "device_memory", "plan_batch_size"]


class DeviceMemory(NamedTuple):
    """Free and total memory of a device, in bytes."""

    free: int
    total: int
    source: str
    """Where the figures come from: ``"memory_stats"``, ``"meminfo"``, ``"sysconf"``,
    ``"cgroup"`` (a container limit is the binding one) or ``"unknown"``."""


def _meminfo() -> tuple[int, int] | None:
    try:
        fields = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            fields[name] = int(rest.split()[0]) * 1024  # the values are in kB
        return fields["MemAvailable"], fields["MemTotal"]
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _sysconf() -> tuple[int, int] | None:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup(root: Path = Path("/sys/fs/cgroup")) -> tuple[int, int] | None:
    """Room left under this process's cgroup memory limit, and the limit."""
    pairs = (("memory.max", "memory.current"),  # cgroup v2
             ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"))  # v1
    for limit_name, usage_name in pairs:
        try:
            text = (root / limit_name).read_text().strip()
            if text == "max":
                continue
            limit = int(text)
            usage = int((root / usage_name).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit >= 1 << 60:  # v1 writes a huge number for "no limit"
            continue
        return max(limit - usage, 0), limit
    return None


def _address_space() -> tuple[int, int] | None:
    """(room, limit) under ``RLIMIT_AS``, which neither ``MemAvailable`` nor a cgroup reports."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        status = Path("/proc/self/status").read_text()
        used = int(status.split("VmSize:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        used = 0
    return max(limit - used, 0), limit


def aligned_empty(shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    """An uninitialised C-contiguous host array whose data start on a 64-byte boundary.

    XLA's CPU client aliases such a buffer when it is handed to JAX and copies any other,
    which for small inputs (a few RDMs) or streamed chunks costs as much as the arithmetic.

    Examples
    --------
    >>> aligned_empty((3, 4)).ctypes.data % 64
    0
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    raw = np.empty(size * dtype.itemsize + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + size * dtype.itemsize].view(dtype).reshape(shape)


def host_memory() -> DeviceMemory:
    """Free and total memory of the host, without asking JAX for a CPU device.

    The tightest of ``/proc/meminfo``, ``sysconf``, the cgroup limit and the room left under
    an address-space limit (``resource.RLIMIT_AS``). Code that stages data
    on the host calls this rather than ``device_memory(jax.devices("cpu")[0])``, since no CPU
    device exists when JAX runs on a GPU alone (``JAX_PLATFORMS=cuda``).

    Returns
    -------
    DeviceMemory
        ``free``, ``total`` (bytes) and ``source``; ``source="unknown"`` with zeros when
        nothing reports memory.

    Examples
    --------
    >>> from neurodata.models._jax.memory import host_memory
    >>> host_memory().total > 0
    True
    """
    host = _meminfo()
    source = "meminfo"
    if host is None:
        host, source = _sysconf(), "sysconf"
    group = _cgroup()
    if group is not None and (host is None or group[0] < host[0]):
        host, source = group, "cgroup"
    limit = _address_space()
    if limit is not None and (host is None or limit[0] < host[0]):
        host, source = limit, "rlimit_as"
    if host is None:
        return DeviceMemory(0, 0, "unknown")
    return DeviceMemory(int(host[0]), int(host[1]), source)


def device_memory(device: jax.Device | None = None) -> DeviceMemory:
    """Free and total memory of ``device`` (default: JAX's first default device).

    Parameters
    ----------
    device
        A :class:`jax.Device`, e.g. ``jax.devices("gpu")[0]``.

    Returns
    -------
    DeviceMemory
        ``free``, ``total`` (bytes) and ``source``. ``free == total == 0`` with
        ``source="unknown"`` when nothing reports memory.

    Examples
    --------
    >>> from neurodata.models._jax.memory import device_memory
    >>> device_memory().free > 0
    True
    """
    device = device if device is not None else jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # backends without allocator statistics raise or return None
        stats = None
    if stats and "bytes_limit" in stats:
        total = int(stats["bytes_limit"])
        return DeviceMemory(max(total - int(stats.get("bytes_in_use", 0)), 0), total,
                            "memory_stats")
    return host_memory()


def plan_batch_size(
    bytes_per_item: float,
    n_items: int | None = None,
    *,
    fixed_bytes: float = 0,
    fraction: float = 0.5,
    multiple: int = 1,
    min_size: int = 1,
    device: jax.Device | None = None,
    free_bytes: float | None = None,
) -> int:
    """The largest batch whose working memory fits in a fraction of the free memory.

    Solves ``fixed_bytes + batch * bytes_per_item <= fraction * free`` for the largest
    ``batch``, rounded down to a multiple of ``multiple`` and clipped to
    ``[min_size, n_items]``. Estimate ``bytes_per_item`` as the peak working memory of one
    item (every intermediate that lives at once, times the dtype size), e.g. for GPFA's
    E-step on trials of ``T`` bins and ``p`` latents about ``8 * (T p)**2`` bytes per trial
    in float64; ``fixed_bytes`` is what does not grow with the batch (parameters, the
    data already on the device).

    Parameters
    ----------
    bytes_per_item
        Working memory of one item, in bytes (> 0).
    n_items
        Number of items to process; the batch never exceeds it (default: no bound).
    fixed_bytes
        Memory needed whatever the batch size.
    fraction
        Share of the free memory the batch may use (0 < fraction <= 1); the rest is head
        room for XLA's temporaries and fragmentation.
    multiple
        Round the batch down to a multiple of this (e.g. a vmap width or bootstrap block).
    min_size
        Smallest batch returned, even if it does not fit (the caller then runs out of
        memory with JAX's own message; the plan never returns 0).
    device
        The device to plan for (default: JAX's first default device).
    free_bytes
        Use this free memory instead of asking the device (tests, or a budget of your own).

    Returns
    -------
    int
        The batch size.

    Raises
    ------
    InputDataError
        A non-positive ``bytes_per_item``, ``multiple`` or ``min_size``, a ``fraction``
        outside (0, 1], or a negative ``fixed_bytes``.

    Examples
    --------
    >>> from neurodata.models._jax.memory import plan_batch_size
    >>> plan_batch_size(1e6, 1000, free_bytes=200e6)  # half of 200 MB at 1 MB per item
    100
    >>> plan_batch_size(1e6, 1000, free_bytes=200e6, fixed_bytes=50e6, multiple=16)
    48
    """
    if not bytes_per_item > 0:
        raise InputDataError(f"bytes_per_item is {bytes_per_item!r}; give the positive "
                             "working memory of one item in bytes.")
    if not 0 < fraction <= 1:
        raise InputDataError(f"fraction is {fraction!r}; it must be in (0, 1].")
    if fixed_bytes < 0:
        raise InputDataError(f"fixed_bytes is {fixed_bytes!r}; it must be >= 0.")
    if int(multiple) < 1 or int(min_size) < 1:
        raise InputDataError(f"multiple={multiple!r} and min_size={min_size!r} must be "
                             "positive integers.")
    if n_items is not None and int(n_items) < 1:
        raise InputDataError(f"n_items is {n_items!r}; it must be a positive integer.")
    free = device_memory(device).free if free_bytes is None else float(free_bytes)
    room = fraction * free - fixed_bytes
    batch = int(room // bytes_per_item) if room > 0 else 0
    batch -= batch % int(multiple)
    if n_items is not None:
        batch = min(batch, int(n_items))
    return max(batch, int(min_size) if n_items is None else min(int(min_size), int(n_items)))
