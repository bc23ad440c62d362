"""Fit one model per session (or animal) on dask.distributed, resumably.

Each session is loaded, prepared, fitted and saved on a worker; its result is written
atomically to ``out/<session>.<format>`` (with the model configuration and package
versions as attrs), so a lost worker loses no finished result, a failed task is retried,
and a rerun skips the sessions that are already done. Errors are collected per session
and reported in the summary instead of being raised from the middle of the batch.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from sklearn.base import clone
from tqdm.auto import tqdm

from neurodata.errors import DatasetNotFoundError, InputDataError
from neurodata.models._base import NeurodataModel

__all__ = ["SessionRSA", "SessionResult", "fit_sessions", "load_source", "session_name"]


@dataclass(frozen=True)
class SessionResult:
    """Outcome of one session's fit."""

    session: str
    status: str
    """``"done"``, ``"skipped"`` (an earlier run's result exists) or ``"failed"``."""
    path: str
    seconds: float
    error: str = ""


def session_name(source: str | os.PathLike) -> str:
    """Name of a session's result file: a registry id as is, a path's stem."""
    text = str(source)
    path = Path(text)
    return path.stem if path.suffix or os.sep in text else text


def load_source(source: str | os.PathLike, **options: Any):
    """Load a path with :func:`neurodata.load` or a registry id with ``datasets.load``."""
    import neurodata

    if Path(source).exists():
        return neurodata.load(source, **options)
    if str(source) in neurodata.datasets.list_datasets():
        return neurodata.datasets.load(str(source), **options)
    raise DatasetNotFoundError(
        f"{source!r} is neither an existing file or folder nor a registry id; see "
        "`neurodata datasets list`."
    )


class SessionRSA(NeurodataModel):
    """RSA of one session as an estimator: its RDM and the RDM's similarity to model RDMs.

    What ``neurodata fit rsa`` fits per session. :meth:`fit` computes the session's RDM
    with :func:`neurodata.models.rsa.calc_rdm` from ``activity(stimulus, neuron)`` (or
    ``activity(trial, stimulus, neuron)``: the trials are the cross-validation folds of
    ``crossnobis``) and, when ``model_rdms`` is given, compares it with every model RDM
    (:func:`neurodata.models.rsa.compare`).

    Parameters
    ----------
    method
        Dissimilarity of :func:`~neurodata.models.rsa.calc_rdm` (one of
        ``neurodata.models.rsa.METHODS``, e.g. ``"correlation"``, ``"crossnobis"``).
    model_rdms
        Path or registry id of an RDM dataset (``dissimilarity(rdm, stimulus,
        stimulus_)``, as written by ``neurodata.save(rsa.rdm_dataset(...), path)``) on the
        same stimuli in the same order. A dataset with an ``rdm_kind`` coordinate (the
        registry's RDM collections) contributes its ``"model"`` RDMs. ``None``: only the RDM.
    comparator
        Similarity of :func:`~neurodata.models.rsa.compare` (one of
        ``neurodata.models.rsa.COMPARATORS``, e.g. ``"corr"``, ``"cosine"``, ``"rho-a"``).
    variable
        The response variable of the session dataset.

    Attributes
    ----------
    rdm_ : xarray.DataArray
        ``(stimulus, stimulus_)`` dissimilarities of the session.
    similarity_ : xarray.DataArray
        ``(model,)`` similarity of the session's RDM to each model RDM (only with
        ``model_rdms``).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> responses = xr.Dataset({"activity": (("trial", "stimulus", "neuron"),
    ...     np.random.default_rng(0).normal(size=(4, 5, 30)))})
    >>> SessionRSA("crossnobis").fit(responses).rdm_.shape
    (5, 5)
    """

    def __init__(self, method: str = "correlation", model_rdms: str | None = None,
                 comparator: str = "corr", variable: str = "activity"):
        self.method = method
        self.model_rdms = model_rdms
        self.comparator = comparator
        self.variable = variable

    def fit(self, ds: xr.Dataset, y: Any = None) -> SessionRSA:
        """Compute the session's RDM and compare it with the model RDMs.

        Parameters
        ----------
        ds
            A session with ``activity(stimulus, neuron)`` or ``activity(trial, stimulus,
            neuron)`` (or the ``variable`` given).
        y
            Ignored.

        Returns
        -------
        SessionRSA
            ``self``.
        """
        from neurodata.models import rsa

        if self.method not in rsa.METHODS:
            raise InputDataError(f"method {self.method!r}: use one of {list(rsa.METHODS)}.")
        if self.comparator not in rsa.COMPARATORS:
            raise InputDataError(f"comparator {self.comparator!r}: use one of "
                                 f"{list(rsa.COMPARATORS)}.")
        if self.variable not in ds:
            raise InputDataError(f"the session has no variable {self.variable!r}; give "
                                 f"`variable:` one of {list(ds.data_vars)}.")
        rdm = rsa.calc_rdm(ds[self.variable], self.method)
        self.rdm_ = rdm["dissimilarity"].isel(rdm=0, drop=True)
        if self.model_rdms is not None:
            models = load_source(self.model_rdms)
            if "dissimilarity" not in models:
                raise InputDataError(f"model_rdms {self.model_rdms!r} has no 'dissimilarity' "
                                     "variable; write it with rsa.rdm_dataset and save.")
            if "rdm_kind" in models.coords:
                models = models.isel(rdm=np.flatnonzero(models["rdm_kind"].values == "model"))
            names = (models["rdm_name"].values.astype(str) if "rdm_name" in models.coords
                     else np.arange(models.sizes["rdm"]).astype(str))
            try:
                sim = rsa.compare(rdm, models["dissimilarity"].values, self.comparator)
            except InputDataError as exc:
                raise InputDataError(f"model_rdms {self.model_rdms!r} against the session's "
                                     f"RDM: {exc}") from None
            self.similarity_ = xr.DataArray(
                np.asarray(sim.values)[0], dims=("model",), coords={"model": names},
                name="similarity", attrs={"comparator": self.comparator})
        return self


def _versions() -> dict[str, str]:
    import jax

    import neurodata

    return {"neurodata_version": neurodata.__version__, "jax_version": jax.__version__}


def _fit_one(
    model: NeurodataModel,
    source: str,
    name: str,
    target: str,
    load_options: Mapping[str, Any],
    prepare: Callable | None,
) -> str:
    ds = load_source(source, **load_options)
    if prepare is not None:
        ds = prepare(ds)
    fitted = clone(model).fit(ds)
    attrs = {
        "session": name,
        "source_path": str(source),
        "config_json": json.dumps(model.get_params(deep=False), default=str),
        **_versions(),
    }
    fitted.save(target, overwrite=True, attrs=attrs)
    return target


def _client(scheduler: Any, n_workers: int | None):
    from distributed import Client, LocalCluster

    if scheduler is None:
        cluster = LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1,
                               dashboard_address=None)
        return Client(cluster), True
    if isinstance(scheduler, Client):
        return scheduler, False
    return Client(scheduler), True


def fit_sessions(
    model: NeurodataModel,
    sources: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    *,
    out: str | os.PathLike,
    scheduler: Any = None,
    prepare: Callable | None = None,
    load_options: Mapping[str, Any] | None = None,
    file_format: str = "zarr",
    overwrite: bool = False,
    retries: int = 2,
    n_workers: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Fit a copy of ``model`` to every session, in parallel on dask.distributed.

    Parameters
    ----------
    model
        An unfitted neurodata estimator; each session gets ``sklearn.base.clone(model)``.
    sources
        Paths or registry ids, or a mapping ``{session_name: source}``.
    out
        Folder of the results: ``out/<session>.<file_format>``, one saved model each.
    scheduler
        ``None`` starts a ``LocalCluster`` sized to the machine; an address such as
        ``"tcp://10.0.0.1:8786"`` uses an existing cluster; a ``distributed.Client`` is used
        as is.
    prepare
        Optional function applied to each loaded dataset before the fit (e.g. cutting
        trials). It must be importable or picklable by the workers.
    load_options
        Passed to the loader (e.g. ``{"sampling_rate": 30.0}``).
    file_format
        ``"zarr"`` or ``"nc"``.
    overwrite
        Refit sessions whose result exists (default: skip them).
    retries
        How often a task lost with its worker, or failed, is retried.
    n_workers
        Workers of the embedded ``LocalCluster`` (default: one per core).
    progress
        Show a live count of finished sessions.

    Returns
    -------
    pandas.DataFrame
        One row per session: ``session``, ``status``, ``path``, ``seconds``, ``error``.

    Examples
    --------
    >>> from neurodata.models import GPFA
    >>> summary = fit_sessions(GPFA(4), ["a.nwb", "b.nwb"], out="fits")  # doctest: +SKIP
    """
    if file_format not in ("zarr", "nc"):
        raise InputDataError(f"file_format {file_format!r} must be 'zarr' or 'nc'.")
    named = dict(sources) if isinstance(sources, Mapping) else {
        session_name(s): s for s in sources}
    if len(named) != (len(sources) if not isinstance(sources, Mapping) else len(named)):
        raise InputDataError("two sources share a session name; pass a mapping {name: source}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[SessionResult] = []
    pending = {}
    for name, source in named.items():
        target = out / f"{name}.{file_format}"
        if target.exists() and not overwrite:
            results.append(SessionResult(name, "skipped", str(target), 0.0))
        else:
            pending[name] = (str(source), str(target))
    if pending:
        results += _run(model, pending, scheduler, prepare, dict(load_options or {}), retries,
                        n_workers, progress)
    summary = pd.DataFrame([r.__dict__ for r in results]).sort_values("session")
    return summary.reset_index(drop=True)


def _run(model, pending, scheduler, prepare, load_options, retries, n_workers, progress):
    from distributed import as_completed

    client, own = _client(scheduler, n_workers)
    started = time.perf_counter()
    results = []
    try:
        futures = {
            client.submit(_fit_one, model, source, name, target, load_options, prepare,
                          key=f"neurodata-fit-{name}-{time.time_ns()}", retries=retries,
                          pure=False): (name, target)
            for name, (source, target) in pending.items()
        }
        bar = tqdm(total=len(futures), desc="sessions", disable=not progress)
        for future in as_completed(futures):
            name, target = futures[future]
            elapsed = time.perf_counter() - started
            try:
                future.result()
                results.append(SessionResult(name, "done", target, elapsed))
            except Exception as exc:  # collected per session, reported in the summary
                message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                results.append(SessionResult(name, "failed", target, elapsed, message))
            bar.update(1)
            bar.set_postfix(failed=sum(r.status == "failed" for r in results))
        bar.close()
    finally:
        if own:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()
    return results
