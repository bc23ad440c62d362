"""Community detection on weighted graphs: a degree-corrected weighted SBM fitted in JAX.

Each NTF component's pair factor, reshaped into a symmetric ``neuron x neuron`` matrix, is
a dense weighted graph; its communities are the groups of a **degree-corrected weighted
stochastic block model** with exponential (or gamma) edge weights,

``w_ij ~ Gamma(shape=alpha, mean=theta_i theta_j omega_{z_i z_j})``   (``alpha = 1``:
exponential, Peixoto's "real-exponential" weights),

fitted by variational EM (mean-field ``q(z_i)``; closed-form updates of ``omega``, of the
degree parameters ``theta`` and, for the gamma model, of the shape ``alpha``). The number
of groups is chosen **without ground truth** by the integrated completed likelihood (ICL,
Biernacki et al. 2000; Daudin et al. 2008): the hard-assignment log-likelihood minus
``(K-1)/2 log N + K(K+1)/4 log(N(N-1)/2)``. ``nested=True`` splits every group again with
the same criterion, giving a hierarchy. Leiden modularity (``igraph``/``leidenalg``,
optional extra ``community``, GPL) is the baseline in :func:`leiden`.

All computations use float64 (the ICL differences that select ``K`` are small relative
to the log-likelihood).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln
from sklearn.metrics import normalized_mutual_info_score

from neurodata.errors import InputDataError
from neurodata.models._base import NeurodataModel

__all__ = ["WeightedSBM", "leiden", "nmi", "planted_partition", "sort_by_community"]


class SBMParams(NamedTuple):
    """Variational state of the weighted DC-SBM."""

    tau: jnp.ndarray
    """``(N, K)`` posterior group probabilities."""
    theta: jnp.ndarray
    """``(N,)`` degree parameters (mean 1 within each group)."""
    omega: jnp.ndarray
    """``(K, K)`` block means."""
    log_pi: jnp.ndarray
    """``(K,)`` log group proportions."""
    alpha: jnp.ndarray
    """Gamma shape (1 for exponential weights)."""


def _m_step(w, logw, off, tau, theta, alpha, degree: bool, fit_alpha: bool):
    """Closed-form updates of omega, theta (degree-corrected) and alpha given tau."""

    def omega_of(theta):
        scaled = w / (theta[:, None] * theta[None, :])
        num = tau.T @ scaled @ tau
        den = tau.T @ off @ tau
        return jnp.maximum(num / jnp.maximum(den, 1e-12), 1e-12)

    if degree:
        omega = omega_of(theta)
        # theta_i = mean over j of w_ij / (theta_j omega_{z_i z_j}) under q
        inv = tau @ (1.0 / omega) @ tau.T  # E[1/omega_{z_i z_j}] under the mean field
        n_other = jnp.sum(off, axis=1)
        theta = jnp.sum(off * w * inv / theta[None, :], axis=1) / jnp.maximum(n_other, 1.0)
        # padded nodes (no neighbours) keep theta = 1
        theta = jnp.where(n_other > 0, jnp.maximum(theta, 1e-12), 1.0)
        # fix the scale: geometric mean 1 within each group (omega absorbs it)
        logt = jnp.log(theta)
        grp = (tau.T @ logt) / jnp.maximum(tau.sum(0), 1e-12)
        theta = jnp.exp(logt - tau @ grp)
    omega = omega_of(theta)
    log_pi = jnp.log(jnp.maximum(tau.sum(0) / jnp.maximum(tau.sum(), 1.0), 1e-12))
    if fit_alpha:
        mu = jnp.where(off > 0, theta[:, None] * theta[None, :] * (tau @ omega @ tau.T), 1.0)
        r = off * (logw - jnp.log(mu) - w / mu)
        s = -jnp.sum(r) / jnp.sum(off) - 1.0
        s = jnp.maximum(s, 1e-8)
        # Minka's closed-form approximation of the gamma-shape MLE, then Newton steps
        a = (3.0 - s + jnp.sqrt((s - 3.0) ** 2 + 24.0 * s)) / (12.0 * s)
        for _ in range(3):
            g = jnp.log(a) - digamma(a) - s
            dg = 1.0 / a - jax.scipy.special.polygamma(1, a)
            a = jnp.maximum(a - g / dg, 1e-3)
        alpha = a
    return theta, omega, log_pi, alpha


def _e_step(w, off, params: SBMParams, active, valid, n_sweeps: int = 1):
    """Mean-field update of tau; groups outside ``active`` (padding) keep probability 0."""
    theta, omega, log_pi, alpha = params.theta, params.omega, params.log_pi, params.alpha
    tau = params.tau
    for _ in range(n_sweeps):
        s = (w / theta[None, :]) @ tau  # (N, K): sum_j w_ij tau_jl / theta_j
        cnt = off @ tau  # (N, K): sum_{j != i} tau_jl
        logit = log_pi[None, :] - alpha * (
            cnt @ jnp.log(omega).T + (s / theta[:, None]) @ (1.0 / omega).T
        )
        tau = jax.nn.softmax(jnp.where(active[None, :], logit, -jnp.inf), axis=1)
        tau = tau * valid[:, None]
    return tau


def _loglik(w, logw, off, theta, omega, alpha, z_onehot):
    """Log-likelihood of the weights under hard (or soft) assignments (pairs i < j)."""
    mu = jnp.where(off > 0, theta[:, None] * theta[None, :] * (z_onehot @ omega @ z_onehot.T),
                   1.0)
    ll = (alpha * jnp.log(alpha) - gammaln(alpha) + (alpha - 1.0) * logw
          - alpha * jnp.log(mu) - alpha * w / mu)
    return 0.5 * jnp.sum(off * ll)


@partial(jax.jit, static_argnames=("degree", "fit_alpha", "max_iter"))
def _fit_vem(w, logw, tau0, valid, degree: bool, fit_alpha: bool, max_iter: int, tol: float):
    """Variational EM from ``tau0 (N_pad, K_max)``; all-zero columns are unused groups.

    Padding every K to the same ``K_max``, and graphs to a power-of-two number of nodes
    (``valid`` marks the real ones), compiles one program for the whole K scan and for the
    subgraphs of a nested fit.
    """
    n, k = tau0.shape
    active = tau0.sum(0) > 0
    off = valid[:, None] * valid[None, :] * (1.0 - jnp.eye(n))
    theta0 = jnp.ones(n)
    alpha0 = jnp.array(1.0)
    theta, omega, log_pi, alpha = _m_step(w, logw, off, tau0, theta0, alpha0, degree, fit_alpha)
    init = SBMParams(tau0, theta, omega, log_pi, alpha)

    def cond(c):
        _, it, change = c
        return (it < max_iter) & (change > tol)

    def body(c):
        p, it, _ = c
        tau = _e_step(w, off, p, active, valid)
        theta, omega, log_pi, alpha = _m_step(w, logw, off, tau, p.theta, p.alpha, degree,
                                              fit_alpha)
        return SBMParams(tau, theta, omega, log_pi, alpha), it + 1, jnp.max(jnp.abs(tau - p.tau))

    p, _, _ = jax.lax.while_loop(cond, body, (init, jnp.array(0), jnp.array(jnp.inf)))
    # hard assignment, parameters refitted to it, complete-data log-likelihood
    z = jax.nn.one_hot(jnp.argmax(p.tau, axis=1), k) * valid[:, None]
    n = jnp.sum(valid)
    theta, omega, log_pi, alpha = _m_step(w, logw, off, z, p.theta, p.alpha, degree, fit_alpha)
    for _ in range(5):
        theta, omega, log_pi, alpha = _m_step(w, logw, off, z, theta, alpha, degree, fit_alpha)
    counts = z.sum(0)
    ll = _loglik(w, logw, off, theta, omega, alpha, z)
    ll_z = jnp.sum(jnp.where(counts > 0, counts * jnp.log(jnp.maximum(counts, 1) / n), 0.0))
    return p._replace(theta=theta, omega=omega, alpha=alpha), ll + ll_z


def _spectral_init(w: np.ndarray, k: int, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Soft assignments from k-means on the leading eigenvectors of the normalised graph."""
    from sklearn.cluster import KMeans

    n = w.shape[0]
    if k == 1:
        return np.ones((n, 1))
    deg = w.sum(1)
    d = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
    vals, vecs = np.linalg.eigh(d[:, None] * w * d[None, :])
    emb = vecs[:, -k:]
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    emb = emb + jitter * rng.normal(size=emb.shape)
    labels = KMeans(k, n_init=4, random_state=int(rng.integers(2**31))).fit_predict(emb)
    tau = np.full((n, k), 0.05 / k)
    tau[np.arange(n), labels] += 0.95
    return tau / tau.sum(1, keepdims=True)


def _check_graph(w) -> np.ndarray:
    w = np.asarray(getattr(w, "values", w), dtype=float)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise InputDataError(f"the graph has shape {w.shape}; give a square weight matrix.")
    if w.shape[0] < 2:
        raise InputDataError("the graph has fewer than 2 nodes.")
    if not np.all(np.isfinite(w)):
        raise InputDataError("the weight matrix has NaN or Inf entries; fill or drop them.")
    if np.any(w < 0):
        raise InputDataError(f"the weight matrix has negative weights (min {w.min():.3g}); "
                             "the weighted SBM needs non-negative weights.")
    if not np.allclose(w, w.T, rtol=1e-6, atol=1e-12 * max(1.0, np.abs(w).max())):
        raise InputDataError("the weight matrix is not symmetric; use (w + w.T) / 2.")
    w = w.copy()
    np.fill_diagonal(w, 0.0)
    if not np.any(w > 0):
        raise InputDataError("the graph has no edge with positive weight.")
    return w


class WeightedSBM(NeurodataModel):
    """Degree-corrected weighted stochastic block model, K chosen by ICL.

    Parameters
    ----------
    n_groups
        Fixed number of groups, or ``None`` to choose it in ``1..max_groups`` by ICL.
    max_groups
        Largest number of groups tried.
    distribution
        ``"exponential"`` (weights may be 0) or ``"gamma"`` (shape fitted; zero weights
        are floored at 1e-6 of the mean weight).
    degree_corrected
        Fit per-node degree parameters ``theta``.
    nested
        Split each group again (ICL-chosen) to build a hierarchy in ``levels_``.
    n_init
        Initialisations per ``K`` (spectral k-means with jitter); the best ICL is kept.
    max_iter, tol
        Variational EM cap and tolerance on ``max |tau_new - tau|``.
    seed
        Seed of the initialisations.

    Attributes
    ----------
    labels_ : numpy.ndarray
        Group of each node (top level), groups numbered by decreasing size.
    n_groups_ : int
    icl_ : dict
        ICL for every ``K`` tried.
    omega_, theta_, tau_ : numpy.ndarray
        Block means, degree parameters and posterior group probabilities at ``n_groups_``.
    alpha_ : float
        Gamma shape (1 for exponential).
    levels_ : list of numpy.ndarray
        Labels per hierarchy level (coarse to fine); ``[labels_]`` unless ``nested``.

    Examples
    --------
    >>> w, truth = planted_partition([20, 20], mixing=0.2, seed=0)
    >>> model = WeightedSBM(max_groups=4).fit(w)
    >>> model.n_groups_, round(nmi(model.labels_, truth), 2)
    (2, 1.0)
    """

    def __init__(self, n_groups: int | None = None, max_groups: int = 8,
                 distribution: str = "exponential", degree_corrected: bool = True,
                 nested: bool = False, n_init: int = 3, max_iter: int = 200, tol: float = 1e-5,
                 seed: int = 0):
        self.n_groups = n_groups
        self.max_groups = max_groups
        self.distribution = distribution
        self.degree_corrected = degree_corrected
        self.nested = nested
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed

    def _fit_k(self, w, logw, k, k_pad, rng):
        best = None
        for i in range(self.n_init if k > 1 else 1):
            n = w.shape[0]
            n_pad = max(8, 1 << (n - 1).bit_length())
            tau0 = np.zeros((n_pad, k_pad))
            tau0[:n, :k] = _spectral_init(w, k, rng, jitter=0.0 if i == 0 else 0.1)
            pad = ((0, n_pad - n), (0, n_pad - n))
            p, ll = _fit_vem(jnp.asarray(np.pad(w, pad)), jnp.asarray(np.pad(logw, pad)),
                             jnp.asarray(tau0), jnp.asarray(np.arange(n_pad) < n, float),
                             bool(self.degree_corrected), self.distribution == "gamma",
                             int(self.max_iter), float(self.tol))
            p = p._replace(tau=p.tau[:n], theta=p.theta[:n])
            ll = float(ll)
            if best is None or ll > best[1]:
                best = (p, ll)
        n = w.shape[0]
        n_pairs = n * (n - 1) / 2
        icl = best[1] - (k - 1) / 2 * np.log(n) - k * (k + 1) / 4 * np.log(n_pairs)
        return best[0], icl

    def _select(self, w, rng):
        logw = np.log(np.maximum(w, 1e-6 * w[w > 0].mean()))
        if self.distribution == "gamma":
            w = np.exp(logw) * (1 - np.eye(w.shape[0]))
        ks = ([int(self.n_groups)] if self.n_groups is not None
              else range(1, min(int(self.max_groups), w.shape[0] - 1) + 1))
        fits = {}
        for k in ks:
            fits[k] = self._fit_k(w, logw, k, max(int(self.max_groups), k), rng)
            # ICL is unimodal in K in practice: stop two steps past the best
            if self.n_groups is None and k >= 3 and fits[k][1] < fits[k - 1][1] < fits[k - 2][1]:
                break
        k_best = max(fits, key=lambda k: fits[k][1])
        p = fits[k_best][0]
        labels = np.asarray(jnp.argmax(p.tau, axis=1))
        return labels, p, {k: float(v[1]) for k, v in fits.items()}

    def fit(self, graph, y=None) -> WeightedSBM:
        """Fit the model to a symmetric non-negative weight matrix.

        Parameters
        ----------
        graph
            ``(N, N)`` array or DataArray (diagonal ignored).
        y
            Ignored.

        Returns
        -------
        WeightedSBM
            ``self``.
        """
        if self.distribution not in ("exponential", "gamma"):
            raise InputDataError(f"distribution {self.distribution!r} is not 'exponential' "
                                 "or 'gamma'.")
        if self.n_groups is not None and not 1 <= int(self.n_groups) < np.shape(graph)[0]:
            raise InputDataError(f"n_groups={self.n_groups} must be in [1, number of nodes).")
        w = _check_graph(graph)
        rng = np.random.default_rng(self.seed)
        labels, p, icl = self._select(w, rng)
        labels, order = _relabel(labels)
        self.labels_ = labels
        self.n_groups_ = int(labels.max()) + 1
        self.icl_ = {str(k): v for k, v in icl.items()}
        self.tau_ = np.asarray(p.tau)[:, order]
        self.theta_ = np.asarray(p.theta)
        self.omega_ = np.asarray(p.omega)[np.ix_(order, order)]
        self.alpha_ = float(p.alpha)
        levels = [labels]
        if self.nested:
            levels += self._split(w, labels, rng)
        self.levels_ = levels
        return self

    def _split(self, w, labels, rng) -> list[np.ndarray]:
        """Finer levels: refit each group's subgraph with ICL until no group splits."""
        out = []
        current = labels
        for _ in range(4):
            finer = np.empty_like(current)
            nxt = 0
            split_any = False
            for g in np.unique(current):
                idx = np.flatnonzero(current == g)
                sub = w[np.ix_(idx, idx)]
                if idx.size >= 6 and np.any(sub > 0):
                    sub_labels, _, _ = self._select(sub, rng)
                else:
                    sub_labels = np.zeros(idx.size, int)
                split_any |= sub_labels.max() > 0
                finer[idx] = sub_labels + nxt
                nxt += int(sub_labels.max()) + 1
            if not split_any:
                break
            out.append(finer)
            current = finer
        return out


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive labels by decreasing group size; also the old group of each new label."""
    groups, counts = np.unique(labels, return_counts=True)
    order = groups[np.argsort(-counts, kind="stable")]
    new = np.empty(labels.max() + 1, int)
    new[order] = np.arange(order.size)
    return new[labels], order


def leiden(graph, *, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
    """Leiden modularity communities of a weighted graph (baseline; needs ``leidenalg``).

    Parameters
    ----------
    graph
        Symmetric non-negative ``(N, N)`` weight matrix.
    resolution
        Modularity resolution parameter.
    seed
        Leiden's seed.

    Returns
    -------
    numpy.ndarray
        Community of each node.
    """
    try:
        import igraph as ig
        import leidenalg
    except ImportError as exc:  # optional extra: GPL-licensed
        raise ImportError(
            "leiden() needs igraph and leidenalg: pip install 'neurodata[community]'."
        ) from exc
    w = _check_graph(graph)
    ia, ib = np.triu_indices(w.shape[0], k=1)
    keep = w[ia, ib] > 0
    edges = list(zip(ia[keep].tolist(), ib[keep].tolist(), strict=True))
    g = ig.Graph(n=w.shape[0], edges=edges)
    g.es["weight"] = w[ia, ib][keep].tolist()
    part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition,
                                    weights="weight", resolution_parameter=resolution, seed=seed)
    return _relabel(np.asarray(part.membership))[0]


def nmi(a, b) -> float:
    """Normalised mutual information of two labelings (arithmetic normalisation).

    Parameters
    ----------
    a, b
        Labels of the same nodes.

    Returns
    -------
    float
    """
    return float(normalized_mutual_info_score(np.asarray(a), np.asarray(b)))


def planted_partition(sizes, mixing: float, *, mean_weight: float = 1.0,
                      degree_spread: float = 0.0, density: float = 1.0,
                      distribution: str = "exponential", shape: float = 1.0,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A weighted planted-partition graph with degree heterogeneity.

    Each pair is an edge with probability ``density``; its weight is gamma-distributed
    (exponential when ``shape == 1``) with mean ``theta_i theta_j omega``, where ``omega``
    is chosen so that a fraction ``mixing`` of each node's expected strength goes to
    other groups (0: disconnected groups, ``1 - sizes_k/N``: no structure).

    Parameters
    ----------
    sizes
        Group sizes (may differ).
    mixing
        Fraction of expected weight leaving a node's group.
    mean_weight
        Scale of the weights.
    degree_spread
        ``theta`` is log-normal with this standard deviation (0: no degree heterogeneity).
    density
        Edge probability.
    distribution
        ``"exponential"`` or ``"gamma"`` (with ``shape``).
    shape
        Gamma shape.
    seed
        Seed.

    Returns
    -------
    weights : numpy.ndarray
        Symmetric ``(N, N)`` weights, zero diagonal.
    labels : numpy.ndarray
        Planted group of each node.
    """
    if not 0 <= mixing < 1:
        raise InputDataError(f"mixing is {mixing!r}; it must be in [0, 1).")
    rng = np.random.default_rng(seed)
    sizes = np.asarray(sizes, int)
    labels = np.repeat(np.arange(sizes.size), sizes)
    n = labels.size
    theta = np.exp(degree_spread * rng.normal(size=n))
    theta /= theta.mean()
    same = labels[:, None] == labels[None, :]
    n_in = sizes[labels][:, None] - 1
    n_out = n - sizes[labels][:, None]
    # per-node block means so that a fraction `mixing` of the expected strength leaves
    w_in = (1 - mixing) / np.maximum(n_in, 1)
    w_out = mixing / np.maximum(n_out, 1)
    mean = np.where(same, np.sqrt(w_in * w_in.T), np.sqrt(w_out * w_out.T))
    mean = mean * theta[:, None] * theta[None, :]
    mean = mean / mean[~np.eye(n, dtype=bool)].mean() * mean_weight
    k = 1.0 if distribution == "exponential" else float(shape)
    w = rng.gamma(k, mean / k)
    w = w * (rng.random((n, n)) < density)
    w = np.triu(w, 1)
    return w + w.T, labels


def sort_by_community(labels, strength=None) -> np.ndarray:
    """Node order grouping communities together (by label, then decreasing ``strength``).

    Parameters
    ----------
    labels
        Community of each node.
    strength
        Optional per-node value to sort by within a community.

    Returns
    -------
    numpy.ndarray
        A permutation of the nodes.
    """
    labels = np.asarray(labels)
    key2 = np.zeros(labels.size) if strength is None else -np.asarray(strength, float)
    return np.lexsort((key2, labels))
