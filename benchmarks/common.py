"""Shared helpers for the benchmarks: machine description, timing, result files."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """One line describing the machine and the JAX backend."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"JAX {jax.__version__} on {jax.default_backend()} [{devices}]")


def block(x):
    """Wait for every JAX array in a pytree."""
    return jax.block_until_ready(x)


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn()`` after ``warmup`` calls (results blocked on)."""
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_first_call(fn: Callable[[], object]) -> float:
    """Wall time of the first call (compile plus one run) in seconds."""
    start = time.perf_counter()
    block(fn())
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(name: str, markdown: str) -> Path:
    """Write one benchmark's section to ``benchmarks/results/<name>.md``."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n")
    return path
