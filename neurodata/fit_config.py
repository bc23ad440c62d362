"""The YAML configuration of ``neurodata fit``: estimator, loader options, preprocessing.

A configuration has three optional sections::

    model:                 # keyword arguments of the estimator's constructor
      n_states: 2
      max_iter: 50
    load:                  # options of the loader (neurodata.load / datasets.load)
      chunks: {time: 100000}
    prepare:               # neurodata.preprocess steps, applied in order
      - {step: bin, bin_size: 0.05}
      - {step: zscore}
      - {step: cut_windows, args: {length: 2.0, step: 1.0}}   # 'step' is also an argument

:func:`read_config` checks every name against the estimator's signature and the
functions of :mod:`neurodata.preprocess` before anything runs, so a typo fails at once
instead of on every worker.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr
import yaml

from neurodata.errors import FormatError, InputDataError, NeurodataError

__all__ = ["MODELS", "FitConfig", "Prepare", "model_class", "read_config"]

MODELS = {
    "gpfa": "GPFA",
    "mmgpvae": "MMGPVAE",
    "hmmglm": "HMMGLM",
    "ntf": "NTF",
    "dynamic-connectome": "DynamicConnectome",
    "bicluster": "BiClustering",
    "rsa": "SessionRSA",
}
"""Model name on the command line -> estimator class in :mod:`neurodata.models` (RSA:
:class:`neurodata.parallel.SessionRSA`, the RDM of each session and its comparison with
model RDMs)."""

SECTIONS = ("model", "load", "prepare")

# Steps that do not map one dataset to one dataset cannot sit in a pipeline.
_NOT_STEPS = {"split_trials": "it returns a (train, test) pair, not one dataset"}


def model_class(name: str) -> type:
    """The estimator class for a command-line model name, imported on first use.

    Parameters
    ----------
    name
        One of :data:`MODELS` (``gpfa``, ``mmgpvae``, ``hmmglm``, ``ntf``,
        ``dynamic-connectome``, ``bicluster``, ``rsa``).

    Returns
    -------
    type
        A :class:`~neurodata.models._base.NeurodataModel` subclass.

    Examples
    --------
    >>> from neurodata.fit_config import model_class
    >>> model_class("hmmglm").__name__
    'HMMGLM'
    """
    if name not in MODELS:
        raise InputDataError(f"unknown model {name!r}; choose one of {sorted(MODELS)}.")
    import neurodata.models

    if name == "rsa":
        from neurodata.parallel import SessionRSA

        return SessionRSA
    try:
        return getattr(neurodata.models, MODELS[name])
    except (ImportError, AttributeError) as exc:
        raise NeurodataError(
            f"model {name!r} ({MODELS[name]}) cannot be imported in this installation: {exc}"
        ) from exc


class Prepare:
    """A picklable pipeline of :mod:`neurodata.preprocess` steps.

    Parameters
    ----------
    steps
        ``[(function_name, kwargs), ...]``; each name is a function in
        ``neurodata.preprocess.__all__`` that maps a dataset to a dataset.

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> from neurodata.fit_config import Prepare
    >>> prepare = Prepare([("bin", {"bin_size": 0.2}), ("cut_windows", {"length": 1.0})])
    >>> ds = neurodata.from_arrays(np.ones((100, 2), int), sampling_rate=10.0)
    >>> dict(prepare(ds).activity.sizes)
    {'trial': 10, 'time': 5, 'neuron': 2}
    """

    def __init__(self, steps: Sequence[tuple[str, Mapping[str, Any]]]):
        from neurodata import preprocess

        self.steps = [(str(name), dict(kwargs)) for name, kwargs in steps]
        valid = [n for n in preprocess.__all__ if n not in _NOT_STEPS]
        for i, (name, kwargs) in enumerate(self.steps):
            if name in _NOT_STEPS:
                raise InputDataError(f"prepare step {i + 1} {name!r} cannot be used: "
                                     f"{_NOT_STEPS[name]}.")
            if name not in valid:
                raise InputDataError(f"prepare step {i + 1}: unknown step {name!r}; valid steps "
                                     f"are {valid}.")
            # Check the keywords now so that a typo fails before any data is read.
            signature = inspect.signature(getattr(preprocess, name))
            params = list(signature.parameters)[1:]
            for key in kwargs:
                if key not in params:
                    raise InputDataError(f"prepare step {i + 1} {name!r} has no argument "
                                         f"{key!r}; its arguments are {params}.")
            try:
                signature.bind(None, **kwargs)
            except TypeError as exc:
                raise InputDataError(f"prepare step {i + 1} {name!r}: {exc}; its arguments "
                                     f"are {params}.") from None

    def __call__(self, ds: xr.Dataset) -> xr.Dataset:
        """Apply the steps in order to ``ds``."""
        from neurodata import preprocess

        for name, kwargs in self.steps:
            ds = getattr(preprocess, name)(ds, **kwargs)
        return ds

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}({', '.join(f'{k}={v!r}' for k, v in kw.items())})"
                          for n, kw in self.steps)
        return f"Prepare([{inner}])"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Prepare) and other.steps == self.steps


@dataclass
class FitConfig:
    """A parsed fit configuration."""

    model: Any
    """The unfitted estimator."""
    prepare: Prepare | None = None
    """The preprocessing pipeline, or ``None`` when the section is empty."""
    load_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the loader."""


def _parse(config: str | os.PathLike | Mapping | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    if not path.is_file():
        raise FormatError(f"config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FormatError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FormatError(f"config file {path} must be a mapping with sections {SECTIONS}, "
                          f"not a {type(data).__name__}.")
    return data


def _steps(section: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(section, list):
        raise InputDataError("config section 'prepare' must be a list of steps, e.g. "
                             "[{step: bin, bin_size: 0.1}].")
    steps = []
    for i, item in enumerate(section):
        if not isinstance(item, Mapping) or "step" not in item:
            raise InputDataError(f"prepare step {i + 1} is {item!r}; write it as a mapping "
                                 "with a 'step' key, e.g. {step: smooth, sigma: 0.05}.")
        # ``args:`` holds arguments whose name clashes with the ``step`` key (cut_windows)
        nested = item.get("args") or {}
        if not isinstance(nested, Mapping):
            raise InputDataError(f"prepare step {i + 1}: 'args' must be a mapping.")
        kwargs = {k: v for k, v in item.items() if k not in ("step", "args")}
        steps.append((item["step"], {**kwargs, **nested}))
    return steps


def read_config(model: str, config: str | os.PathLike | Mapping | None = None) -> FitConfig:
    """Read and check a fit configuration for ``model``.

    Parameters
    ----------
    model
        Command-line model name (see :data:`MODELS`).
    config
        Path to a YAML file, an equivalent mapping, or ``None`` (defaults everywhere).

    Returns
    -------
    FitConfig
        The estimator built from ``model:``, the :class:`Prepare` pipeline from
        ``prepare:`` and the loader options from ``load:``.

    Raises
    ------
    FormatError
        The file is missing or not valid YAML.
    InputDataError
        An unknown model, section, constructor argument or preprocessing step (the message
        lists the valid ones).

    Examples
    --------
    >>> from neurodata.fit_config import read_config
    >>> cfg = read_config("hmmglm", {"model": {"n_states": 2},
    ...                              "prepare": [{"step": "cut_windows", "length": 1.0}]})
    >>> cfg.model.n_states, cfg.prepare
    (2, Prepare([cut_windows(length=1.0)]))
    """
    cls = model_class(model)
    data = _parse(config)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise InputDataError(f"unknown config section(s) {unknown}; the sections are "
                             f"{list(SECTIONS)}.")
    params = data.get("model") or {}
    if not isinstance(params, Mapping):
        raise InputDataError("config section 'model' must map constructor arguments to values.")
    valid = [n for n, p in inspect.signature(cls.__init__).parameters.items()
             if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for key in params:
        if key not in valid:
            raise InputDataError(f"model {model!r} ({cls.__name__}) has no argument {key!r}; "
                                 f"valid arguments are {valid}.")
    load_options = data.get("load") or {}
    if not isinstance(load_options, Mapping):
        raise InputDataError("config section 'load' must map loader options to values.")
    steps = _steps(data["prepare"]) if data.get("prepare") else []
    try:
        estimator = cls(**params)
    except TypeError as exc:
        raise InputDataError(f"model {model!r}: {exc}.") from None
    return FitConfig(estimator, Prepare(steps) if steps else None, dict(load_options))
