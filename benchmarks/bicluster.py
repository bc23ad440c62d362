"""Benchmark: Bayesian bi-clustering sweep time, memory and ESS per second.

``python -m benchmarks.bicluster [--quick | --gpu] [--profile]``. The reference implementation
(``weigcdsb/bi_clustering``, numpy + pyhsmm + statsmodels) is not installable (hard-coded
paths, Cython pyhsmm fork, no licence), so its side of the table is the per-iteration
estimate quoted in the method spec (0.5-2 s per iteration, about 28 GB preallocated per
10k-iteration chain at N = 63, T = 720), not a measurement on this machine.

Each case runs the estimator's compiled runner (the same function ``BiClustering.fit``
calls, estimator defaults) on the paper's simulation design: one call compiles, then
``sweeps`` sweeps of every chain are timed. ``--gpu`` needs only the repository, numpy,
scipy, scikit-learn, xarray and JAX (no ArviZ, no ``../shared/data``): it times the two
issue sizes with 4 chains and the larger one with 32 chains on the default JAX device, and
reports the device's peak memory. ``--profile`` adds a table of the sweep's blocks, each
compiled and timed on its own (vmapped over the chains, best of 10 calls) at the larger size.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import machine, peak_rss_mb, write_result


def _ess(trace: np.ndarray) -> float:
    """Bulk ESS of ``(chain, draw)`` draws: ArviZ if installed, else Geyer's initial sequence."""
    if np.ptp(trace) == 0:
        return float(trace.size)
    try:
        import arviz as az

        return float(az.ess(az.convert_to_dataset(trace)).x)
    except ImportError:
        x = trace - trace.mean(axis=1, keepdims=True)
        n = x.shape[1]
        acov = np.mean([np.correlate(c, c, "full")[n - 1:] / n for c in x], axis=0)
        rho = acov / acov[0]
        pairs = rho[:-1:2] + rho[1::2]
        stop = np.argmax(pairs < 0) if np.any(pairs < 0) else len(pairs)
        return float(trace.size / max(-1.0 + 2.0 * np.sum(pairs[:stop]), 1.0))


def _device_peak_mb() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", float("nan")) / 2**20


def _case(n_per_cluster: int, n_time: int, n_chains: int, sweeps: int) -> dict:
    from neurodata.models.bicluster import _RUNNER, BiClustering, _core, chain_keys, simulate

    ds, _ = simulate(n_neurons_per_cluster=n_per_cluster, n_time=n_time, seed=0)
    model = BiClustering(n_chains=n_chains)  # estimator defaults: K = 6, S = 6, p = 2
    y = ds.activity.values.astype(float)
    data = _core.make_data(y)
    priors = model._priors()
    state = model._initial_states(y, data, priors, True)
    keys = chain_keys(0, n_chains)
    chunk = 25
    start = time.perf_counter()
    state, out = _RUNNER(state, jnp.asarray(0), jnp.asarray(10**9), data, priors, keys, True,
                         1, chunk)
    jax.block_until_ready(out)
    first = time.perf_counter() - start
    n_chunks = max(1, sweeps // chunk)
    traces = {"n_clusters": [], "loglik": []}
    start = time.perf_counter()
    for i in range(1, n_chunks + 1):
        state, out = _RUNNER(state, jnp.asarray(i * chunk), jnp.asarray(10**9), data, priors,
                             keys, True, 1, chunk)
        for name in traces:
            traces[name].append(np.asarray(out[0][name]))
    jax.block_until_ready(out)
    elapsed = time.perf_counter() - start
    per_sweep = elapsed / (n_chunks * chunk)
    ess = {name: _ess(np.concatenate(v, axis=1).astype(float)) for name, v in traces.items()}
    return {"N": 3 * n_per_cluster, "T": n_time, "chains": n_chains,
            "compile_s": first - per_sweep * chunk, "sweep_ms": 1e3 * per_sweep,
            "sweep_ms_chain": 1e3 * per_sweep / n_chains,
            "ess_clusters_per_s": ess["n_clusters"] / elapsed,
            "ess_loglik_per_s": ess["loglik"] / elapsed, "sweeps": n_chunks * chunk,
            "rss_mb": peak_rss_mb(), "device_mb": _device_peak_mb()}


def _best_ms(fn, *args, repeats: int = 10) -> float:
    fn = jax.jit(jax.vmap(fn))
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def _profile(n_per_cluster: int, n_time: int, n_chains: int) -> list[str]:
    """Per-block times of one sweep (ms per chain), at a state after 25 sweeps."""
    from neurodata.models._jax.polyagamma import sample_pg
    from neurodata.models.bicluster import _RUNNER, BiClustering, _core, chain_keys, simulate

    ds, _ = simulate(n_neurons_per_cluster=n_per_cluster, n_time=n_time, seed=0)
    model = BiClustering(n_chains=n_chains)
    y = ds.activity.values.astype(float)
    data = _core.make_data(y)
    priors = model._priors()
    st = model._initial_states(y, data, priors, True)
    st, _ = _RUNNER(st, jnp.asarray(0), jnp.asarray(10**9), data, priors,
                    chain_keys(0, n_chains), True, 1, 25)
    keys = jax.random.split(jax.random.key(1), n_chains)
    K, S = st.latents.shape[2], st.trans.shape[1]

    def occupied(s):
        return (jnp.zeros(K).at[s.z].add(1.0) > 0).astype(float)

    def pg(k, s):
        return sample_pg(k, data.y + s.dispersion, _core.log_rate(s) - jnp.log(s.dispersion))

    omega = jax.jit(jax.vmap(pg))(keys, st)
    kappa = (data.y[None] - st.dispersion[:, None, :]) / 2
    J, h = jax.jit(jax.vmap(_core.observation_potentials))(st, omega, kappa)
    blocks = [
        ("whole sweep", lambda k, s: _core.sweep(k, s, data, priors, True), (keys, st)),
        ("states: discrete FFBS", lambda k, s: _core.sample_states(
            k, s.latents, s.A, s.b, s.Q, s.trans, occupied(s)), (keys, st)),
        ("dynamics (MNIW)", lambda k, s: _core.sample_dynamics(
            k, s.latents, s.states, jnp.ones(K), S, priors), (keys, st)),
        ("Polya-Gamma draws", pg, (keys, st)),
        ("observation potentials", _core.observation_potentials, (st, omega, kappa)),
        ("states: collapsed single-site", lambda k, s, J, h: _core.sample_states_collapsed(
            k, s.states, s.A, s.b, s.Q, s.trans, J, h, occupied(s)), (keys, st, J, h)),
        ("trajectories: Kalman FFBS", _core.sample_latents, (keys, st, J, h)),
        ("interweaving rescale", lambda k, s, J, h: _core.rescale_innovations(
            k, s, J, h, occupied(s), priors), (keys, st, J, h)),
        ("HDP-HMM transitions", lambda k, s: _core.sample_transitions(
            k, s.states, s.beta, priors), (keys, st)),
        ("labels incl. split-merge", lambda k, s, o, ka: _core.sample_clusters(
            k, s, o, ka, priors), (keys, st, omega, kappa)),
        ("labels without split-merge", lambda k, s, o, ka: _core.sample_clusters(
            k, s, o, ka, priors._replace(split_merge_moves=0)), (keys, st, omega, kappa)),
        ("dispersion MH + log-likelihood", lambda k, s: _core.sample_dispersion(
            k, data, _core.log_rate(s), s.dispersion, priors), (keys, st)),
    ]
    lines = ["", f"Blocks of one sweep at N = {3 * n_per_cluster}, T = {n_time}, each compiled "
             f"and timed on its own ({n_chains} chains vmapped, best of 10 calls):", "",
             "| block | ms per chain |", "|---|---|"]
    for name, fn, args in blocks:
        lines.append(f"| {name} | {_best_ms(fn, *args) / n_chains:.2f} |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="N = 30, T = 200, 50 sweeps")
    parser.add_argument("--gpu", action="store_true",
                        help="the issue sizes on the default JAX device, JAX only")
    parser.add_argument("--profile", action="store_true",
                        help="also time each block of the sweep at the larger size")
    args = parser.parse_args(argv)
    if args.quick:
        cases = [(10, 200, 4, 50)]
    elif args.gpu:
        cases = [(10, 500, 4, 200), (21, 720, 4, 200), (21, 720, 32, 200)]
    else:
        cases = [(10, 500, 4, 200), (21, 720, 4, 200)]
    rows = [_case(*c) for c in cases]
    device = jax.devices()[0]
    lines = ["## Bayesian bi-clustering (MCMC)", "", machine(), "",
             f"Device: {device.platform} ({device.device_kind}).", "",
             "| N | T | chains | compile (s) | sweep, all chains (ms) | per chain (ms) | "
             "ESS/s n_clusters | ESS/s loglik | peak RSS (MB) | device peak (MB) | "
             "reference (spec estimate) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['N']} | {r['T']} | {r['chains']} | {r['compile_s']:.1f} | "
                     f"{r['sweep_ms']:.1f} | {r['sweep_ms_chain']:.1f} | "
                     f"{r['ess_clusters_per_s']:.1f} | {r['ess_loglik_per_s']:.2f} | "
                     f"{r['rss_mb']:.0f} | {r['device_mb']:.0f} | "
                     "500-2000 ms/iteration/chain |")
    lines += ["", f"{rows[0]['sweeps']} timed sweeps per case after the compiling call; "
              "estimator defaults (max_clusters = 6, max_states = 6, p = 2, per-cluster "
              "dynamics, 2 split-merge proposals per sweep (a split draws the new cluster's "
              "trajectory by Kalman FFBS), the interweaving rescale of each state's "
              "innovations and the dispersion MH step, negative binomial, float64). "
              "Memory holds only kept draws (here every sweep, for the ESS). ESS of "
              "n_clusters is all draws once every chain holds the same constant number of "
              "clusters. The reference numbers are the spec's estimates (not measured: the "
              "reference is not installable), so the ratio is indicative only."]
    if args.profile:
        lines += _profile(*(cases[-1][:2] if not args.quick else cases[0][:2]), 4)
    print("\n".join(lines))
    write_result("bicluster_gpu" if args.gpu else "bicluster", "\n".join(lines))


if __name__ == "__main__":
    main()
