"""C. elegans: canonical neuron names, label normalisation, homogenized worm data, stacking.

- :data:`NEURONS_302`: the 302 neurons of the adult hermaphrodite, in the order of the
  ``wormneuroatlas`` atlas (``data/neuron_ids.txt``, which lists 300: it names AWCL/AWCR
  ``AWCOFF``/``AWCON`` and lacks CANL/CANR), with AWCL/AWCR and CANL/CANR restored. The set
  equals ``cect.Cells.PREFERRED_HERM_NEURON_NAMES`` (the tests check both packages).
- :func:`normalize_label` maps the spellings used by these packages and by published
  datasets (``"AVAL "``, ``"vb02"``, ``"AWCON"``, the 5-byte ``"AWCOF"`` of ``funatlas.h5``)
  onto the canonical names.
- :func:`load` reads the homogenized worm format of Simeon et al. 2024 (one row per worm and
  neuron, each holding a whole calcium sequence; HuggingFace ``qsimeon/celegans_neural_data``,
  written by ``neural_to_parquet.py`` of ``qsimeon/worm-data-preprocess``), from parquet or CSV.
- :func:`resample_animals` brings worms to one rate (default 1/0.333 s, the rate of that
  compilation) and :func:`stack_animals` stacks them along ``animal`` with NaN where a neuron
  was not recorded and a boolean ``recorded(animal, neuron)`` mask.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from neurodata.data import SCHEMA_VERSION, validate, with_history
from neurodata.errors import FormatError, InputDataError, MissingFieldError

NEURONS_302: tuple[str, ...] = tuple(
    """
    ADAL ADAR ADEL ADER ADFL ADFR ADLL ADLR AFDL AFDR AIAL AIAR AIBL AIBR AIML AIMR AINL AINR
    AIYL AIYR AIZL AIZR ALA ALML ALMR ALNL ALNR AQR AS1 AS2 AS3 AS4 AS5 AS6 AS7 AS8 AS9 AS10
    AS11 ASEL ASER ASGL ASGR ASHL ASHR ASIL ASIR ASJL ASJR ASKL ASKR AUAL AUAR AVAL AVAR AVBL
    AVBR AVDL AVDR AVEL AVER AVFL AVFR AVG AVHL AVHR AVJL AVJR AVKL AVKR AVL AVM AWAL AWAR AWBL
    AWBR AWCL AWCR BAGL BAGR BDUL BDUR CANL CANR CEPDL CEPDR CEPVL CEPVR DA1 DA2 DA3 DA4 DA5
    DA6 DA7 DA8 DA9 DB1 DB2 DB3 DB4 DB5 DB6 DB7 DD1 DD2 DD3 DD4 DD5 DD6 DVA DVB DVC FLPL FLPR
    HSNL HSNR IL1DL IL1DR IL1L IL1R IL1VL IL1VR IL2DL IL2DR IL2L IL2R IL2VL IL2VR LUAL LUAR
    OLLL OLLR OLQDL OLQDR OLQVL OLQVR PDA PDB PDEL PDER PHAL PHAR PHBL PHBR PHCL PHCR PLML PLMR
    PLNL PLNR PQR PVCL PVCR PVDL PVDR PVM PVNL PVNR PVPL PVPR PVQL PVQR PVR PVT PVWL PVWR RIAL
    RIAR RIBL RIBR RICL RICR RID RIFL RIFR RIGL RIGR RIH RIML RIMR RIPL RIPR RIR RIS RIVL RIVR
    RMDDL RMDDR RMDL RMDR RMDVL RMDVR RMED RMEL RMER RMEV RMFL RMFR RMGL RMGR RMHL RMHR SAADL
    SAADR SAAVL SAAVR SABD SABVL SABVR SDQL SDQR SIADL SIADR SIAVL SIAVR SIBDL SIBDR SIBVL
    SIBVR SMBDL SMBDR SMBVL SMBVR SMDDL SMDDR SMDVL SMDVR URADL URADR URAVL URAVR URBL URBR
    URXL URXR URYDL URYDR URYVL URYVR VA1 VA2 VA3 VA4 VA5 VA6 VA7 VA8 VA9 VA10 VA11 VA12 VB1
    VB2 VB3 VB4 VB5 VB6 VB7 VB8 VB9 VB10 VB11 VC1 VC2 VC3 VC4 VC5 VC6 VD1 VD2 VD3 VD4 VD5 VD6
    VD7 VD8 VD9 VD10 VD11 VD12 VD13 I1L I1R I2L I2R I3 I4 I5 I6 M1 M2L M2R M3L M3R M4 M5 MCL
    MCR MI NSML NSMR
    """.split()
)
"""The 302 neurons of the adult hermaphrodite (canonical spelling and order)."""

_INDEX = {name: i for i, name in enumerate(NEURONS_302)}

# wormneuroatlas maps the anatomical AWCL/AWCR to the functional AWC(OFF)/AWC(ON) names
# ("AWCL->AWCOFF and AWCR->AWCON"); funatlas.h5 stores ids as 5-byte strings, so "AWCOFF"
# arrives truncated to "AWCOF". The inverse mapping aligns those atlases with the 302.
_ALIASES = {"AWCOFF": "AWCL", "AWCOF": "AWCL", "AWCON": "AWCR"}
_PADDED = re.compile(r"^([A-Z]+)0+([1-9]\d*)$")

DEFAULT_RATE = 1.0 / 0.333
"""Sampling rate of the Simeon et al. 2024 homogenized data (dt = 0.333 s), in Hz."""

SIGNAL_COLUMNS = {
    "calcium_data": "time_in_seconds",
    "smooth_calcium_data": "time_in_seconds",
    "residual_calcium": "time_in_seconds",
    "smooth_residual_calcium": "time_in_seconds",
    "original_calcium_data": "original_time_in_seconds",
    "original_smooth_calcium_data": "original_time_in_seconds",
    "original_residual_calcium": "original_time_in_seconds",
    "original_smooth_residual_calcium": "original_time_in_seconds",
}
"""Sequence columns of the homogenized format and the time column each is sampled on."""


def normalize_label(label: object, *, strict: bool = False) -> str:
    """Return the canonical spelling of a C. elegans neuron label.

    Strips whitespace, upper-cases, drops zero padding (``"VB02"`` -> ``"VB2"``) and maps
    the AWC aliases of ``wormneuroatlas`` (``AWCOFF``/``AWCOF`` -> ``AWCL``, ``AWCON`` ->
    ``AWCR``, following its convention). Other labels are returned cleaned but unchanged.

    Parameters
    ----------
    label
        A neuron label (str or bytes).
    strict
        Raise when the result is not one of :data:`NEURONS_302`.

    Returns
    -------
    str

    Examples
    --------
    >>> from neurodata.loaders.celegans import normalize_label
    >>> normalize_label(" aval "), normalize_label("VB02"), normalize_label(b"AWCON")
    ('AVAL', 'VB2', 'AWCR')
    """
    if isinstance(label, bytes):
        label = label.decode("utf-8", "replace")
    if not isinstance(label, str):
        if strict:
            raise InputDataError(f"neuron label {label!r} is not a string.")
        return ""
    name = label.strip().upper()
    name = _ALIASES.get(name, name)
    match = _PADDED.match(name)
    if match and f"{match.group(1)}{match.group(2)}" in _INDEX:
        name = f"{match.group(1)}{match.group(2)}"
    if strict and name not in _INDEX:
        raise InputDataError(
            f"neuron label {label!r} (normalised {name!r}) is not one of the 302 hermaphrodite "
            "neurons (neurodata.loaders.celegans.NEURONS_302)."
        )
    return name


def canonical_order(labels: Sequence[str]) -> list[str]:
    """Sort labels in :data:`NEURONS_302` order, other labels after them alphabetically."""
    return sorted(labels, key=lambda n: (n not in _INDEX, _INDEX.get(n, 0), n))


# --------------------------------------------------------------------------- homogenized format


def _columns(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise FormatError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)."
                              ) from exc
        try:
            return list(pq.read_schema(path).names)
        except (OSError, ValueError) as exc:
            raise FormatError(f"{path}: cannot be read as parquet ({exc}).") from exc
    if suffix in (".csv", ".tsv"):
        try:
            return list(pd.read_csv(path, nrows=0, sep="\t" if suffix == ".tsv" else ",").columns)
        except (OSError, ValueError) as exc:
            raise FormatError(f"{path}: cannot be read as {suffix[1:]} ({exc}).") from exc
    raise FormatError(f"{path}: expected a .parquet or .csv file of the homogenized format.")


def _read_table(path: Path, required: list[str], optional: list[str]) -> pd.DataFrame:
    available = _columns(path)
    missing = [c for c in required if c not in available]
    if missing:
        raise MissingFieldError(f"{path}: missing columns {missing}; the homogenized worm "
                                "format needs 'worm', 'neuron', the signal and its time column.")
    columns = required + [c for c in optional if c in available]
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path, columns=columns)
        return pd.read_csv(path, usecols=columns, sep="\t" if path.suffix == ".tsv" else ",")
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: cannot be read ({exc}).") from exc


def _sequence(value: object, where: str) -> np.ndarray:
    """A sequence cell: an array (parquet) or its text form (CSV: "[0.1, 0.2]" or "[0.1 0.2]")."""
    if isinstance(value, str):
        if "..." in value:
            raise FormatError(f"{where}: the sequence was truncated ('...') when it was written "
                              "as text; export the full arrays (parquet or JSON lists).")
        text = value.strip().lstrip("[").rstrip("]").replace(",", " ")
        try:
            return np.array([float(v) for v in text.split()], dtype=float)
        except ValueError as exc:
            raise FormatError(f"{where}: cannot parse the sequence ({exc}).") from exc
    return np.asarray(value, dtype=float).ravel()


def _signal_attrs(method: object) -> tuple[str, str]:
    method = str(method).lower() if method is not None else ""
    if method in ("standard", "causal", "zscore"):
        return "zscore", "1"
    return "fluorescence", "a.u."


def _worm_dataset(rows: pd.DataFrame, signal: str, time_col: str, path: Path) -> xr.Dataset:
    first = rows.iloc[0]
    animal = f"{first.get('source_dataset', 'worms')}/{first['worm']}"
    where = f"{path}, worm {animal!r}"
    t = _sequence(first[time_col], f"{where}, column {time_col!r}")
    if t.size < 2 or not np.all(np.diff(t) > 0):
        raise FormatError(f"{where}: {time_col!r} is not strictly increasing.")
    traces, ids, labels, labeled = [], [], [], []
    for _, row in rows.iterrows():
        trace = _sequence(row[signal], f"{where}, neuron {row['neuron']!r}")
        if trace.size != t.size:
            raise FormatError(f"{where}: neuron {row['neuron']!r} has {trace.size} samples but "
                              f"{time_col!r} has {t.size}.")
        label = normalize_label(row["neuron"])
        is_labeled = bool(row["is_labeled_neuron"]) if "is_labeled_neuron" in row else (
            label in _INDEX)
        traces.append(trace)
        ids.append(label if is_labeled else f"unlabeled:{row['neuron']}")
        labels.append(label if is_labeled else "")
        labeled.append(is_labeled)
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise FormatError(f"{where}: neurons {dup} appear more than once.")
    sig, units = _signal_attrs(first.get("normalization_method"))
    rate = 1.0 / float(np.median(np.diff(t)))
    ds = xr.Dataset(
        {"activity": (("time", "neuron"), np.stack(traces, axis=1),
                      {"signal": sig, "units": units})},
        coords={
            "time": ("time", t, {"units": "s"}),
            "neuron_id": ("neuron", np.array(ids, dtype=str)),
            "neuron_label": ("neuron", np.array(labels, dtype=str)),
            "is_labeled": ("neuron", np.array(labeled, dtype=bool)),
        },
        attrs={
            "schema_version": SCHEMA_VERSION,
            "source": str(path.name),
            "format": "celegans-homogenized",
            "species": "Caenorhabditis elegans",
            "subject": animal,
            "source_dataset": str(first.get("source_dataset", "")),
            "signal_column": signal,
            "normalization_method": str(first.get("normalization_method", "")),
            "sampling_rate": round(rate, 9),
            "history": [],
        },
    )
    return validate(ds)


def load(
    path: str | Path,
    *,
    signal: str = "calcium_data",
    source_dataset: str | Sequence[str] | None = None,
    worms: Sequence[str] | None = None,
    labeled_only: bool = True,
    stack: bool = True,
    rate: float | None = None,
) -> xr.Dataset | list[xr.Dataset]:
    """Load the homogenized C. elegans format (Simeon et al. 2024) from parquet or CSV.

    Parameters
    ----------
    path
        ``*.parquet`` (needs pyarrow) or ``*.csv`` with one row per (worm, neuron): columns
        ``worm``, ``neuron``, the ``signal`` sequence and its time column, optionally
        ``source_dataset``, ``is_labeled_neuron``, ``normalization_method``.
    signal
        Which sequence column to load (a key of :data:`SIGNAL_COLUMNS`).
    source_dataset
        Keep only these source datasets (e.g. ``"Kato2015"``).
    worms
        Keep only these worms (``"<source_dataset>/<worm>"`` or the bare ``worm`` name).
    labeled_only
        Drop neurons without an identity (they cannot be matched across worms).
    stack
        Return one ``(animal, time, neuron)`` dataset (:func:`stack_animals`); otherwise a list
        of ``(time, neuron)`` datasets, one per worm.
    rate
        Resample every worm to this rate (Hz) first (:func:`resample_animals`); needed to
        stack ``original_*`` signals, whose rates differ between worms.

    Returns
    -------
    xarray.Dataset or list of xarray.Dataset

    Examples
    --------
    >>> from neurodata.loaders import celegans
    >>> ds = celegans.load("worm_data_short.parquet", source_dataset="Kato2015")  # doctest: +SKIP
    """
    path = Path(path)
    if signal not in SIGNAL_COLUMNS:
        raise InputDataError(f"signal {signal!r} is not a sequence column of the homogenized "
                             f"format; choose one of {sorted(SIGNAL_COLUMNS)}.")
    time_col = SIGNAL_COLUMNS[signal]
    table = _read_table(path, ["worm", "neuron", signal, time_col],
                        ["source_dataset", "is_labeled_neuron", "normalization_method"])
    if "source_dataset" not in table:
        table = table.assign(source_dataset="worms")
    if source_dataset is not None:
        wanted = [source_dataset] if isinstance(source_dataset, str) else list(source_dataset)
        table = table[table["source_dataset"].isin(wanted)]
    if worms is not None:
        key = table["source_dataset"].astype(str) + "/" + table["worm"].astype(str)
        table = table[key.isin(worms) | table["worm"].astype(str).isin(worms)]
    if table.empty:
        raise InputDataError(f"{path}: no rows left after selecting source_dataset="
                             f"{source_dataset!r}, worms={worms!r}.")
    out = []
    for _, rows in table.groupby(["source_dataset", "worm"], sort=False):
        ds = _worm_dataset(rows, signal, time_col, path)
        if labeled_only:
            ds = ds.isel(neuron=np.flatnonzero(ds["is_labeled"].values))
            if ds.sizes["neuron"] == 0:
                continue
        out.append(ds)
    if not out:
        raise InputDataError(f"{path}: no worm has a labeled neuron; pass labeled_only=False.")
    if rate is not None:
        out = resample_animals(out, rate)
    return stack_animals(out) if stack else out


# --------------------------------------------------------------------------- multi-animal


def resample_animals(datasets: Sequence[xr.Dataset], rate: float = DEFAULT_RATE
                     ) -> list[xr.Dataset]:
    """Resample every ``(time, neuron)`` dataset to ``rate`` Hz (linear interpolation).

    Parameters
    ----------
    datasets
        One dataset per animal.
    rate
        Target rate in Hz (default 1/0.333 s, the rate of the Simeon et al. compilation).

    Returns
    -------
    list of xarray.Dataset
    """
    from neurodata.preprocess import resample

    return [resample(ds, rate) for ds in datasets]


def _animal_names(datasets: Sequence[xr.Dataset]) -> list[str]:
    names = [str(ds.attrs.get("subject") or ds.attrs.get("session") or f"animal{i}")
             for i, ds in enumerate(datasets)]
    if len(set(names)) != len(names):  # e.g. several worms without a subject attr
        names = [f"{name}#{i}" for i, name in enumerate(names)]
    return names


def stack_animals(datasets: Sequence[xr.Dataset], *, match_on: str = "neuron_id"
                  ) -> xr.Dataset:
    """Stack ``(time, neuron)`` recordings of several animals along ``animal``.

    Neurons are matched by ``match_on`` (default ``neuron_id``; for worms loaded here it is
    the canonical label; use ``"neuron_label"`` for recordings whose ids are ROI numbers but
    which carry identified labels), and ordered as in
    :data:`NEURONS_302` (other ids after them). Each animal's time starts at 0 (its original
    start is kept in ``start_time(animal)``); shorter recordings are padded with NaN, as are
    neurons an animal did not record.

    Parameters
    ----------
    datasets
        Validated datasets with ``activity(time, neuron)``, all at the same sampling rate
        and with the same ``signal`` and ``units`` (use :func:`resample_animals` first).
    match_on
        The per-neuron coordinate that identifies a neuron across animals; its values become
        the ``neuron_id`` of the result.

    Returns
    -------
    xarray.Dataset
        ``activity(animal, time, neuron)`` (float, NaN where missing), ``recorded(animal,
        neuron)`` (bool), ``n_samples(animal)``, ``start_time(animal)``; ``behavior(animal,
        time, behavior_channel)`` when every input has the same behaviour channels.

    Raises
    ------
    InputDataError
        Naming the animal whose rate, signal, units or layout differs.

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> from neurodata.loaders.celegans import stack_animals
    >>> a = neurodata.from_arrays(np.ones((4, 2)), 3.0, neuron_ids=["AVAR", "AVAL"],
    ...                           signal="dff", attrs={"subject": "w1"})
    >>> b = neurodata.from_arrays(np.ones((3, 1)), 3.0, neuron_ids=["RIML"], signal="dff",
    ...                           attrs={"subject": "w2"})
    >>> s = stack_animals([a, b])
    >>> dict(s.sizes), s.neuron_id.values.tolist(), int(s.recorded.sum())
    ({'animal': 2, 'time': 4, 'neuron': 3}, ['AVAL', 'AVAR', 'RIML'], 3)
    """
    datasets = list(datasets)
    if not datasets:
        raise InputDataError("stack_animals needs at least one dataset.")
    names = _animal_names(datasets)
    ref = datasets[0]
    for name, ds in zip(names, datasets, strict=True):
        validate(ds)
        if "activity" not in ds or ds["activity"].dims != ("time", "neuron"):
            raise InputDataError(f"animal {name!r}: stack_animals needs activity(time, neuron).")
        if "sampling_rate" not in ds.attrs:
            raise InputDataError(f"animal {name!r} has no 'sampling_rate' attr; resample it "
                                 "with resample_animals(datasets, rate) first.")
        if not np.isclose(ds.attrs["sampling_rate"], ref.attrs["sampling_rate"], rtol=1e-6):
            raise InputDataError(
                f"animal {name!r} is sampled at {ds.attrs['sampling_rate']} Hz but animal "
                f"{names[0]!r} at {ref.attrs['sampling_rate']} Hz; bring them to one rate "
                "with neurodata.loaders.celegans.resample_animals(datasets, rate)."
            )
        if match_on not in ds.coords or ds[match_on].dims != ("neuron",):
            raise InputDataError(f"animal {name!r} has no per-neuron coordinate {match_on!r} "
                                 "to match neurons on.")
        keys = [str(v) for v in ds[match_on].values]
        if "" in keys or len(set(keys)) != len(keys):
            raise InputDataError(f"animal {name!r}: {match_on!r} has empty or duplicated values; "
                                 "drop unidentified neurons before stacking.")
        for key in ("signal", "units"):
            if ds["activity"].attrs.get(key) != ref["activity"].attrs.get(key):
                raise InputDataError(
                    f"animal {name!r} has activity {key} {ds['activity'].attrs.get(key)!r} but "
                    f"animal {names[0]!r} has {ref['activity'].attrs.get(key)!r}."
                )
    rate = float(ref.attrs["sampling_rate"])
    ids = canonical_order(sorted({str(i) for ds in datasets for i in ds[match_on].values}))
    col = {n: j for j, n in enumerate(ids)}
    n_time = max(ds.sizes["time"] for ds in datasets)
    dtype = np.result_type(np.float32, *[ds["activity"].dtype for ds in datasets])
    activity = np.full((len(datasets), n_time, len(ids)), np.nan, dtype=dtype)
    recorded = np.zeros((len(datasets), len(ids)), dtype=bool)
    for a, ds in enumerate(datasets):
        cols = [col[str(i)] for i in ds[match_on].values]
        activity[a, : ds.sizes["time"], cols] = np.asarray(ds["activity"].values, dtype=dtype).T
        recorded[a, cols] = True
    data_vars = {
        "activity": (("animal", "time", "neuron"), activity, dict(ref["activity"].attrs)),
        "recorded": (("animal", "neuron"), recorded),
        "n_samples": ("animal", np.array([ds.sizes["time"] for ds in datasets])),
        "start_time": ("animal", np.array([float(ds["time"].values[0]) for ds in datasets]),
                       {"units": "s"}),
    }
    channels = [tuple(ds["behavior_channel"].values) if "behavior" in ds else None
                for ds in datasets]
    if channels[0] is not None and all(c == channels[0] for c in channels):
        behavior = np.full((len(datasets), n_time, len(channels[0])), np.nan)
        for a, ds in enumerate(datasets):
            behavior[a, : ds.sizes["time"]] = ds["behavior"].values
        data_vars["behavior"] = (("animal", "time", "behavior_channel"), behavior)
    coords = {
        "animal": ("animal", np.array(names, dtype=str)),
        "time": ("time", np.arange(n_time) / rate, {"units": "s"}),
        "neuron_id": ("neuron", np.array(ids, dtype=str)),
        "neuron_label": ("neuron", np.array([n if n in _INDEX else "" for n in ids], dtype=str)),
    }
    if "behavior" in data_vars:
        coords["behavior_channel"] = ("behavior_channel", np.array(channels[0], dtype=str))
    sources = sorted({str(ds.attrs.get("source", "")) for ds in datasets} - {""})
    attrs = {
        "schema_version": SCHEMA_VERSION,
        "sampling_rate": rate,
        "source": "; ".join(sources),
        "format": str(ref.attrs.get("format", "")),
        "species": str(ref.attrs.get("species", "")),
        "history": [],
    }
    out = xr.Dataset(data_vars, coords=coords, attrs={k: v for k, v in attrs.items() if v != ""})
    return validate(with_history(out, f"stack_animals(n_animals={len(datasets)}, "
                                      f"match_on={match_on!r})"))
