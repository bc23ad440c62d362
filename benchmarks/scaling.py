"""Scaling curves: time per iteration and peak memory of every model against its driving size.

``python -m benchmarks.scaling [--quick] [--only gpfa,ntf,...] [--timeout S] [--jobs N]``
writes ``benchmarks/results/scaling.md`` (``--quick`` only prints).

For each model and each size that drives its cost (neurons, trial length, trials, stimuli,
windows) the script fits the model through its public API at a few sizes, every point in a
fresh subprocess (so that its peak memory, ``resource.getrusage(...).ru_maxrss``, is its
own, and a point that hangs, such as the XLA:CPU deadlock of long Cholesky-heavy loops, is
killed after ``--timeout`` seconds and recorded as a timeout rather than stopping the run).

Timing. In each point the fit runs with ``k1`` iterations (cold: compile plus run), again
with ``k1``, once with ``k2`` (chosen so that the extra iterations take about two seconds;
this run compiles again where the iteration count is static), then alternately with ``k2``
and ``k1`` twice. The time per iteration is the difference of the best warm ``k2`` and
``k1`` runs divided by ``k2 - k1``, which removes compilation and the fixed per-fit
set-up whether or not a model caches its compiled functions between fits; the first-call
overhead is the cold run minus ``k1`` iterations (compilation plus set-up).

Memory: the peak resident set of the point's process (compilation included; importing JAX
alone takes about 230 MB), and the peak of the warm runs above the resident set after the
imports (the peak is reset after the cold run through ``/proc/self/clear_refs``): the
data, the model's working memory and the compiled code.

The fitted exponent ``b`` of ``time ~ a n^b`` (least squares on log-log) lets a user
predict the cost of their data: ``time(n) = time(n0) (n / n0)^b``. Sizes span a factor of 8
(4 points; bi-clustering 3 points, a factor of 4) where a point stays under a minute, so
that fixed overheads do not flatten the exponent; the run time is dominated by the one
compilation per point.

``--jobs N`` measures N points at a time, each pinned to its own core with BLAS limited to
one thread (XLA is single-threaded already, see the README's Numerics), so that concurrent
points do not share a core; use it only with at least N idle cores. Every point's raw
figures go to ``benchmarks/results/scaling.json``; a run with ``--only`` replaces the points
of its curves there and re-renders the whole markdown, so that a partial re-run updates the
table instead of leaving a second one beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------- workloads
# Each workload builds its data for one size and returns ``run(k)`` that fits with ``k``
# iterations (EM iterations, epochs, sweeps, bootstrap samples or repeated calls).


def _gpfa(size: dict) -> Callable[[int], object]:
    from neurodata.models import GPFA
    from neurodata.models.gpfa import simulate

    ds, _ = simulate(n_trials=size["trials"], n_time=size["T"], n_neurons=size["neurons"],
                     n_latents=3, seed=0)
    return lambda k: GPFA(n_latents=3, max_iter=k, tol=0.0, progress=False).fit(ds)


def _gpvae(size: dict) -> Callable[..., object]:
    from neurodata.models.gpvae import MMGPVAE, simulate

    ds, _ = simulate(n_trials=size["trials"], n_time=size["T"], n_neurons=size["neurons"],
                     seed=1)

    def run(k, callback):
        # every fit builds (and compiles) its own training step, so the epochs of one fit
        # are timed through the per-epoch callback that benchmarks/gpvae.py uses too
        model = MMGPVAE(1, {"neural": 1, "image": 1},
                        modalities={"neural": "activity", "image": "image"},
                        decoder={"image": "mlp"}, length_scale_init=0.5, fourier=True,
                        max_epochs=k, patience=k, validation_fraction=0.0, progress=False,
                        random_state=0)
        return model._fit(ds, callback=lambda epoch, params: callback())

    run.stamped = True
    return run


def _hmmglm(size: dict) -> Callable[[int], object]:
    from neurodata.models import HMMGLM
    from neurodata.models.hmmglm import simulate

    ds, _ = simulate(n_states=3, n_neurons=size["neurons"], n_time=size["T"], n_trials=1,
                     seed=0)
    return lambda k: HMMGLM(3, n_restarts=1, max_iter=k, tol=0.0, m_steps=10,
                            progress=False).fit(ds)


def _ntf(size: dict) -> Callable[[int], object]:
    from neurodata.models import NTF

    rng = np.random.default_rng(0)
    n_pair = size["neurons"] * (size["neurons"] - 1) // 2
    shape = (n_pair, size["windows"], 4)
    x = np.einsum("ir,jr,kr->ijk", *[rng.random((n, 5)) for n in shape]).astype(np.float32)
    x += 0.1 * rng.random(shape, dtype=np.float32)
    # tol=-inf: NTF stops when the error stops decreasing, even with tol=0
    return lambda k: NTF(rank=5, n_init=1, max_iter=k, tol=-np.inf).fit(x)


def _bicluster(size: dict) -> Callable[[int], object]:
    from neurodata.models import BiClustering
    from neurodata.models.bicluster import simulate

    ds, _ = simulate(n_neurons_per_cluster=size["neurons"] // 3, n_clusters=3,
                     n_time=size["T"], seed=0)
    return lambda k: BiClustering(max_clusters=4, max_states=3, n_chains=1, burn_in=0,
                                  n_samples=k, thin=1, chunk_size=25, progress=False).fit(ds)


def _crossnobis(size: dict) -> Callable[[int], object]:
    from neurodata.models import rsa

    x = np.random.default_rng(0).normal(size=(8, size["stimuli"], size["channels"]))

    def run(k):
        for _ in range(k):
            out = rsa.calc_rdm(x, "crossnobis")["dissimilarity"].values
        return out

    return run


def _bootstrap(size: dict) -> Callable[[int], object]:
    import jax

    from neurodata.models import rsa

    rng = np.random.default_rng(0)
    n = size["stimuli"]

    def rdms(m):
        z = rng.normal(size=(m, n, 10))
        d = np.sqrt(((z[:, :, None] - z[:, None]) ** 2).sum(-1))
        return d

    models, data = rdms(8), rdms(8)
    return lambda k: rsa.dual_bootstrap(models, data, key=jax.random.key(0),
                                        n_bootstrap=k)["mean"].values


@dataclass(frozen=True)
class Curve:
    model: str
    driver: str
    """The size that varies (it overrides that key of ``fixed``)."""
    values: tuple
    quick: tuple
    fixed: dict
    unit: str
    """What one iteration is."""
    k1: int
    """Iterations of the first runs."""
    step: int
    """``k2 - k1`` is a multiple of this (bootstrap batch, sampler chunk)."""
    build: Callable[[dict], Callable[[int], object]]
    extra: int = 0
    """At least this many extra iterations in the ``k2`` runs (models whose per-fit set-up
    is long next to an iteration)."""


_GPFA = {"trials": 20, "neurons": 50, "T": 100}
_GPVAE = {"trials": 40, "neurons": 50, "T": 40}
_HMM = {"neurons": 10, "T": 4000}
_NTF = {"neurons": 40, "windows": 100}
_BIC = {"neurons": 48, "T": 200}
_RSA = {"stimuli": 50, "channels": 500}
CURVES = [
    # GPFA's fit spends seconds on set-up (factor-analysis initialisation) before its EM
    Curve("GPFA", "T", (50, 100, 200, 400), (20, 40), _GPFA, "EM iteration", 2, 1, _gpfa, 20),
    Curve("GPFA", "neurons", (50, 100, 200, 400), (20, 40), _GPFA, "EM iteration", 2, 1, _gpfa,
          20),
    Curve("MM-GPVAE (Fourier)", "T", (20, 40, 80, 160), (20, 40), _GPVAE, "epoch", 6, 1,
          _gpvae),
    Curve("MM-GPVAE (Fourier)", "trials", (20, 40, 80, 160), (20, 40), _GPVAE, "epoch", 6, 1,
          _gpvae),
    Curve("HMM-GLM", "T", (2000, 4000, 8000, 16000), (1000, 2000), _HMM, "EM iteration", 1, 1,
          _hmmglm),
    Curve("HMM-GLM", "neurons", (5, 10, 20, 40), (5, 10), _HMM, "EM iteration", 1, 1,
          _hmmglm),
    Curve("NTF", "windows", (100, 200, 400, 800), (25, 50), _NTF, "HALS iteration", 5, 1,
          _ntf),
    Curve("NTF", "neurons", (20, 40, 80, 160), (10, 20), _NTF, "HALS iteration", 5, 1, _ntf),
    Curve("Bi-clustering", "neurons", (24, 48, 96), (12, 24), _BIC, "Gibbs sweep", 25, 25,
          _bicluster),
    Curve("Bi-clustering", "T", (100, 200, 400), (100, 200), _BIC, "Gibbs sweep", 25, 25,
          _bicluster),
    Curve("RSA crossnobis", "stimuli", (25, 50, 100, 200), (10, 20), _RSA, "RDM (8 folds)", 1,
          1, _crossnobis),
    Curve("RSA crossnobis", "channels", (250, 500, 1000, 2000), (100, 200), _RSA,
          "RDM (8 folds)", 1, 1, _crossnobis),
    Curve("RSA dual bootstrap", "stimuli", (25, 50, 100, 200), (10, 20), {"stimuli": 50},
          "bootstrap sample (8 x 8 RDMs)", 64, 64, _bootstrap),
]
BUILDERS = {c.build.__name__: c.build for c in CURVES}


# --------------------------------------------------------------------------- one point


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM, so the run's peak excludes compilation
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _timed(fn: Callable[[int], object], k: int) -> float:
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(k))
    return time.perf_counter() - start


def _device() -> dict:
    """The device the point ran on and its allocator's peak (GPU; None on CPU)."""
    import jax

    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # backends without allocator statistics
        stats = {}
    peak = stats.get("peak_bytes_in_use")
    return {"device": f"{dev.platform}: {dev.device_kind}",
            "device_peak_mb": None if peak is None else peak / 2**20}


def _stamped(run, k: int, base: float) -> dict:
    """One fit of ``k`` iterations timed by a callback after every iteration."""
    stamps = []

    def callback():
        stamps.append(time.perf_counter())
        if len(stamps) == 1:  # the first iteration compiled: measure the run from here
            stamps.append(_status_mb("VmHWM"))
            _reset_peak()

    start = time.perf_counter()
    run(k, callback)
    compile_peak = stamps.pop(1)
    per = float(np.median(np.diff(stamps)))
    return {"per_iter_s": per, "first_call_s": stamps[0] - start - per, "k2": k,
            "peak_mb": max(compile_peak, _status_mb("VmHWM")),
            "run_peak_mb": _status_mb("VmHWM") - base, "working_mb": float("nan"),
            **_device()}


def point(build: str, size: dict, k1: int, step: int, min_extra: int = 3,
          target_s: float = 2.0) -> dict:
    """Measure one point in this process (the parent runs each in a fresh subprocess).

    ``k2`` is chosen so that the extra ``k2 - k1`` iterations take about ``target_s``
    (at least ``min_extra`` iterations, a multiple of ``step``). A workload marked ``stamped``
    is timed within one fit of ``k1`` iterations instead.
    """
    import jax

    import neurodata  # noqa: F401  (sets the XLA flags and x64 before the runtime starts)

    jax.devices()  # start the runtime before the baseline
    base = _status_mb("VmRSS")
    run = BUILDERS[build](size)
    if getattr(run, "stamped", False):
        return _stamped(run, k1, base)
    cold = _timed(run, k1)
    compile_peak = _status_mb("VmHWM")
    held = _status_mb("VmRSS")
    _reset_peak()
    warm1 = _timed(run, k1)
    extra = max(min_extra, int(np.ceil(target_s / max(warm1 / k1, 1e-6))))
    k2 = k1 + min(int(np.ceil(extra / step)) * step, 200 * step)
    _timed(run, k2)  # compiles again where the iteration count is static
    # interleaved, so that a change of the machine's load hits both counts alike
    times = {k1: [warm1], k2: []}
    for _ in range(2):
        for k in (k2, k1):
            times[k].append(_timed(run, k))
    per = max(min(times[k2]) - min(times[k1]), 0.0) / (k2 - k1)
    return {"per_iter_s": per, "first_call_s": cold - k1 * per, "k2": k2,
            "peak_mb": max(compile_peak, _status_mb("VmHWM")),
            "run_peak_mb": _status_mb("VmHWM") - base,
            "working_mb": _status_mb("VmHWM") - held, **_device()}


def _measure(curve: Curve, value, timeout: float, env: dict | None = None,
             core: int | None = None) -> dict:
    """Run one point in a fresh subprocess (``env`` overrides, e.g. ``JAX_PLATFORMS``;
    ``core`` pins it to that CPU with one BLAS thread)."""
    if core is not None:
        env = {**(env or {}), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
    size = {**curve.fixed, curve.driver: value}
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--point",
           json.dumps({"build": curve.build.__name__, "size": size, "k1": curve.k1,
                       "step": curve.step, "extra": max(3, curve.extra)})]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})},
                            preexec_fn=None if core is None else
                            (lambda: os.sched_setaffinity(0, {core})))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the point's own process group only
        proc.communicate()
        return {"status": "timeout"}
    if proc.returncode != 0:
        return {"status": "error", "error": (err.strip().splitlines() or ["?"])[-1][:200]}
    return {"status": "ok", **json.loads(out.strip().splitlines()[-1])}


def exponent(sizes, values) -> float:
    """Least-squares slope of ``log(values)`` on ``log(sizes)`` (NaN with < 2 points)."""
    x, y = np.asarray(sizes, float), np.asarray(values, float)
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


# --------------------------------------------------------------------------- report


def _fmt(v: float, digits: int = 3) -> str:
    return "-" if not np.isfinite(v) else f"{v:.{digits}g}"


def _markdown(rows: list[tuple[Curve, list]], runs: list[dict]) -> str:
    lines = [
        "## Scaling curves (CPU)",
        "",
        "Runs merged into this table (each curve's points come from one run):",
        "",
        *(f"- {r['date']}: {r['machine']}; {r['jobs']} point(s) at a time"
          f"{', each pinned to its own core' if r['jobs'] > 1 else ''}; load average before "
          f"the run {r['load_before']:.2f} (1 min); {r['elapsed_min']:.1f} min; curves: "
          f"{', '.join(r['curves'])}{' (--quick sizes)' if r['quick'] else ''}."
          for r in runs),
        "",
        "Time per iteration excludes compilation and per-fit set-up (difference of warm "
        "runs with two iteration counts); *first call* is compilation plus set-up. *Peak* is the "
        "point's whole process (compilation included); *run peak* is the peak of the warm "
        "runs above the resident set after importing JAX (data, working memory, compiled "
        "code; every point runs in a fresh process). Predict your cost as "
        "`t(n) = t(n0) * (n / n0) ** b` from the nearest measured size `n0`.",
        "",
        "| model | driver (others fixed) | iteration | sizes | time exponent b | "
        "run-memory exponent | time per iteration at the largest size |",
        "|---|---|---|---|---|---|---|",
    ]
    for curve, pts in rows:
        ok = [(v, p) for v, p in pts if p["status"] == "ok"]
        b_t = exponent([v for v, _ in ok], [p["per_iter_s"] for _, p in ok])
        b_m = exponent([v for v, _ in ok], [p["run_peak_mb"] for _, p in ok])
        fixed = ", ".join(f"{k}={v}" for k, v in curve.fixed.items() if k != curve.driver)
        timed = [(v, p) for v, p in ok if p["per_iter_s"] > 0]
        last = (f"{1e3 * timed[-1][1]['per_iter_s']:.3g} ms at {curve.driver}={timed[-1][0]}"
                if timed else "-")
        lines.append(f"| {curve.model} | {curve.driver} ({fixed}) | {curve.unit} | "
                     f"{', '.join(str(v) for v, _ in pts)} | {_fmt(b_t, 2)} | {_fmt(b_m, 2)} "
                     f"| {last} |")
    lines += ["", "A point whose extra iterations cost less than the run-to-run noise "
              "is shown as *below the timing noise* and left out of the fit.",
              "", "### Points", "",
              "| model | driver | size | time per iteration (ms) | first call (s) | "
              "peak (MB) | run peak above imports (MB) |",
              "|---|---|---|---|---|---|---|"]
    for curve, pts in rows:
        for v, p in pts:
            if p["status"] == "ok":
                per = (_fmt(1e3 * p["per_iter_s"]) if p["per_iter_s"] > 0 else
                       "below the timing noise")
                lines.append(f"| {curve.model} | {curve.driver} | {v} | {per} | "
                             f"{_fmt(p['first_call_s'])} | "
                             f"{p['peak_mb']:.0f} | {p['run_peak_mb']:.0f} |")
            else:
                lines.append(f"| {curve.model} | {curve.driver} | {v} | {p['status']} "
                             f"{p.get('error', '')} | | | |")
    return "\n".join(lines)


POINTS_FILE = "scaling.json"


def _key(curve: Curve) -> str:
    return f"{curve.model} | {curve.driver}"


def _measure_all(curves: list[Curve], quick: bool, timeout: float, jobs: int) -> dict:
    """Every point of ``curves``, ``jobs`` at a time (a curve stops at its first timeout)."""
    from concurrent.futures import ThreadPoolExecutor

    cores = sorted(os.sched_getaffinity(0))[:jobs] if jobs > 1 else [None]
    free = list(cores)

    def run_curve(curve: Curve) -> list:
        pts = []
        for value in curve.quick if quick else curve.values:
            if pts and pts[-1][1]["status"].startswith(("timeout", "skipped")):
                pts.append((value, {"status": "skipped (smaller size timed out)"}))
                continue
            core = free.pop()
            try:
                res = _measure(curve, value, timeout, core=core)
            finally:
                free.append(core)
            print(curve.model, curve.driver, value, res, flush=True)
            pts.append((value, res))
        return pts

    # one curve per worker: a curve's points run one after the other on a free core
    with ThreadPoolExecutor(len(cores)) as pool:
        return dict(zip([_key(c) for c in curves], pool.map(run_curve, curves), strict=True))


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling")
    parser.add_argument("--quick", action="store_true", help="two tiny sizes per curve")
    parser.add_argument("--only", default="", help="comma-separated model name prefixes")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per point")
    parser.add_argument("--jobs", type=int, default=1,
                        help="points measured at a time, each on its own core")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:
        spec = json.loads(args.point)
        print(json.dumps(point(spec["build"], spec["size"], spec["k1"], spec["step"],
                               spec["extra"])))
        return ""
    from benchmarks.common import RESULTS_DIR, machine, write_result

    wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    curves = [c for c in CURVES
              if not wanted or any(c.model.lower().startswith(w) for w in wanted)]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    measured = _measure_all(curves, args.quick, args.timeout, max(1, args.jobs))
    run = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
           "jobs": max(1, args.jobs), "load_before": load_before,
           "elapsed_min": (time.perf_counter() - start) / 60, "quick": args.quick,
           "curves": list(measured)}
    if args.quick:  # a smoke run: the committed full-size points stay as they are
        md = _markdown([(c, measured[_key(c)]) for c in curves], [run])
        print(md)
        return md
    store_path = RESULTS_DIR / POINTS_FILE
    store = json.loads(store_path.read_text()) if store_path.exists() else {}
    points = {k: v for k, v in store.get("points", {}).items() if k not in measured}
    points.update(measured)
    # an older run keeps only the curves that were not re-measured
    runs = [{**r, "curves": [c for c in r["curves"] if c not in measured]}
            for r in store.get("runs", [])]
    runs = [r for r in runs if r["curves"]] + [run]
    store_path.write_text(json.dumps({"runs": runs, "points": points}, indent=1))
    rows = [(c, points[_key(c)]) for c in CURVES if _key(c) in points]
    md = _markdown(rows, runs)
    write_result("scaling", md)
    print(md)
    return md


if __name__ == "__main__":
    main()
