"""Benchmark: Bayesian bi-clustering sweep time, memory and ESS per second.

``python -m benchmarks.bicluster [--quick]``. The reference implementation
(``weigcdsb/bi_clustering``, numpy + pyhsmm + statsmodels) is not installable (hard-coded
paths, Cython pyhsmm fork, no licence), so its side of the table is the per-iteration
estimate quoted in the method spec (0.5-2 s per iteration, about 28 GB preallocated per
10k-iteration chain at N = 63, T = 720), not a measurement on this machine.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import machine, peak_rss_mb, write_result


def _case(n_per_cluster: int, n_clusters: int, n_time: int, n_chains: int, sweeps: int,
          max_clusters: int, max_states: int) -> dict:
    import arviz as az

    from neurodata.models.bicluster import _RUNNER, _core, chain_keys, simulate
    from neurodata.models.bicluster import _init as init

    ds, _ = simulate(n_neurons_per_cluster=n_per_cluster, n_clusters=n_clusters,
                     n_time=n_time, seed=0)
    y = ds.activity.values
    data = _core.make_data(y)
    priors = _core.Priors()
    chains = []
    for c in range(n_chains):
        z0, s0, lat0, load0 = init.initial_values(y, max_clusters, 3, max_states, 2, 2, seed=c)
        chains.append(_core.init_state(data, z0, s0, lat0, load0, max_states, priors, True))
    state = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *chains)
    keys = chain_keys(0, n_chains)
    run = _RUNNER  # the estimator's compiled runner (its compiler options included)
    chunk = 25
    start = time.perf_counter()
    state, out = run(state, jnp.asarray(0), jnp.asarray(10**9), data, priors, keys, True, 1,
                     chunk)
    jax.block_until_ready(out)
    first = time.perf_counter() - start
    n_chunks = max(1, sweeps // chunk)
    counts = [np.asarray(out[0]["n_clusters"])]
    start = time.perf_counter()
    for i in range(1, n_chunks + 1):
        state, out = run(state, jnp.asarray(i * chunk), jnp.asarray(10**9), data, priors, keys,
                         True, 1, chunk)
        counts.append(np.asarray(out[0]["n_clusters"]))
    jax.block_until_ready(out)
    elapsed = time.perf_counter() - start
    per_sweep = elapsed / (n_chunks * chunk)
    kept = np.concatenate(counts[1:], axis=1).astype(float)
    kept = kept + 1e-9 * np.random.default_rng(0).normal(size=kept.shape)  # constant traces
    ess = float(az.ess(az.convert_to_dataset(kept)).x)
    return {"N": n_per_cluster * n_clusters, "T": n_time, "chains": n_chains,
            "compile_s": first - per_sweep * chunk, "sweep_ms": 1e3 * per_sweep,
            "sweep_ms_chain": 1e3 * per_sweep / n_chains, "ess_per_s": ess / elapsed,
            "rss_mb": peak_rss_mb()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sweeps = 50 if args.quick else 200
    cases = [(10, 3, 500 if not args.quick else 200, 4, sweeps, 6, 6)]
    if not args.quick:
        cases.append((21, 3, 720, 4, sweeps, 6, 6))
    rows = [_case(*c) for c in cases]
    lines = ["## Bayesian bi-clustering (MCMC)", "", machine(), "",
             "| N | T | chains | compile (s) | sweep, all chains (ms) | per chain (ms) | "
             "ESS/s of n_clusters | peak RSS (MB) | reference (spec estimate) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['N']} | {r['T']} | {r['chains']} | {r['compile_s']:.1f} | "
                     f"{r['sweep_ms']:.1f} | {r['sweep_ms_chain']:.1f} | {r['ess_per_s']:.2f} | "
                     f"{r['rss_mb']:.0f} | 500-2000 ms/iteration/chain |")
    lines += ["", "max_clusters = 6, max_states = 6, p = 2, negative binomial, float64. "
              "Memory holds only kept draws (here every sweep for the ESS estimate). The "
              "reference numbers are the spec's estimates (not measured: the reference is "
              "not installable), so the ratio is indicative only. Sizes or sweeps reduced "
              "from the issue's only where stated in the run command."]
    print("\n".join(lines))
    write_result("bicluster", "\n".join(lines))


if __name__ == "__main__":
    main()
