"""HMM-GLM: recovery on the simulator, model selection, outputs, bad input."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sklearn.metrics import f1_score

import neurodata
from neurodata.errors import InputDataError
from neurodata.models._jax.basis import (
    exp_basis,
    filter_history,
    raised_cosine_log_basis,
)
from neurodata.models.hmmglm import (
    HMMGLM,
    best_restart,
    edge_classes,
    match_states,
    select_n_states,
    simulate,
)

S, N = 3, 20
N_TRAIN = 16
FIT = dict(link="sigmoid", n_restarts=2, max_iter=60, seed=0)


@pytest.fixture(scope="module")
def sim():
    ds, truth = simulate(n_states=S, n_neurons=N, n_time=500, n_trials=20, seed=0)
    return ds.isel(trial=slice(0, N_TRAIN)), ds.isel(trial=slice(N_TRAIN, None)), truth


@pytest.fixture(scope="module")
def fitted(sim):
    train, _, _ = sim
    return {
        "none": HMMGLM(S, prior="none", **FIT).fit(train),
        "gaussian": HMMGLM(S, prior="gaussian", **FIT).fit(train),
        # 20 one-hot EM iterations after the Gaussian warm start: on 4 simulator seeds 30
        # gave the same edge F1s (to 1e-4), state accuracy within 5e-4 and bits/spike
        # within 3e-4 (and 60 the same as 30 within 0.002; the test took 150).
        "onehot": HMMGLM(S, prior="onehot", **{**FIT, "max_iter": 20}).fit(train),
    }


def _aligned(model, train, truth):
    proba = model.predict_proba(train).values
    states = truth["states"][:N_TRAIN]
    perm = match_states(states, proba)
    return perm, states, proba


@pytest.mark.parametrize("prior", ["none", "gaussian", "onehot"])
def test_state_recovery(sim, fitted, prior):
    train, _, truth = sim
    perm, states, proba = _aligned(fitted[prior], train, truth)
    accuracy = np.mean(perm[states] == proba.argmax(-1))
    assert accuracy >= 0.9
    viterbi = fitted[prior].predict(train).values
    assert np.mean(perm[states] == viterbi) >= 0.9


@pytest.mark.parametrize("prior", ["none", "gaussian"])
def test_weight_recovery(sim, fitted, prior):
    train, _, truth = sim
    perm, _, _ = _aligned(fitted[prior], train, truth)
    w = fitted[prior].coupling_.values.sum(-1)[perm]
    for k in range(S):
        r = np.corrcoef(w[k].ravel(), truth["weights"][k].ravel())[0, 1]
        assert r >= 0.8, (k, r)


def test_onehot_prior_recovers_adjacency_better(sim, fitted):
    train, _, truth = sim
    edges = {p: edge_classes(m) for p, m in fitted.items()}
    true = truth["global_adjacency"].ravel()

    def f1(x):
        return f1_score(true, x.values.ravel(), average="macro")

    # Global 3-class edges. Each model's own read-out (one-hot: argmax of the class
    # probabilities; none: the state mean thresholded at 0.3) and the same majority vote of
    # per-state classes for both. The one-hot's class probabilities are that vote of its
    # saturated relaxed adjacencies.
    own = {p: f1(e.global_edges) for p, e in edges.items()}
    vote = {p: f1(e.vote_edges) for p, e in edges.items()}
    assert own["onehot"] > own["none"], own
    assert vote["onehot"] > vote["none"], vote
    agree = np.mean(edges["onehot"].global_edges.values == edges["onehot"].vote_edges.values)
    assert agree >= 0.99, agree
    # Per-state 3-class edges after state matching. Over 4 simulator seeds the one-hot
    # margin was 0.072-0.093; assert about half of the smallest.
    per_state = {}
    for p in ("none", "onehot"):
        perm, _, _ = _aligned(fitted[p], train, truth)
        cls = edges[p].state_edges.values[perm]
        per_state[p] = f1_score(truth["adjacency"].ravel(), cls.ravel(), average="macro")
    assert per_state["onehot"] >= per_state["none"] + 0.035, per_state


def test_heldout_bits_per_spike_ordering(sim, fitted):
    _, test, _ = sim
    bits = {p: m.score(test) for p, m in fitted.items()}
    assert bits["none"] > 0
    assert bits["onehot"] >= bits["gaussian"] - 0.002 >= bits["none"] - 0.004, bits


def test_restart_kept_by_hardened_training_loglik(sim):
    train, _, _ = sim
    # The fixture's shapes (no new compilation), a seed whose two restarts the two rules
    # rank differently: restart 1 explains the training data better by 8 nats, restart 0
    # has the higher one-hot log-prior by 196.
    model = HMMGLM(S, prior="onehot", **{**FIT, "max_iter": 10, "seed": 2}).fit(train)
    loglik, log_prior = model.restart_loglik_, model.restart_log_prior_
    assert np.argmax(loglik + log_prior) == 0 and np.argmax(loglik) == 1, (loglik, log_prior)
    assert model.train_loglik_ == loglik[1]
    # ... and restart_loglik_ is the hardened model's: what log_likelihood reports
    assert model.log_likelihood(train) == pytest.approx(loglik[1], rel=1e-12)
    assert best_restart(np.array([-3.0, np.nan, -1.0])) == 2


def test_outputs_are_labelled(sim, fitted):
    train, test, _ = sim
    model = fitted["onehot"]
    proba = model.predict_proba(test)
    assert proba.dims == ("trial", "time", "state")
    np.testing.assert_allclose(proba.sum("state"), 1.0, atol=1e-9)
    np.testing.assert_array_equal(proba.time, test.time)
    assert model.coupling_.dims == ("state", "post", "pre", "basis")
    assert model.global_structure_.dims == ("post", "pre", "edge_class")
    np.testing.assert_allclose(model.transition_.sum("next_state"), 1.0)
    assert fitted["gaussian"].global_structure_.dims == ("post", "pre")
    # one-hot weights are hardened: each edge's sign is in {-1, 0, 1}
    assert set(np.unique(np.sign(model.coupling_.values))) <= {-1.0, 0.0, 1.0}


def test_save_load_roundtrip(sim, fitted, tmp_path):
    _, test, _ = sim
    model = fitted["gaussian"]
    path = model.save(tmp_path / "hmmglm.nc")
    loaded = HMMGLM.load(path)
    np.testing.assert_allclose(loaded.predict_proba(test).values,
                               model.predict_proba(test).values, atol=1e-12)
    assert loaded.score(test) == pytest.approx(model.score(test))


@pytest.fixture(scope="module")
def one_state():
    # Shared by the selection and the sessions tests: 2-fold training sets of 2 x 600 bins
    # and the sessions' 600 + 350 + 250 bins have the same shape, so their 2-state fits
    # share one compiled EM.
    return simulate(n_states=1, n_neurons=8, n_time=600, n_trials=4, seed=3)[0]


def test_one_state_truth_selects_one_state(one_state):
    res = select_n_states(one_state, (1, 2), n_folds=2, link="sigmoid", n_restarts=1,
                          max_iter=30)
    assert res.attrs["best_n_states"] == 1, res["mean"].values


def test_sessions_of_different_lengths_batches_and_parallel_estep(one_state):
    sessions = [one_state.isel(trial=0), one_state.isel(trial=1, time=slice(0, 350)),
                one_state.isel(trial=2, time=slice(0, 250))]
    kw = dict(link="sigmoid", n_restarts=1, max_iter=3, tol=0.0)
    model = HMMGLM(2, **kw).fit(sessions)
    out = model.predict_proba(sessions)
    assert [o.sizes["time"] for o in out] == [600, 350, 250]
    # Streaming: one session per E-step batch (the shorter ones padded) changes nothing.
    batched = HMMGLM(2, batch_size=1, **kw).fit(sessions)
    for name, value in model.params_.items():
        np.testing.assert_allclose(batched.params_[name], value, atol=1e-10, err_msg=name)
    np.testing.assert_allclose(batched.objective_history_, model.objective_history_,
                               rtol=1e-12)
    for one, whole in zip(model.predict_proba(sessions, batch_size=1), out, strict=True):
        np.testing.assert_allclose(one.values, whole.values, atol=1e-10)
    assert model.score(sessions, batch_size=1) == pytest.approx(model.score(sessions),
                                                                abs=1e-10)
    sequential = model.log_likelihood(sessions)
    model.set_params(parallel=True)
    assert model.log_likelihood(sessions) == pytest.approx(sequential, rel=1e-9)


def test_simulate_reuses_its_compiled_scan(one_state):
    events = []

    def listener(event, duration, **_):
        if event.endswith(("jaxpr_trace_duration", "backend_compile_duration")):
            events.append(event.rsplit("/", 1)[-1])

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        # the shapes of the one_state fixture, another seed: nothing to trace or compile
        ds, _ = simulate(n_states=1, n_neurons=8, n_time=600, n_trials=4, seed=4)
        assert not np.array_equal(ds.activity.values, one_state.activity.values)
        assert events == []
        jax.jit(lambda x: x + 1)(np.ones(2))  # a fresh function: the listener sees it
        assert "jaxpr_trace_duration" in events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_bases_and_causal_filter():
    phi = exp_basis(5)
    np.testing.assert_allclose(phi.sum(0), 1.0)
    assert np.all(np.diff(phi[:, 0]) < 0)
    rc = raised_cosine_log_basis(20, 4)
    assert rc.shape == (20, 4) and np.all(rc >= 0)
    np.testing.assert_allclose(rc.sum(0), 1.0)
    x = np.zeros((2, 10, 1))
    x[0, 3, 0] = 1.0
    h = np.asarray(filter_history(x, phi))
    np.testing.assert_allclose(h[0, 4:9, 0, 0], phi[:, 0])  # lag 1..5 after the spike
    assert np.all(h[0, :4] == 0) and np.all(h[1] == 0)  # causal, no leak across trials


def _counts_ds(values):
    return neurodata.from_arrays(np.asarray(values), sampling_rate=100.0)


@pytest.mark.parametrize(
    "values, kwargs, match",
    [
        (np.full((50, 3), 0.5), {}, "non-integer"),
        (np.where(np.eye(50, 3) > 0, 2, 1), {"observation": "bernoulli"}, "above 1"),
        (np.c_[np.ones((50, 2)), np.zeros(50)], {}, "no spikes"),
        (np.where(np.eye(50, 3) > 0, np.nan, 1.0), {}, "NaN"),
        (np.ones((4, 3)), {"history_bins": 5}, "history_bins"),
    ],
)
def test_bad_input(values, kwargs, match):
    with pytest.raises(InputDataError, match=match):
        HMMGLM(2, max_iter=1, **kwargs).fit(_counts_ds(values))


def test_bad_options():
    ds = _counts_ds(np.ones((50, 3)))
    with pytest.raises(InputDataError, match="prior"):
        HMMGLM(2, prior="laplace").fit(ds)
    with pytest.raises(InputDataError, match="batch_size"):
        HMMGLM(2, batch_size=0).fit(ds)
    with pytest.raises(InputDataError, match="trial"):
        select_n_states(ds, (1, 2))
    with pytest.raises(neurodata.errors.NotFittedError):
        HMMGLM(2).predict(ds)
