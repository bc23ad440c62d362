"""Bayesian bi-clustering of spiking activity (Wei 2023) by Gibbs sampling in JAX.

Counts ``y_it`` (time bin ``t``, neuron ``i``) are negative binomial with log mean
``delta_i + mu^{(z_i)}_t + c_i^T x^{(z_i)}_t``: each neuron cluster ``k`` has a baseline
trajectory ``mu^{(k)}`` and ``p`` latent factors ``x^{(k)}``. The stacked trajectories of
all clusters follow a switching linear dynamical system whose discrete state ``xi_t`` (the
temporal cluster, shared by all neurons) picks ``(A, b, Q)`` and follows a sticky HDP-HMM
(weak-limit truncation ``max_states``); by default each state has one block per cluster
(``dynamics="shared"``: one ``(A, b, Q)`` for every cluster's latent rows; see
:mod:`neurodata.models.bicluster._core` for why the reference's coupled matrices are not
used). Neuron clusters are a ``max_clusters``-truncated Dirichlet(``gamma / K``) mixture (a
sparse finite mixture: the number of occupied clusters is inferred) or, with
``cluster_prior="mfm"``, a mixture of finite mixtures with a geometric prior on the number
of components. The sweep is in
:mod:`neurodata.models.bicluster._core`; every block draws from its exact conditional (no
history-dependent heuristics, no Laplace approximations): besides the conditional updates
the states get a single-site update with every trajectory integrated out (which moves state
boundaries to where the counts put them), the neuron labels split-merge proposals whose
splits also draw the new cluster's trajectory from its members' counts, each state's
innovations and noise covariance an interweaving rescaling move,
and the dispersions an independence Metropolis-Hastings step at fixed log-rates (the two
moves that bring the log-likelihood's R-hat across 4 chains below 1.05 on the paper's
simulation). Chains start from k-means initialisations (``init_clusters``, ``init_states``;
see ``_init.py``): a state sequence that lumps two regimes together is hard to split by
local moves, so a good start still matters.

The "poisson" observation is the negative binomial with the dispersion fixed at
``Priors.poisson_dispersion = 100``, as in the reference implementation. All arithmetic is
float64 (stored trajectory and dynamics draws are float32 to halve memory).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from neurodata.errors import FormatError, InputDataError
from neurodata.models._base import NeurodataModel
from neurodata.models.bicluster import _core
from neurodata.models.bicluster._init import initial_values
from neurodata.models.bicluster._simulate import simulate
from neurodata.models.bicluster._summaries import (
    align,
    cluster_profile,
    coclustering,
    max_pear,
    procrustes,
)

__all__ = ["BiClustering", "simulate"]

# One compiled runner per (priors, observation, thin, chunk, shapes), reused across fits.
# (XLA's backend optimisation level 0 halves the compile time at tiny sizes but makes the
# sweep about 4x slower at T = 300, so the default level is kept.)
_RUNNER = jax.jit(_core.run_blocks, static_argnames=("priors", "negbin", "thin", "chunk"))
# threefry keys: "rbg" keys compile the sweep ~20 % faster but run it 3x slower once the
# chains are vmapped (measured at N = 30, T = 300).
_KEY_IMPL = "threefry2x32"


def chain_keys(seed: int, n_chains: int) -> jax.Array:
    """Key of chain ``c``: ``fold_in(key(seed), c)``."""
    root = jax.random.key(seed, impl=_KEY_IMPL)
    return jax.vmap(lambda c: jax.random.fold_in(root, c))(jnp.arange(n_chains))

_DRAW_FIELDS = ("z", "states", "delta", "loadings", "dispersion", "latents", "A", "b", "Q",
                "trans", "weights", "loglik", "n_clusters", "n_states")


def _counts(ds: xr.Dataset, min_time: int) -> np.ndarray:
    if not isinstance(ds, xr.Dataset) or "activity" not in ds:
        raise InputDataError("fit(ds) needs an xarray Dataset with an 'activity' variable "
                             "of spike counts (time, neuron).")
    act = ds["activity"]
    if act.dims != ("time", "neuron"):
        raise InputDataError(f"'activity' has dims {act.dims}; BiClustering needs "
                             "('time', 'neuron') counts (concatenate trials first).")
    y = np.asarray(act.values, dtype=float)
    if not np.all(np.isfinite(y)):
        raise InputDataError("'activity' contains NaN or Inf; drop or fill those bins "
                             "before fitting (BiClustering needs complete counts).")
    if np.any(y < 0) or np.any(y != np.round(y)):
        raise InputDataError("'activity' must hold non-negative integer spike counts; got "
                             "negative or fractional values (bin spikes with "
                             "neurodata.bin_spikes, do not smooth or z-score).")
    if y.shape[0] < min_time:
        raise InputDataError(f"'activity' has {y.shape[0]} time bins; with latent_dim the "
                             f"model needs at least {min_time} (4 per latent row). Use more "
                             "bins or a smaller latent_dim.")
    if y.shape[1] < 2:
        raise InputDataError("'activity' needs at least 2 neurons to cluster.")
    return y


class BiClustering(NeurodataModel):
    """Bayesian bi-clustering of neurons and time bins (MCMC, several chains in parallel).

    Parameters
    ----------
    max_clusters
        Truncation ``K`` of the neuron mixture.
    max_states
        Weak-limit truncation of the sticky HDP-HMM.
    latent_dim
        Number ``p`` of latent factors per cluster.
    observation
        ``"negbin"`` (dispersion sampled per neuron) or ``"poisson"`` (NB with ``r = 100``).
    dynamics
        ``"cluster"`` (default): each state has separate ``(A, b, Q)`` blocks per cluster (the
        block-diagonal part of the reference's full stacked matrices; the paper's simulation
        rotates each cluster in its own plane, which this form represents and ``"shared"``
        does not: state ARI 0.84 against 0.77 in a short run); ``"shared"``: each state
        selects one ``(A, b, Q)`` that acts on every cluster's ``latent_dim + 1`` rows.
    n_chains
        Chains run in parallel with ``vmap``.
    n_samples
        Draws kept per chain (after burn-in and thinning).
    burn_in
        Sweeps discarded per chain (rounded up to a multiple of ``thin``).
    thin
        Sweeps per kept draw.
    seed
        Seed; the key of sweep ``s`` of chain ``c`` is ``fold_in(fold_in(key(seed), c), s)``.
    checkpoint
        Path of an ``.npz`` checkpoint written atomically after every chunk; a fit with the
        same path, data and settings resumes from it and gives the same draws as an
        uninterrupted run.
    chunk_size
        Kept-draw blocks (of ``thin`` sweeps) per compiled call.
    cluster_prior
        ``"dirichlet"``: sparse finite mixture, weights ``~ Dirichlet(gamma / K)`` over the
        ``K = max_clusters`` slots; ``"mfm"``: mixture of finite mixtures (Miller & Harrison
        2018) with a geometric prior on the number of components (truncated at ``K``) and
        ``Dirichlet(gamma)`` weights, as in the reference.
    mfm_geometric
        Parameter ``r`` of the geometric prior ``P(k) = r (1 - r)^(k - 1)`` (0.2 in the
        paper's simulation, 0.415 on its real data).
    init_clusters, init_states
        Numbers of k-means clusters used to start the neuron labels and the states.
    cluster_concentration, hmm_alpha, hmm_gamma, hmm_kappa
        Prior hyperparameters (see :class:`~neurodata.models.bicluster._core.Priors`).
    split_merge
        Split-merge proposals for the neuron labels per sweep (0: none); a split draws the
        new cluster's trajectory from its members' counts (Kalman FFBS), so that an
        under-split is found without waiting for single neurons to move one by one.
    progress
        Show a tqdm bar.

    Attributes
    ----------
    neuron_clusters_ : xarray.DataArray
        ``(neuron,)`` maxPEAR point estimate, clusters numbered by decreasing size.
    state_sequence_ : xarray.DataArray
        ``(time,)`` maxPEAR point estimate of the temporal states.
    neuron_coclustering_, time_coclustering_ : xarray.DataArray
        Posterior co-clustering probabilities.
    latents_ : xarray.DataArray
        ``(cluster, time, latent, stat)`` aligned trajectories: posterior mean and 95 %
        band. Each draw's clusters are matched to the point estimate (Hungarian), then put
        in the identified form of
        :func:`~neurodata.models.bicluster._summaries.cluster_profile` (baseline = mean
        log-rate course of the members, factors = principal components of the rest) and
        the factors rotated onto the first draw's (Procrustes).
    dynamics_ : xarray.Dataset
        Posterior means of the per-cluster blocks of ``A``, ``b``, ``Q`` for every aligned
        state and cluster of the point estimates.
    posterior_ : xarray.Dataset
        Thinned draws with dims ``(chain, draw, ...)``; :meth:`to_inference_data` wraps
        them for ArviZ.
    loglik_trace_ : xarray.DataArray
        ``(chain, sweep)`` log-likelihood of every sweep, burn-in included.
    diagnostics_ : dict
        R-hat (rank-normalised split R-hat) and bulk ESS of the log-likelihood, the number of
        clusters and the number of states (R-hat 1 and ESS = all draws for a quantity that
        is the same constant in every chain); ``split_acceptance`` and
        ``merge_acceptance``, the fractions of split and merge proposals accepted over every
        sweep and chain (a split proposed while no slot is empty counts as rejected).

    Examples
    --------
    >>> from neurodata.models.bicluster import BiClustering, simulate
    >>> ds, truth = simulate(n_time=60, seed=0)
    >>> model = BiClustering(max_clusters=4, max_states=3, n_chains=2, n_samples=5,
    ...                      burn_in=5, progress=False).fit(ds)  # doctest: +SKIP
    >>> model.neuron_clusters_.dims  # doctest: +SKIP
    ('neuron',)
    """

    def __init__(self, max_clusters: int = 6, max_states: int = 6, latent_dim: int = 2,
                 observation: str = "negbin", dynamics: str = "cluster", n_chains: int = 4,
                 n_samples: int = 250,
                 burn_in: int = 500, thin: int = 2, seed: int = 0,
                 checkpoint: str | os.PathLike | None = None, chunk_size: int = 25,
                 init_clusters: int = 3, init_states: int = 2,
                 cluster_prior: str = "dirichlet", mfm_geometric: float = 0.2,
                 cluster_concentration: float = 1.0, hmm_alpha: float = 5.0,
                 hmm_gamma: float = 5.0, hmm_kappa: float = 10.0, split_merge: int = 2,
                 progress: bool = True):
        self.max_clusters = max_clusters
        self.max_states = max_states
        self.latent_dim = latent_dim
        self.observation = observation
        self.dynamics = dynamics
        self.n_chains = n_chains
        self.n_samples = n_samples
        self.burn_in = burn_in
        self.thin = thin
        self.seed = seed
        self.checkpoint = checkpoint
        self.chunk_size = chunk_size
        self.init_clusters = init_clusters
        self.init_states = init_states
        self.cluster_prior = cluster_prior
        self.mfm_geometric = mfm_geometric
        self.cluster_concentration = cluster_concentration
        self.hmm_alpha = hmm_alpha
        self.hmm_gamma = hmm_gamma
        self.hmm_kappa = hmm_kappa
        self.split_merge = split_merge
        self.progress = progress

    # ------------------------------------------------------------------ set-up

    def _check_params(self) -> None:
        if self.observation not in ("negbin", "poisson"):
            raise InputDataError(f"observation={self.observation!r}; use 'negbin' or "
                                 "'poisson'.")
        if self.dynamics not in ("shared", "cluster"):
            raise InputDataError(f"dynamics={self.dynamics!r}; use 'shared' (one (A, b, Q) "
                                 "per state for every cluster) or 'cluster'.")
        for name in ("max_clusters", "max_states", "latent_dim", "n_chains", "n_samples",
                     "thin", "chunk_size", "init_clusters", "init_states"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise InputDataError(f"{name}={value!r}; it must be a positive integer.")
        if self.cluster_prior not in ("dirichlet", "mfm"):
            raise InputDataError(f"cluster_prior={self.cluster_prior!r}; use 'dirichlet' "
                                 "(sparse finite mixture) or 'mfm' (geometric number of "
                                 "clusters).")
        if not 0.0 < self.mfm_geometric < 1.0:
            raise InputDataError(f"mfm_geometric={self.mfm_geometric!r}; it must lie in "
                                 "(0, 1).")
        if self.burn_in < 0:
            raise InputDataError(f"burn_in={self.burn_in!r}; it must be >= 0.")
        if not isinstance(self.split_merge, int | np.integer) or self.split_merge < 0:
            raise InputDataError(f"split_merge={self.split_merge!r}; it must be an integer "
                                 ">= 0 (split-merge proposals per sweep; 0 turns them off).")

    def _priors(self) -> _core.Priors:
        return _core.Priors(cluster_concentration=float(self.cluster_concentration),
                            cluster_prior=self.cluster_prior,
                            mfm_geometric=float(self.mfm_geometric),
                            hmm_alpha=float(self.hmm_alpha), hmm_gamma=float(self.hmm_gamma),
                            hmm_kappa=float(self.hmm_kappa),
                            shared_dynamics=self.dynamics == "shared",
                            split_merge_moves=int(self.split_merge))

    def _fingerprint(self, y: np.ndarray) -> str:
        params = {k: v for k, v in self.get_params().items()
                  if k not in ("checkpoint", "progress", "n_samples")}
        digest = hashlib.sha256(np.ascontiguousarray(y).tobytes()).hexdigest()
        return json.dumps({"params": params, "data": digest, "shape": list(y.shape)},
                          sort_keys=True, default=str)

    def _initial_states(self, y: np.ndarray, data: _core.Data, priors, negbin):
        states = []
        for chain in range(self.n_chains):
            z0, s0, lat0, load0 = initial_values(
                y, self.max_clusters, self.init_clusters, self.max_states, self.init_states,
                self.latent_dim, seed=self.seed * 10007 + chain)
            states.append(_core.init_state(data, z0, s0, lat0, load0, self.max_states,
                                           priors, negbin))
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)

    # ------------------------------------------------------------------ checkpoints

    def _load_checkpoint(self, fingerprint: str, template):
        path = Path(self.checkpoint)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                saved = {k: f[k] for k in f.files}
        except (OSError, ValueError) as exc:
            raise FormatError(f"checkpoint {path} cannot be read ({exc}); delete it to "
                              "start afresh.") from exc
        if str(saved.get("meta_fingerprint", "")) != fingerprint:
            raise InputDataError(f"checkpoint {path} was written for other data or settings; "
                                 "use another path or delete it.")
        missing = [f for f in template._fields if f"state_{f}" not in saved]
        if missing:
            raise FormatError(f"checkpoint {path} lacks the chain-state fields {missing} (it "
                              "was written by another version of neurodata); delete it to "
                              "start afresh.")
        state = type(template)(**{f: jnp.asarray(saved[f"state_{f}"])
                                  for f in template._fields})
        draws = {f: [saved[f"draw_{f}"]] for f in _DRAW_FIELDS if f"draw_{f}" in saved}
        trace = [saved["trace_loglik"]]
        return state, int(saved["meta_blocks_done"]), draws, trace

    def _save_checkpoint(self, fingerprint, state, blocks_done, draws, trace) -> None:
        path = Path(self.checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"state_{f}": np.asarray(getattr(state, f)) for f in state._fields}
        arrays.update({f"draw_{f}": np.concatenate(v, axis=1) for f, v in draws.items() if v})
        arrays["trace_loglik"] = np.concatenate(trace, axis=1)
        arrays["meta_blocks_done"] = np.asarray(blocks_done)
        arrays["meta_fingerprint"] = np.asarray(fingerprint)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
        os.close(fd)
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # ------------------------------------------------------------------ fit

    def fit(self, ds: xr.Dataset) -> BiClustering:
        """Run the chains on ``activity(time, neuron)`` spike counts and summarise them.

        Parameters
        ----------
        ds
            A dataset with integer counts ``activity(time, neuron)``.

        Returns
        -------
        BiClustering
            ``self``.
        """
        self._check_params()
        y = _counts(ds, 4 * (self.latent_dim + 1))
        negbin = self.observation == "negbin"
        priors = self._priors()
        # the count range fixes a shape of the compiled sweep: round it up to a power of
        # two, at least 128, so that fits on similar data reuse one compilation (the
        # tutorial's simulation and M1 counts, 21 and 89 at most); the tail counts it sizes
        # cost O(N y_max) per sweep against the sweep's O(T N)
        data = _core.make_data(y, y_max=int(2 ** math.ceil(math.log2(max(y.max(), 128)))))
        thin, chunk = int(self.thin), int(self.chunk_size)
        burn_blocks = math.ceil(self.burn_in / thin)
        total_blocks = burn_blocks + int(self.n_samples)
        fingerprint = self._fingerprint(y)
        state = self._initial_states(y, data, priors, negbin)
        draws: dict[str, list] = {f: [] for f in _DRAW_FIELDS}
        trace: list[np.ndarray] = [np.zeros((self.n_chains, 0))]
        blocks_done = 0
        if self.checkpoint is not None:
            resumed = self._load_checkpoint(fingerprint, state)
            if resumed is not None:
                state, blocks_done, saved_draws, trace = resumed
                for f, v in saved_draws.items():
                    draws[f] = v
        keys = chain_keys(self.seed, self.n_chains)
        bar = tqdm(total=total_blocks * thin, initial=blocks_done * thin, desc="bicluster",
                   disable=not self.progress, leave=False)
        try:
            while blocks_done < total_blocks:
                state, (draw, lls) = _RUNNER(state, jnp.asarray(blocks_done),
                                             jnp.asarray(total_blocks), data, priors,
                                             keys, negbin, thin, chunk)
                n_run = min(chunk, total_blocks - blocks_done)
                block_idx = blocks_done + np.arange(n_run)
                keep = block_idx >= burn_blocks
                for f in _DRAW_FIELDS:
                    arr = np.asarray(draw[f])[:, :n_run]
                    if keep.any():
                        draws[f].append(arr[:, keep])
                trace.append(np.asarray(lls)[:, :n_run].reshape(self.n_chains, -1))
                blocks_done += n_run
                bar.update(n_run * thin)
                bar.set_postfix(loglik=f"{float(np.mean(trace[-1][:, -1])):.6g}")
                if self.checkpoint is not None:
                    self._save_checkpoint(fingerprint, state, blocks_done, draws, trace)
        finally:
            bar.close()
        samples = {f: np.concatenate(v, axis=1) for f, v in draws.items()}
        self._summarise(ds, samples, np.concatenate(trace, axis=1))
        # split-merge acceptance over every sweep and chain (burn-in included)
        split, split_ok, merge, merge_ok = np.asarray(state.moves).sum(axis=0)
        self.diagnostics_.update(split_acceptance=float(split_ok / max(split, 1)),
                                 merge_acceptance=float(merge_ok / max(merge, 1)))
        return self

    # ------------------------------------------------------------------ summaries

    def _summarise(self, ds: xr.Dataset, s: dict, trace: np.ndarray) -> None:
        C, M = s["z"].shape[:2]
        K, S, p = self.max_clusters, self.max_states, self.latent_dim
        d = p + 1
        T, N = s["states"].shape[2], s["z"].shape[2]
        time, neuron = ds["time"].values, ds["neuron"]
        z_flat = s["z"].reshape(C * M, N)
        xi_flat = s["states"].reshape(C * M, T)
        psm_n = coclustering(z_flat, K)
        psm_t = coclustering(xi_flat, S)
        z_hat = max_pear(z_flat, psm_n, seed=self.seed)
        xi_hat = max_pear(xi_flat, psm_t, seed=self.seed)
        neuron_coords = {c: neuron[c] for c in ds["neuron"].coords if ds[c].dims == ("neuron",)}
        self.neuron_clusters_ = xr.DataArray(z_hat, dims=("neuron",), coords=neuron_coords,
                                             name="neuron_cluster")
        self.state_sequence_ = xr.DataArray(xi_hat, dims=("time",), coords={"time": time},
                                            name="state")
        ids = ds["neuron_id"].values if "neuron_id" in ds.coords else np.arange(N).astype(str)
        self.neuron_coclustering_ = xr.DataArray(
            psm_n, dims=("neuron", "neuron_2"),
            coords={"neuron_id": ("neuron", ids), "neuron_id_2": ("neuron_2", ids)})
        self.time_coclustering_ = xr.DataArray(psm_t, dims=("time", "time_2"),
                                               coords={"time": time, "time_2": time})
        n_hat = int(z_hat.max()) + 1
        s_hat = int(xi_hat.max()) + 1
        lat = np.full((C * M, n_hat, T, d), np.nan, dtype=np.float32)
        lat_all = s["latents"].reshape(C * M, T, K, d)
        load_all = s["loadings"].reshape(C * M, N, p)
        A_all = s["A"].reshape(C * M, S, K, d, d)
        b_all = s["b"].reshape(C * M, S, K, d)
        Q_all = s["Q"].reshape(C * M, S, K, d, d)
        dyn = {k: np.zeros((s_hat, n_hat, d, d)) for k in ("A", "Q")}
        dyn["b"] = np.zeros((s_hat, n_hat, d))
        dyn_n = np.zeros((s_hat, n_hat))
        reference: dict[int, np.ndarray] = {}
        for m in range(C * M):
            cperm = align(z_flat[m], z_hat, K)
            sperm = align(xi_flat[m], xi_hat, S)
            for k in range(K):
                target = cperm[k]
                members = z_flat[m] == k
                if target >= n_hat or not members.any():
                    continue
                mu, x = cluster_profile(lat_all[m, :, k], load_all[m][members])
                if target not in reference:
                    reference[target] = x  # the first draw fixes the factors' orientation
                lat[m, target, :, 0] = mu
                lat[m, target, :, 1:] = procrustes(x, reference[target])
            # dynamics blocks of the occupied clusters, in the aligned state/cluster order
            # (raw coordinates: the rotation convention above is not applied to them)
            for s_slot in range(S):
                s_target = sperm[s_slot]
                if s_target >= s_hat or not (xi_flat[m] == s_slot).any():
                    continue
                for k in range(K):
                    if cperm[k] >= n_hat or not (z_flat[m] == k).any():
                        continue
                    dyn["A"][s_target, cperm[k]] += A_all[m, s_slot, k]
                    dyn["Q"][s_target, cperm[k]] += Q_all[m, s_slot, k]
                    dyn["b"][s_target, cperm[k]] += b_all[m, s_slot, k]
                    dyn_n[s_target, cperm[k]] += 1
        with np.errstate(all="ignore"):
            stats = np.stack([np.nanmean(lat, axis=0), np.nanquantile(lat, 0.025, axis=0),
                              np.nanquantile(lat, 0.975, axis=0)], axis=-1)
        latent_names = ["mu"] + [f"x{j + 1}" for j in range(p)]
        self.latents_ = xr.DataArray(
            stats, dims=("cluster", "time", "latent", "stat"),
            coords={"cluster": np.arange(n_hat), "time": time, "latent": latent_names,
                    "stat": ["mean", "lower", "upper"]}, name="latents")
        denom = np.maximum(dyn_n, 1)
        dims4 = ("state", "cluster", "latent", "latent_2")
        self.dynamics_ = xr.Dataset(
            {"A": (dims4, dyn["A"] / denom[..., None, None]),
             "b": (("state", "cluster", "latent"), dyn["b"] / denom[..., None]),
             "Q": (dims4, dyn["Q"] / denom[..., None, None]),
             "n_draws": (("state", "cluster"), dyn_n)},
            coords={"state": np.arange(s_hat), "cluster": np.arange(n_hat),
                    "latent": latent_names, "latent_2": latent_names})
        chain, draw = np.arange(C), np.arange(M)
        cd = ("chain", "draw")
        self.posterior_ = xr.Dataset(
            {"loglik": (cd, s["loglik"]), "n_clusters": (cd, s["n_clusters"]),
             "n_states": (cd, s["n_states"]),
             "neuron_cluster": ((*cd, "neuron"), s["z"]),
             "state": ((*cd, "time"), s["states"]),
             "delta": ((*cd, "neuron"), s["delta"]),
             "dispersion": ((*cd, "neuron"), s["dispersion"]),
             "loadings": ((*cd, "neuron", "factor"), s["loadings"]),
             "latents": ((*cd, "time", "slot", "latent"), s["latents"]),
             "weights": ((*cd, "slot"), s["weights"]),
             "trans": ((*cd, "state_from", "state_to"), s["trans"])},
            coords={"chain": chain, "draw": draw, "time": time, "neuron_id": ("neuron", ids),
                    "latent": latent_names})
        self.loglik_trace_ = xr.DataArray(trace, dims=("chain", "sweep"), name="loglik")
        self.diagnostics_ = self._diagnostics()

    def _diagnostics(self) -> dict:
        try:
            import arviz as az
        except ImportError:  # an optional extra: the fit itself does not need it
            warnings.warn("BiClustering: R-hat and ESS need ArviZ (pip install "
                          "'neurodata[mcmc]'); diagnostics_ holds only the split-merge "
                          "rates.", stacklevel=3)
            return {}
        out = {}
        sub = self.posterior_[["loglik", "n_clusters", "n_states"]].astype(float)
        if sub.sizes["draw"] >= 4:
            for name in sub.data_vars:
                values = sub[name].values
                if np.ptp(values) == 0:
                    # every chain holds the same value throughout: ArviZ divides 0 by 0;
                    # the chains agree exactly, so R-hat is 1 and every draw counts
                    out[f"rhat_{name}"], out[f"ess_{name}"] = 1.0, float(values.size)
                else:
                    out[f"rhat_{name}"] = float(az.rhat(sub[name]).to_array().item())
                    out[f"ess_{name}"] = float(az.ess(sub[name]).to_array().item())
        return out

    def to_inference_data(self):
        """The thinned draws as an ArviZ ``InferenceData`` (``posterior`` group).

        Returns
        -------
        arviz.InferenceData
        """
        import arviz as az

        self._check_fitted()
        return az.InferenceData(posterior=self.posterior_)
