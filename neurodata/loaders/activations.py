"""Network activations as response matrices: one ``(stimulus, neuron)`` dataset per layer.

Artificial networks are compared with brains (RSA, encoding models) on the same footing as
recordings: each layer becomes a validated dataset whose ``activity(stimulus, neuron)`` holds
the layer's units flattened over every non-stimulus axis (channels, height, width, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from neurodata.data import SCHEMA_VERSION, validate
from neurodata.errors import InputDataError


def _as_numpy(array: Any, layer: str) -> np.ndarray:
    # torch tensors that require grad or live on a GPU refuse np.asarray: detach them first.
    for method in ("detach", "cpu"):
        if hasattr(array, method) and not isinstance(array, np.ndarray):
            array = getattr(array, method)()
    try:
        out = np.asarray(array)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputDataError(f"layer {layer!r}: cannot convert {type(array).__name__} to an "
                             f"array ({exc}).") from exc
    if out.dtype.kind not in "biuf":
        raise InputDataError(f"layer {layer!r} has dtype {out.dtype}; activations must be "
                             "numeric.")
    return out


def activations(
    arrays_by_layer: Mapping[str, Any],
    stimulus_ids: Sequence,
    *,
    attrs: Mapping[str, Any] | None = None,
) -> dict[str, xr.Dataset]:
    """Turn per-layer activation arrays into ``(stimulus, neuron)`` datasets.

    Parameters
    ----------
    arrays_by_layer
        ``{layer_name: array}``; each array has the stimulus axis first, e.g. ``(stimulus,
        channel, height, width)``. numpy, JAX, torch or anything ``np.asarray`` takes.
    stimulus_ids
        One id per stimulus (the first axis of every array).
    attrs
        Provenance attrs added to every dataset (e.g. ``{"source": "cnn seed 0"}``).

    Returns
    -------
    dict of str to xarray.Dataset
        One dataset per layer, in input order: ``activity(stimulus, neuron)`` (float,
        ``signal="rate"``, ``units="a.u."``), ``neuron_id`` like ``"conv1:123"`` (the flat
        index over the non-stimulus axes, C order), attrs ``layer`` and ``unit_shape``.

    Raises
    ------
    InputDataError
        For an empty mapping, a stimulus count that differs from ``stimulus_ids``, duplicated
        stimulus ids, a layer without units, non-numeric or non-finite values.

    Examples
    --------
    >>> import numpy as np
    >>> from neurodata.loaders.activations import activations
    >>> acts = activations({"conv1": np.ones((5, 2, 3, 3)), "fc": np.ones((5, 10))},
    ...                    stimulus_ids=[f"img{i}" for i in range(5)])
    >>> dict(acts["conv1"].sizes), str(acts["conv1"].neuron_id.values[4])
    ({'stimulus': 5, 'neuron': 18}, 'conv1:4')
    """
    if not arrays_by_layer:
        raise InputDataError("arrays_by_layer is empty; give {layer_name: array}.")
    ids = np.asarray([str(s) for s in stimulus_ids])
    if ids.ndim != 1 or ids.size == 0:
        raise InputDataError("stimulus_ids must be a non-empty 1-D sequence.")
    if len(set(ids.tolist())) != ids.size:
        dup = sorted({s for s in ids.tolist() if ids.tolist().count(s) > 1})[:5]
        raise InputDataError(f"stimulus_ids has duplicated ids {dup}.")
    out: dict[str, xr.Dataset] = {}
    for layer, array in arrays_by_layer.items():
        layer = str(layer)
        values = _as_numpy(array, layer)
        if values.ndim < 1 or values.shape[0] != ids.size:
            raise InputDataError(
                f"layer {layer!r} has shape {values.shape}: its first axis must be the "
                f"{ids.size} stimuli of stimulus_ids (got {values.shape[:1]})."
            )
        flat = values.reshape(ids.size, -1).astype(np.result_type(values.dtype, np.float32))
        if flat.shape[1] == 0:
            raise InputDataError(f"layer {layer!r} has no units (shape {values.shape}).")
        if not np.all(np.isfinite(flat)):
            raise InputDataError(f"layer {layer!r} contains NaN or Inf activations.")
        ds = xr.Dataset(
            {"activity": (("stimulus", "neuron"), flat, {"signal": "rate", "units": "a.u."})},
            coords={
                "stimulus": ("stimulus", ids),
                "neuron_id": ("neuron", np.array([f"{layer}:{i}" for i in range(flat.shape[1])])),
            },
            attrs={
                "schema_version": SCHEMA_VERSION,
                "format": "activations",
                "layer": layer,
                "unit_shape": [int(n) for n in values.shape[1:]] or [1],
                "history": [],
                **{k: v for k, v in (attrs or {}).items() if v is not None},
            },
        )
        out[layer] = validate(ds)
    return out
