"""HMM-GLM benchmark: E-step against dynamax, full EM fit against nemos's GLM-HMM engine.

(a) Forward-backward on the same float64 log-likelihoods and transition matrix:
    neurodata's sequential (``lax.scan``) and parallel (``lax.associative_scan``) smoothers
    against ``dynamax.hidden_markov_model.inference.hmm_smoother``.
(b) A full EM fit of the plain HMM-GLM (no prior, softplus-Poisson, per-state biases) on
    the same design matrix (20 neurons x 5 raw history lags), the same initial parameters
    and the same number of EM iterations, against ``nemos.glm_hmm.expectation_maximization
    .em_glm_hmm`` (nemos 0.2.8 has no public ``GLMHMM`` class) with its L-BFGS M-step.
    Both final parameter sets are scored with the same forward algorithm on the same data.

``python -m benchmarks.hmmglm [--quick]``. On the shared 2-core development machine the
parallel E-step is run only up to T = 1e4 (its associative-scan graph takes tens of seconds
to compile per size on CPU and it is a GPU method); the fit comparison runs 10 EM
iterations on both sides, the spec's count. Contenders are timed in interleaved rounds, so
load drifts on a shared machine affect them alike.

Two JAX-only modes (no peers, no shared data) for an accelerator:

- ``--gpu``: sequential vs associative-scan E-step at T = 1e3..1e6, S = 2 and 10, and full
  EM fits (T = 5000 and 1e5) with either E-step (``benchmarks/results/hmmglm_gpu.md``);
- ``--protocol``: the paper's synthetic protocol (S = 5, N = 20, 30 + 20 sequences of 2000
  bins; ``--restarts``, ``--iters``) for the 1-state GLM, HG, GHG and OHG: state accuracy,
  weight correlation, 3-class edge F1, held-out bits/spike
  (``benchmarks/results/hmmglm_protocol.md``);
- ``--restart-rule``: every restart of Gaussian and one-hot fits on ``--seeds`` simulated
  data sets (``--sizes``, default S = 5, N = 20, 12 + 8 sequences of 500 bins) scored on
  held-out data, and the restart each selection rule keeps
  (``benchmarks/results/hmmglm_restarts.md``).
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import neurodata  # noqa: F401  (x64)
from benchmarks.common import machine, time_first_call, write_result
from neurodata.models._jax.hmm import hmm_smoother, hmm_smoother_parallel
from neurodata.models.hmmglm import (
    GLMParams,
    Params,
    _Config,
    _Data,
    _make_em_step,
    marginal_loglik,
)


def _interleaved(calls, repeats):
    """Best time of each call over rounds that call each once in turn.

    On a shared machine the load drifts and a call is often descheduled part-way: the
    minimum is the least disturbed run, and interleaving exposes every contender to the
    same load, so the ratios stay meaningful even when the absolute times do not.
    """
    times = [[] for _ in calls]
    for _ in range(repeats):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[i].append(time.perf_counter() - start)
    return [float(np.min(t)) for t in times]


def _estep_problem(t, s):
    rng = np.random.default_rng(0)
    init = jnp.asarray(rng.dirichlet(np.ones(s)))
    trans = jnp.asarray(0.9 * np.eye(s) + 0.1 * rng.dirichlet(np.ones(s), size=s))
    ll = jnp.asarray(rng.normal(size=(t, s)) * 3.0)
    return init, trans, ll


def _outputs(post, trans):
    # The full E-step: log-likelihood, smoothed marginals and expected transition counts.
    return post.marginal_loglik, post.smoothed_probs, trans


_ours_seq = jax.jit(lambda i, a, ll: _outputs(p := hmm_smoother(i, a, ll),
                                              p.expected_transitions))
_ours_par = jax.jit(lambda i, a, ll: _outputs(p := hmm_smoother_parallel(i, a, ll),
                                              p.expected_transitions))


def bench_estep(sizes_t, sizes_s, repeats, max_parallel_t):
    from dynamax.hidden_markov_model import inference as dyn

    rows = []
    theirs = jax.jit(lambda i, a, ll: _outputs(p := dyn.hmm_smoother(i, a, ll), p.trans_probs))
    for s in sizes_s:
        for t in sizes_t:
            init, trans, ll = _estep_problem(t, s)
            row = {"T": t, "S": s}
            names = ["dynamax", "seq"] + (["par"] if t <= max_parallel_t else [])
            fns = {"dynamax": theirs, "seq": _ours_seq, "par": _ours_par}
            calls = [functools.partial(fns[name], init, trans, ll) for name in names]
            for name, call in zip(names, calls, strict=True):
                row[f"{name}_compile"] = time_first_call(call)
            # Short calls are repeated more: the shared machine's scheduling noise is of
            # the order of a millisecond.
            for name, value in zip(names, _interleaved(
                    calls, max(repeats, min(200, int(2e5 // t)))), strict=True):
                row[name] = value
            row.setdefault("par", float("nan"))
            row.setdefault("par_compile", float("nan"))
            ref = theirs(init, trans, ll)
            mine = _ours_seq(init, trans, ll)
            row["maxdiff"] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                 for a, b in zip(mine[1:], ref[1:], strict=True))
            rows.append(row)
            print(row, flush=True)
    return rows


def _design(t, n, lags, seed):
    rng = np.random.default_rng(seed)
    y = rng.poisson(0.3, (t, n)).astype(float)
    # a little state structure so that EM has something to find
    y[t // 2:, : n // 2] = rng.poisson(0.8, (t - t // 2, n // 2))
    x = np.concatenate([np.r_[np.zeros((k, n)), y[:-k]] for k in range(1, lags + 1)], 1)
    return y, x


def _fit_setup(t, n, s, lags, m_steps, parallel=False):
    """Design, initial parameters and a jitted ``n_iter``-step EM of the plain HMM-GLM."""
    y, x = _design(t, n, lags, 0)
    rng = np.random.default_rng(1)
    coef0 = 0.01 * rng.normal(size=(s, n, n * lags))  # ours: (state, post, feature)
    bias0 = np.log(np.expm1(y.mean(0)))[None].repeat(s, 0) + 0.1 * rng.normal(size=(s, n))
    trans0 = np.full((s, s), 0.05 / (s - 1))
    np.fill_diagonal(trans0, 0.95)
    init0 = np.ones(s) / s
    cfg = _Config(s, "none", "poisson", "softplus", True, 0.0, 1.0, 0.2, m_steps, 0.05,
                  parallel)
    data = _Data(jnp.asarray(y)[None], jnp.asarray(x)[None],
                 jnp.zeros((1, t), bool).at[0, 0].set(True), jnp.ones((1, t), bool))
    # Any (S, N, N, B) weight reshapes to (S, N, N * B) columns inside the contraction, so
    # the raw-lag design matrix is used as it is.
    glm0 = GLMParams(jnp.asarray(bias0), jnp.asarray(coef0).reshape(s, n, n, lags),
                     jnp.zeros((s, n, n, 3)), jnp.zeros((n, n, lags)), jnp.zeros((n, n, 3)),
                     jnp.zeros(()))
    params0 = Params(jnp.asarray(init0), jnp.asarray(trans0), glm0)
    step, adam = _make_em_step(cfg, data)

    @functools.partial(jax.jit, static_argnums=1)
    def run(params, n_iter):
        def body(carry, _):
            carry, obj = step(carry)
            return carry, obj

        (params, _, _), objs = jax.lax.scan(
            body, (params, adam.init(params.glm), jax.random.PRNGKey(0)), None, length=n_iter)
        return params, objs

    return y, x, cfg, data, params0, run


def _time_ours_fit(run, params0, n_iter):
    """Compile time (``lower().compile()``) and warm run time of ``n_iter`` EM iterations."""
    start = time.perf_counter()
    compiled = run.lower(params0, n_iter).compile()
    compile_time = time.perf_counter() - start
    start = time.perf_counter()
    params, _ = jax.block_until_ready(compiled(params0))
    return params, compile_time, time.perf_counter() - start


def bench_fit(t, n, s, lags, n_iter, m_steps):
    import nemos as nmo
    from nemos.glm.params import GLMParams as NemosGLMParams
    from nemos.glm_hmm import expectation_maximization as em
    from nemos.glm_hmm.algorithm_configs import (
        prepare_estep_log_likelihood,
        prepare_mstep_nll_objective_param,
    )
    from nemos.glm_hmm.params import GLMHMMParams, GLMScale, HMMParams
    from nemos.regularizer import UnRegularized
    from nemos.solvers import OptimistixOptaxLBFGS

    y, x, cfg, data, params0, run = _fit_setup(t, n, s, lags, m_steps)
    glm0 = params0.glm
    bias0, init0 = np.asarray(glm0.bias), np.asarray(params0.initial)
    trans0 = np.asarray(params0.transition)
    p_ours, ours_compile, ours_time = _time_ours_fit(run, params0, n_iter)

    # ---- nemos
    obs = nmo.observation_models.PoissonObservations()
    ll_fn = prepare_estep_log_likelihood(True, obs)
    objective = prepare_mstep_nll_objective_param(True, obs, jax.nn.softplus)
    w_ours = np.asarray(glm0.weight).reshape(s, n, n * lags)
    nem_params = GLMHMMParams(
        NemosGLMParams(jnp.asarray(np.transpose(w_ours, (2, 1, 0))), jnp.asarray(bias0.T)),
        GLMScale(jnp.zeros((n, s))),
        HMMParams(jnp.log(jnp.asarray(init0)), jnp.log(jnp.asarray(trans0))),
    )
    solver = OptimistixOptaxLBFGS(objective, UnRegularized(), None, has_aux=False,
                                  init_params=nem_params.glm_params)

    def m_step(p, xx, yy, post):
        res = solver.run(p, xx, yy, post)
        return res[0], res[1], None

    def nemos_fit():
        return em.em_glm_hmm(nem_params, jnp.asarray(x), jnp.asarray(y), jax.nn.softplus,
                             ll_fn, m_step, None, maxiter=n_iter, tol=0.0)

    # nemos's engine is not one jitted function: its compile time is the first call minus a
    # second (warm) call of the same fit.
    first = time_first_call(nemos_fit)
    start = time.perf_counter()
    p_nem, _ = jax.block_until_ready(nemos_fit())
    nemos_time = time.perf_counter() - start
    nemos_compile = max(first - nemos_time, 0.0)

    # ---- same forward algorithm on both final parameter sets
    nem_w = np.transpose(np.asarray(p_nem.glm_params.coef), (2, 1, 0)).reshape(s, n, n, lags)
    p_nem_ours = Params(
        jnp.exp(p_nem.hmm_params.log_initial_prob).ravel(),
        jnp.exp(p_nem.hmm_params.log_transition_prob),
        glm0._replace(bias=jnp.asarray(p_nem.glm_params.intercept).T,
                      weight=jnp.asarray(nem_w)),
    )
    ll_ours = float(marginal_loglik(p_ours, data, cfg))
    ll_nemos = float(marginal_loglik(p_nem_ours, data, cfg))
    return dict(T=t, N=n, S=s, lags=lags, n_iter=n_iter, m_steps=m_steps,
                ours_compile=ours_compile, ours=ours_time / n_iter,
                nemos_compile=nemos_compile, nemos=nemos_time / n_iter,
                ll_ours=ll_ours, ll_nemos=ll_nemos)


def bench_gpu(sizes_t, sizes_s, repeats, fits, n_iter, m_steps, max_seq_t):
    """JAX only: sequential vs associative-scan E-step, and full fits with either E-step.

    The sequential versions run only up to ``max_seq_t`` bins: on a GPU each scan step is a
    kernel launch, so a 1e6-step scan takes tens of seconds per call.
    """
    rows = []
    for s in sizes_s:
        for t in sizes_t:
            init, trans, ll = _estep_problem(t, s)
            names = ["seq", "par"] if t <= max_seq_t else ["par"]
            fns = {"seq": _ours_seq, "par": _ours_par}
            calls = [functools.partial(fns[name], init, trans, ll) for name in names]
            row = {"T": t, "S": s, "seq": float("nan"), "seq_compile": float("nan"),
                   "maxdiff": float("nan")}
            for name, call in zip(names, calls, strict=True):
                row[f"{name}_compile"] = time_first_call(call)
            best = _interleaved(calls, repeats if t < 100000 else max(1, repeats // 3))
            row.update(zip(names, best, strict=True))
            if len(calls) == 2:
                a, b = calls[0](), calls[1]()
                row["maxdiff"] = float(np.max(np.abs(np.asarray(a[1]) - np.asarray(b[1]))))
            rows.append(row)
            print(row, flush=True)
    fit_rows = []
    for t, n, s, lags in fits:
        row = {"T": t, "N": n, "S": s, "lags": lags, "seq": float("nan"),
               "seq_compile": float("nan"), "ll_seq": float("nan")}
        for name, parallel in (("seq", False), ("par", True)):
            if name == "seq" and t > max_seq_t:
                continue
            _, _, cfg, data, params0, run = _fit_setup(t, n, s, lags, m_steps, parallel)
            params, row[f"{name}_compile"], elapsed = _time_ours_fit(run, params0, n_iter)
            row[name] = elapsed / n_iter
            row[f"ll_{name}"] = float(marginal_loglik(params, data, cfg))
        fit_rows.append(row)
        print(row, flush=True)
    md = ["## HMM-GLM on the accelerator (JAX only)", "", f"Machine: {machine()}", "",
          "### E-step: sequential `lax.scan` vs parallel `lax.associative_scan`", "",
          "Best ms over interleaved rounds (compile separate) of the full E-step "
          "(log-likelihood, smoothed marginals, expected transitions), float64; speed-up = "
          f"seq / par. The sequential version runs up to T = {max_seq_t:.0e} (one kernel "
          "launch per step on a GPU).", "",
          "| T | S | seq (ms) | par (ms) | seq / par | compile seq/par (s) | max abs diff |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['T']:.0e} | {r['S']} | {1e3 * r['seq']:.2f} | {1e3 * r['par']:.2f} "
                  f"| {r['seq'] / r['par']:.2f} | {r['seq_compile']:.1f}/"
                  f"{r['par_compile']:.1f} | {r['maxdiff']:.1e} |")
    md += ["", f"### Full EM fit (plain HMM-GLM, softplus-Poisson, {n_iter} EM iterations, "
           f"{m_steps} L-BFGS steps per M-step)", "",
           "| T | N | S | lags | ms / EM iteration, seq E-step | par E-step | "
           "compile seq/par (s) | final log-lik seq - par |",
           "|---|---|---|---|---|---|---|---|"]
    for r in fit_rows:
        md.append(f"| {r['T']} | {r['N']} | {r['S']} | {r['lags']} | {1e3 * r['seq']:.1f} | "
                  f"{1e3 * r['par']:.1f} | {r['seq_compile']:.1f}/{r['par_compile']:.1f} | "
                  f"{r['ll_seq'] - r['ll_par']:.2e} |")
    return "\n".join(md)


def run_protocol(n_states, n_neurons, n_time, n_train, n_test, n_restarts, max_iter, seed):
    """The paper's synthetic protocol: one-hot generative data, HG / GHG / OHG and a 1-state
    GLM fitted on the training sequences and scored on the held-out ones."""
    from sklearn.metrics import f1_score

    from neurodata.models.hmmglm import (
        HMMGLM,
        edge_classes,
        match_states,
        simulate,
        threshold_classes,
        vote_classes,
    )

    start = time.perf_counter()
    ds, truth = simulate(n_states=n_states, n_neurons=n_neurons, n_time=n_time,
                         n_trials=n_train + n_test, seed=seed)
    simulate_time = time.perf_counter() - start
    train = ds.isel(trial=slice(0, n_train))
    test = ds.isel(trial=slice(n_train, None))
    true_test = truth["states"][n_train:]
    true_global = truth["global_adjacency"].ravel()

    def global_f1(edges):
        return f1_score(true_global, np.asarray(edges).ravel(), average="macro")

    # What S samples per edge can tell about the argmax of the true class probabilities:
    # the same two read-outs applied to the true per-state adjacencies and weights.
    true_mean = truth["weights"].mean(0)
    oracle = {"vote": global_f1(vote_classes(truth["adjacency"])),
              "mean": global_f1(threshold_classes(true_mean, 0.3))}
    # The associative-scan E-step on an accelerator: the training set is one
    # n_train * n_time-bin sequence with resets, too long a loop for a GPU.
    parallel = jax.default_backend() != "cpu"
    common = dict(link="sigmoid", n_restarts=n_restarts, max_iter=max_iter, parallel=parallel,
                  seed=seed)
    rows = {}
    for label, s, prior in (("1-state GLM", 1, "none"), ("HMM-GLM (none)", n_states, "none"),
                            ("Gaussian", n_states, "gaussian"), ("one-hot", n_states, "onehot")):
        start = time.perf_counter()
        model = HMMGLM(s, prior=prior, **common).fit(train)
        row = {"time": time.perf_counter() - start, "bits": model.score(test),
               "iters": len(model.objective_history_)}
        if s > 1:
            proba = model.predict_proba(test).values
            perm = match_states(true_test, proba)
            row["acc"] = float(np.mean(perm[true_test] == proba.argmax(-1)))
            w = model.coupling_.values.sum(-1)[perm]
            row["r"] = [float(np.corrcoef(w[k].ravel(), truth["weights"][k].ravel())[0, 1])
                        for k in range(n_states)]
            edges = edge_classes(model)
            cls = edges.state_edges.values[perm]
            row["f1_state"] = f1_score(truth["adjacency"].ravel(), cls.ravel(),
                                       average="macro")
            row["missed"] = int(np.sum((truth["adjacency"] != 0) & (cls == 0)))
            row["false"] = int(np.sum((truth["adjacency"] == 0) & (cls != 0)))
            row["f1_global"] = global_f1(edges.global_edges)
            row["f1_vote"] = global_f1(edges.vote_edges)
        rows[label] = row
        print(label, row, flush=True)
    n_true = int(np.sum(truth["adjacency"] != 0))
    md = ["## HMM-GLM: the paper's synthetic protocol", "", f"Machine: {machine()}", "",
          f"One-hot generative model (`simulate`, seed {seed}): S = {n_states} states, "
          f"N = {n_neurons} neurons, T = {n_time} bins per sequence, {n_train} training and "
          f"{n_test} held-out sequences (simulated in {simulate_time:.0f} s); sigmoid link, "
          f"Poisson counts. Every model: {n_restarts} restart(s), up to {max_iter} EM "
          f"iterations per stage (the one-hot fit is a Gaussian warm start plus one-hot EM), "
          f"{'associative-scan' if parallel else 'sequential'} E-step. State accuracy on the "
          "held-out sequences after Hungarian matching; edges as 3-class labels (inh / none / "
          "exc; `edge_classes`: free weights thresholded at 0.3, one-hot weights by their "
          f"hardened class), macro-F1 per state ({n_true} true edges of "
          f"{truth['adjacency'].size}: how many each model calls none, and how many non-edges "
          "it calls edges) and for the global structure against the argmax of the true "
          "class probabilities, read two ways: each model's own global structure (one-hot: "
          "argmax of its class probabilities; none / Gaussian: state mean / global mean "
          "thresholded at 0.3) and the same majority vote of per-state classes for all; "
          "held-out marginal log-likelihood in bits/spike over each neuron's constant "
          "training rate.", "",
          "| model | state accuracy | weight r per state | edge F1 per state | true edges "
          "missed / false edges | global edge F1 (own read-out) | global edge F1 (vote) "
          "| held-out bits/spike | EM iterations | fit time (s) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        if "acc" in r:
            md.append(f"| {label} | {r['acc']:.3f} | "
                      f"{' / '.join(f'{v:.2f}' for v in r['r'])} | {r['f1_state']:.3f} | "
                      f"{r['missed']} / {r['false']} | {r['f1_global']:.3f} | "
                      f"{r['f1_vote']:.3f} | {r['bits']:.4f} | {r['iters']} | "
                      f"{r['time']:.0f} |")
        else:
            md.append(f"| {label} | - | - | - | - | - | - | {r['bits']:.4f} | {r['iters']} | "
                      f"{r['time']:.0f} |")
    md += ["", f"The same read-outs of the true per-state adjacencies and weights (the ceiling "
           f"that {n_states} samples per edge allow): vote {oracle['vote']:.3f}, thresholded "
           f"state mean {oracle['mean']:.3f}."]
    return "\n".join(md)


def run_restart_rule(n_states, n_neurons, n_time, n_train, n_test, n_restarts, max_iter,
                     seeds, priors=("gaussian", "onehot")):
    """Which restart should ``fit`` keep? Every restart of a fit scored on held-out data.

    For each simulator seed and prior, all restarts of one fit are kept apart
    (``HMMGLM._fit_restarts``) and each is scored on the held-out sequences (bits/spike,
    state accuracy after Hungarian matching). Two selection rules are compared with the
    restart that is best on the held-out data: the training log-likelihood of the hardened
    model plus the log-prior (the EM objective, the rule before this session) and the
    training log-likelihood alone (the rule ``fit`` applies now, :func:`best_restart`).
    """
    from neurodata.models.hmmglm import HMMGLM, best_restart, match_states, simulate

    rows = []
    for seed in seeds:
        ds, truth = simulate(n_states=n_states, n_neurons=n_neurons, n_time=n_time,
                             n_trials=n_train + n_test, seed=seed)
        train = ds.isel(trial=slice(0, n_train))
        test = ds.isel(trial=slice(n_train, None))
        true_test = truth["states"][n_train:]
        for prior in priors:
            model = HMMGLM(n_states, prior=prior, link="sigmoid", n_restarts=n_restarts,
                           max_iter=max_iter, seed=seed)
            start = time.perf_counter()
            restarts = model._fit_restarts(train)
            elapsed = time.perf_counter() - start
            bits, acc = [], []
            for i in range(n_restarts):
                model._keep(restarts, i)
                bits.append(model.score(test))
                proba = model.predict_proba(test).values
                perm = match_states(true_test, proba)
                acc.append(float(np.mean(perm[true_test] == proba.argmax(-1))))
            loglik, logp = restarts.loglik, restarts.log_prior
            row = dict(seed=seed, prior=prior, loglik=loglik, log_prior=logp,
                       bits=np.asarray(bits), acc=np.asarray(acc), time=elapsed,
                       old=best_restart(loglik + logp), new=best_restart(loglik))
            if prior == "onehot":
                # The prior of the hardened model: the log global class probability of
                # every per-state class (a categorical, with no density to blow up).
                glm = restarts.params.glm
                cls = np.argmax(np.asarray(glm.adj_logits), -1)
                log_abar = np.asarray(jax.nn.log_softmax(glm.global_logits, -1))
                cat = np.take_along_axis(log_abar[:, None], cls[..., None], -1)
                row["cat"] = best_restart(loglik + cat.sum((1, 2, 3, 4)))
            rows.append(row)
            print({k: (v.tolist() if isinstance(v, np.ndarray) else v)
                   for k, v in row.items()}, flush=True)
    return rows


def _concordance(rows, criterion):
    """Fraction of restart pairs (within a fit) that ``criterion`` orders like held-out
    bits/spike (ties count half)."""
    agree = []
    for r in rows:
        c, b = criterion(r), r["bits"]
        for i in range(len(b)):
            for j in range(i):
                agree.append(0.5 if c[i] == c[j] or b[i] == b[j]
                             else float((c[i] > c[j]) == (b[i] > b[j])))
    return float(np.mean(agree))


def _restart_rule_md(rows, sizes, n_restarts, max_iter):
    n_states, n_neurons, n_time, n_train, n_test = sizes
    rules = {"old": "objective", "new": "log-likelihood", "cat": "log-lik + hardened prior"}
    md = ["## HMM-GLM: which restart to keep", "", f"Machine: {machine()}", "",
          f"`simulate` (one-hot generative model, sigmoid link) with S = {n_states}, "
          f"N = {n_neurons}, {n_train} training and {n_test} held-out sequences of {n_time} "
          f"bins, one data set per seed; each prior fitted with {n_restarts} restarts (up to "
          f"{max_iter} EM iterations per stage) and every restart scored on the held-out "
          "sequences (bits/spike; state accuracy after Hungarian matching). Rules that pick "
          "a restart from training data: *objective*, the largest training log-likelihood "
          "of the hardened model + log-prior (the EM objective; `fit`'s rule until session "
          "5); *log-likelihood*, the largest training log-likelihood of the hardened model "
          "(`best_restart`, `fit`'s rule now); for the one-hot prior also *log-lik + "
          "hardened prior*, the log-likelihood plus the log global class probability of "
          "every hardened per-state class (a categorical prior with no density to blow up).",
          "", "| seed | prior | log-prior range (nats) | train log-lik range (nats) | held-out "
          "bits/spike per restart | state accuracy per restart | kept by objective / "
          "log-likelihood (/ hardened prior) | best held-out |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = " / ".join(str(r[k]) for k in rules if k in r)
        md.append(
            f"| {r['seed']} | {r['prior']} | {np.ptp(r['log_prior']):.0f} | "
            f"{np.ptp(r['loglik']):.0f} | {' / '.join(f'{v:.4f}' for v in r['bits'])} | "
            f"{' / '.join(f'{v:.3f}' for v in r['acc'])} | {kept} | "
            f"{int(np.argmax(r['bits']))} |")
    md += ["", "| prior | rule | kept the best held-out restart | held-out bits/spike lost to "
           "it, mean (largest) | state accuracy of the kept restart, mean (worst) |",
           "|---|---|---|---|---|"]
    priors = list(dict.fromkeys(r["prior"] for r in rows))
    for prior in priors:
        mine = [r for r in rows if r["prior"] == prior]
        for key, label in rules.items():
            if key not in mine[0]:
                continue
            hits = sum(r["bits"][r[key]] == r["bits"].max() for r in mine)
            lost = [r["bits"].max() - r["bits"][r[key]] for r in mine]
            acc = [r["acc"][r[key]] for r in mine]
            md.append(f"| {prior} | {label} | {hits} / {len(mine)} | {np.mean(lost):.4f} "
                      f"({np.max(lost):.4f}) | "
                      f"{np.mean(acc):.3f} ({np.min(acc):.3f}) |")
    md += ["", "Pairs of restarts (within a fit) that a criterion orders like held-out "
           "bits/spike (ties half):", "", "| prior | objective | log-likelihood | log-prior "
           "alone |", "|---|---|---|---|"]
    for prior in priors:
        mine = [r for r in rows if r["prior"] == prior]
        md.append(f"| {prior} | "
                  f"{_concordance(mine, lambda r: r['loglik'] + r['log_prior']):.2f} | "
                  f"{_concordance(mine, lambda r: r['loglik']):.2f} | "
                  f"{_concordance(mine, lambda r: r['log_prior']):.2f} |")
    return "\n".join(md)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--gpu", action="store_true",
                        help="JAX only: sequential vs parallel E-step to T = 1e6, full fits")
    parser.add_argument("--protocol", action="store_true",
                        help="JAX only: the paper's synthetic protocol (S=5, N=20, 30+20 x "
                             "2000 bins), HG / GHG / OHG / 1-state GLM")
    parser.add_argument("--max-seq-t", type=int, default=100000,
                        help="--gpu: longest sequence for the sequential E-step")
    parser.add_argument("--restart-rule", action="store_true",
                        help="JAX only: score every restart of each fit on held-out data and "
                             "compare the rules that choose one")
    parser.add_argument("--seeds", type=int, default=6, help="--restart-rule: simulator seeds")
    parser.add_argument("--sizes", default="5,20,500,12,8",
                        help="--restart-rule: states,neurons,bins,train,test sequences")
    parser.add_argument("--restarts", type=int, default=None,
                        help="restarts (--protocol: 2, --restart-rule: 4)")
    parser.add_argument("--iters", type=int, default=100,
                        help="--protocol: EM iterations per stage")
    args = parser.parse_args(argv)
    if args.restart_rule:
        # The given sizes, then less data (where many restarts stop in poor optima).
        small = (3, 10, 300, 6, 4)
        runs = ([(small, 30, 2)] if args.quick else
                [(tuple(map(int, args.sizes.split(","))), args.iters, args.seeds),
                 (small, 30, args.seeds)])
        restarts = args.restarts or 4
        sections = []
        for sizes, iters, n_seeds in runs:
            rows = run_restart_rule(*sizes, restarts, iters, range(n_seeds))
            sections.append(_restart_rule_md(rows, sizes, restarts, iters))
        md = "\n\n".join([sections[0]] + ["\n\n".join(["### Less data"] + sec.split(
            "\n\n")[2:]) for sec in sections[1:]])
        if args.quick:
            print(md.replace("\n\n", "\n\n*Quick sizes (`--quick`).*\n\n", 1))
        else:
            print(write_result("hmmglm_restarts", md))
        return
    if args.protocol:
        sizes = (3, 10, 300, 6, 4) if args.quick else (5, 20, 2000, 30, 20)
        md = run_protocol(*sizes, args.restarts or 2, args.iters, seed=0)
        if args.quick:
            md = md.replace("\n\n", "\n\n*Quick sizes (`--quick`).*\n\n", 1)
        print(write_result("hmmglm_protocol", md))
        return
    if args.gpu:
        if args.quick:
            md = bench_gpu([1000, 10000], [2, 5], 5, [(2000, 10, 3, 5)], 3, 10, 10000)
        else:
            md = bench_gpu([1000, 10000, 100000, 1000000], [2, 10], 10,
                           [(5000, 20, 3, 5), (100000, 20, 3, 5)], 5, 20, args.max_seq_t)
        print(write_result("hmmglm_gpu", md))
        return
    if args.quick:
        sizes_t, sizes_s, repeats, fit = [1000, 10000], [2, 5], 5, (2000, 10, 3, 5, 3, 10)
        max_parallel_t = 10000
    else:
        sizes_t, sizes_s, repeats = [1000, 10000, 100000, 1000000], [2, 5, 10], 3
        fit = (5000, 20, 3, 5, 10, 20)
        max_parallel_t = 10000
    load = [os.getloadavg()[0]]
    rows = bench_estep(sizes_t, sizes_s, repeats, max_parallel_t)
    load.append(os.getloadavg()[0])
    res = bench_fit(*fit)
    load.append(os.getloadavg()[0])
    print(res, flush=True)
    nemos_compile = (f"{res['nemos_compile']:.1f}" if res["nemos_compile"] > 0 else
                     "not measurable (first call no slower than the warm call)")
    md = ["## HMM-GLM", "", f"Machine: {machine()}", "",
          "The development machine was shared with other jobs (1-minute load average "
          f"{min(load):.0f}-{max(load):.0f} on 2 cores at the start, middle and end of the "
          "run): absolute times are inflated; read the ratios.", "",
          "### (a) E-step (forward-backward, float64) vs dynamax `hmm_smoother`", "",
          "Best run time in ms over interleaved rounds (the contenders called in turn) of "
          "the full E-step (log-likelihood, smoothed marginals, expected transition counts; "
          "compile time separate; our sequential version called without resets, like "
          "dynamax's); ratio = dynamax / ours (> 1: "
          "ours faster); max abs diff = largest difference to dynamax's outputs."
          " `par` is our associative-scan version (a GPU method; on CPU it does "
          "more work than the sequential scan).", "",
          "| T | S | dynamax | ours seq | ours par | dynamax/seq | dynamax/par | "
          "compile dyn/seq/par (s) | max abs diff |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(
            f"| {r['T']:.0e} | {r['S']} | {1e3 * r['dynamax']:.2f} | {1e3 * r['seq']:.2f} | "
            f"{1e3 * r['par']:.2f} | {r['dynamax'] / r['seq']:.2f} | "
            f"{r['dynamax'] / r['par']:.2f} | {r['dynamax_compile']:.1f}/"
            f"{r['seq_compile']:.1f}/{r['par_compile']:.1f} | {r['maxdiff']:.1e} |")
    md += ["", "### (b) Full EM fit vs nemos `em_glm_hmm` (plain HMM-GLM, no prior)", "",
           f"T = {res['T']}, N = {res['N']} neurons, S = {res['S']} states, "
           f"{res['lags']} raw history lags (design {res['N'] * res['lags']} columns), "
           f"softplus-Poisson, {res['n_iter']} EM iterations from the same initial "
           f"parameters. M-step: ours {res['m_steps']} L-BFGS iterations (optax.lbfgs, "
           "backtracking line search); nemos its default L-BFGS (optimistix-wrapped "
           "optax.lbfgs, up to 500 iterations, tolerance stop). Compile time: ours from "
           "`jit(...).lower().compile()`; nemos's engine is not a single jitted function, so "
           "its compile time is its first call minus a second, warm call.", "",
           "| | compile (s) | fit, warm (s) | time / EM iteration (ms) | "
           "final log-likelihood |",
           "|---|---|---|---|---|",
           f"| neurodata | {res['ours_compile']:.1f} | {res['ours'] * res['n_iter']:.2f} | "
           f"{1e3 * res['ours']:.1f} | {res['ll_ours']:.3f} |",
           f"| nemos 0.2.8 | {nemos_compile} | {res['nemos'] * res['n_iter']:.2f} | "
           f"{1e3 * res['nemos']:.1f} | {res['ll_nemos']:.3f} |", "",
           f"Speed-up: **{res['nemos'] / res['ours']:.1f}x** per EM iteration (warm); final "
           f"log-likelihood ours - nemos = {res['ll_ours'] - res['ll_nemos']:.3f} nats, ratio "
           f"ours / nemos = {res['ll_ours'] / res['ll_nemos']:.6f} (both scored by the same "
           "forward algorithm on the same design matrix)."]
    if args.quick:
        md.insert(2, "*Quick sizes (`--quick`).*\n")
    path = write_result("hmmglm", "\n".join(md))
    print(path)


if __name__ == "__main__":
    main()
