"""C. elegans connectomes as datasets: ``weight(synapse_type, pre, post)`` per annotation.

``connectome(name)`` reads the annotations packaged in ``cect`` (the C. elegans Connectome
Toolbox; its cached readers work offline) and ``wormneuroatlas`` (read from its data files
directly: ``wormneuroatlas.NeuroAtlas()`` contacts WormBase and fails offline), maps the cell
names onto the 302 canonical hermaphrodite neurons (muscles, glia and other cells are
dropped) and returns a validated dataset. ``connectome()`` with no name lists the names.

Anatomical connectomes hold ``weight(synapse_type, pre, post)`` with ``synapse_type`` in
``("chemical", "gap_junction")``: ``weight[s, i, j]`` is the connection from ``pre[i]`` to
``post[j]``; gap junctions are symmetric. ``connectome("randi2023")`` is the functional atlas
of Randi et al. 2023 (signal propagation, ``funatlas.h5``): ``response(pre, post)`` is the
mean dF/F of neuron ``post`` after optogenetic stimulation of neuron ``pre``, with its
``q`` value, ``q_eq`` and the number of observations.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
from importlib.metadata import version
from pathlib import Path

import numpy as np
import xarray as xr

from neurodata.data import SCHEMA_VERSION, validate
from neurodata.errors import DatasetNotFoundError, FormatError, InputDataError, MissingFieldError
from neurodata.loaders.celegans import NEURONS_302, canonical_order, normalize_label

SYNAPSE_TYPES = ("chemical", "gap_junction")

_CECT = {
    # name: (cect reader module, citation, units of the weights)
    "white1986": ("White_whole",
                  "White JG et al. (1986) The structure of the nervous system of the nematode "
                  "Caenorhabditis elegans. Phil Trans R Soc B 314:1-340.", "synapse count"),
    "varshney2011": ("VarshneyDataReader",
                     "Varshney LR et al. (2011) Structural properties of the Caenorhabditis "
                     "elegans neuronal network. PLoS Comput Biol 7:e1001066.", "synapse count"),
    "cook2019": ("Cook2019HermReader",
                 "Cook SJ et al. (2019) Whole-animal connectomes of both Caenorhabditis elegans "
                 "sexes. Nature 571:63-71 (SI 5, corrected July 2020).", "EM serial sections"),
    "witvliet2020": ("WitvlietDataReader8",
                     "Witvliet D et al. (2021) Connectomes across development reveal principles "
                     "of brain maturation. Nature 596:257-261 (adult, dataset 8).",
                     "synapse count"),
    "witvliet2020-7": ("WitvlietDataReader7",
                       "Witvliet D et al. (2021) Connectomes across development reveal "
                       "principles of brain maturation. Nature 596:257-261 (adult, dataset 7).",
                       "synapse count"),
}
_ATLAS = {
    "consensus": ("aconnectome_default.h5",
                  "wormneuroatlas default anatomical connectome: sum of White et al. 1986 "
                  "(whole animal and L4) and Witvliet et al. 2021 (datasets 7 and 8); Randi F "
                  "et al. (2023) Nature 623:406-414.", "synapse count (summed over 4 sources)"),
}
_FUNCTIONAL = {
    "randi2023": ("funatlas.h5",
                  "Randi F, Sharma AK, Dvali S, Leifer AM (2023) Neural signal propagation "
                  "atlas of Caenorhabditis elegans. Nature 623:406-414."),
}

NAMES = (*_CECT, *_ATLAS, *_FUNCTIONAL)
"""Names :func:`connectome` knows."""


def _package_data(package: str, filename: str) -> Path:
    # Locate packaged data without importing the package (wormneuroatlas goes online on use).
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FormatError(f"the connectome data need the {package!r} package: pip install "
                          f"{package} (or neurodata[celegans]).")
    path = Path(spec.origin).parent / "data" / filename
    if not path.is_file():
        raise MissingFieldError(f"{path} is missing from the installed {package!r} package.")
    return path


def _canonical(names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Positions of the names that are 302 neurons, and their canonical labels."""
    labels = [normalize_label(n) for n in names]
    keep = [i for i, n in enumerate(labels) if n in NEURONS_302]
    chosen = [labels[i] for i in keep]
    if len(set(chosen)) != len(chosen):
        dup = sorted({n for n in chosen if chosen.count(n) > 1})
        raise FormatError(f"neuron labels {dup} appear twice after normalisation.")
    return np.array(keep, dtype=int), chosen


def _reorder(labels: list[str], matrices: np.ndarray, neurons: str) -> tuple[list[str],
                                                                             np.ndarray]:
    """Put the (k, n, n) matrices in canonical order; ``neurons="all"`` pads to 302 with NaN."""
    target = list(NEURONS_302) if neurons == "all" else canonical_order(labels)
    pos = {n: i for i, n in enumerate(labels)}
    out = np.full((matrices.shape[0], len(target), len(target)), np.nan)
    idx = np.array([pos.get(n, -1) for n in target])
    have = np.flatnonzero(idx >= 0)
    out[:, have[:, None], have[None, :]] = matrices[:, idx[have][:, None], idx[have][None, :]]
    return target, out


def _from_cect(name: str) -> tuple[list[str], np.ndarray, str]:
    reader_name = _CECT[name][0]
    if importlib.util.find_spec("cect") is None:
        raise FormatError(f"connectome {name!r} needs the 'cect' package: pip install cect "
                          "(or neurodata[celegans]).")
    # cect prints progress to stdout while reading; keep the caller's output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        module = importlib.import_module(f"cect.readers.{reader_name}")
        data = module.get_instance(from_cache=True)
    keep, labels = _canonical(list(data.nodes))
    stack = []
    for key in ("Generic_CS", "Generic_GJ"):
        if key not in data.connections:
            raise MissingFieldError(f"cect reader {reader_name} has no {key!r} connections.")
        stack.append(np.asarray(data.connections[key], dtype=float)[np.ix_(keep, keep)])
    return labels, np.stack(stack), f"cect {version('cect')} readers.{reader_name}"


def _from_atlas(name: str) -> tuple[list[str], np.ndarray, str]:
    import h5py

    ids_path = _package_data("wormneuroatlas", "neuron_ids.txt")
    ids = [line.split("\t")[1].strip() for line in ids_path.read_text().splitlines()
           if line.strip()]
    path = _package_data("wormneuroatlas", _ATLAS[name][0])
    with h5py.File(path, "r") as f:
        # wormneuroatlas stores A[i, j] as the connection from j to i: transpose to (pre, post).
        stack = np.stack([np.asarray(f["chem"][:], dtype=float).T,
                          np.asarray(f["gap"][:], dtype=float).T])
    if stack.shape[1] != len(ids):
        raise FormatError(f"{path}: {stack.shape[1]} neurons but neuron_ids.txt lists "
                          f"{len(ids)}.")
    keep, labels = _canonical(ids)
    return labels, stack[:, keep][:, :, keep], f"wormneuroatlas data/{_ATLAS[name][0]}"


def functional_atlas(strain: str = "wt", *, neurons: str = "annotated") -> xr.Dataset:
    """The signal propagation atlas of Randi et al. 2023 (``wormneuroatlas`` ``funatlas.h5``).

    Parameters
    ----------
    strain
        ``"wt"`` (wild type) or ``"unc31"`` (unc-31 mutants, deficient in dense-core-vesicle
        release).
    neurons
        ``"annotated"`` (the 300 neurons of the atlas) or ``"all"`` (the 302, NaN for CANL/R).

    Returns
    -------
    xarray.Dataset
        ``response(pre, post)`` (mean dF/F of ``post`` after stimulating ``pre``; NaN where
        never measured), ``q(pre, post)``, ``q_eq(pre, post)``, ``n_observations(pre, post)``.

    Examples
    --------
    >>> from neurodata.loaders.connectome import functional_atlas
    >>> fa = functional_atlas()  # doctest: +SKIP
    >>> float(fa.response.sel(pre="AVAL", post="AVAR"))  # doctest: +SKIP
    """
    import h5py

    if strain not in ("wt", "unc31"):
        raise InputDataError(f"strain {strain!r}: choose 'wt' or 'unc31'.")
    _check_neurons(neurons)
    path = _package_data("wormneuroatlas", _FUNCTIONAL["randi2023"][0])
    with h5py.File(path, "r") as f:
        ids = [n.decode("utf-8") for n in f["neuron_ids"][:]]
        group = f[strain]
        # funatlas stores M[i, j] as the response of i to the stimulation of j.
        stack = np.stack([np.asarray(group[k][:], dtype=float).T
                          for k in ("dFF", "q", "q_eq", "occ1")])
        compiled = f.attrs.get("time_compiled", b"").decode("utf-8")
    keep, labels = _canonical(ids)
    labels, stack = _reorder(labels, stack[:, keep][:, :, keep], neurons)
    coords = {"pre": ("pre", np.array(labels, dtype=str)),
              "post": ("post", np.array(labels, dtype=str))}
    n_obs = np.nan_to_num(stack[3], nan=0.0).astype(np.int64)
    ds = xr.Dataset(
        {
            "response": (("pre", "post"), stack[0], {"units": "dF/F",
                                                     "description": "mean response of post "
                                                     "to the stimulation of pre"}),
            "q": (("pre", "post"), stack[1], {"description": "q value (FDR) of the response"}),
            "q_eq": (("pre", "post"), stack[2],
                     {"description": "q value of the equivalence test (no response)"}),
            "n_observations": (("pre", "post"), n_obs),
        },
        coords=coords,
        attrs={"schema_version": SCHEMA_VERSION, "source": "wormneuroatlas data/funatlas.h5",
               "connectome": "randi2023", "strain": strain, "kind": "functional",
               "species": "Caenorhabditis elegans", "citation": _FUNCTIONAL["randi2023"][1],
               "origin_version": compiled, "history": []},
    )
    return validate(ds)


def _check_neurons(neurons: str) -> None:
    if neurons not in ("annotated", "all"):
        raise InputDataError(f"neurons={neurons!r}: choose 'annotated' (the neurons the source "
                             "covers) or 'all' (the 302, NaN where not covered).")


def connectome(name: str | None = None, *, neurons: str = "annotated",
               strain: str = "wt") -> xr.Dataset | list[str]:
    """Load a C. elegans connectome by name, or list the names when ``name`` is ``None``.

    Parameters
    ----------
    name
        One of :data:`NAMES`: ``white1986``, ``varshney2011``, ``cook2019``,
        ``witvliet2020`` (adult dataset 8), ``witvliet2020-7``, ``consensus`` (the
        wormneuroatlas default) or ``randi2023`` (functional; see :func:`functional_atlas`).
    neurons
        ``"annotated"``: the 302-neuron cells the annotation covers (Witvliet's EM volumes
        cover the nerve ring only); ``"all"``: all 302 in canonical order, NaN where the
        annotation did not cover a neuron (absent is not the same as zero).
    strain
        For ``randi2023`` only: ``"wt"`` or ``"unc31"``.

    Returns
    -------
    xarray.Dataset or list of str
        ``weight(synapse_type, pre, post)`` with attrs ``units``, ``citation``, ``source``.

    Examples
    --------
    >>> import neurodata
    >>> "white1986" in neurodata.loaders.connectome()
    True
    >>> c = neurodata.loaders.connectome("white1986")
    >>> float(c.weight.sel(synapse_type="chemical", pre="ADAL", post="AIBL"))
    1.0
    """
    if name is None:
        return list(NAMES)
    if name not in NAMES:
        raise DatasetNotFoundError(f"unknown connectome {name!r}; known: {', '.join(NAMES)} "
                                   "(neurodata.loaders.connectome() lists them).")
    _check_neurons(neurons)
    if name in _FUNCTIONAL:
        return functional_atlas(strain, neurons=neurons)
    if name in _CECT:
        labels, stack, source = _from_cect(name)
        citation, units = _CECT[name][1], _CECT[name][2]
    else:
        labels, stack, source = _from_atlas(name)
        citation, units = _ATLAS[name][1], _ATLAS[name][2]
    labels, stack = _reorder(labels, stack, neurons)
    # Some annotations list a gap junction in one direction only; it conducts both ways.
    stack[1] = np.fmax(stack[1], stack[1].T)
    ds = xr.Dataset(
        {"weight": (("synapse_type", "pre", "post"), stack, {"units": units})},
        coords={"synapse_type": ("synapse_type", list(SYNAPSE_TYPES)),
                "pre": ("pre", np.array(labels, dtype=str)),
                "post": ("post", np.array(labels, dtype=str))},
        attrs={"schema_version": SCHEMA_VERSION, "source": source, "connectome": name,
               "kind": "anatomical", "species": "Caenorhabditis elegans",
               "citation": citation, "history": []},
    )
    return validate(ds)
