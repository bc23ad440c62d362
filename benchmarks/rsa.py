"""RSA against rsatoolbox 0.3.2 in one run: dual bootstrap, crossnobis, all comparators.

Run ``.venv/bin/python -m benchmarks.rsa`` (``--quick`` for small sizes). Float64 on both
sides; neurodata's compile time is reported separately from its run time.

``python -m benchmarks.rsa --gpu`` times neurodata alone on JAX's default device (the GPU
where there is one) at the same sizes, on simulated RDMs and patterns: it needs neither
rsatoolbox nor the shared data, and writes ``benchmarks/results/rsa_gpu.md``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

import neurodata
from benchmarks.common import machine, time_call, time_first_call, write_result
from neurodata.models import rsa


def _data():
    os.environ.setdefault("NEURODATA_MIRROR", str(
        __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ds = neurodata.datasets.load("kriegeskorte2008-92images")
    kind = ds["rdm_kind"].values
    brain = ds.isel(rdm=np.where((kind == "brain") & (ds["subject"].values != ""))[0])
    models = ds.isel(rdm=np.where(kind == "model")[0])
    return brain.drop_vars("image"), models.drop_vars("image")


def _rsatoolbox_bootstrap(models, brain, n):
    import rsatoolbox
    from rsatoolbox.inference import eval_dual_bootstrap
    from rsatoolbox.model import ModelFixed
    from scipy.spatial.distance import squareform
    vec = lambda ds: np.array([squareform(m) for m in ds["dissimilarity"].values])  # noqa: E731
    ms = [ModelFixed(str(name), rsatoolbox.rdm.RDMs(v[None]))
          for name, v in zip(models["rdm_name"].values, vec(models), strict=True)]
    data = rsatoolbox.rdm.RDMs(vec(brain), rdm_descriptors={"subject": brain["subject"].values})
    return eval_dual_bootstrap(ms, data, method="corr", N=n, rdm_descriptor="subject")


def _crossnobis_row(ds, x, noise, label, n_voxel, noise_ref=None, ref_one_thread=False):
    import contextlib

    import rsatoolbox
    from scipy.spatial.distance import squareform

    from neurodata.models._jax.blas import one_blas_thread

    def ref():
        with one_blas_thread() if ref_one_thread else contextlib.nullcontext():
            return rsatoolbox.rdm.calc_rdm(
                ds, method="crossnobis", descriptor="stim", cv_descriptor="run",
                noise=None if noise is None else np.array(
                    noise_ref if noise_ref is not None else noise))

    t_ref = time_call(ref, repeats=3, warmup=0)
    r_ref = ref()

    def fn():
        return rsa.calc_rdm(x, "crossnobis", precision=noise)["dissimilarity"].values

    t_first = time_first_call(fn)
    t_ours = time_call(fn, repeats=3)
    err = np.abs(squareform(fn()[0], checks=False) - r_ref.get_vectors()[0]).max()
    return (f"crossnobis, 92 cond x 8 runs x {n_voxel} voxels, {label} (max diff {err:.1e})",
            t_ref, t_ours, t_first - t_ours)


def _interleaved(fn_ref, fn_ours, seconds=1.0):
    """Median times of two fast calls, alternated so that both see the same machine load."""
    t_ref, t_ours = [], []
    start = time.perf_counter()
    while len(t_ref) < 5 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn_ref()
        t1 = time.perf_counter()
        jax.block_until_ready(fn_ours())
        t_ref.append(t1 - t0)
        t_ours.append(time.perf_counter() - t1)
    return float(np.median(t_ref)), float(np.median(t_ours))


def _rsatoolbox_cv_bootstrap(models, brain, n, method="corr"):
    import contextlib
    import io

    import rsatoolbox
    from rsatoolbox.inference import eval_dual_bootstrap
    from rsatoolbox.model import ModelFixed
    from scipy.spatial.distance import squareform
    vec = lambda ds: np.array([squareform(m) for m in ds["dissimilarity"].values])  # noqa: E731
    ms = [ModelFixed(str(name), rsatoolbox.rdm.RDMs(v[None]))
          for name, v in zip(models["rdm_name"].values, vec(models), strict=True)]
    data = rsatoolbox.rdm.RDMs(vec(brain), rdm_descriptors={"subject": brain["subject"].values})
    with contextlib.redirect_stderr(io.StringIO()):
        return eval_dual_bootstrap(ms, data, method=method, N=n, k_pattern=2, k_rdm=2,
                                   n_cv=2, rdm_descriptor="subject")


def _simulated_rdms(rng: np.random.Generator, n_stim: int = 92):
    """8 data RDMs (4 subjects x 2 sessions) and 8 model RDMs (2 categorical, with ties)."""
    from neurodata.models.rsa import rdm_dataset

    def corr_dist(x):
        return 1.0 - np.corrcoef(x)

    truth = rng.normal(size=(n_stim, 60))
    subject = [truth + rng.normal(size=truth.shape) for _ in range(4)]
    data = [corr_dist(u + rng.normal(size=u.shape)) for u in subject for _ in range(2)]
    models = [corr_dist(truth @ rng.normal(size=(60, 60)) + 2.0 * rng.normal(size=truth.shape))
              for _ in range(6)]
    for k in (2, 5):  # category models: many tied dissimilarities
        labels = rng.integers(0, k, n_stim)
        models.append((labels[:, None] != labels[None]).astype(float))
    data_ds = rdm_dataset(np.array(data), rdm_coords={"subject": np.repeat(np.arange(4), 2)})
    return data_ds, rdm_dataset(np.array(models))


def gpu_main(quick: bool = False) -> str:
    """neurodata alone on the default device (simulated data of the CPU benchmark's sizes)."""
    n_boot = 100 if quick else 1000
    n_voxel = 500 if quick else 5000
    rng = np.random.default_rng(0)
    brain, models = _simulated_rdms(rng)
    subjects = brain["subject"].values
    rows = []

    def timed(label, fn, repeats=3):
        t_first = time_first_call(fn)
        t_run = time_call(fn, repeats=repeats, warmup=0)
        rows.append((label, t_run, max(t_first - t_run, 0.0)))

    for method in ("corr", "spearman"):
        for cv in ({}, {"k_pattern": 2, "k_rdm": 2, "n_cv": 2}):
            label = (f"dual bootstrap{' + CV correction (k = 2, 2, n_cv = 2)' if cv else ''}, "
                     f"{method}, N = {n_boot}, 8 RDMs x 8 models, 92 stimuli")
            timed(label, lambda m=method, kw=cv: rsa.dual_bootstrap(
                models, brain, key=jax.random.key(0), subjects=subjects, method=m,
                n_bootstrap=n_boot, **kw)["mean"].values, repeats=1)
    x = rng.normal(size=(8, 92, n_voxel))
    residuals = rng.normal(size=(400, n_voxel))
    timed(f"shrinkage_diag precision from 400 x {n_voxel} residuals (Woodbury form)",
          lambda: rsa.precision_from_residuals(residuals, low_rank=True))
    low = rsa.precision_from_residuals(residuals, low_rank=True)
    dense = rsa.precision_from_residuals(residuals)
    for label, prec in (("identity", None), ("Woodbury", low), ("dense", dense)):
        timed(f"crossnobis RDM, 92 cond x 8 runs x {n_voxel} channels, {label} precision",
              lambda pr=prec: rsa.calc_rdm(x, "crossnobis", precision=pr)[
                  "dissimilarity"].values)
    for method in rsa.COMPARATORS:
        timed(f"compare {method}, 8 x 8 RDMs, 92 stimuli",
              lambda m=method: rsa.compare(brain, models, m).values)
    lines = [
        "## RSA on the default device (neurodata alone)",
        "",
        f"Machine: {machine()}. Float64. Simulated RDMs and patterns of the CPU benchmark's "
        "sizes (`python -m benchmarks.rsa --gpu`); run times are medians after compilation, "
        "compile time separate.",
        "",
        "| operation | run (s) | compile (s) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {t:.4g} | {c:.3g} |" for name, t, c in rows]
    if quick:
        lines += ["", "(--quick: reduced sizes.)"]
    md = "\n".join(lines)
    write_result("rsa_gpu", md)
    print(md)
    return md


def main(argv=None) -> str:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--gpu", action="store_true",
                        help="neurodata alone on the default device, simulated data")
    args = parser.parse_args(argv)
    if args.gpu:
        return gpu_main(args.quick)
    n_boot = 100 if args.quick else 1000
    n_voxel = 500 if args.quick else 5000
    rows = []
    brain, models = _data()

    # dual bootstrap ---------------------------------------------------------------
    import contextlib
    import io
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # tqdm bar
        ref = _rsatoolbox_bootstrap(models, brain, n_boot)
    t_ref = time.perf_counter() - start
    subjects = brain["subject"].values
    run = lambda seed: rsa.dual_bootstrap(models, brain, key=jax.random.key(seed),  # noqa: E731
                                          subjects=subjects, n_bootstrap=n_boot)
    t_first = time_first_call(lambda: run(0)["mean"].values)
    t_ours = time_call(lambda: run(1)["mean"].values, repeats=1 if not args.quick else 3)
    res = run(2)
    rows.append((f"dual bootstrap, corr, N = {n_boot}, 8 hIT x 8 models", t_ref, t_ours,
                 t_first - t_ours))
    agree = np.abs(res["mean"].values - ref.get_means()).max()
    sem_ratio = res["sem"].values / ref.get_sem()

    # dual bootstrap with internal cross-validation and the CV correction ---------------
    # rsatoolbox needs ~1 s per sample here (1100 s for N = 1000 on the shared machine), so
    # it runs n_cv_ref samples and its time is scaled to N = n_boot (it is linear in N)
    n_cv_ref = 20 if args.quick else 100
    start = time.perf_counter()
    ref_cv = _rsatoolbox_cv_bootstrap(models, brain, n_cv_ref)
    t_ref = (time.perf_counter() - start) * n_boot / n_cv_ref
    run_cv = lambda seed: rsa.dual_bootstrap(  # noqa: E731
        models, brain, key=jax.random.key(seed), subjects=subjects, n_bootstrap=n_boot,
        k_pattern=2, k_rdm=2, n_cv=2)
    t_first = time_first_call(lambda: run_cv(0)["mean"].values)
    t_ours = time_call(lambda: run_cv(1)["mean"].values, repeats=1)
    rows.append((f"dual bootstrap + CV correction (k_pattern = k_rdm = n_cv = 2), corr, "
                 f"N = {n_boot} (rsatoolbox: {n_cv_ref} samples, time x {n_boot // n_cv_ref})",
                 t_ref, t_ours, t_first - t_ours))
    agree_cv = np.abs(run_cv(2)["mean"].values - ref_cv.get_means()).max()

    # the same with a rank comparator (resampled RDMs ranked from integer rank keys); both
    # sides run the same (small) number of samples
    n_rank = 10 if args.quick else 50
    start = time.perf_counter()
    _rsatoolbox_cv_bootstrap(models, brain, n_rank, method="spearman")
    t_ref = time.perf_counter() - start
    run_rank = lambda seed: rsa.dual_bootstrap(  # noqa: E731
        models, brain, key=jax.random.key(seed), subjects=subjects, n_bootstrap=n_rank,
        method="spearman", k_pattern=2, k_rdm=2, n_cv=2)
    t_first = time_first_call(lambda: run_rank(0)["mean"].values)
    t_ours = time_call(lambda: run_rank(1)["mean"].values, repeats=1)
    rows.append((f"dual bootstrap + CV correction (k_pattern = k_rdm = n_cv = 2), spearman, "
                 f"N = {n_rank} on both sides", t_ref, t_ours, t_first - t_ours))

    # crossnobis ---------------------------------------------------------------------
    import rsatoolbox
    from rsatoolbox.data.noise import prec_from_residuals
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 92, n_voxel))
    obs = x.reshape(-1, n_voxel)
    ds = rsatoolbox.data.Dataset(obs, obs_descriptors={
        "stim": np.tile(np.arange(92), 8), "run": np.repeat(np.arange(8), 92)})
    residuals = rng.normal(size=(400, n_voxel))
    start = time.perf_counter()
    prec_ref = prec_from_residuals(residuals.copy())
    t_prec_ref = time.perf_counter() - start
    t_first = time_first_call(lambda: rsa.precision_from_residuals(residuals, low_rank=True))
    t_prec = time_call(lambda: rsa.precision_from_residuals(residuals, low_rank=True),
                       repeats=3)
    rows.append((f"shrinkage_diag precision from 400 x {n_voxel} residuals (ours: Woodbury "
                 "form, no P x P matrix)", t_prec_ref, t_prec, t_first - t_prec))
    low = rsa.precision_from_residuals(residuals, low_rank=True)
    dense = rsa.precision_from_residuals(residuals)
    for label, noise, one in (
            ("identity precision", None, False),
            ("dense shrinkage precision given (ours: its upper block triangle, 55% of the "
             "flops)", dense, False),
            ("dense shrinkage precision given, rsatoolbox on one BLAS thread", dense, True),
            ("shrinkage precision in Woodbury form", low, False)):
        rows.append(_crossnobis_row(ds, x, noise, label, n_voxel, noise_ref=prec_ref,
                                    ref_one_thread=one))
    t_ref_total = t_prec_ref + rows[-1][1]
    t_ours_total = t_prec + rows[-1][2]
    rows.append((f"crossnobis from residuals end to end (precision + RDM), {n_voxel} voxels",
                 t_ref_total, t_ours_total, 0.0))

    # comparators --------------------------------------------------------------------
    from scipy.spatial.distance import squareform
    va = rsatoolbox.rdm.RDMs(np.array([squareform(m) for m in brain["dissimilarity"].values]))
    vb = rsatoolbox.rdm.RDMs(np.array([squareform(m) for m in models["dissimilarity"].values]))
    for method in rsa.COMPARATORS:
        t_first = time_first_call(lambda m=method: rsa.compare(brain, models, m).values)
        t_ref, t_ours = _interleaved(lambda m=method: rsatoolbox.rdm.compare(va, vb, m),
                                     lambda m=method: rsa.compare(brain, models, m).values)
        rows.append((f"compare {method}, 8 x 8 RDMs, 92 cond", t_ref, t_ours, t_first - t_ours))

    lines = [
        "## RSA: neurodata vs rsatoolbox 0.3.2",
        "",
        f"Machine: {machine()}. Float64 on both sides. Real 92-image data (Kriegeskorte 2008)"
        " for the bootstrap and comparators; synthetic Gaussian patterns for crossnobis. "
        "Run times are medians after compilation; compile time is listed separately; "
        "comparator calls alternate between the libraries for about a second each.",
        "",
        "| operation | rsatoolbox (s) | neurodata run (s) | speed-up | neurodata compile (s) |",
        "|---|---|---|---|---|",
    ]
    for name, t_ref, t_ours, t_comp in rows:
        lines.append(f"| {name} | {t_ref:.4g} | {t_ours:.4g} | {t_ref / t_ours:.1f}x "
                     f"| {max(t_comp, 0):.3g} |")
    lines += [
        "",
        f"Dual bootstrap agreement (different random draws): max |mean difference| = "
        f"{agree:.4f}; s.e. ratio neurodata / rsatoolbox = {sem_ratio.min():.2f} .. "
        f"{sem_ratio.max():.2f}. With cross-validation: max |mean difference| = "
        f"{agree_cv:.4f} (rsatoolbox on {n_cv_ref} samples).",
    ]
    load = os.getloadavg()
    lines += ["", f"Load average during the run (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, "
              f"{load[2]:.1f}: the 2 cores were shared with other jobs, so absolute times "
              "are inflated for both libraries; the ratios are what to read. Small "
              "comparator calls are dominated by per-call overhead (input validation, "
              "xarray output, dispatch), not by the arithmetic."]
    if args.quick:
        lines.append("")
        lines.append("(--quick: reduced sizes.)")
    md = "\n".join(lines)
    write_result("rsa", md)
    print(md)
    return md


if __name__ == "__main__":
    main()
