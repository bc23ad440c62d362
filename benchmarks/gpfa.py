"""GPFA: neurodata (JAX) vs elephant, time per EM iteration on the same data.

``python -m benchmarks.gpfa [--quick]``. Same simulated data, same initial parameters
(elephant's FA initialisation) and the same number of EM iterations for both; timescale
learning on in both. Compile time is reported separately. Device-agnostic: runs on
whatever JAX's default backend is (float64).
"""

from __future__ import annotations

import argparse
import copy
import time

import jax
import jax.numpy as jnp
import numpy as np

import neurodata  # noqa: F401  (x64)
from benchmarks.common import machine, peak_rss_mb, write_result
from neurodata.models.gpfa import _core, simulate


def _problem(n_trials: int, n_time: int, n_neurons: int, n_latents: int):
    from sklearn.decomposition import FactorAnalysis

    ds, _ = simulate(n_trials=n_trials, n_time=n_time, n_neurons=n_neurons,
                     n_latents=n_latents, observation="poisson", seed=0)
    y = np.sqrt(ds["activity"].values.astype(float))
    pooled = y.reshape(-1, n_neurons)
    fa = FactorAnalysis(n_components=n_latents, noise_variance_init=pooled.var(0)).fit(pooled)
    init = dict(covType="rbf", gamma=np.full(n_latents, (20.0 / 100.0) ** 2),
                eps=np.full(n_latents, 1e-3), d=pooled.mean(0), C=fa.components_.T,
                R=np.diag(fa.noise_variance_),
                notes={"learnKernelParams": True, "learnGPNoise": False,
                       "RforceDiagonal": True})
    return y, init, 0.01 * pooled.var(0, ddof=1)


def _ours(y, init, var_floor, n_iter):
    params = _core.GPFAParams(jnp.asarray(init["C"]), jnp.asarray(init["d"]),
                              jnp.asarray(np.diag(init["R"])), jnp.log(init["gamma"]),
                              jnp.asarray(init["eps"]))
    buckets = [jnp.asarray(y)]
    step = jax.jit(lambda prm: _core.em_step(prm, buckets, jnp.asarray(var_floor),
                                             _core.EMOptions()))
    start = time.perf_counter()
    new, ll = step(params)
    jax.block_until_ready(ll)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n_iter):
        params, ll = step(params)
    jax.block_until_ready(ll)
    per_iter = (time.perf_counter() - start) / n_iter
    return per_iter, max(first - per_iter, 0.0)


def _elephant(y, init, n_iter):
    from elephant.gpfa import gpfa_core

    seqs = np.array([(v.shape[0], v.T.copy()) for v in y], dtype=[("T", int), ("y", "O")])
    start = time.perf_counter()
    gpfa_core.em(copy.deepcopy(init), seqs, max_iters=n_iter, tol=-1.0, freq_ll=1)
    return (time.perf_counter() - start) / n_iter


def main(argv=None) -> str:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    q, p = (30, 4) if args.quick else (100, 8)
    cases = [("a", 200, 20), ("b", 50, 200)] if not args.quick else [("a", 40, 20),
                                                                        ("b", 10, 60)]
    n_iter_el = 2 if args.quick else 5
    rows: list[str] = []
    curve: list[str] = []

    def save():
        write_result("gpfa", _markdown(q, p, n_iter_el, rows, curve))

    for name, n, T in cases:
        y, init, floor = _problem(n, T, q, p)
        ours, compile_s = _ours(y, init, floor, 20 if not args.quick else 5)
        el = _elephant(y, init, n_iter_el)
        rows.append(f"| ({name}) {n} trials x {T} bins | {el * 1e3:.1f} | {ours * 1e3:.2f} | "
                    f"{el / ours:.1f}x | {compile_s:.1f} |")
        print(rows[-1], flush=True)
        save()
    lengths = [20, 50, 100, 200, 500] if not args.quick else [20, 50]
    if not args.quick:
        lengths.append(1000)
    for T in lengths:
        n = max(2, 2000 // T)
        y, init, floor = _problem(n, T, q, p)
        ours, compile_s = _ours(y, init, floor, 3 if T >= 500 else 10)
        el = _elephant(y, init, 2) if T <= 200 else float("nan")
        ratio = f"{el / ours:.1f}x" if np.isfinite(el) else "-"
        el_txt = f"{el * 1e3:.0f}" if np.isfinite(el) else "not run"
        curve.append(f"| {T} | {n} | {ours * 1e3:.1f} | {el_txt} | {ratio} | {compile_s:.1f} |")
        print(curve[-1], flush=True)
        save()
    return _markdown(q, p, n_iter_el, rows, curve)


def _markdown(q, p, n_iter_el, rows, curve) -> str:
    return "\n".join([
        "## GPFA (neurodata JAX vs elephant 1.2.1)",
        "",
        f"Machine: {machine()}. {q} neurons, {p} latents, float64, timescale learning on in "
        "both, identical data and initial parameters (elephant's FA initialisation); time per "
        "EM iteration (E-step + M-step), compile time of our jitted EM step reported "
        f"separately; elephant timed over {n_iter_el} iterations, ours over 20.",
        "",
        "| case | elephant ms/iter | neurodata ms/iter | speed-up | neurodata compile s |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Time per iteration against trial length (about 2000 bins in total per size):",
        "",
        "| T (bins) | trials | neurodata ms/iter | elephant ms/iter | speed-up | compile s |",
        "|---|---|---|---|---|---|",
        *curve,
        "",
        f"Peak RSS of the benchmark process: {peak_rss_mb():.0f} MB. Memory: the posterior "
        "precision is factorised once per trial length (two half-size blocks of "
        "(pT/2)^2, shared by all trials of that length); per trial only the O(pT) mean is "
        "kept. The E-step splits the problem into time-symmetric and antisymmetric halves "
        "(exact), a 4x saving on the cubic cost.",
        "",
        "Measured on a 2-core machine shared with other jobs: absolute times are noisy; the "
        "ratios come from back-to-back runs in one process.",
    ])


if __name__ == "__main__":
    main()
