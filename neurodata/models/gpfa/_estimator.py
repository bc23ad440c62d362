"""The GPFA estimator: scikit-learn contract, xarray in and out."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from sklearn.decomposition import FactorAnalysis

from neurodata.data import from_arrays, validate
from neurodata.errors import InputDataError, SchemaError
from neurodata.models._base import NeurodataModel
from neurodata.models._jax.blas import one_blas_thread
from neurodata.models._jax.loop import iterate, make_chunk_runner
from neurodata.models.gpfa import _core as core

_CUT_HINT = ("cut the recording into trials first, e.g. "
             "neurodata.preprocess.cut_windows(ds, 1.0) for 1 s windows or "
             "neurodata.preprocess.cut_trials(ds, events, window=(t0, t1)).")


class _Trials:
    """Trial data converted once: values ``(trial, time, neuron)``, lengths, buckets."""

    def __init__(self, values: np.ndarray, lengths: np.ndarray):
        self.values = values
        self.lengths = lengths
        self.groups = {int(T): np.flatnonzero(lengths == T) for T in np.unique(lengths)}

    def buckets(self) -> list[core.Bucket]:
        return [core.make_bucket(jnp.asarray(self.values[idx, :T]))
                for T, idx in self.groups.items()]

    def pooled(self) -> np.ndarray:
        return np.concatenate([self.values[i, :T] for i, T in enumerate(self.lengths)])


def _trial_lengths(values: np.ndarray) -> np.ndarray:
    """Lengths of trials padded with trailing all-NaN bins; raise on any other NaN."""
    missing = np.isnan(values)
    empty_bin = missing.all(axis=2)
    n_time = values.shape[1]
    lengths = n_time - np.argmin(empty_bin[:, ::-1], axis=1)
    lengths[empty_bin.all(axis=1)] = 0
    inside = np.arange(n_time)[None, :] < lengths[:, None]
    bad = np.flatnonzero((missing & inside[:, :, None]).any(axis=(1, 2)))
    if bad.size:
        raise InputDataError(
            f"activity has NaN inside trials {bad[:10].tolist()}; GPFA takes NaN only as "
            "trailing padding of shorter trials (whole time bins at the end). Drop or "
            "interpolate those values, or cut shorter trials."
        )
    if np.any(lengths == 0):
        raise InputDataError(
            f"trials {np.flatnonzero(lengths == 0)[:10].tolist()} hold no data (all NaN); "
            "drop them with ds.isel(trial=...)."
        )
    return lengths


@functools.lru_cache(maxsize=16)
def _runner(options: core.EMOptions, chunk_size: int):
    return make_chunk_runner(_step_fn(options), chunk_size)


def _step_fn(options: core.EMOptions):
    def step(state):
        params, buckets, var_floor = state
        new, loglik = core.em_step(params, buckets, var_floor, options)
        return (new, buckets, var_floor), loglik
    return step


@jax.jit
def _summary(params: core.GPFAParams, y: jnp.ndarray):
    post = core.posterior(params, core.make_bucket(y))
    return post.mean, post.var, post.loglik


@jax.jit
def _lno(params: core.GPFAParams, y: jnp.ndarray):
    return (core.leave_neuron_out(params, y),)


class GPFA(NeurodataModel):
    """Gaussian-process factor analysis (Yu et al. 2009) fitted by exact EM in JAX.

    ``y_t = C x_t + d + e_t``, ``e_t ~ N(0, diag(R))``, each latent an independent GP in
    time with the unit-variance RBF kernel ``(1 - eps) exp(-(t1 - t2)^2 / (2 tau^2)) +
    eps delta``. The E-step is exact (the posterior covariance by block elimination over the
    latents, shared by the trials of one length, split into time-symmetric and antisymmetric
    halves); ``C, d, R`` have closed-form
    updates with R floored at ``min_var_frac`` times each neuron's variance; timescales are
    updated by Newton steps on ``log gamma = 2 log(bin / tau)`` until the M-step objective
    is minimised (as elephant's L-BFGS-B does). float64 throughout.

    Parameters
    ----------
    n_latents
        Number of latents ``p``.
    bin_size
        Bin width in seconds (default: the spacing of the ``time`` coordinate).
    kernel
        GP kernel; only ``"rbf"``.
    tau_init
        Initial timescale in seconds (all latents).
    gp_noise
        GP noise variance ``eps`` (initial value when ``learn_gp_noise``).
    learn_gp_noise
        Also learn ``eps`` per latent (the reference fixes it; learning it shifts ``tau``).
    learn_timescales
        Learn the timescales (switch off to keep ``tau_init``).
    sqrt_transform
        Take the square root of spike counts (only applied when ``activity.attrs['signal']``
        is ``"spike_count"``; continuous signals such as dF/F are modelled as they are).
    min_var_frac
        Private-variance floor as a fraction of each neuron's variance.
    max_iter
        Maximum number of EM iterations.
    tol
        Stop when the relative change of the log-likelihood falls below ``tol``.
    segment_length
        If set, fit on segments of this many bins cut from the training trials (overlaps
        drawn with ``seed``); inference (``transform``) always uses the full trials.
    batch_size
        Stream the E-step over this many trials at a time (default: all at once). The
        posterior covariance is computed once per trial length and shared; per trial only
        the posterior mean is kept, so the memory is ``O((pT)^2)`` plus ``O(batch_size T q)``
        for the intermediates. ``transform``, ``score`` and ``predict_leave_neuron_out``
        also read ``ds`` batch by batch (a lazily loaded, dask-backed dataset is loaded one
        batch of trials at a time); ``fit`` keeps the training data in memory. Results are
        identical to the unbatched ones (to rounding).
    seed
        Seed for the segment overlaps.
    progress
        Show a progress bar.

    Examples
    --------
    >>> from neurodata.models.gpfa import GPFA, simulate
    >>> ds, _ = simulate(n_trials=10, n_time=15, n_neurons=8, n_latents=2)
    >>> model = GPFA(n_latents=2, max_iter=5, progress=False).fit(ds)
    >>> model.transform(ds)["latents_orth"].dims
    ('trial', 'time', 'latent')
    """

    def __init__(
        self,
        n_latents: int = 3,
        bin_size: float | None = None,
        kernel: str = "rbf",
        tau_init: float = 0.1,
        gp_noise: float = 1e-3,
        learn_gp_noise: bool = False,
        learn_timescales: bool = True,
        sqrt_transform: bool = True,
        min_var_frac: float = 0.01,
        max_iter: int = 500,
        tol: float = 1e-8,
        segment_length: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        progress: bool = True,
    ):
        self.n_latents = n_latents
        self.bin_size = bin_size
        self.kernel = kernel
        self.tau_init = tau_init
        self.gp_noise = gp_noise
        self.learn_gp_noise = learn_gp_noise
        self.learn_timescales = learn_timescales
        self.sqrt_transform = sqrt_transform
        self.min_var_frac = min_var_frac
        self.max_iter = max_iter
        self.tol = tol
        self.segment_length = segment_length
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress

    # ------------------------------------------------------------------ input conversion

    def _activity(self, ds: xr.Dataset, neuron_ids: np.ndarray | None = None) -> _Trials:
        if not isinstance(ds, xr.Dataset):
            raise SchemaError(f"GPFA takes an xarray.Dataset, got {type(ds).__name__}.")
        validate(ds)
        if "activity" not in ds:
            raise SchemaError("ds has no 'activity' variable; GPFA needs "
                              "activity(trial, time, neuron).")
        act = ds["activity"]
        if "trial" not in act.dims:
            raise InputDataError(f"GPFA needs activity(trial, time, neuron) but ds has "
                                 f"activity{act.dims}; {_CUT_HINT}")
        if act.dims != ("trial", "time", "neuron"):
            raise InputDataError(f"activity has dims {act.dims}; GPFA needs "
                                 "(trial, time, neuron).")
        if neuron_ids is not None:
            have = [str(v) for v in act["neuron_id"].values]
            missing = sorted(set(neuron_ids.tolist()) - set(have))
            if missing:
                raise InputDataError(f"ds lacks neurons {missing[:10]} that the model was "
                                     "fitted on; give the same neurons.")
            position = {v: i for i, v in enumerate(have)}
            act = act.isel(neuron=[position[v] for v in neuron_ids.tolist()])
        values = np.asarray(act.values, dtype=np.float64)
        if np.isinf(values).any():
            raise InputDataError("activity contains Inf; GPFA needs finite values.")
        lengths = _trial_lengths(values)
        if self._uses_sqrt(act):
            if np.nanmin(values) < 0:
                raise InputDataError("activity holds negative spike counts; the square root "
                                     "transform needs counts >= 0 (or sqrt_transform=False).")
            values = np.sqrt(values)
        return _Trials(values, lengths)

    def _uses_sqrt(self, act: xr.DataArray) -> bool:
        return bool(self.sqrt_transform and act.attrs.get("signal") == "spike_count")

    def _bin_size(self, ds: xr.Dataset) -> float:
        if self.bin_size is not None:
            return float(self.bin_size)
        t = np.asarray(ds["time"].values, dtype=float)
        if t.size > 1:
            return float(np.median(np.diff(t)))
        if "sampling_rate" in ds.attrs:
            return 1.0 / float(ds.attrs["sampling_rate"])
        raise InputDataError("cannot infer the bin size from a single time bin; pass bin_size.")

    def _segments(self, trials: _Trials) -> _Trials:
        """Cut training trials into equal segments with seeded random overlaps (elephant)."""
        L = int(self.segment_length)
        rng = np.random.default_rng(self.seed)
        segs = []
        for i, T in enumerate(trials.lengths):
            if T < L:
                continue
            n_seg = int(np.ceil(T / L))
            overlap = np.zeros(n_seg, dtype=int)
            if n_seg > 1:
                overlap[1:] = np.cumsum(rng.multinomial(L * n_seg - T, np.ones(n_seg - 1)
                                                        / (n_seg - 1)))
            for s in range(n_seg):
                start = L * s - overlap[s]
                segs.append(trials.values[i, start:start + L])
        if not segs:
            raise InputDataError(f"no training trial is at least segment_length={L} bins "
                                 "long; lower segment_length or pass None.")
        return _Trials(np.stack(segs), np.full(len(segs), L))

    # ------------------------------------------------------------------ fitting

    def fit(self, ds: xr.Dataset, y: Any = None) -> GPFA:
        """Fit by EM on ``activity(trial, time, neuron)``.

        Parameters
        ----------
        ds
            Trial-structured dataset (spike counts or a continuous signal).
        y
            Ignored (scikit-learn signature).

        Returns
        -------
        GPFA
            ``self``, fitted.
        """
        if self.kernel != "rbf":
            raise InputDataError(f"kernel {self.kernel!r} is not supported; use 'rbf'.")
        p = int(self.n_latents)
        if p < 1:
            raise InputDataError(f"n_latents must be >= 1, got {self.n_latents}.")
        trials = self._activity(ds)
        ids = np.asarray([str(v) for v in ds["neuron_id"].values])
        if p >= ids.size:
            raise InputDataError(f"n_latents={p} but ds has only {ids.size} neurons; GPFA "
                                 "needs more neurons than latents.")
        pooled = trials.pooled()
        silent = np.var(pooled, axis=0) <= 1e-12
        if silent.all() or silent.sum() > ids.size - p - 1:
            raise InputDataError(
                f"{int(silent.sum())} of {ids.size} neurons are constant (never fire) in the "
                f"training data, leaving too few for {p} latents; select other neurons.")
        if silent.any():
            warnings.warn(f"GPFA drops {int(silent.sum())} neurons that are constant (never "
                          f"fire) in the training data: {ids[silent].tolist()}", stacklevel=2)
            trials = _Trials(trials.values[:, :, ~silent], trials.lengths)
            pooled = pooled[:, ~silent]
        kept = ids[~silent]
        train = self._segments(trials) if self.segment_length else trials
        pooled_train = train.pooled()
        bin_size = self._bin_size(ds)

        fa = FactorAnalysis(n_components=p, noise_variance_init=np.var(pooled_train, axis=0))
        fa.fit(pooled_train)
        params = core.GPFAParams(
            C=jnp.asarray(fa.components_.T), d=jnp.asarray(pooled_train.mean(axis=0)),
            R=jnp.asarray(fa.noise_variance_),
            log_gamma=jnp.full(p, 2.0 * np.log(bin_size / self.tau_init)),
            eps=jnp.full(p, float(self.gp_noise)))
        var_floor = jnp.asarray(self.min_var_frac * np.var(pooled_train, axis=0, ddof=1))
        with one_blas_thread():  # see neurodata.models._jax.blas
            params, lls, converged = self._em(params, train.buckets(), var_floor)

        self.bin_size_ = bin_size
        self.sqrt_transform_ = self._uses_sqrt(ds["activity"])
        self.dropped_neurons_ = ids[silent]
        self.log_likelihoods_ = lls
        self.n_iter_ = int(lls.size)
        self.converged_ = bool(converged)
        self._store(params, kept)
        return self

    def _em(self, params: core.GPFAParams, buckets, var_floor):
        options = core.EMOptions(learn_timescales=bool(self.learn_timescales),
                                 learn_gp_noise=bool(self.learn_gp_noise),
                                 batch_size=self._batch_size())
        chunk = max(1, min(25, int(self.max_iter)))
        result = iterate(_step_fn(options), (params, buckets, var_floor),
                         max_iter=int(self.max_iter), tol=float(self.tol), chunk_size=chunk,
                         desc="GPFA EM", progress=self.progress,
                         runner=_runner(options, chunk))
        return result.state[0], np.asarray(result.objectives, dtype=float), result.converged

    def _store(self, params: core.GPFAParams, neuron_ids: np.ndarray) -> None:
        p = params.C.shape[1]
        C = np.asarray(params.C)
        latent = np.arange(p)
        neuron = {"neuron_id": ("neuron", neuron_ids)}
        self.loadings_ = xr.DataArray(C, dims=("neuron", "latent"),
                                      coords={**neuron, "latent": latent})
        self.offsets_ = xr.DataArray(np.asarray(params.d), dims="neuron", coords=neuron)
        self.noise_variances_ = xr.DataArray(np.asarray(params.R), dims="neuron", coords=neuron)
        self.timescales_ = xr.DataArray(
            self.bin_size_ * np.exp(-0.5 * np.asarray(params.log_gamma)), dims="latent",
            coords={"latent": latent}, attrs={"units": "s"})
        self.gp_noise_ = xr.DataArray(np.asarray(params.eps), dims="latent",
                                      coords={"latent": latent})
        U, D, Vt = np.linalg.svd(C, full_matrices=False)
        # the orthonormalized latents D V' x are ordered by shared variance
        self.orth_loadings_ = xr.DataArray(U, dims=("neuron", "latent"),
                                           coords={**neuron, "latent": latent})
        self.orth_transform_ = np.diag(D) @ Vt
        total = np.sum(D**2) + np.sum(np.asarray(params.R))
        self.variance_explained_ = xr.DataArray(
            D**2 / total, dims="latent", coords={"latent": latent},
            attrs={"description": "fraction of the model's total variance (shared plus "
                                  "private) carried by each orthonormalized latent"})

    def _params(self) -> core.GPFAParams:
        self._check_fitted()
        return core.GPFAParams(
            C=jnp.asarray(self.loadings_.values), d=jnp.asarray(self.offsets_.values),
            R=jnp.asarray(self.noise_variances_.values),
            log_gamma=jnp.asarray(2.0 * np.log(self.bin_size_ / self.timescales_.values)),
            eps=jnp.asarray(self.gp_noise_.values))

    def _neuron_ids(self) -> np.ndarray:
        return np.asarray([str(v) for v in self.loadings_["neuron_id"].values])

    # ------------------------------------------------------------------ inference

    def _batch_size(self) -> int | None:
        if self.batch_size is None:
            return None
        if int(self.batch_size) < 1:
            raise InputDataError(f"batch_size must be >= 1 or None, got {self.batch_size}.")
        return int(self.batch_size)

    def _stream(self, ds: xr.Dataset, fn):
        """Apply ``fn(params, y_bucket)`` to the trials of ``ds``, ``batch_size`` at a time.

        Yields ``(trial indices, T, outputs as numpy)``. In batches every bucket is padded
        to ``batch_size`` trials so that each trial length compiles once.
        """
        params = self._params()
        ids = self._neuron_ids()
        size = self._batch_size()
        n = ds.sizes.get("trial", 0)
        for start in range(0, max(n, 1), size or max(n, 1)):
            part = ds if size is None else ds.isel(trial=slice(start, start + size))
            trials = self._activity(part, ids)
            if self.sqrt_transform_ != self._uses_sqrt(part["activity"]):
                raise InputDataError("ds's activity signal differs from the one the model was "
                                     "fitted on (spike counts vs a continuous signal).")
            for T, idx in trials.groups.items():
                y = trials.values[idx, :T]
                if size is not None and idx.size < size:
                    y = np.concatenate([y, np.zeros((size - idx.size,) + y.shape[1:])])
                with one_blas_thread():  # see neurodata.models._jax.blas
                    out = jax.block_until_ready(fn(params, jnp.asarray(y)))
                yield start + idx, T, [np.asarray(a)[:idx.size] for a in out]

    def transform(self, ds: xr.Dataset) -> xr.Dataset:
        """Posterior latents of every trial.

        Parameters
        ----------
        ds
            ``activity(trial, time, neuron)`` with the neurons the model was fitted on.

        Returns
        -------
        xarray.Dataset
            ``latents``, ``latents_var`` (posterior mean and variance) and ``latents_orth``
            (orthonormalized, ordered by shared variance), each ``(trial, time, latent)``;
            NaN where a trial is padded. ``behavior`` and trial coordinates are carried over.
        """
        self._check_fitted()
        n, n_time = ds.sizes["trial"], ds.sizes["time"]
        p = self.loadings_.sizes["latent"]
        mean = np.full((n, n_time, p), np.nan)
        var = np.full((n, n_time, p), np.nan)
        for idx, T, (mu, v, _) in self._stream(ds, _summary):
            mean[idx, :T] = mu
            var[idx, :T] = v
        orth = mean @ self.orth_transform_.T
        dims = ("trial", "time", "latent")
        out = xr.Dataset(
            {"latents": (dims, mean), "latents_var": (dims, var), "latents_orth": (dims, orth)},
            coords={"latent": np.arange(p)}, attrs=dict(ds.attrs))
        coords = {k: v for k, v in ds.coords.items()
                  if set(v.dims) <= {"trial", "time"} and k not in out.coords}
        out = out.assign_coords(coords)
        if "behavior" in ds:
            out["behavior"] = ds["behavior"]
        return out

    def score(self, ds: xr.Dataset, y: Any = None) -> float:
        """Marginal log-likelihood ``log p(y)`` of the trials in ``ds`` (summed)."""
        self._check_fitted()
        return float(sum(np.sum(ll) for _, _, (_, _, ll) in self._stream(ds, _summary)))

    def predict_leave_neuron_out(self, ds: xr.Dataset) -> xr.DataArray:
        """Predict each neuron from all the others (exact, no refit).

        Returns
        -------
        xarray.DataArray
            ``(trial, time, neuron)`` predictions in the modelled space (square-rooted
            counts when ``sqrt_transform_``).
        """
        self._check_fitted()
        pred = np.full((ds.sizes["trial"], ds.sizes["time"], self.loadings_.sizes["neuron"]),
                       np.nan)
        for idx, T, (p_lno,) in self._stream(ds, _lno):
            pred[idx, :T] = p_lno
        return xr.DataArray(pred, dims=("trial", "time", "neuron"),
                            coords={"neuron_id": ("neuron", self._neuron_ids())})

    def sample(self, n_trials: int = 1, n_time: int = 20, seed: int = 0) -> xr.Dataset:
        """Draw trials from the fitted model.

        Parameters
        ----------
        n_trials, n_time
            Sizes.
        seed
            Seed of the PRNG key.

        Returns
        -------
        xarray.Dataset
            ``activity(trial, time, neuron)`` in the modelled space (signal ``"rate"``;
            square-rooted counts when the model was fitted on counts) and ``latents``.
        """
        params = self._params()
        key_x, key_y = jax.random.split(jax.random.PRNGKey(seed))
        t = jnp.arange(n_time, dtype=jnp.float64)
        lengths = self.timescales_.values / self.bin_size_
        eye = jnp.eye(n_time)
        chols = [jnp.linalg.cholesky((1 - e) * jnp.exp(-0.5 * (t[:, None] - t) ** 2 / s**2)
                                     + e * eye)
                 for s, e in zip(lengths, np.asarray(params.eps), strict=True)]
        z = jax.random.normal(key_x, (len(chols), n_trials, n_time))
        x = jnp.stack([z[i] @ L.T for i, L in enumerate(chols)], axis=-1)
        noise = jax.random.normal(key_y, (n_trials, n_time, params.C.shape[0]))
        y = x @ params.C.T + params.d + noise * jnp.sqrt(params.R)
        units = "sqrt(count)" if self.sqrt_transform_ else "a.u."
        out = from_arrays(np.asarray(y), 1.0 / self.bin_size_, signal="rate", units=units,
                          neuron_ids=self._neuron_ids(),
                          attrs={"source": "GPFA.sample"})
        out["latents"] = (("trial", "time", "latent"), np.asarray(x))
        return out
