"""MM-GPVAE: a multi-modal Gaussian-process variational auto-encoder (Gondur et al., ICLR 2024).

Latents are Gaussian processes in time, split into a group shared by every modality and one
private group per modality. Each modality has a per-time-bin encoder network and a decoder:
linear-exponential Poisson for spike counts (GPFA-like loadings), an MLP or a linear map with
Gaussian noise for images or behaviour.

How this implementation differs from the reference code (``RabiaGondur/MM-GPVAE``):

* **Exact ELBO.** The Poisson term is the closed-form expectation of the log-likelihood under
  the Gaussian posterior (the log-normal moment) and the prior term is the exact KL divergence
  between the diagonal Gaussian posterior and the diagonal Fourier-domain prior. The
  reference mixes standard deviations and variances and evaluates the prior density at
  ``mu + sigma`` instead of the KL.
* **Variable trial lengths.** The encoders output Gaussian pseudo-observations per time bin
  (a mean and a precision for every latent the modality sees); the posterior over the
  Fourier coefficients is the optimal diagonal (mean-field) approximation of the GP prior
  conditioned on them: exact posterior mean, variances ``1 / diag(precision)``. Unlike the
  reference's ``Linear(T, F)`` map this needs no fixed trial length. Shorter trials are
  padded (trailing all-NaN bins in every modality) and masked; the basis is built per trial
  length at inference time.
* **One length scale per latent**, learned (the reference shares one).
* **Shared latents** combine the modalities as a product of Gaussian experts (the
  pseudo-observation precisions add; the default) or, as in the reference, by averaging the
  per-modality posteriors' means and log-variances (``combine="average"``). On the paper's
  simulation at full size (3 seeds, 30 epochs) the product of experts was ahead on average:
  held-out R^2 of the shared latent 0.982 vs 0.975, of the rates 0.940 vs 0.928, equal on
  the private latents (``benchmarks/results/gpvae.md``).

``fourier=False`` gives the time-domain GP-VAE baseline of the paper: the same encoders,
decoders and mean-field posterior, but over the ``T`` time bins with a dense ``T x T`` RBF
prior covariance (``O(T^3)`` per latent and trial instead of ``O(F^3)``, ``F << T``). Its
prior is factorised once per minibatch; shorter (padded) trials use the leading block of the
factor.

The model runs in float32 (networks and ELBO), on every device: the Fourier prior is diagonal
and the time-domain prior carries a jitter of ``jitter`` (1e-2 by default) on its diagonal,
which keeps the Cholesky factorisations well conditioned in single precision. On NVIDIA
GPUs JAX's default matmul precision for float32 is TF32 (operands rounded to 10 mantissa
bits); the model keeps that default. Emulated on the CPU (:func:`round_matmul_inputs`), TF32
moves the held-out ELBO of the fitted full-size models by 2e-6 (Fourier) and 2e-5 (time
domain) of its value and its gradient by 0.1% and 0.5% (bfloat16: 1.5% and 2.8%), far below
the minibatch noise of the stochastic gradient; the Cholesky derivatives use ``HIGHEST``
precision anyway. For bit-level reproducibility
across devices wrap the calls in ``jax.default_matmul_precision("highest")``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import optax
import xarray as xr
from jax.scipy.special import gammaln

from neurodata.errors import InputDataError
from neurodata.models._base import NeurodataModel
from neurodata.models._jax.blas import single_threaded_blas
from neurodata.models._jax.fourier import (
    angular_frequencies,
    fourier_basis,
    n_frequencies,
    rbf_spectral_variances,
)
from neurodata.models._jax.gp import rbf_kernel

__all__ = ["MMGPVAE", "affine_r2", "round_matmul_inputs", "simulate"]

DTYPE = jnp.float32
_LIKELIHOODS = ("poisson", "gaussian")
_DECODERS = ("linear", "mlp")


# --------------------------------------------------------------------------- functional core


class Spec(NamedTuple):
    """Static structure of a model (hashable; jitted functions specialise on it)."""

    modalities: tuple[str, ...]
    likelihoods: tuple[str, ...]
    decoders: tuple[str, ...]
    latent_index: tuple[tuple[int, ...], ...]  # latents each modality encodes and decodes
    n_latents: int
    combine: str
    fourier: bool
    jitter: float
    min_length_scale: float  # bins
    n_samples: int


class Posterior(NamedTuple):
    """Mean-field Gaussian posterior of one trial, in coefficients and in time."""

    coef_mean: jax.Array  # (K, F) Fourier coefficients, or (K, T) in the time domain
    coef_var: jax.Array  # (K, F) or (K, T)
    mean: jax.Array  # (T, K) latents in time
    var: jax.Array  # (T, K) marginal variances in time
    kl: jax.Array  # (K,) KL(q || prior) per latent


def length_scales(params: dict, spec: Spec) -> jax.Array:
    """Length scales in bins: ``min_length_scale + exp(raw)``.

    The floor keeps every length scale representable by the truncated Fourier basis (and
    stops a latent from turning into white noise that fits frame-to-frame jitter).
    """
    return spec.min_length_scale + jnp.exp(params["length_scale_raw"])


def _fourier_posterior(prec, mean, basis, c):
    """Optimal diagonal posterior of one latent's coefficients given pseudo-observations.

    ``prec``, ``mean``: ``(T,)`` pseudo-observation precisions and means; ``basis`` ``(F, T)``;
    ``c`` ``(F,)`` prior variances. The exact posterior has precision
    ``diag(1/c) + B diag(prec) B^T``; the best diagonal Gaussian in KL(q || p) keeps its mean
    and takes variances ``1 / diag(precision)``.
    """
    lam = jnp.diag(1.0 / c) + (basis * prec) @ basis.T
    chol = jnp.linalg.cholesky(lam)
    mu = jsl.cho_solve((chol, True), basis @ (prec * mean))
    return mu, 1.0 / jnp.diag(lam)


def fourier_kl(mu: jax.Array, var: jax.Array, c: jax.Array) -> jax.Array:
    """``KL(N(mu, diag var) || N(0, diag c))`` summed over the last axis.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(fourier_kl(jnp.zeros(3), jnp.ones(3), jnp.ones(3)))
    0.0
    """
    return 0.5 * jnp.sum((var + mu**2) / c - 1.0 + jnp.log(c) - jnp.log(var), axis=-1)


class TimePrior(NamedTuple):
    """Dense RBF prior of every latent on a full window of ``T`` bins, factorised once.

    Shared by all trials of a minibatch: a trial padded after bin ``L`` needs the prior of its
    first ``L`` bins, whose Cholesky factor (and that factor's inverse) is the leading
    ``L x L`` block of the full window's, so :func:`mask_time_prior` only masks.
    """

    kern: jax.Array  # (K, T, T) covariance
    log_diag_chol: jax.Array  # (K, T) log of the Cholesky factor's diagonal
    inv_chol: jax.Array  # (K, T, T) inverse of the lower Cholesky factor


def time_prior(times: jax.Array, length_scale: jax.Array, jitter: float) -> TimePrior:
    """Factorise the RBF prior ``K + jitter I`` of each latent on the bin times ``times``.

    Parameters
    ----------
    times
        ``(T,)`` bin times in bins.
    length_scale
        ``(K,)`` length scales in bins.
    jitter
        Variance added to the diagonal.

    Returns
    -------
    TimePrior
        Covariances, log Cholesky diagonals and inverse Cholesky factors, one per latent.
    """
    eye = jnp.eye(times.shape[0], dtype=DTYPE)

    def one(ell):
        kern = rbf_kernel(times, times, ell) + jitter * eye
        chol = jnp.linalg.cholesky(kern)
        return kern, jnp.log(jnp.diag(chol)), jsl.solve_triangular(chol, eye, lower=True)

    return TimePrior(*jax.vmap(one)(length_scale))


def mask_time_prior(prior: TimePrior, mask: jax.Array) -> TimePrior:
    """The prior of one trial whose bins after the last observed one are padding.

    Padded bins (``mask == 0``, trailing) become independent standard normals: they get no
    pseudo-observation, so their posterior equals their prior and adds nothing to the KL.
    """
    keep, pad = jnp.outer(mask, mask), jnp.diag(1.0 - mask)
    return TimePrior(prior.kern * keep + pad, prior.log_diag_chol * mask,
                     prior.inv_chol * keep + pad)


def _time_posterior(prec, mean, kern, inv_chol):
    """Optimal diagonal posterior of one latent in time under a dense prior ``kern``."""
    # Double where: sqrt has an infinite derivative at the zero precision of padded bins.
    sq = jnp.where(prec > 0, jnp.sqrt(jnp.where(prec > 0, prec, 1.0)), 0.0)
    # Posterior mean K sP (I + sP K sP)^{-1} sP m: stable without forming K^{-1}.
    s_chol = jnp.linalg.cholesky(jnp.eye(kern.shape[0], dtype=kern.dtype)
                                 + sq[:, None] * kern * sq[None, :])
    mu = kern @ (sq * jsl.cho_solve((s_chol, True), sq * mean))
    return mu, 1.0 / (jnp.sum(inv_chol**2, axis=0) + prec)


def time_kl(mu, var, log_diag_chol, inv_chol) -> jax.Array:
    """``KL(N(mu, diag var) || N(0, K))`` for one latent, ``K = L L^T`` given by ``L^{-1}``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(time_kl(jnp.zeros(3), jnp.ones(3), jnp.zeros(3), jnp.eye(3)))
    0.0
    """
    white = inv_chol @ mu
    return 0.5 * (jnp.sum(jnp.sum(inv_chol**2, axis=0) * var) + white @ white - mu.shape[0]
                  + 2.0 * jnp.sum(log_diag_chol) - jnp.sum(jnp.log(var)))


def _encode(params, spec: Spec, data, mask, present):
    """Pseudo-observation means and precisions ``(M, T, K)`` for one trial."""
    means, precs = [], []
    for name, idx, here in zip(spec.modalities, spec.latent_index, present, strict=True):
        k = len(idx)
        if not here:
            zeros = jnp.zeros((mask.shape[0], spec.n_latents), DTYPE)
            means.append(zeros)
            precs.append(zeros)
            continue
        out = jax.vmap(params["encoders"][name])(data[name])
        m = jnp.zeros((mask.shape[0], spec.n_latents), DTYPE).at[:, idx].set(out[:, :k])
        p = jnp.zeros_like(m).at[:, idx].set(jax.nn.softplus(out[:, k:]) * mask[:, None])
        means.append(m)
        precs.append(p)
    return jnp.stack(means), jnp.stack(precs)


def posterior(params, spec: Spec, grid, basis, data, mask, present, keep=None,
              prior: TimePrior | None = None) -> Posterior:
    """Posterior over every latent of one trial.

    Parameters
    ----------
    params
        Model parameters (encoders, decoders, ``length_scale_raw``).
    spec
        Static structure.
    grid
        Angular frequencies ``(F,)`` (Fourier domain) or bin times ``(T,)`` (time domain).
    basis
        ``(F, T)`` Fourier basis, or the ``(T, T)`` identity in the time domain.
    data
        Modality name to ``(T, D)`` encoder inputs.
    mask
        ``(T,)`` 1 for observed bins.
    present
        Static tuple: which modalities inform the posterior.
    keep
        Optional ``(M,)`` 0/1 weights that switch modalities off inside jit (training with
        modality dropout).
    prior
        Time domain only: the factorised prior on the full window (:func:`time_prior`),
        computed once per minibatch; built here when omitted.
    """
    means, precs = _encode(params, spec, data, mask, present)
    sees = np.zeros((len(spec.modalities), spec.n_latents), np.float32)
    for i, idx in enumerate(spec.latent_index):
        sees[i, list(idx)] = float(present[i])
    sees = jnp.asarray(sees)
    if keep is not None:
        precs = precs * keep[:, None, None]
        sees = sees * keep[:, None]
    ell = length_scales(params, spec)

    if spec.fourier:
        c = rbf_spectral_variances(grid, ell, jitter=spec.jitter)  # (K, F)

        def solve(prec, mean):  # (T, K) -> (K, F) twice
            return jax.vmap(_fourier_posterior, in_axes=(1, 1, None, 0))(prec, mean, basis, c)
    else:
        prior = mask_time_prior(prior if prior is not None
                                else time_prior(grid, ell, spec.jitter), mask)

        def solve(prec, mean):
            return jax.vmap(_time_posterior, in_axes=(1, 1, 0, 0))(prec, mean, prior.kern,
                                                                   prior.inv_chol)

    if spec.combine == "poe":
        prec = precs.sum(0)
        mean = (precs * means).sum(0) / jnp.maximum(prec, 1e-12)
        mu, var = solve(prec, mean)
    else:
        # Each modality's own posterior, then the average of means and log-variances over the
        # modalities that see each latent (private latents: their one modality).
        weight = (sees / jnp.maximum(sees.sum(0), 1.0))[:, :, None]
        mus, variances = jax.vmap(solve)(precs, means)
        mu = (weight * mus).sum(0)
        log_var = (weight * jnp.log(variances)).sum(0)
        unseen = (sees.sum(0) == 0)[:, None]
        prior_mu, prior_var = solve(jnp.zeros_like(precs[0]), jnp.zeros_like(means[0]))
        mu = jnp.where(unseen, prior_mu, mu)
        var = jnp.where(unseen, prior_var, jnp.exp(log_var))

    if spec.fourier:
        kl = fourier_kl(mu, var, c)
    else:
        kl = jax.vmap(time_kl)(mu, var, prior.log_diag_chol, prior.inv_chol)
    return Posterior(mu, var, basis.T @ mu.T, (basis**2).T @ var.T, kl)


def poisson_expected_loglik(y, w, b, mean, var, mask):
    """Closed-form ``E_q log Poisson(y | exp(W z + b))`` for Gaussian ``z``, summed over bins.

    ``E exp(w^T z) = exp(w^T mu + w^2 . v / 2)`` for independent Gaussian latents.

    Parameters
    ----------
    y
        Counts ``(T, N)``.
    w, b
        Loadings ``(N, K)`` and offsets ``(N,)``.
    mean, var
        Posterior means and variances of the latents ``(T, K)``.
    mask
        ``(T,)`` 1 for observed bins.
    """
    eta = mean @ w.T + b
    spread = var @ (w**2).T
    ll = y * eta - jnp.exp(eta + 0.5 * spread) - gammaln(y + 1.0)
    return jnp.sum(ll * mask[:, None])


def _gaussian_loglik(x, pred_mean, extra_var, log_noise, mask):
    noise = jnp.exp(log_noise)
    ll = -0.5 * (((x - pred_mean) ** 2 + extra_var) / noise + jnp.log(2 * jnp.pi * noise))
    return jnp.sum(ll * mask[:, None])


def trial_elbo(params, spec: Spec, grid, basis, data, targets, mask, key, keep=None,
               prior: TimePrior | None = None) -> jax.Array:
    """ELBO of one trial: expected log-likelihood of every modality minus the KL.

    With ``keep`` the posterior is inferred from the kept modalities only, while every
    modality is still reconstructed; any ``q`` gives a lower bound on ``log p``, so this is
    still an ELBO of the full data, with a weaker ``q``. ``prior``: see :func:`posterior`.
    """
    post = posterior(params, spec, grid, basis, data, mask, (True,) * len(spec.modalities),
                     keep, prior)
    total = -post.kl.sum()
    eps = jax.random.normal(key, (spec.n_samples, *post.coef_mean.shape), DTYPE)
    samples = jnp.einsum("skf,ft->stk", post.coef_mean + jnp.sqrt(post.coef_var) * eps, basis)
    for name, lik, dec, idx in zip(spec.modalities, spec.likelihoods, spec.decoders,
                                   spec.latent_index, strict=True):
        p = params["decoders"][name]
        mu, var, y = post.mean[:, idx], post.var[:, idx], targets[name]
        if lik == "poisson":
            total += poisson_expected_loglik(y, p["w"], p["b"], mu, var, mask)
        elif dec == "linear":
            total += _gaussian_loglik(y, mu @ p["w"].T + p["b"], var @ (p["w"] ** 2).T,
                                      p["log_noise"], mask)
        else:
            preds = jax.vmap(jax.vmap(p["mlp"]))(samples[:, :, list(idx)])
            total += jnp.mean(jax.vmap(
                lambda pr, y=y, p=p: _gaussian_loglik(y, pr, 0.0, p["log_noise"], mask))(preds))
    return total


# Call primitives whose body is a closed jaxpr evaluated as is (custom derivative rules are
# not needed: the interpreted function is evaluated, not differentiated).
_CALLS = ("jit", "pjit", "closed_call", "custom_jvp_call", "custom_vjp_call")


def round_matmul_inputs(fn, mantissa_bits: int, jit: bool = True):
    """``fn`` evaluated as on a GPU whose default-precision matmuls round their inputs.

    NVIDIA GPUs run float32 matrix products at JAX's default precision in TF32 (inputs
    rounded to 10 mantissa bits, float32 accumulation); ``jax.default_matmul_precision``
    has no effect on CPU. This interpreter re-runs ``fn``'s jaxpr and rounds the operands
    of every ``dot_general`` that uses the default precision to ``mantissa_bits`` (10: TF32,
    7: bfloat16) before the product, leaving products that ask for ``HIGHEST`` (JAX's own
    Cholesky derivative) and every other operation exact, so the effect of reduced-precision
    matmuls on the ELBO and its gradients can be measured on a CPU.

    Parameters
    ----------
    fn
        A JAX-traceable function of arrays or pytrees.
    mantissa_bits
        Mantissa bits kept in the matmul operands (float32 has 23).
    jit
        Compile the interpreted function (otherwise it runs op by op, which for a one-off
        evaluation can be quicker than compiling).

    Returns
    -------
    callable
        A function with ``fn``'s signature and outputs.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.float32([[1.0 + 2.0**-9]])
    >>> float(round_matmul_inputs(lambda a: a @ a, 7)(x)[0, 0])
    1.0
    """
    from jax.extend.core import Literal

    def run(jaxpr, consts, args):
        env = dict(zip(jaxpr.constvars, consts, strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))

        def read(v):
            return v.val if isinstance(v, Literal) else env[v]

        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            if eqn.primitive.name in _CALLS:  # inline: the rounding reaches the inner products
                outs = run(sub.jaxpr, sub.consts, ins)
            else:
                precision = eqn.params.get("precision")
                if eqn.primitive.name == "dot_general" and (
                        precision is None or all(p in (None, jax.lax.Precision.DEFAULT)
                                                 for p in precision)):
                    ins = [jax.lax.reduce_precision(x, 8, mantissa_bits)
                           if x.dtype == jnp.float32 else x for x in ins]
                outs = eqn.primitive.bind(*ins, **eqn.params)
                if not eqn.primitive.multiple_results:
                    outs = [outs]
            env.update(zip(eqn.outvars, outs, strict=True))
        return [read(v) for v in jaxpr.outvars]

    def wrapped(*args):
        closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        leaves = run(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), leaves)

    return jax.jit(wrapped) if jit else wrapped


def decode_mean(params, spec: Spec, name: str, post: Posterior) -> jax.Array:
    """Expected value of one modality ``(T, D)`` under the posterior (model units).

    Poisson: the expected rate ``exp(W mu + b + W^2 v / 2)``; linear-Gaussian: ``W mu + b``;
    MLP-Gaussian: the network at the posterior mean (a plug-in estimate).
    """
    i = spec.modalities.index(name)
    idx, p = list(spec.latent_index[i]), params["decoders"][name]
    mu, var = post.mean[:, idx], post.var[:, idx]
    if spec.likelihoods[i] == "poisson":
        return jnp.exp(mu @ p["w"].T + p["b"] + 0.5 * var @ (p["w"] ** 2).T)
    if spec.decoders[i] == "linear":
        return mu @ p["w"].T + p["b"]
    return jax.vmap(p["mlp"])(mu)


# --------------------------------------------------------------------------- data handling


class _Batch(NamedTuple):
    inputs: dict  # encoder inputs (N, T, D) per modality
    targets: dict  # likelihood targets (N, T, D) per modality, model units
    mask: np.ndarray  # (N, T)


def _modality_array(ds: xr.Dataset, name: str, var: str) -> xr.DataArray:
    if not isinstance(ds, xr.Dataset):
        raise InputDataError(f"expected an xarray.Dataset of trials, got {type(ds).__name__}.")
    if var not in ds.data_vars:
        raise InputDataError(
            f"modality {name!r} reads variable {var!r}, which the dataset does not have "
            f"(variables: {sorted(map(str, ds.data_vars))}); add it or change `modalities`.")
    arr = ds[var]
    if arr.ndim != 3 or arr.dims[:2] != ("trial", "time"):
        raise InputDataError(
            f"variable {var!r} (modality {name!r}) has dims {arr.dims}; every modality must be "
            "(trial, time, feature) on the dataset's shared trial and time axes. Cut continuous "
            "recordings into trials first (neurodata.preprocess.cut_windows).")
    return arr


def _load_modalities(ds: xr.Dataset, modalities: Mapping[str, str]) -> tuple[dict, np.ndarray]:
    """Float arrays per modality and the per-trial observed-bin mask.

    Trailing bins that are NaN in every modality mark the end of a shorter trial; any other
    NaN or infinity is an error.
    """
    arrays = {name: _modality_array(ds, name, var) for name, var in modalities.items()}
    shapes = {name: a.shape[:2] for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise InputDataError(f"modalities have different (trial, time) sizes: {shapes}; they "
                             "must share the trial and time axes.")
    values = {name: np.asarray(a.values, dtype=np.float64) for name, a in arrays.items()}
    missing = np.stack([np.isnan(v).all(-1) for v in values.values()])  # (M, N, T)
    # A bin is padding when every modality is NaN there and at every later bin.
    pad_all = missing.all(0)
    padding = np.flip(np.cumprod(np.flip(pad_all, -1), -1), -1).astype(bool)
    mask = ~padding
    if (mask.sum(-1) < 2).any():
        bad = int(np.nonzero(mask.sum(-1) < 2)[0][0])
        raise InputDataError(f"trial {bad} has fewer than 2 observed time bins.")
    for name, v in values.items():
        bad = ~np.isfinite(v) & mask[..., None]
        if bad.any():
            trial, t, _ = np.argwhere(bad)[0]
            raise InputDataError(
                f"variable {modalities[name]!r} (modality {name!r}) has NaN or infinite values "
                f"(first at trial {trial}, time bin {t}). Only trailing bins that are NaN in "
                "every modality are allowed (they mark shorter trials); impute or drop the "
                "rest.")
        values[name] = np.where(mask[..., None], v, 0.0)
    return values, mask.astype(np.float32)


def affine_r2(inferred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """R^2 of the best affine map from ``inferred`` latents to each ``target`` column.

    Parameters
    ----------
    inferred
        ``(..., K)`` latents (all leading axes are samples).
    target
        ``(...,)`` or ``(..., P)`` true values on the same samples.

    Returns
    -------
    numpy.ndarray
        R^2 per target column (a float for a 1-d target).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(100, 2))
    >>> round(affine_r2(x, 3 * x[:, 0] - 1), 6)
    1.0
    """
    x = np.asarray(inferred, float).reshape(-1, np.shape(inferred)[-1])
    y = np.asarray(target, float)
    scalar = y.shape == np.shape(inferred)[:-1]
    y = y.reshape(x.shape[0], -1)
    ok = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    x, y = x[ok], y[ok]
    design = np.column_stack([x, np.ones(len(x))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = ((y - design @ coef) ** 2).sum(0)
    r2 = 1.0 - resid / ((y - y.mean(0)) ** 2).sum(0)
    return float(r2[0]) if scalar else r2


# --------------------------------------------------------------------------- estimator


def _mlp(n_in: int, n_out: int, width: int, depth: int, key) -> eqx.nn.MLP:
    return eqx.nn.MLP(n_in, n_out, width, depth, activation=jax.nn.elu, dtype=DTYPE, key=key)


class MMGPVAE(NeurodataModel):
    """Multi-modal Gaussian-process VAE with shared and modality-private GP latents.

    Parameters
    ----------
    n_shared
        Number of latents shared by all modalities.
    n_private
        Modality name to its number of private latents (default ``{"neural": 1,
        "behavior": 1}``).
    likelihoods
        Modality name to ``"poisson"`` (counts) or ``"gaussian"`` (default: neural Poisson,
        others Gaussian).
    decoder
        Modality name to ``"linear"`` or ``"mlp"`` (default linear; Poisson needs linear, so
        that the expected log-likelihood stays in closed form and loadings stay
        interpretable).
    modalities
        Modality name to the dataset variable holding it (default ``{"neural": "activity",
        "behavior": "behavior"}``); each variable is ``(trial, time, feature)``.
    length_scale_init
        Initial GP length scale in seconds, one number or one per latent (shared first, then
        each modality's private latents in the order of ``modalities``). Default: a sixth of
        the longest trial.
    learn_length_scale
        Learn one length scale per latent (otherwise keep the initial values).
    fourier
        Fourier-domain prior (default); ``False`` gives the time-domain GP-VAE baseline.
    combine
        How the modalities inform the shared latents: ``"poe"`` (product of Gaussian experts:
        the modalities' pseudo-observation precisions add; default) or ``"average"`` (the
        reference code's average of the per-modality posteriors' means and log-variances).
        On the paper's simulation (3 seeds) the product of experts recovered the shared
        latent slightly better (held-out R^2 0.982 vs 0.975).
    min_length_scale
        Shortest length scale (seconds) the Fourier basis must represent; frequencies whose
        prior variance at this length scale is below ``1 / condthresh`` of the largest are
        dropped. Default: half the smallest initial length scale. Learned length scales far
        below it cannot be represented.
    padding
        Bins added to each trial to form the circular domain, in multiples of the largest
        initial length scale (3 keeps the wrap-around correlation below 1.2%).
    condthresh
        Condition-number threshold of the Fourier prior.
    jitter
        Prior variance added to every coefficient (white noise of that variance in time).
    hidden_size, depth
        Width and number of hidden layers of the encoder and MLP-decoder networks (ELU).
    n_samples
        Monte-Carlo samples for the MLP decoders' expected log-likelihood.
    modality_dropout
        Probability that, for a training trial, the posterior is inferred from all
        modalities but one (chosen at random) while all are reconstructed (MVAE-style
        subsampling, Wu & Goodman 2018). Any posterior gives a lower bound, so the objective
        stays an ELBO; it keeps one modality's encoder from taking over the shared latents
        and trains the cross-modal predictions of :meth:`predict_modality`. The held-out
        ELBO used for early stopping uses every modality.
    learning_rate, clip_norm
        Adam step size and global gradient-norm clip. ``learning_rate`` may be a mapping
        from modality name to the step size of that modality's encoder and decoder (the
        reference trains its image network about 50 times slower than the spike decoder);
        modalities left out and the length scales use the ``"default"`` entry (3e-3 if
        absent).
    batch_size, max_epochs, patience
        Trials per minibatch, epoch limit, and epochs without improvement of the held-out
        ELBO before stopping.
    validation_fraction
        Fraction of training trials held out for early stopping (0 disables it).
    random_state
        Seed of initialisation, minibatch order, the held-out split and the samples.
    progress
        Show a tqdm progress bar.

    Attributes
    ----------
    length_scales_ : dict of numpy.ndarray
        Learned length scales (seconds) per latent group.
    history_ : dict
        ``"train"`` and ``"validation"`` ELBO per bin for each epoch.

    Notes
    -----
    ``predict_modality`` takes the source modality as ``source=``: the paper's ``from`` is a
    reserved word in Python.

    Examples
    --------
    >>> from neurodata.models.gpvae import MMGPVAE, simulate
    >>> ds, truth = simulate(n_trials=20, n_time=20, n_neurons=10, seed=0)
    >>> model = MMGPVAE(1, {"neural": 1, "image": 1},
    ...                 modalities={"neural": "activity", "image": "image"},
    ...                 max_epochs=2, progress=False).fit(ds)
    >>> model.transform(ds)["shared_mean"].dims
    ('trial', 'time', 'shared_latent')
    """

    def __init__(
        self,
        n_shared: int = 1,
        n_private: Mapping[str, int] | None = None,
        likelihoods: Mapping[str, str] | None = None,
        decoder: Mapping[str, str] | None = None,
        modalities: Mapping[str, str] | None = None,
        length_scale_init: float | Sequence[float] | None = None,
        learn_length_scale: bool = True,
        fourier: bool = True,
        combine: str = "poe",
        min_length_scale: float | None = None,
        padding: float = 3.0,
        condthresh: float = 1e8,
        jitter: float = 1e-2,
        hidden_size: int = 64,
        depth: int = 2,
        n_samples: int = 1,
        modality_dropout: float = 0.5,
        learning_rate: float = 3e-3,
        clip_norm: float = 1.0,
        batch_size: int = 20,
        max_epochs: int = 300,
        patience: int = 30,
        validation_fraction: float = 0.1,
        random_state: int = 0,
        progress: bool = True,
    ) -> None:
        self.n_shared = n_shared
        self.n_private = n_private
        self.likelihoods = likelihoods
        self.decoder = decoder
        self.modalities = modalities
        self.length_scale_init = length_scale_init
        self.learn_length_scale = learn_length_scale
        self.fourier = fourier
        self.combine = combine
        self.min_length_scale = min_length_scale
        self.padding = padding
        self.condthresh = condthresh
        self.jitter = jitter
        self.hidden_size = hidden_size
        self.depth = depth
        self.n_samples = n_samples
        self.modality_dropout = modality_dropout
        self.learning_rate = learning_rate
        self.clip_norm = clip_norm
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.progress = progress

    # ----------------------------------------------------------------- configuration

    def _config(self, min_length_scale: float = 0.0) -> tuple[dict, Spec]:
        modalities = dict(self.modalities or {"neural": "activity", "behavior": "behavior"})
        if not modalities:
            raise InputDataError("`modalities` is empty; give at least one modality.")
        if "shared" in modalities:
            raise InputDataError("'shared' names the shared latent group; rename that modality.")
        n_private = dict(self.n_private if self.n_private is not None
                         else dict.fromkeys(modalities, 1))
        likelihoods = {m: "poisson" if m == "neural" else "gaussian" for m in modalities}
        likelihoods.update(self.likelihoods or {})
        decoders = dict.fromkeys(modalities, "linear")
        decoders.update(self.decoder or {})
        for label, table in (("n_private", n_private), ("likelihoods", likelihoods),
                             ("decoder", decoders)):
            unknown = set(table) - set(modalities)
            if unknown:
                raise InputDataError(f"`{label}` names {sorted(unknown)}, which are not in "
                                     f"`modalities` ({sorted(modalities)}).")
        for m in modalities:
            if likelihoods[m] not in _LIKELIHOODS:
                raise InputDataError(f"likelihood {likelihoods[m]!r} of {m!r} is not one of "
                                     f"{_LIKELIHOODS}.")
            if decoders[m] not in _DECODERS:
                raise InputDataError(f"decoder {decoders[m]!r} of {m!r} is not one of "
                                     f"{_DECODERS}.")
            if likelihoods[m] == "poisson" and decoders[m] != "linear":
                raise InputDataError(f"modality {m!r}: a Poisson likelihood needs the linear "
                                     "decoder (closed-form expectation); use decoder 'linear'.")
        if self.combine not in ("poe", "average"):
            raise InputDataError(f"combine={self.combine!r}; use 'poe' or 'average'.")
        counts = [int(self.n_shared)] + [int(n_private.get(m, 0)) for m in modalities]
        if min(counts) < 0 or sum(counts) == 0:
            raise InputDataError(f"latent counts {counts} must be >= 0 and not all zero.")
        start, index = int(self.n_shared), []
        for m in modalities:
            k = int(n_private.get(m, 0))
            index.append(tuple(range(self.n_shared)) + tuple(range(start, start + k)))
            start += k
        spec = Spec(tuple(modalities), tuple(likelihoods[m] for m in modalities),
                    tuple(decoders[m] for m in modalities), tuple(index), sum(counts),
                    self.combine, bool(self.fourier), float(self.jitter),
                    float(min_length_scale), int(self.n_samples))
        return modalities, spec

    def _groups(self) -> dict[str, list[int]]:
        groups = {"shared": list(range(self.n_shared))}
        for name, idx in zip(self.spec_.modalities, self.spec_.latent_index, strict=True):
            groups[name] = [i for i in idx if i >= self.n_shared]
        return groups

    def _init_params(self, spec: Spec, n_features: Mapping[str, int], key) -> dict:
        keys = jax.random.split(key, 2 * len(spec.modalities))
        encoders, decoders = {}, {}
        for i, (name, lik, dec, idx) in enumerate(zip(spec.modalities, spec.likelihoods,
                                                      spec.decoders, spec.latent_index,
                                                      strict=True)):
            d, k = int(n_features[name]), len(idx)
            encoders[name] = _mlp(d, 2 * k, self.hidden_size, self.depth, keys[2 * i])
            if dec == "mlp":
                decoders[name] = {"mlp": _mlp(k, d, self.hidden_size, self.depth, keys[2 * i + 1]),
                                  "log_noise": jnp.zeros((), DTYPE)}
            else:
                w = 0.1 * jax.random.normal(keys[2 * i + 1], (d, k), DTYPE)
                decoders[name] = {"w": w, "b": jnp.zeros(d, DTYPE)}
                if lik == "gaussian":
                    decoders[name]["log_noise"] = jnp.zeros((), DTYPE)
        return {"encoders": encoders, "decoders": decoders,
                "length_scale_raw": jnp.zeros(spec.n_latents, DTYPE)}

    def _grid(self, n_time: int) -> tuple[jax.Array, jax.Array]:
        """Frequencies (or times) and basis for trials of ``n_time`` bins."""
        if not self.fourier:
            return jnp.arange(n_time, dtype=DTYPE), jnp.eye(n_time, dtype=DTYPE)
        n_circ = n_time + self.pad_bins_
        n_freq = n_frequencies(n_circ, self.min_length_scale_bins_, self.condthresh)
        return (jnp.asarray(angular_frequencies(n_circ, n_freq), DTYPE),
                jnp.asarray(fourier_basis(n_time, n_circ, n_freq), DTYPE))

    # ----------------------------------------------------------------- data

    def _arrays(self, ds: xr.Dataset, names: Sequence[str] | None = None) -> _Batch:
        modalities = self.modalities_ if names is None else {
            m: self.modalities_[m] for m in names}
        values, mask = _load_modalities(ds, modalities)
        inputs, targets = {}, {}
        for name, v in values.items():
            if v.shape[-1] != self.n_features_[name]:
                raise InputDataError(
                    f"variable {modalities[name]!r} (modality {name!r}) has {v.shape[-1]} "
                    f"features; the model was fitted with {self.n_features_[name]}.")
            i = self.spec_.modalities.index(name)
            if self.spec_.likelihoods[i] == "poisson":
                if (v < 0).any() or (np.abs(v - np.round(v)) > 1e-6).any():
                    raise InputDataError(
                        f"variable {modalities[name]!r} (modality {name!r}) has a Poisson "
                        "likelihood but holds negative or non-integer values; give spike "
                        "counts or set likelihoods={%r: 'gaussian'}." % name)
                targets[name] = v
                inputs[name] = np.log1p(v)
            else:
                targets[name] = (v - self.offset_[name]) / self.scale_[name] * mask[..., None]
                inputs[name] = targets[name]
        cast = {k: jnp.asarray(v, DTYPE) for k, v in inputs.items()}
        return _Batch(cast, {k: jnp.asarray(v, DTYPE) for k, v in targets.items()},
                      jnp.asarray(mask, DTYPE))

    def _present(self, batch: _Batch) -> tuple[bool, ...]:
        return tuple(m in batch.inputs for m in self.spec_.modalities)

    def _fill(self, batch: _Batch) -> _Batch:
        """Zero inputs for absent modalities (their encoders are skipped)."""
        n, t = batch.mask.shape
        inputs = {m: batch.inputs.get(m, jnp.zeros((n, t, self.n_features_[m]), DTYPE))
                  for m in self.spec_.modalities}
        return batch._replace(inputs=inputs)

    # ----------------------------------------------------------------- fit

    def fit(self, ds: xr.Dataset, y: Any = None) -> MMGPVAE:
        """Fit encoders, decoders and length scales by maximising the ELBO with Adam.

        Parameters
        ----------
        ds
            Trial dataset holding every modality as ``(trial, time, feature)``.
        y
            Ignored (scikit-learn convention).

        Returns
        -------
        MMGPVAE
            ``self``, fitted.
        """
        return self._fit(ds)

    @single_threaded_blas  # the Cholesky gradients: see neurodata.models._jax.blas
    def _fit(self, ds: xr.Dataset, callback: Any = None) -> MMGPVAE:
        """:meth:`fit` calling ``callback(epoch, params)`` after every epoch (benchmarks).

        Training stops when the callback returns True.
        """
        from tqdm.auto import tqdm

        modalities, spec = self._config()
        values, mask = _load_modalities(ds, modalities)
        n_trials, n_time = mask.shape
        if n_trials < 2:
            raise InputDataError(f"the dataset has {n_trials} trial(s); fit needs at least 2.")
        times = np.asarray(ds["time"].values, float)
        dt = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
        self.modalities_, self.spec_, self.bin_size_ = modalities, spec, dt
        self.n_features_ = {m: int(v.shape[-1]) for m, v in values.items()}
        self.feature_dims_ = {m: str(ds[var].dims[2]) for m, var in modalities.items()}
        # Labels of the feature axes (e.g. behaviour channel names) for predictions of a
        # modality absent from the input.
        self.feature_labels_ = {m: np.asarray(ds[var][dim].values)
                                for (m, var), dim in zip(modalities.items(),
                                                         self.feature_dims_.values(),
                                                         strict=True)
                                if dim in ds[var].coords}
        self.offset_, self.scale_ = {}, {}
        for m, v in values.items():
            if spec.likelihoods[spec.modalities.index(m)] == "gaussian":
                obs = v[mask.astype(bool)]
                self.offset_[m] = obs.mean(0)
                # Floor: near-constant features (image corners) must not be blown up.
                std = obs.std(0)
                floor = np.median(std) if np.median(std) > 0 else 1.0
                self.scale_[m] = np.maximum(std, floor)
        ell0 = np.broadcast_to(np.asarray(
            self.length_scale_init if self.length_scale_init is not None
            else n_time * dt / 6.0, float), (spec.n_latents,)) / dt
        if (ell0 <= 0).any():
            raise InputDataError(f"length_scale_init={self.length_scale_init!r} must be > 0.")
        min_ell = (self.min_length_scale / dt if self.min_length_scale is not None
                   else 0.5 * ell0.min())
        if (ell0 <= min_ell).any():
            raise InputDataError(
                f"length_scale_init={self.length_scale_init!r} must exceed min_length_scale="
                f"{min_ell * dt:g} s (the floor of the learned length scales).")
        self.min_length_scale_bins_ = float(min_ell)
        spec = self.spec_ = spec._replace(min_length_scale=float(min_ell))
        self.pad_bins_ = int(math.ceil(self.padding * ell0.max()))

        batch = self._arrays(ds)
        key = jax.random.PRNGKey(self.random_state)
        key, init_key = jax.random.split(key)
        params = self._init_params(spec, self.n_features_, init_key)
        params["length_scale_raw"] = jnp.log(jnp.asarray(ell0 - min_ell, DTYPE))
        for m in spec.modalities:
            i = spec.modalities.index(m)
            if spec.likelihoods[i] == "poisson":
                rate = (values[m] * mask[..., None]).sum((0, 1)) / mask.sum()
                params["decoders"][m]["b"] = jnp.log(jnp.asarray(rate + 1e-3, DTYPE))

        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(n_trials)
        n_val = int(round(self.validation_fraction * n_trials)) if n_trials >= 10 else 0
        val_idx, train_idx = order[:n_val], order[n_val:]
        grid, basis = self._grid(n_time)

        def take(idx):
            return jax.tree_util.tree_map(lambda a: a[idx], batch)

        train, val = take(train_idx), take(val_idx) if n_val else None
        dyn, static = eqx.partition(params, eqx.is_inexact_array)
        optimizer = optax.chain(optax.clip_by_global_norm(self.clip_norm),
                                self._adam(dyn))
        opt_state = optimizer.init(dyn)
        epoch_fn, elbo_fn = _make_train_fns(static, spec, grid, basis, optimizer,
                                            int(self.batch_size), len(train_idx),
                                            bool(self.learn_length_scale),
                                            float(self.modality_dropout))

        history = {"train": [], "validation": []}
        best, best_dyn, since = -np.inf, dyn, 0
        bar = tqdm(range(self.max_epochs), desc="MM-GPVAE", disable=not self.progress)
        try:
            for epoch in bar:
                key, ekey, vkey = jax.random.split(key, 3)
                dyn, opt_state, train_elbo = epoch_fn(dyn, opt_state, train, ekey)
                history["train"].append(float(train_elbo))
                if val is not None:
                    score = float(elbo_fn(dyn, val, vkey))
                    history["validation"].append(score)
                else:
                    score = float(train_elbo)
                if not np.isfinite(score):
                    raise InputDataError(
                        "the ELBO became non-finite during training; lower learning_rate or "
                        "check the data scale.")
                if score > best:
                    best, best_dyn, since = score, dyn, 0
                else:
                    since += 1
                bar.set_postfix(elbo=f"{score:.4f}")
                if callback is not None and callback(epoch, eqx.combine(dyn, static)):
                    break
                if val is not None and since >= self.patience:
                    break
        except KeyboardInterrupt:  # keep the best parameters so far
            pass
        self.weights_ = [np.asarray(a) for a in jax.tree_util.tree_leaves(best_dyn)]
        self.history_ = {k: np.asarray(v, float) for k, v in history.items()}
        self.params_ = eqx.combine(best_dyn, static)
        ell = np.asarray(length_scales(self.params_, spec), float) * dt
        self.length_scales_ = {g: ell[idx] for g, idx in self._groups().items()}
        return self

    def _adam(self, dyn: dict) -> optax.GradientTransformation:
        """Adam with one step size per modality's networks."""
        if not isinstance(self.learning_rate, Mapping):
            return optax.adam(self.learning_rate)
        rates = dict(self.learning_rate)
        default = rates.pop("default", 3e-3)
        unknown = set(rates) - set(self.spec_.modalities)
        if unknown:
            raise InputDataError(f"learning_rate names {sorted(unknown)}, which are not "
                                 f"modalities ({list(self.spec_.modalities)}).")
        labels = {part: {m: jax.tree_util.tree_map(
            lambda _, m=m: m if m in rates else "default", v) for m, v in dyn[part].items()}
            for part in ("encoders", "decoders")}
        labels["length_scale_raw"] = "default"
        return optax.multi_transform(
            {"default": optax.adam(default), **{m: optax.adam(r) for m, r in rates.items()}},
            labels)

    def _after_load(self) -> None:
        modalities, spec = self._config(self.min_length_scale_bins_)
        self.modalities_, self.spec_ = modalities, spec
        self.n_features_ = {k: int(v) for k, v in self.n_features_.items()}
        template = self._init_params(spec, self.n_features_, jax.random.PRNGKey(0))
        dyn, static = eqx.partition(template, eqx.is_inexact_array)
        treedef = jax.tree_util.tree_structure(dyn)
        leaves = [jnp.asarray(w, DTYPE) for w in self.weights_]
        self.params_ = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)

    def _fitted_attributes(self) -> dict[str, Any]:
        # The equinox pytree and the static spec are rebuilt from weights_ in _after_load.
        skip = {"params_", "spec_", "modalities_"}
        return {k: v for k, v in super()._fitted_attributes().items() if k not in skip}

    # ----------------------------------------------------------------- inference

    def _posteriors(self, batch: _Batch, pad_to: int | None = None) -> Posterior:
        """Posteriors of all trials, each under the prior built for its own length.

        With ``pad_to``, each group of equal-length trials is padded (by repeating its last
        trial) to ``pad_to`` trials, so that every minibatch reuses one compiled function.
        """
        present = self._present(batch)
        full = self._fill(batch)
        n_time = full.mask.shape[1]
        lengths = np.asarray(full.mask.sum(-1)).astype(int)
        parts, order = [], []
        for length in np.unique(lengths):
            idx = np.nonzero(lengths == length)[0]
            rows = idx if pad_to is None else np.pad(idx, (0, max(pad_to - len(idx), 0)),
                                                     mode="edge")
            grid, basis = self._grid(int(length))
            inputs = {m: v[rows, :length] for m, v in full.inputs.items()}
            post = _posterior_batch(self.params_, self.spec_, grid, basis, inputs,
                                    full.mask[rows, :length], present)
            pad = ((0, 0), (0, n_time - length), (0, 0))
            parts.append(Posterior(None, None, jnp.pad(post.mean[:len(idx)], pad),
                                   jnp.pad(post.var[:len(idx)], pad, constant_values=1.0),
                                   post.kl[:len(idx)]))
            order.append(idx)
        inverse = np.argsort(np.concatenate(order))
        return Posterior(None, None, *(jnp.concatenate([getattr(p, f) for p in parts])[inverse]
                                       for f in ("mean", "var", "kl")))

    def _time_coords(self, ds: xr.Dataset) -> dict:
        return {c: ds.coords[c] for c in ds.coords
                if set(ds.coords[c].dims) <= {"trial", "time"}}

    @staticmethod
    def _chunks(ds: xr.Dataset, batch_size: int | None) -> list[xr.Dataset]:
        """Consecutive blocks of ``batch_size`` trials (the whole dataset when None)."""
        if batch_size is None:
            return [ds]
        if int(batch_size) != batch_size or batch_size < 1:
            raise InputDataError(f"batch_size={batch_size!r}; give a positive integer number "
                                 "of trials, or None for all trials at once.")
        n = ds.sizes.get("trial", 0)
        return [ds.isel(trial=slice(i, i + int(batch_size))) for i in range(0, max(n, 1),
                                                                             int(batch_size))]

    def transform(self, ds: xr.Dataset, batch_size: int | None = None) -> xr.Dataset:
        """Posterior means and variances of each latent group, in time.

        Parameters
        ----------
        ds
            Trial dataset with the modalities the model was fitted on (any subset: shared
            latents are then inferred from the modalities present, private latents of absent
            modalities fall back to the prior).
        batch_size
            Trials converted and inferred at a time (None: all at once). Memory then grows
            with ``batch_size`` instead of the number of trials (apart from the output), and
            a lazily loaded dataset is read block by block. The result does not depend on it.

        Returns
        -------
        xarray.Dataset
            ``<group>_mean`` and ``<group>_var`` ``(trial, time, <group>_latent)`` for the
            groups ``shared`` and each modality name; padded bins are NaN.
        """
        self._check_fitted()
        names = [m for m in self.modalities_ if self.modalities_[m] in ds.data_vars]
        if not names:
            raise InputDataError(
                f"the dataset holds none of the model's modality variables "
                f"{sorted(self.modalities_.values())}.")
        groups = {g: idx for g, idx in self._groups().items() if idx}
        parts = []
        for chunk in self._chunks(ds, batch_size):
            batch = self._arrays(chunk, names)
            post = self._posteriors(batch, batch_size)
            mask = np.asarray(batch.mask, bool)[..., None]
            parts.append({f"{g}_{stat}": np.where(mask, np.asarray(arr, float)[..., idx], np.nan)
                          for g, idx in groups.items()
                          for stat, arr in (("mean", post.mean), ("var", post.var))})
        out = {f"{g}_{stat}": (("trial", "time", f"{g}_latent"),
                               np.concatenate([p[f"{g}_{stat}"] for p in parts]))
               for g in groups for stat in ("mean", "var")}
        return xr.Dataset(out, coords=self._time_coords(ds),
                          attrs={"model": "MMGPVAE", "fourier": int(self.fourier)})

    def _decode(self, ds: xr.Dataset, sources: Sequence[str], targets: Sequence[str],
                batch_size: int | None = None) -> xr.Dataset:
        parts = []
        for chunk in self._chunks(ds, batch_size):
            batch = self._arrays(chunk, sources)
            post = self._posteriors(batch, batch_size)
            mask = np.asarray(batch.mask, bool)[..., None]
            preds = {}
            for name in targets:
                pred = np.asarray(jax.vmap(lambda p, n=name: decode_mean(
                    self.params_, self.spec_, n, p))(post), float)
                if name in self.offset_:
                    pred = pred * self.scale_[name] + self.offset_[name]
                preds[name] = np.where(mask, pred, np.nan)
            parts.append(preds)
        out, coords = {}, self._time_coords(ds)
        for name in targets:
            var = self.modalities_[name]
            feature_dim = self.feature_dims_[name]
            if var in ds.data_vars:
                ref = ds[var]
                coords.update({c: ref.coords[c] for c in ref.coords
                               if ref.coords[c].dims == (feature_dim,)})
            elif name in self.feature_labels_:
                coords[feature_dim] = (feature_dim, self.feature_labels_[name])
            out[var] = (("trial", "time", feature_dim),
                        np.concatenate([p[name] for p in parts]))
        return xr.Dataset(out, coords=coords)

    def reconstruct(self, ds: xr.Dataset, batch_size: int | None = None) -> xr.Dataset:
        """Reconstruct every modality from the posterior given all modalities.

        Parameters
        ----------
        ds
            Trial dataset holding every modality.
        batch_size
            Trials processed at a time (see :meth:`transform`).

        Returns
        -------
        xarray.Dataset
            One variable per modality under its dataset name: expected counts per bin for
            Poisson modalities, predicted means (data units) for Gaussian ones.
        """
        self._check_fitted()
        names = list(self.modalities_)
        return self._decode(ds, names, names, batch_size)

    def predict_modality(self, ds: xr.Dataset, source: str = "neural",
                         target: str | Sequence[str] | None = None,
                         batch_size: int | None = None) -> xr.Dataset:
        """Predict modalities from one source modality through the shared latents.

        The paper writes this ``from="neural"``; ``from`` is a reserved word in Python, hence
        ``source``. The target's private latents have no evidence and stay at their prior.

        Parameters
        ----------
        ds
            Trial dataset holding at least the ``source`` modality's variable.
        source
            Modality the latents are inferred from.
        target
            Modality or modalities to predict (default: every other modality).
        batch_size
            Trials processed at a time (see :meth:`transform`).

        Returns
        -------
        xarray.Dataset
            Predictions under the targets' dataset variable names (see :meth:`reconstruct`).
        """
        self._check_fitted()
        if source not in self.modalities_:
            raise InputDataError(f"source={source!r} is not a modality of this model "
                                 f"({sorted(self.modalities_)}).")
        targets = ([m for m in self.modalities_ if m != source] if target is None
                   else [target] if isinstance(target, str) else list(target))
        unknown = set(targets) - set(self.modalities_)
        if unknown:
            raise InputDataError(f"target {sorted(unknown)} is not a modality of this model "
                                 f"({sorted(self.modalities_)}).")
        return self._decode(ds, [source], targets, batch_size)

    def score(self, ds: xr.Dataset, y: Any = None) -> float:
        """ELBO per observed time bin on ``ds`` (higher is better; one posterior sample)."""
        elbo_fn, dyn, batch = self._elbo_fn(ds)
        return float(elbo_fn(dyn, batch, jax.random.PRNGKey(self.random_state)))

    def _elbo_fn(self, ds: xr.Dataset) -> tuple[Any, dict, _Batch]:
        """The ELBO per bin on ``ds`` as a function of the trainable parameters.

        Returns ``(elbo_fn, dyn, batch)`` with ``elbo_fn(dyn, batch, key)`` the ELBO (for
        :meth:`score` and the gradient checks of the benchmark and tests).
        """
        self._check_fitted()
        batch = self._arrays(ds)
        grid, basis = self._grid(batch.mask.shape[1])
        dyn, static = eqx.partition(self.params_, eqx.is_inexact_array)
        _, elbo_fn = _make_train_fns(static, self.spec_, grid, basis, None, 1, 1,
                                     bool(self.learn_length_scale))
        return elbo_fn, dyn, batch


@eqx.filter_jit
def _posterior_batch(params, spec, grid, basis, inputs, mask, present):
    prior = _batch_prior(params, spec, grid)
    return jax.vmap(lambda x, m: posterior(params, spec, grid, basis, x, m, present,
                                           prior=prior))(inputs, mask)


def _batch_prior(params, spec: Spec, grid) -> TimePrior | None:
    """The time-domain prior, factorised once for all trials of a batch (None: Fourier)."""
    if spec.fourier:
        return None
    return time_prior(grid, length_scales(params, spec), spec.jitter)


def _make_train_fns(static, spec: Spec, grid, basis, optimizer, batch_size: int, n_train: int,
                    learn_length_scale: bool, modality_dropout: float = 0.0):
    """Jitted epoch (scan over minibatches) and held-out ELBO for fixed structure."""
    n_mod = len(spec.modalities)

    def batch_elbo(dyn, batch: _Batch, key, dropout: float):
        params = eqx.combine(dyn, static)
        if not learn_length_scale:  # zero gradient: Adam then leaves it unchanged
            params["length_scale_raw"] = jax.lax.stop_gradient(params["length_scale_raw"])
        n = batch.mask.shape[0]
        key, drop_key, which_key = jax.random.split(key, 3)
        keys = jax.random.split(key, n)
        # Modality dropout (MVAE-style subsampling): a trial's posterior sometimes comes from
        # all modalities but one, so that every encoder alone must explain the others.
        dropped = jax.random.uniform(drop_key, (n,)) < (dropout if n_mod > 1 else 0.0)
        onehot = jax.nn.one_hot(jax.random.randint(which_key, (n,), 0, n_mod), n_mod)
        keep = jnp.where(dropped[:, None], 1.0 - onehot, 1.0).astype(DTYPE)
        prior = _batch_prior(params, spec, grid)
        elbos = jax.vmap(lambda x, y, m, k, kp: trial_elbo(params, spec, grid, basis, x, y, m,
                                                           k, kp, prior))(
            batch.inputs, batch.targets, batch.mask, keys, keep)
        return elbos, batch.mask.sum(-1)

    @jax.jit
    def elbo_fn(dyn, batch, key):
        elbos, bins = batch_elbo(dyn, batch, key, 0.0)
        return elbos.sum() / bins.sum()

    n_batches = max(1, math.ceil(n_train / batch_size))

    def loss(dyn, batch, weight, key):
        elbos, bins = batch_elbo(dyn, batch, key, modality_dropout)
        return -(weight * elbos).sum() / jnp.maximum((weight * bins).sum(), 1.0)

    @jax.jit
    def epoch_fn(dyn, opt_state, data: _Batch, key):
        perm_key, key = jax.random.split(key)
        perm = jax.random.permutation(perm_key, n_train)
        pad = n_batches * batch_size - n_train
        idx = jnp.concatenate([perm, perm[:pad]]).reshape(n_batches, batch_size)
        weight = jnp.concatenate([jnp.ones(n_train), jnp.zeros(pad)]).reshape(
            n_batches, batch_size).astype(DTYPE)

        def step(carry, inp):
            dyn, opt_state = carry
            i, w, k = inp
            batch = jax.tree_util.tree_map(lambda a: a[i], data)
            value, grads = jax.value_and_grad(loss)(dyn, batch, w, k)
            updates, opt_state = optimizer.update(grads, opt_state, dyn)
            return (eqx.apply_updates(dyn, updates), opt_state), -value

        keys = jax.random.split(key, n_batches)
        (dyn, opt_state), elbos = jax.lax.scan(step, (dyn, opt_state), (idx, weight, keys))
        return dyn, opt_state, elbos.mean()

    return epoch_fn, elbo_fn


# --------------------------------------------------------------------------- simulation


def _gp_samples(rng: np.random.Generator, n: int, n_time: int, length_scale: float,
                variance: float) -> np.ndarray:
    t = np.arange(n_time, dtype=float)
    kern = variance * np.exp(-0.5 * ((t[:, None] - t[None, :]) / length_scale) ** 2)
    chol = np.linalg.cholesky(kern + 1e-6 * np.eye(n_time))
    return rng.standard_normal((n, n_time)) @ chol.T


def _warp(images: np.ndarray, angle: np.ndarray, zoom: np.ndarray) -> np.ndarray:
    """Rotate by ``angle`` (radians) and scale by ``zoom`` about the centre, bilinear."""
    from scipy.ndimage import map_coordinates

    size = images.shape[-1]
    centre = (size - 1) / 2
    yy, xx = np.meshgrid(np.arange(size) - centre, np.arange(size) - centre, indexing="ij")
    out = np.empty_like(images)
    for i, (img, a, z) in enumerate(zip(images, angle, zoom, strict=True)):
        cos, sin = np.cos(a) / z, np.sin(a) / z
        src_y = cos * yy - sin * xx + centre
        src_x = sin * yy + cos * xx + centre
        out[i] = map_coordinates(img, [src_y, src_x], order=1, mode="constant")
    return out


def simulate(
    n_trials: int = 300,
    n_time: int = 60,
    n_neurons: int = 100,
    length_scale: float = 10.0,
    bin_size: float = 0.05,
    image_size: int = 12,
    digit_per: str = "frame",
    seed: int = 0,
) -> tuple[xr.Dataset, xr.Dataset]:
    """The MM-GPVAE paper's simulation: spikes and rotating, zooming digit images.

    Three RBF GPs per trial (length scale ``length_scale`` bins, variances 0.3, 0.5, 0.8):
    GP1 (shared) is the image's rotation angle (``GP1 * 120`` degrees) and an input to the
    neurons; GP2 drives only the neurons; GP3 sets only the zoom (``exp(0.3 GP3)``; the
    reference's ``|GP3|`` is not monotone, which makes the affine R^2 meaningless). Counts are
    Poisson with rates ``exp(W [GP1; GP2] + b)``, ``W ~ 1.5 U(-1, 1)``, ``b ~ 0.5 U(-1, 1)``.
    Each frame shows a different handwritten "3" from scikit-learn's digits (8x8, padded to
    ``image_size``), so only rotation and zoom vary smoothly.

    Parameters
    ----------
    n_trials, n_time, n_neurons
        Sizes.
    length_scale
        GP length scale in bins.
    bin_size
        Bin width in seconds (sets the ``time`` coordinate).
    image_size
        Side of the square images (>= 8).
    digit_per
        ``"frame"``: each frame shows a different "3" (the reference protocol; the exemplar
        changes are noise no smooth latent can explain); ``"trial"``: one "3" per trial.
    seed
        Seed of the generator.

    Returns
    -------
    ds
        ``activity(trial, time, neuron)`` counts and ``image(trial, time, pixel)`` in [0, 1].
    truth
        ``shared``, ``neural``, ``image`` (the GP values), ``angle`` (degrees), ``zoom``
        ``(trial, time)`` and ``rate(trial, time, neuron)``.

    Examples
    --------
    >>> ds, truth = simulate(n_trials=4, n_time=10, n_neurons=5)
    >>> dict(ds.sizes)
    {'trial': 4, 'time': 10, 'neuron': 5, 'pixel': 144}
    """
    from sklearn.datasets import load_digits

    from neurodata.data import from_arrays

    if image_size < 8:
        raise InputDataError(f"image_size={image_size}; it must be at least 8 (the digits).")
    rng = np.random.default_rng(seed)
    gp1, gp2, gp3 = (_gp_samples(rng, n_trials, n_time, length_scale, v) for v in (0.3, 0.5, 0.8))
    w = 1.5 * rng.uniform(-1, 1, (n_neurons, 2))
    b = 0.5 * rng.uniform(-1, 1, n_neurons)
    rate = np.exp(np.stack([gp1, gp2], -1) @ w.T + b)
    counts = rng.poisson(rate)

    digits = load_digits()
    threes = digits.images[digits.target == 3] / 16.0
    lo = (image_size - 8) // 2
    canvas = np.zeros((len(threes), image_size, image_size))
    canvas[:, lo:lo + 8, lo:lo + 8] = threes
    if digit_per not in ("frame", "trial"):
        raise InputDataError(f"digit_per={digit_per!r}; use 'frame' or 'trial'.")
    pick = rng.integers(0, len(threes), n_trials * n_time if digit_per == "frame" else n_trials)
    if digit_per == "trial":
        pick = np.repeat(pick, n_time)
    angle = gp1 * 120.0
    zoom = np.exp(0.3 * gp3)
    frames = _warp(canvas[pick], np.deg2rad(angle).ravel(), zoom.ravel())
    images = frames.reshape(n_trials, n_time, image_size * image_size)

    ds = from_arrays(counts, sampling_rate=1.0 / bin_size, attrs={"source": "gpvae.simulate"})
    ds["image"] = (("trial", "time", "pixel"), images, {"units": "intensity"})
    truth = xr.Dataset(
        {"shared": (("trial", "time"), gp1), "neural": (("trial", "time"), gp2),
         "image": (("trial", "time"), gp3), "angle": (("trial", "time"), angle),
         "zoom": (("trial", "time"), zoom),
         "rate": (("trial", "time", "neuron"), rate)},
        coords={"trial": ds["trial"], "time": ds["time"]})
    return ds, truth
