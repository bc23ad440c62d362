"""Every model on the CPU and on the GPU: time per iteration, speed-up, first call, memory.

``python -m benchmarks.gpu [--quick] [--only gpfa,ntf,...] [--timeout S]`` writes
``benchmarks/results/gpu.md``. It needs only the repository (and a jaxlib with CUDA, e.g.
``pip install -e '.[test]' 'jax[cuda12]'``): the workloads are those of
:mod:`benchmarks.scaling` (each model fitted through its public API on simulated data), one
or two sizes per model, each measured in a fresh subprocess with ``JAX_PLATFORMS=cpu`` and
again with ``JAX_PLATFORMS=cuda``, so that neither run holds the other's memory. The
timing rules are those of :mod:`benchmarks.scaling` (compilation and per-fit set-up left
out of the time per iteration); GPU memory is the allocator's peak
(``device.memory_stats()["peak_bytes_in_use"]``). Every model runs unchanged: the code
does not know which device it is on.

On a machine where JAX sees no GPU it writes a "no GPU present" section and exits 0.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import time

# This process only orchestrates: it must not start a GPU client (which would reserve most
# of the GPU's memory while the measured subprocesses run). Each point sets its own.
os.environ["JAX_PLATFORMS"] = "cpu"

from benchmarks.common import write_result  # noqa: E402  (imports jax)
from benchmarks.scaling import CURVES, _measure  # noqa: E402

# (model, driver) of a scaling curve -> (sizes, quick sizes, overrides of the curve's fixed
# sizes, minimum extra iterations of the timing runs). The GPU pays off where the arithmetic,
# not the dispatch, dominates, so the full run uses lab-scale sizes (GPFA as in its benchmark
# (b), MM-GPVAE at the paper's simulation size, crossnobis at the 92 conditions x 5000
# channels).
SIZES = {
    ("GPFA", "T"): ((200, 500), (25,), {"trials": 50, "neurons": 100}, 10),
    ("MM-GPVAE (Fourier)", "trials"): ((300,), (20,), {"neurons": 100, "T": 60}, 3),
    ("HMM-GLM", "T"): ((128000,), (1000,), {"neurons": 20}, 3),
    ("NTF", "neurons"): ((320,), (20,), {"windows": 200}, 3),
    ("Bi-clustering", "neurons"): ((96,), (24,), {"T": 500}, 3),
    ("RSA crossnobis", "stimuli"): ((92,), (20,), {"channels": 5000}, 3),
    ("RSA dual bootstrap", "stimuli"): ((92,), (20,), {}, 3),
}


def gpu_name() -> str | None:
    """Device kind of the first GPU JAX sees (checked in a subprocess), or None."""
    code = "import jax; print(jax.devices('gpu')[0].device_kind)"
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "JAX_PLATFORMS": ""})
    except subprocess.TimeoutExpired:
        return None
    lines = res.stdout.strip().splitlines()
    return lines[-1] if res.returncode == 0 and lines else None


def _ms(p: dict) -> str:
    return f"{1e3 * p['per_iter_s']:.3g}" if p["status"] == "ok" else p["status"]


def _points(wanted: list[str], quick: bool) -> list[tuple]:
    """(curve with the GPU sizes, size) of every point to measure."""
    points = []
    for curve in CURVES:
        if (curve.model, curve.driver) not in SIZES:
            continue
        if wanted and not any(curve.model.lower().startswith(w) for w in wanted):
            continue
        full, small, fixed, extra = SIZES[(curve.model, curve.driver)]
        sized = dataclasses.replace(curve, fixed={**curve.fixed, **fixed},
                                    extra=curve.extra if quick else extra)
        points += [(sized, value) for value in (small if quick else full)]
    return points


def _table(rows: list[tuple], header: str) -> str:
    lines = [
        "## GPU speed-ups",
        "",
        header,
        "",
        "| model | size | iteration | CPU (ms) | GPU (ms) | speed-up | first call CPU / GPU (s) "
        "| GPU peak memory (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for curve, value, cpu, dev in rows:
        fixed = ", ".join(f"{k}={v}" for k, v in curve.fixed.items() if k != curve.driver)
        both = cpu["status"] == "ok" and dev["status"] == "ok"
        speed = (f"{cpu['per_iter_s'] / dev['per_iter_s']:.1f}x"
                 if both and dev["per_iter_s"] > 0 else "-")
        first = (f"{cpu['first_call_s']:.3g} / {dev['first_call_s']:.3g}" if both else "-")
        peak = dev.get("device_peak_mb")
        lines.append(f"| {curve.model} | {curve.driver}={value} ({fixed}) | {curve.unit} | "
                     f"{_ms(cpu)} | {_ms(dev)} | {speed} | {first} | "
                     f"{'-' if peak is None else f'{peak:.0f}'} |")
    return "\n".join(lines)


def _header(gpu: str, host: str, cpu_workers: int, minutes: float, quick: bool) -> str:
    return (
        f"GPU: **{gpu}**. Host: {host}. Same code and data on both devices (JAX's default "
        "device chosen with `JAX_PLATFORMS`), every point in a fresh process; time per "
        "iteration without compilation and set-up, speed-up = CPU / GPU time per iteration. "
        f"The CPU points ran {cpu_workers} at a time on the host's cores with the "
        "library's default runtime (XLA single-threaded: `PJRT_NPROC=1`). "
        f"Measuring took {minutes:.1f} min{' (--quick sizes)' if quick else ''}."
    )


def merge(logs: list[str], header: str) -> str:
    """The table from the ``POINT`` lines that earlier runs printed (a run that outlived its
    time limit still printed the points it finished); later lines win."""
    found = {}
    for log in logs:
        with open(log) as fh:
            for line in fh:
                if line.startswith("POINT "):
                    rec = json.loads(line[len("POINT "):])
                    found[(rec["model"], rec["driver"], rec["value"])] = rec
    rows = []
    for curve, value in _points([], quick=False):
        rec = found.get((curve.model, curve.driver, value))
        if rec is not None:
            rows.append((curve, value, rec["cpu"], rec["gpu"]))
    return _table(rows, header)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu")
    parser.add_argument("--quick", action="store_true", help="one small size per model")
    parser.add_argument("--only", default="", help="comma-separated model name prefixes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per point")
    parser.add_argument("--cpu-workers", type=int, default=4,
                        help="CPU points measured at the same time (each uses one core)")
    parser.add_argument("--merge", nargs="+", metavar="LOG",
                        help="write the table from the POINT lines of earlier runs' output")
    parser.add_argument("--header", default="", help="the table's description (--merge)")
    args = parser.parse_args(argv)
    if args.merge:
        md = merge(args.merge, args.header)
        write_result("gpu", md)
        print(md)
        return md
    from benchmarks.common import machine

    host = machine()
    gpu = gpu_name()
    if gpu is None:
        md = "\n".join([
            "## GPU speed-ups", "",
            f"No GPU present: JAX sees no GPU on this machine ({host}), so there is nothing "
            "to compare. Run `python -m benchmarks.gpu` on a GPU machine with a CUDA jaxlib "
            "(`pip install 'jax[cuda12]'`) to record the figures.",
        ])
        write_result("gpu", md)
        print(md)
        return md
    print(f"# GPU: {gpu}; host: {host}", flush=True)
    wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    start = time.perf_counter()
    points = _points(wanted, args.quick)
    # The CPU points run side by side (each XLA CPU client is single-threaded, see the README's
    # Numerics) while the GPU points run one at a time, so that no two share the GPU.
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.cpu_workers) as pool:
        cpu_jobs = [pool.submit(_measure, c, v, args.timeout, {"JAX_PLATFORMS": "cpu"})
                    for c, v in points]
        rows = []
        for (curve, value), job in zip(points, cpu_jobs, strict=True):
            dev = _measure(curve, value, args.timeout, {"JAX_PLATFORMS": "cuda"})
            cpu = job.result()
            print("POINT", json.dumps({"model": curve.model, "driver": curve.driver,
                                       "value": value, "cpu": cpu, "gpu": dev}), flush=True)
            rows.append((curve, value, cpu, dev))
    md = _table(rows, _header(gpu, host, args.cpu_workers,
                              (time.perf_counter() - start) / 60, args.quick))
    if not wanted:
        write_result("gpu", md)
    print(md)
    return md


if __name__ == "__main__":
    main()
