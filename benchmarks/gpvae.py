"""MM-GPVAE benchmark: Fourier-domain prior vs the time-domain GP-VAE baseline (same class).

``python -m benchmarks.gpvae [--quick]``. The reference implementation (PyTorch,
``RabiaGondur/MM-GPVAE``) is a set of scripts, not an installable library, and PyTorch is not
a dependency, so the peer here is the paper's own baseline: the time-domain GP-VAE, run by
``MMGPVAE(fourier=False)`` on the same data, networks, optimiser, seed and number of epochs.

Reported, on the paper's simulation (shared rotation angle, neural-only GP, image-only zoom):

1. training throughput (trials per second, compile time separate);
2. held-out affine R^2 of each latent group, checked every few epochs, and the wall time to
   reach the target (shared >= 0.9, private >= 0.8); held-out reconstruction of the rates
   and images;
3. the Fourier model's held-out R^2 on other seeds (simulation and initialisation);
4. time per epoch against trial length (Fourier ``O(F^3)`` vs time-domain ``O(T^3)``);
5. (``--only combine``) the shared latent combined as a product of experts vs the reference's
   average, on several seeds;
6. (``--only precision``) the ELBO and its gradient with reduced-precision matmuls (TF32,
   bfloat16; emulated on the CPU, measured on a GPU).

All in float32 on JAX's default device. ``python -m benchmarks.gpvae --gpu`` is the GPU run
(parts 1, 2, 4 and 6 at the paper's size, scaling to 960 bins; it needs only the repository,
no ``../shared/data``; results in ``benchmarks/results/gpvae_gpu.md``). The markdown is
rewritten after each part, so an interrupted run leaves the parts it finished.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import machine, write_result

TARGETS = {"shared": 0.9, "neural": 0.8, "image": 0.8}
FULL = {"trials": 300, "time": 60, "neurons": 100, "epochs": 30}


def _model(fourier: bool, epochs: int, seed: int = 0, **kw):
    from neurodata.models.gpvae import MMGPVAE

    return MMGPVAE(1, {"neural": 1, "image": 1},
                   modalities={"neural": "activity", "image": "image"},
                   decoder={"image": "mlp"}, length_scale_init=0.5,
                   fourier=fourier, max_epochs=epochs, patience=epochs, progress=False,
                   random_state=seed, **kw)


def _r2(model, test, true) -> dict[str, float]:
    from neurodata.models.gpvae import affine_r2

    z = model.transform(test)
    return {"shared": affine_r2(z["shared_mean"].values, true["angle"].values),
            "neural": affine_r2(z["neural_mean"].values, true["neural"].values),
            "image": affine_r2(z["image_mean"].values, np.log(true["zoom"].values))}


def _reconstruction(model, test, true) -> dict[str, float]:
    """Held-out R^2 of the rates (vs the true rates) and the images, and of the images
    predicted from the spikes alone."""

    def r2(ref, pred):
        ref, pred = np.asarray(ref, float), np.asarray(pred, float)
        return 1.0 - float(((ref - pred) ** 2).sum() / ((ref - ref.mean()) ** 2).sum())

    rec = model.reconstruct(test)
    cross = model.predict_modality(test.drop_vars("image"), source="neural")
    return {"rates": r2(true["rate"], rec["activity"]), "images": r2(test["image"], rec["image"]),
            "images from spikes": r2(test["image"], cross["image"])}


def _train(fourier: bool, train, test, true, epochs: int, every: int, seed: int = 0,
           **kw) -> dict:
    model = _model(fourier, epochs, seed, **kw)
    stamps, curve, eval_time = [], [], [0.0]
    start = time.perf_counter()

    def callback(epoch, params):
        stamps.append(time.perf_counter())
        if (epoch + 1) % every == 0:
            model.params_ = params
            eval_start = time.perf_counter()
            curve.append((epoch + 1, stamps[-1] - start - eval_time[0], _r2(model, test, true)))
            eval_time[0] += time.perf_counter() - eval_start
        return False

    model._fit(train, callback=callback)
    first = stamps[0] - start
    per_epoch = float(np.median(np.diff(stamps))) if len(stamps) > 2 else float("nan")
    reached = next(((e, t) for e, t, r in curve if all(r[g] >= TARGETS[g] for g in TARGETS)),
                   None)
    return {"first_epoch": first, "per_epoch": per_epoch, "curve": curve, "reached": reached,
            "final": _r2(model, test, true), "reconstruction": _reconstruction(model, test, true),
            "epochs": len(stamps), "best_epoch": int(np.argmax(model.history_["validation"])) + 1,
            "length_scales": {g: float(v[0]) for g, v in model.length_scales_.items()},
            "model": model}


def _epoch_time(fourier: bool, n_time: int, n_trials: int, epochs: int) -> tuple[float, float]:
    from neurodata.models.gpvae import simulate

    ds, _ = simulate(n_trials=n_trials, n_time=n_time, n_neurons=50, seed=1)
    stamps = []
    start = time.perf_counter()
    model = _model(fourier, epochs, validation_fraction=0.0)

    def callback(epoch, params):
        stamps.append(time.perf_counter())
        return False

    model._fit(ds, callback=callback)
    return stamps[0] - start, float(np.median(np.diff(stamps)))


def _split(n_trials, n_time, n_neurons, seed):
    from neurodata.models.gpvae import simulate

    ds, truth = simulate(n_trials=n_trials, n_time=n_time, n_neurons=n_neurons, seed=seed)
    n_train = int(0.8 * n_trials)
    return (ds.isel(trial=slice(0, n_train)), ds.isel(trial=slice(n_train, None)),
            truth.isel(trial=slice(n_train, None)), n_train)


def _fmt_reached(reached) -> str:
    return "not reached" if reached is None else f"{reached[1]:.0f} s (epoch {reached[0]})"


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark and write ``benchmarks/results/gpvae.md``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpvae")
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--gpu", action="store_true",
                        help="the lead's GPU run: full-size comparison, scaling to 960 bins and "
                        "the precision check on JAX's default device (results/gpvae_gpu.md)")
    parser.add_argument("--trials", type=int, help="override the number of trials")
    parser.add_argument("--time", type=int, help="override the bins per trial")
    parser.add_argument("--neurons", type=int, help="override the number of neurons")
    parser.add_argument("--epochs", type=int, help="override the number of epochs")
    parser.add_argument("--seeds", type=int, nargs="*", help="extra seeds for the Fourier model")
    parser.add_argument("--only", nargs="*", default=["compare", "seeds", "scaling"],
                        choices=["compare", "seeds", "scaling", "combine", "precision"],
                        help="parts to run (the parts can run as separate processes)")
    parser.add_argument("--skip-time-domain", action="store_true",
                        help="leave the time-domain model out of the comparison")
    parser.add_argument("--result", default="gpvae",
                        help="name of the results file (benchmarks/results/<name>.md)")
    args = parser.parse_args(argv)
    if args.gpu:
        args.only = ["compare", "precision", "scaling"]
        args.result = "gpvae_gpu" if args.result == "gpvae" else args.result
    if args.quick:
        n_trials, n_time, n_neurons, epochs, every = 60, 30, 30, 20, 10
        lengths, scale_trials, scale_epochs, seeds = (20, 60), 20, 4, [1]
    else:
        n_trials, n_time, n_neurons, epochs = (FULL[k] for k in
                                               ("trials", "time", "neurons", "epochs"))
        every, lengths, scale_trials, scale_epochs, seeds = 5, (30, 60, 120, 240), 40, 4, [1, 2]
    if args.gpu and not args.quick:
        lengths, scale_trials = (60, 240, 960), 100
    n_trials = args.trials or n_trials
    n_time = args.time or n_time
    n_neurons = args.neurons or n_neurons
    epochs = args.epochs or epochs
    seeds = seeds if args.seeds is None else args.seeds
    train, test, true, n_train = _split(n_trials, n_time, n_neurons, seed=0)
    n_fit = n_train - int(round(0.1 * n_train))  # early-stopping hold-out left out
    full = (n_trials, n_time, n_neurons) == (FULL["trials"], FULL["time"], FULL["neurons"])

    head = [
        "## MM-GPVAE: Fourier-domain prior vs time-domain GP-VAE",
        "",
        f"Machine: {machine()}. float32. Simulation of the paper (`simulate`, seed 0): "
        f"{n_trials} trials x {n_time} bins, {n_neurons} Poisson neurons, 12x12 digit images "
        f"rotated by the shared GP and zoomed by the image-only GP; {n_train} train "
        f"({n_fit} fitted, {n_train - n_fit} for early stopping) / {n_trials - n_train} "
        f"held-out trials; {epochs} epochs of Adam (default settings: lr 3e-3, batch 20, clip "
        "1, modality dropout 0.5, product of experts), the same networks, seed and epoch "
        "budget for both. The reported parameters are those of the best held-out ELBO. The "
        "peer is the paper's time-domain GP-VAE baseline (`fourier=False`: mean-field "
        "posterior over the T bins, dense T x T RBF prior); the PyTorch reference is not a "
        "library.",
        "",
        *([] if full else [
            f"Sizes reduced from the issue's {FULL['trials']} trials x {FULL['time']} bins x "
            f"{FULL['neurons']} neurons (`--quick` or size flags).", ""]),
    ]
    sections: dict[str, list[str]] = {}

    def write() -> str:
        md = "\n".join(head + [line for part in sections.values() for line in part])
        write_result(args.result, md)
        return md

    runs = {}
    parts = [("Fourier", True)] + ([] if args.skip_time_domain else [("time domain", False)])
    for name, fourier in parts if "compare" in args.only else []:
        runs[name] = _train(fourier, train, test, true, epochs, every)
        print(name, runs[name], flush=True)
        cols = list(runs)
        table = [f"| | {' | '.join(cols)} |", "|---" * (len(cols) + 1) + "|"]

        def row(label, fn, cols=cols):
            return f"| {label} | " + " | ".join(fn(runs[c]) for c in cols) + " |"

        table += [
            row("first epoch incl. compile (s)", lambda r: f"{r['first_epoch']:.1f}"),
            row("time per epoch after compile (s)", lambda r: f"{r['per_epoch']:.3f}"),
            row("throughput (trials/s)", lambda r: f"{n_fit / r['per_epoch']:.0f}"),
        ]
        for g, label in (("shared", "R2 shared vs angle"), ("neural", "R2 neural vs GP2"),
                         ("image", "R2 image vs log zoom")):
            table.append(row(f"held-out {label}", lambda r, g=g: f"{r['final'][g]:.3f}"))
        for key in ("rates", "images", "images from spikes"):
            table.append(row(f"held-out R2 of reconstructed {key}",
                             lambda r, key=key: f"{r['reconstruction'][key]:.3f}"))
        table += [
            row("learned length scales shared / neural / image (s; true 0.5)",
                lambda r: " / ".join(f"{v:.2f}" for v in r["length_scales"].values())),
            row("epoch of the best held-out ELBO", lambda r: str(r["best_epoch"])),
            row("time to target R2 (training only)", lambda r: _fmt_reached(r["reached"])),
        ]
        if len(cols) == 2:
            ratio = runs["time domain"]["per_epoch"] / runs["Fourier"]["per_epoch"]
            table.insert(5, f"| time per epoch, time domain / Fourier | | {ratio:.2f} |")
        curve = ["", f"Target: shared >= {TARGETS['shared']}, private >= {TARGETS['neural']} "
                 f"(checked every {every} epochs; evaluation time excluded).", "",
                 "Learning curve (held-out R2 shared / neural / image):", "",
                 f"| epoch | {' | '.join(cols)} |", "|---" * (len(cols) + 1) + "|"]
        for points in zip(*(runs[c]["curve"] for c in cols), strict=True):
            curve.append(f"| {points[0][0]} | " + " | ".join(
                f"{r['shared']:.2f} / {r['neural']:.2f} / {r['image']:.2f}"
                for _, _, r in points) + " |")
        sections["main"] = table + curve
        print(write(), flush=True)

    if "scaling" in args.only:
        rows = ["", f"Scaling with trial length ({scale_trials} trials, 50 neurons, no "
                f"validation split, median of {scale_epochs - 1} epochs after the first):", "",
                "| bins per trial | Fourier s/epoch | time domain s/epoch | ratio | "
                "compile+1st epoch F / T (s) |", "|---|---|---|---|---|"]
        for n in lengths:
            cf, ef = _epoch_time(True, n, scale_trials, scale_epochs)
            ct, et = _epoch_time(False, n, scale_trials, scale_epochs)
            rows.append(f"| {n} | {ef:.3f} | {et:.3f} | {et / ef:.2f} | {cf:.1f} / {ct:.1f} |")
            sections["scaling"] = rows
            print(write(), flush=True)
    if "seeds" in args.only and seeds:
        rows = ["", f"Fourier model on other seeds (simulation and initialisation; same sizes, "
                f"{epochs} epochs, default settings):", "",
                "| seed | R2 shared | R2 neural | R2 image | R2 rates | R2 images | "
                "time to target |", "|---|---|---|---|---|---|---|"]

        def seed_row(seed, r):
            rec = r["reconstruction"]
            return (f"| {seed} | {r['final']['shared']:.3f} | {r['final']['neural']:.3f} | "
                    f"{r['final']['image']:.3f} | {rec['rates']:.3f} | {rec['images']:.3f} | "
                    f"{_fmt_reached(r['reached'])} |")

        if "Fourier" in runs:
            rows.append(seed_row(0, runs["Fourier"]))
        for seed in seeds:
            tr, te, tt, _ = _split(n_trials, n_time, n_neurons, seed=seed)
            rows.append(seed_row(seed, _train(True, tr, te, tt, epochs, every, seed)))
            sections["seeds"] = rows
            print(write(), flush=True)

    if "precision" in args.only:
        models = {name: r["model"] for name, r in runs.items()}
        for name, fourier in parts:
            if name not in models:
                models[name] = _train(fourier, train, test, true, epochs, epochs)["model"]
        sections["precision"] = _precision_section(models, test)
        print(write(), flush=True)

    if "combine" in args.only:
        sections["combine"] = _combine_section(n_trials, n_time, n_neurons, epochs, every,
                                               [0, *seeds])
        print(write(), flush=True)

    return write()


def _precision_section(models: dict, test) -> list[str]:
    """ELBO and gradient under reduced-precision matmuls, relative to exact float32."""
    import jax

    from neurodata.models.gpvae import round_matmul_inputs

    def flat(tree):
        return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])

    gpu = jax.default_backend() == "gpu"
    rows = ["", "Float32 under reduced-precision matmuls: held-out ELBO per bin and its gradient "
            "at the fitted parameters, relative to float32 products (`jax.default_matmul_"
            "precision(\"highest\")`). TF32 (10 mantissa bits, NVIDIA's default for float32 "
            "at JAX's default precision) and bfloat16 (7 bits) are emulated by rounding every "
            "default-precision matmul's operands (`round_matmul_inputs`); "
            + ("`GPU default` is the device's own default precision." if gpu else
               "on the CPU `jax.default_matmul_precision` has no effect."), "",
            "| model | matmuls | ELBO per bin | relative error | gradient relative error | "
            "gradient cosine |", "|---|---|---|---|---|---|"]
    key = jax.random.PRNGKey(0)
    for name, model in models.items():
        elbo_fn, dyn, batch = model._elbo_fn(test)
        value_grad = jax.value_and_grad(elbo_fn)
        with jax.default_matmul_precision("highest"):
            exact, grad = jax.jit(value_grad)(dyn, batch, key)
        grad = flat(grad)
        variants = [("TF32 (emulated)", round_matmul_inputs(value_grad, 10))]
        # On a GPU the device's own default replaces the bfloat16 emulation (compile time).
        variants.insert(0, ("GPU default", jax.jit(value_grad)) if gpu else
                        ("bfloat16 (emulated)", round_matmul_inputs(value_grad, 7)))
        for label, fn in variants:
            value, g = fn(dyn, batch, key)
            g = flat(g)
            rows.append(
                f"| {name} | {label} | {float(value):.4f} | "
                f"{abs(float(value - exact) / float(exact)):.1e} | "
                f"{np.linalg.norm(g - grad) / np.linalg.norm(grad):.1e} | "
                f"{g @ grad / np.linalg.norm(g) / np.linalg.norm(grad):.6f} |")
            print(rows[-1], flush=True)
    return rows


def _combine_section(n_trials, n_time, n_neurons, epochs, every, seeds) -> list[str]:
    """Product of experts vs the reference's average for the shared latent, several seeds."""
    rows = ["", "Shared latent: product of Gaussian experts (`combine=\"poe\"`) vs the "
            "reference's average of the per-modality posteriors (`combine=\"average\"`); "
            f"Fourier model, {epochs} epochs, default settings otherwise; held-out trials:", "",
            "| seed | combine | R2 shared | R2 neural | R2 image | R2 rates | R2 images | "
            "R2 images from spikes | time to target |", "|---|---|---|---|---|---|---|---|---|"]
    totals: dict[str, list[list[float]]] = {"poe": [], "average": []}
    for seed in seeds:
        tr, te, tt, _ = _split(n_trials, n_time, n_neurons, seed=seed)
        for combine in ("poe", "average"):
            r = _train(True, tr, te, tt, epochs, every, seed, combine=combine)
            rec = r["reconstruction"]
            values = [r["final"]["shared"], r["final"]["neural"], r["final"]["image"],
                      rec["rates"], rec["images"], rec["images from spikes"]]
            totals[combine].append(values)
            rows.append(f"| {seed} | {combine} | " + " | ".join(f"{v:.3f}" for v in values)
                        + f" | {_fmt_reached(r['reached'])} |")
            print(rows[-1], flush=True)
    for combine, values in totals.items():
        rows.append(f"| mean | {combine} | " + " | ".join(
            f"{v:.3f}" for v in np.mean(values, axis=0)) + " | |")
    return rows


if __name__ == "__main__":
    main()
