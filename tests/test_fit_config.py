"""The YAML fit configuration: parsing, the picklable prepare pipeline, and every error."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import neurodata
from neurodata import preprocess as pp
from neurodata.errors import FormatError, InputDataError, NeurodataError
from neurodata.fit_config import MODELS, Prepare, model_class, read_config

CONFIG = """
model:
  n_states: 2
  max_iter: 7
  link: sigmoid
load:
  chunks: {time: 1000}
prepare:
  - {step: bin, bin_size: 0.2}
  - {step: select_neurons, selection: ["0", "2"]}
  - {step: cut_windows, args: {length: 1.0, step: 1.0}}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "fit.yaml"
    path.write_text(CONFIG)
    return path


def test_config_builds_estimator_pipeline_and_load_options(config_file):
    cfg = read_config("hmmglm", config_file)
    assert type(cfg.model).__name__ == "HMMGLM"
    assert (cfg.model.n_states, cfg.model.max_iter, cfg.model.link) == (2, 7, "sigmoid")
    assert cfg.model.prior == "none"  # untouched arguments keep their defaults
    assert cfg.load_options == {"chunks": {"time": 1000}}
    assert cfg.prepare.steps == [("bin", {"bin_size": 0.2}),
                                 ("select_neurons", {"selection": ["0", "2"]}),
                                 ("cut_windows", {"length": 1.0, "step": 1.0})]
    # dask ships the pipeline to workers: it must survive pickling
    assert pickle.loads(pickle.dumps(cfg.prepare)) == cfg.prepare


def test_prepare_applies_the_steps_in_order(config_file):
    counts = np.random.default_rng(0).poisson(1.0, (100, 3))
    ds = neurodata.from_arrays(counts, sampling_rate=10.0)
    got = read_config("hmmglm", config_file).prepare(ds)
    want = pp.cut_windows(pp.select_neurons(pp.bin(ds, 0.2), ["0", "2"]), 1.0)
    assert dict(got.activity.sizes) == {"trial": 10, "time": 5, "neuron": 2}
    np.testing.assert_array_equal(got.activity.values, want.activity.values)
    assert got.attrs["history"] == want.attrs["history"]


def test_empty_config_gives_defaults(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    for config in (None, tmp_path / "empty.yaml", {}):
        cfg = read_config("ntf", config)
        assert type(cfg.model).__name__ == "NTF" and cfg.model.rank == 5
        assert cfg.prepare is None and cfg.load_options == {}


def test_every_model_name_maps_to_an_estimator_class():
    for name, cls_name in MODELS.items():
        try:
            cls = model_class(name)
        except NeurodataError:  # a module another engineer has not landed yet
            continue
        assert cls.__name__ == cls_name and hasattr(cls, "fit")


def test_unknown_model_and_rsa():
    with pytest.raises(InputDataError, match=r"unknown model 'pca'.*'hmmglm'"):
        read_config("pca")
    cfg = read_config("rsa", {"model": {"method": "crossnobis", "model_rdms": "m.nc",
                                        "comparator": "rho-a"}})
    assert type(cfg.model).__name__ == "SessionRSA"
    assert (cfg.model.method, cfg.model.model_rdms, cfg.model.comparator) == (
        "crossnobis", "m.nc", "rho-a")
    with pytest.raises(InputDataError, match=r"no argument 'metric'.*'method'"):
        read_config("rsa", {"model": {"metric": "euclidean"}})


def test_unknown_model_argument_names_it_and_lists_the_valid_ones():
    with pytest.raises(InputDataError, match=r"no argument 'n_state'.*'n_states'.*'max_iter'"):
        read_config("hmmglm", {"model": {"n_state": 2}})


def test_unknown_prepare_step():
    with pytest.raises(InputDataError, match=r"step 2: unknown step 'detrend'.*'smooth'"):
        read_config("hmmglm", {"prepare": [{"step": "bin", "bin_size": 0.1},
                                           {"step": "detrend"}]})
    with pytest.raises(InputDataError, match=r"unknown step 'validate'"):
        read_config("hmmglm", {"prepare": [{"step": "validate"}]})  # not in __all__
    with pytest.raises(InputDataError, match=r"'split_trials' cannot be used"):
        read_config("hmmglm", {"prepare": [{"step": "split_trials"}]})


def test_wrong_step_arguments_fail_before_any_data():
    with pytest.raises(InputDataError, match=r"'smooth' has no argument 'sigmas'.*\['sigma'\]"):
        read_config("hmmglm", {"prepare": [{"step": "smooth", "sigmas": 0.1}]})
    with pytest.raises(InputDataError, match=r"'step' key"):
        read_config("hmmglm", {"prepare": [{"bin_size": 0.1}]})
    with pytest.raises(InputDataError, match=r"'prepare' must be a list"):
        read_config("hmmglm", {"prepare": {"step": "bin"}})
    with pytest.raises(InputDataError, match=r"step 1 is 'bin'"):
        read_config("hmmglm", {"prepare": ["bin"]})
    with pytest.raises(InputDataError, match=r"'bin'.*\['bin_size'\]"):
        Prepare([("bin", {"size": 0.1})])
    with pytest.raises(InputDataError, match=r"'cut_windows'.*missing.*'length'"):
        Prepare([("cut_windows", {"step": 0.5})])


def test_bad_yaml_missing_file_and_bad_sections(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_states: [1, 2\n")
    with pytest.raises(FormatError, match=r"bad.yaml is not valid YAML"):
        read_config("hmmglm", bad)
    with pytest.raises(FormatError, match=r"does not exist"):
        read_config("hmmglm", tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(FormatError, match=r"must be a mapping"):
        read_config("hmmglm", tmp_path / "list.yaml")
    with pytest.raises(InputDataError, match=r"unknown config section\(s\) \['models'\]"):
        read_config("hmmglm", {"models": {"n_states": 2}})
    with pytest.raises(InputDataError, match=r"'model' must map"):
        read_config("hmmglm", {"model": [1, 2]})
    with pytest.raises(InputDataError, match=r"'load' must map"):
        read_config("hmmglm", {"load": "fast"})


def test_load_options_open_a_saved_recording_lazily_through_the_pipeline(tmp_path):
    import dask

    from neurodata.parallel import load_source

    counts = np.random.default_rng(1).poisson(1.0, (400, 3))
    stored = neurodata.from_arrays(counts, sampling_rate=100.0).chunk({"time": 64})
    path = neurodata.save(stored, tmp_path / "rec.zarr")  # zarr chunks of 64 samples
    cfg = read_config("hmmglm", {"load": {"chunks": {"time": 128}},
                                 "prepare": [{"step": "bin", "bin_size": 0.02},
                                             {"step": "smooth", "sigma": 0.05},
                                             {"step": "cut_windows", "length": 1.0}]})
    lazy = cfg.prepare(load_source(path, **cfg.load_options))
    assert dask.is_dask_collection(lazy.activity.data)
    eager = cfg.prepare(neurodata.load(path))
    np.testing.assert_allclose(lazy.activity.values, eager.activity.values, rtol=1e-12)
