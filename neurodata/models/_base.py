"""The estimator base class: scikit-learn's contract plus pickle-free save and load.

Subclasses store constructor arguments unchanged in ``__init__`` and set fitted state only
in ``fit``, in attributes ending in ``_``. Fitted attributes that are numpy arrays, xarray
DataArrays, numbers, strings or lists of arrays are saved to netCDF or zarr by
:meth:`NeurodataModel.save` and restored by :meth:`NeurodataModel.load`; no pickle is used.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator

from neurodata.data import write_atomic
from neurodata.errors import FormatError, NotFittedError

M = TypeVar("M", bound="NeurodataModel")

_SEP = "__"


def _encode(name: str, value: Any, variables: dict, kinds: dict) -> None:
    if isinstance(value, xr.DataArray):
        variables[name] = xr.DataArray(
            np.asarray(value.values),
            dims=[f"{name}{_SEP}{d}" for d in value.dims],
            attrs=dict(value.attrs),
        )
        for cname, coord in value.coords.items():
            if all(d in value.dims for d in coord.dims) and coord.dtype != object:
                variables[f"{name}{_SEP}coord{_SEP}{cname}"] = xr.DataArray(
                    np.asarray(coord.values), dims=[f"{name}{_SEP}{d}" for d in coord.dims]
                )
        kinds[name] = {"kind": "dataarray", "dims": list(value.dims),
                       "coords": {c: list(value[c].dims) for c in value.coords
                                  if all(d in value.dims for d in value[c].dims)
                                  and value[c].dtype != object}}
    elif isinstance(value, np.ndarray | np.generic) or hasattr(value, "__jax_array__") or (
        type(value).__module__.startswith("jax")
    ):
        arr = np.asarray(value)
        variables[name] = xr.DataArray(arr, dims=[f"{name}{_SEP}{i}" for i in range(arr.ndim)])
        kinds[name] = {"kind": "array"}
    elif isinstance(value, bool | int | float | str):
        kinds[name] = {"kind": "scalar", "value": value}
    elif isinstance(value, list | tuple) and all(
        isinstance(v, np.ndarray | xr.DataArray) or type(v).__module__.startswith("jax")
        for v in value
    ):
        for i, v in enumerate(value):
            _encode(f"{name}{_SEP}{i}", v, variables, kinds)
        kinds[name] = {"kind": "list", "length": len(value)}
    elif isinstance(value, dict) and all(isinstance(k, str) for k in value):
        for k, v in value.items():
            _encode(f"{name}{_SEP}{k}", v, variables, kinds)
        kinds[name] = {"kind": "dict", "keys": list(value)}


def _decode(name: str, kinds: dict, ds: xr.Dataset) -> Any:
    info = kinds[name]
    if info["kind"] == "scalar":
        return info["value"]
    if info["kind"] == "array":
        return np.asarray(ds[name].values)
    if info["kind"] == "list":
        return [_decode(f"{name}{_SEP}{i}", kinds, ds) for i in range(info["length"])]
    if info["kind"] == "dict":
        return {k: _decode(f"{name}{_SEP}{k}", kinds, ds) for k in info["keys"]}
    dims = info["dims"]
    coords = {}
    for cname, cdims in info["coords"].items():
        coords[cname] = (cdims, np.asarray(ds[f"{name}{_SEP}coord{_SEP}{cname}"].values))
    return xr.DataArray(np.asarray(ds[name].values), dims=dims, coords=coords,
                        attrs=dict(ds[name].attrs))


class NeurodataModel(BaseEstimator):
    """Base of every neurodata estimator: fitted-state checks and pickle-free persistence."""

    def __sklearn_is_fitted__(self) -> bool:
        return any(k.endswith("_") and not k.endswith("__") for k in vars(self))

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(ds) first."
            )

    def _fitted_attributes(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.endswith("__")}

    def save(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        attrs: dict[str, str | int | float] | None = None,
    ) -> Path:
        """Save constructor arguments and fitted state to ``path`` (``*.nc`` or ``*.zarr``).

        Parameters
        ----------
        path
            Output path; written atomically.
        overwrite
            Replace an existing file.
        attrs
            Extra provenance attrs stored with the model (e.g. the source session).

        Returns
        -------
        pathlib.Path
        """
        self._check_fitted()
        variables: dict[str, xr.DataArray] = {}
        kinds: dict[str, Any] = {}
        for name, value in self._fitted_attributes().items():
            _encode(name, value, variables, kinds)
        params = {k: v for k, v in self.get_params(deep=False).items()}
        ds = xr.Dataset(
            variables,
            attrs={
                "neurodata_model": f"{type(self).__module__}.{type(self).__qualname__}",
                "params_json": json.dumps(params, default=_json_default),
                "fitted_json": json.dumps(kinds),
                **(attrs or {}),
            },
        )
        return write_atomic(ds, path, overwrite=overwrite)

    @classmethod
    def load(cls: type[M], path: str | os.PathLike) -> M:
        """Load a model written by :meth:`save`.

        Parameters
        ----------
        path
            A file written by ``save``.

        Returns
        -------
        NeurodataModel
            A fitted estimator of the saved class.
        """
        path = Path(path)
        if not path.exists():
            raise FormatError(f"{path} does not exist.")
        try:
            ds = (xr.open_zarr(path) if path.is_dir() else xr.open_dataset(path,
                                                                            engine="h5netcdf"))
            ds = ds.load()
            module, _, qualname = ds.attrs["neurodata_model"].rpartition(".")
            params = json.loads(ds.attrs["params_json"])
            kinds = json.loads(ds.attrs["fitted_json"])
        except (OSError, KeyError, ValueError) as exc:
            raise FormatError(f"{path} is not a saved neurodata model ({exc}).") from exc
        model_cls = getattr(importlib.import_module(module), qualname)
        if not issubclass(model_cls, cls):
            raise FormatError(f"{path} holds a {qualname}, not a {cls.__name__}.")
        model = model_cls(**params)
        for name in kinds:
            if _SEP not in name:
                setattr(model, name, _decode(name, kinds, ds))
        model._after_load()
        return model

    def _after_load(self) -> None:
        """Hook for subclasses that rebuild derived state after :meth:`load`."""


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store parameter {value!r} in a saved model")
