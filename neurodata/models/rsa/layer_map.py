"""Which network layer best matches each brain area, and how robust that mapping is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import xarray as xr

from neurodata.errors import InputDataError
from neurodata.models.rsa._features import as_patterns
from neurodata.models.rsa.cka import cka
from neurodata.models.rsa.compare import compare
from neurodata.models.rsa.rdm import as_rdms, calc_rdm
from neurodata.models.rsa.shape import procrustes_distance

__all__ = ["MEASURES", "layer_area_map"]

MEASURES = ("rsa", "cka", "procrustes")


def _is_rdm(x: Any) -> bool:
    return isinstance(x, xr.Dataset) and "dissimilarity" in x


def _rdm_of(x: Any, stim: np.ndarray, neurons: np.ndarray | None) -> np.ndarray:
    if _is_rdm(x):
        values, _ = as_rdms(x)
        return values.mean(0)[np.ix_(stim, stim)]
    p = as_patterns(x, "responses")[stim]
    if neurons is not None:
        p = p[:, neurons[neurons < p.shape[1]]]
    return calc_rdm(p, "correlation")["dissimilarity"].values[0]


def _score(area: Any, layer: Any, measure: str, method: str, stim: np.ndarray,
           neurons: np.ndarray | None) -> float:
    if measure == "rsa":
        return float(compare(_rdm_of(area, stim, neurons), _rdm_of(layer, stim, None),
                             method).values[0, 0])
    a = as_patterns(area, "brain responses")[stim]
    if neurons is not None:
        a = a[:, neurons[neurons < a.shape[1]]]
    b = as_patterns(layer, "layer activations")[stim]
    if measure == "cka":
        return cka(a, b, debiased=True)
    return float(np.cos(procrustes_distance(a, b)))


def layer_area_map(
    brain_datasets: Mapping[str, Any],
    network_layers: Mapping[str, Any],
    *,
    measure: str = "rsa",
    method: str = "corr",
    n_subsamples: int = 20,
    stimulus_fraction: float = 0.8,
    neuron_fraction: float = 0.8,
    key: jax.Array | None = None,
) -> xr.Dataset:
    """Score every (area, layer) pair and find the best layer per area, with its robustness.

    Parameters
    ----------
    brain_datasets
        ``{area: responses}``: ``(stimulus, neuron)`` datasets, or RDM datasets (then only
        ``measure="rsa"`` applies and only stimuli are subsampled).
    network_layers
        ``{layer: (stimulus, neuron) dataset}``, e.g. from
        :func:`neurodata.loaders.activations.activations`; same stimuli, same order.
    measure
        ``"rsa"`` (correlation-distance RDMs compared with ``method``), ``"cka"`` (debiased
        linear CKA) or ``"procrustes"`` (cosine of the angular Procrustes distance).
    method
        RDM comparator for ``measure="rsa"``.
    n_subsamples
        Random subsamples of stimuli (and neurons) used to measure robustness.
    stimulus_fraction, neuron_fraction
        Fractions kept in each subsample (without replacement).
    key
        PRNG key of the subsamples (required when ``n_subsamples > 0``).

    Returns
    -------
    xarray.Dataset
        ``score(area, layer)`` on all data, ``best_layer(area)``,
        ``subsample_score(subsample, area, layer)`` and ``best_fraction(area, layer)``: how
        often each layer was the best match over the subsamples.

    Examples
    --------
    >>> import numpy as np, jax
    >>> rng = np.random.default_rng(0)
    >>> v1 = rng.normal(size=(20, 30)); it = np.tanh(v1 @ rng.normal(size=(30, 30)))
    >>> res = layer_area_map({"V1": v1}, {"early": v1 + 0.1, "late": it}, n_subsamples=0)
    >>> str(res["best_layer"].sel(area="V1").values)
    'early'
    """
    if measure not in MEASURES:
        raise InputDataError(f"measure={measure!r}; use one of {list(MEASURES)}.")
    if not brain_datasets or not network_layers:
        raise InputDataError("brain_datasets and network_layers must both be non-empty.")
    if measure != "rsa" and any(_is_rdm(v) for v in brain_datasets.values()):
        raise InputDataError(
            f"measure={measure!r} needs (stimulus, neuron) responses; RDM datasets only "
            "support measure='rsa'."
        )
    sizes = {_n_stim(v) for v in [*brain_datasets.values(), *network_layers.values()]}
    if len(sizes) != 1:
        raise InputDataError(
            f"brain areas and layers have different stimulus counts {sorted(sizes)}; give "
            "responses to the same stimuli in the same order."
        )
    n_stim = sizes.pop()
    areas, layers = list(brain_datasets), list(network_layers)
    everything = np.arange(n_stim)
    full = np.array([[_score(brain_datasets[a], network_layers[l], measure, method,
                             everything, None) for l in layers] for a in areas])  # noqa: E741
    sub = np.zeros((n_subsamples, len(areas), len(layers)))
    if n_subsamples > 0:
        if key is None:
            raise InputDataError("give key= (a JAX PRNG key) for the subsamples.")
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
        k = max(3, int(round(stimulus_fraction * n_stim)))
        for s in range(n_subsamples):
            stim = np.sort(rng.choice(n_stim, k, replace=False))
            for i, a in enumerate(areas):
                n_neuron = 0 if _is_rdm(brain_datasets[a]) else as_patterns(
                    brain_datasets[a], "brain responses").shape[1]
                neurons = (None if n_neuron == 0 else np.sort(rng.choice(
                    n_neuron, max(1, int(round(neuron_fraction * n_neuron))), replace=False)))
                for j, l in enumerate(layers):  # noqa: E741
                    sub[s, i, j] = _score(brain_datasets[a], network_layers[l], measure,
                                          method, stim, neurons)
    best = np.argmax(sub, -1) if n_subsamples else np.zeros((0, len(areas)), int)
    frac = np.array([[np.mean(best[:, i] == j) if n_subsamples else np.nan
                      for j in range(len(layers))] for i in range(len(areas))])
    return xr.Dataset(
        {
            "score": (("area", "layer"), full),
            "best_layer": ("area", np.array(layers)[np.argmax(full, 1)]),
            "subsample_score": (("subsample", "area", "layer"), sub),
            "best_fraction": (("area", "layer"), frac),
        },
        coords={"area": areas, "layer": layers},
        attrs={"measure": measure, "method": method, "n_subsamples": n_subsamples,
               "stimulus_fraction": stimulus_fraction, "neuron_fraction": neuron_fraction},
    )


def _n_stim(x: Any) -> int:
    if _is_rdm(x):
        return int(x.sizes["stimulus"])
    return as_patterns(x, "responses").shape[0]
