"""MATLAB files whose layout neurodata knows.

- ``"stevenson2011"``: the Stevenson et al. 2011 M1 reaching recording. The file holds
  ``spikes`` (neuron x bin, uint8 counts in 50 ms bins), ``time`` (1 x bin, seconds),
  ``handPos`` and ``handVel`` (3 x bin; the third row is all zeros: the task is planar, so
  only x and y are kept).
- ``"kriegeskorte2008"``: the 92-image RSA data of Kriegeskorte et al. 2008 (Neuron), a
  folder of three files (``92_brainRDMs.mat``, ``92_modelRDMs.mat``,
  ``Kriegeskorte_Neuron2008_supplementalData.mat``), loaded as RDMs, images and category
  labels (see :func:`load_kriegeskorte2008`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import scipy.spatial.distance
import xarray as xr

from neurodata.data import SCHEMA_VERSION, validate
from neurodata.errors import FormatError, MissingFieldError

KRIEGESKORTE_FILES = (
    "92_brainRDMs.mat",
    "92_modelRDMs.mat",
    "Kriegeskorte_Neuron2008_supplementalData.mat",
)


def _read_mat(path: Path) -> dict:
    try:
        return scipy.io.loadmat(path, squeeze_me=False)
    except (ValueError, TypeError, OSError, NotImplementedError,
            scipy.io.matlab.MatReadError) as exc:
        raise FormatError(
            f"{path}: not a readable MATLAB v5/v7 file ({exc}). MATLAB v7.3 files are HDF5: "
            "open them with h5py."
        ) from exc


def load_stevenson2011(path: Path) -> xr.Dataset:
    """Load the Stevenson 2011 M1 file as spike counts plus hand position and velocity.

    Parameters
    ----------
    path
        ``m1_stevenson_2011.mat``.

    Returns
    -------
    xarray.Dataset
        ``activity(time, neuron)`` spike counts in 50 ms bins, ``behavior(time,
        behavior_channel)`` with channels ``pos_x, pos_y, vel_x, vel_y``.
    """
    mat = _read_mat(path)
    for field in ("spikes", "time", "handPos", "handVel"):
        if field not in mat:
            raise MissingFieldError(f"{path}: field {field!r} is missing; this is not the "
                                    "Stevenson 2011 M1 file.")
    spikes = np.asarray(mat["spikes"]).T
    time = np.asarray(mat["time"], dtype=float).ravel()
    if spikes.shape[0] != time.size:
        raise FormatError(f"{path}: 'spikes' has {spikes.shape[0]} bins but 'time' {time.size}.")
    behavior = np.concatenate([np.asarray(mat["handPos"])[:2], np.asarray(mat["handVel"])[:2]]).T
    dt = float(np.median(np.diff(time)))
    ds = xr.Dataset(
        {
            "activity": (("time", "neuron"), spikes, {"signal": "spike_count",
                                                      "units": "count"}),
            "behavior": (("time", "behavior_channel"), behavior.astype(float)),
        },
        coords={
            "time": ("time", time, {"units": "s"}),
            "neuron_id": ("neuron", np.array([f"n{i:03d}" for i in range(spikes.shape[1])])),
            "behavior_channel": ("behavior_channel", ["pos_x", "pos_y", "vel_x", "vel_y"]),
        },
        attrs={
            "schema_version": "1.0",
            "source": str(path.name),
            "format": "matlab",
            "species": "Macaca mulatta",
            "subject": "stevenson2011",
            "sampling_rate": round(1.0 / dt, 9),
            "bin_size": round(dt, 9),
            "history": [],
        },
    )
    return validate(ds)


def _field(entry: np.void, name: str, where: str) -> np.ndarray:
    if name not in (entry.dtype.names or ()):
        raise MissingFieldError(f"{where}: struct field {name!r} is missing.")
    return np.asarray(entry[name])


def _text(value: np.ndarray) -> str:
    flat = np.asarray(value).ravel()
    return str(flat[0]) if flat.size else ""


def _square(rdm: np.ndarray, where: str) -> np.ndarray:
    """A 92 x 92 RDM from a square matrix or a condensed (pdist-order) vector."""
    rdm = np.asarray(rdm, dtype=np.float64)
    if rdm.ndim == 2 and 1 in rdm.shape:
        rdm = scipy.spatial.distance.squareform(rdm.ravel(), checks=False)
    if rdm.shape != (92, 92):
        raise FormatError(f"{where}: RDM of shape {rdm.shape}; expected 92 x 92 or 4186 values.")
    if not np.all(np.isfinite(rdm)) or not np.allclose(rdm, rdm.T) or np.any(np.diag(rdm) != 0):
        raise FormatError(f"{where}: the RDM is not a finite symmetric matrix with zero diagonal.")
    return rdm


def load_kriegeskorte2008(path: Path) -> xr.Dataset:
    """Load the 92-image RSA data of Kriegeskorte et al. 2008 (human IT, monkey IT, models).

    Parameters
    ----------
    path
        The folder holding the three files (or any one of them).

    Returns
    -------
    xarray.Dataset
        ``dissimilarity(rdm, stimulus, stimulus_)`` float64 with 18 RDMs: the 8 human IT
        RDMs of ``92_brainRDMs.mat`` (subjects 1-4 x sessions 1-2, subject-major), the 8
        model RDMs of ``92_modelRDMs.mat`` in file order, then the monkey IT (674 neurons) and
        human IT (316 voxels) RDMs of the supplemental file (stored there as condensed
        vectors). Coordinates on ``rdm``: ``rdm_name``, ``rdm_kind`` (``"brain"`` or
        ``"model"``), ``subject`` (``""`` when none), ``session`` (0 when none), ``region``
        (``"hIT"``, ``"mIT"`` or ``""``). On ``stimulus``: ``stimulus_id`` (``"0"`` ..
        ``"91"``), ``category`` (e.g. ``"human face"``), ``natural`` and the 12 boolean
        category vectors under their names in the file (``animate``, ``inanim``, ``human``,
        ``nonhumani``, ``body``, ``face``, ``natObj``, ``artiObj``, ``rand24``, ``rand48``,
        ``other48``, ``monkeyape``). ``image(stimulus, y, x, channel)`` uint8 (175 x 175 RGB).

    Examples
    --------
    >>> import neurodata
    >>> ds = neurodata.load("rsa_92images/")  # doctest: +SKIP
    >>> ds.dissimilarity.sizes  # doctest: +SKIP
    Frozen({'rdm': 18, 'stimulus': 92, 'stimulus_': 92})
    """
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    missing = [f for f in KRIEGESKORTE_FILES if not (folder / f).exists()]
    if missing:
        raise MissingFieldError(f"{folder}: {missing} missing; the 92-image layout needs "
                                f"{list(KRIEGESKORTE_FILES)} in one folder.")
    brain_path, model_path, supp_path = (folder / f for f in KRIEGESKORTE_FILES)
    rdms, names, kinds, subjects, sessions, regions = [], [], [], [], [], []

    brain = _read_mat(brain_path)
    if "RDMs" not in brain:
        raise MissingFieldError(f"{brain_path}: variable 'RDMs' is missing.")
    entries = np.asarray(brain["RDMs"])
    if entries.ndim != 3 or entries.shape[1:] != (4, 2):
        raise FormatError(f"{brain_path}: 'RDMs' has shape {entries.shape}; expected 1x4x2.")
    for subj in range(4):
        for sess in range(2):
            entry = entries[0, subj, sess]
            name = _text(_field(entry, "name", str(brain_path)))
            parts = [p.strip() for p in name.split("|")]  # e.g. "hIT | BE | Session: 1"
            rdms.append(_square(_field(entry, "RDM", str(brain_path)), f"{brain_path} {name}"))
            names.append(name)
            kinds.append("brain")
            subjects.append(parts[1] if len(parts) > 1 else str(subj + 1))
            sessions.append(sess + 1)
            regions.append("hIT")

    models = _read_mat(model_path)
    if "Models" not in models:
        raise MissingFieldError(f"{model_path}: variable 'Models' is missing.")
    for entry in np.asarray(models["Models"]).ravel():
        name = _text(_field(entry, "name", str(model_path)))
        rdms.append(_square(_field(entry, "RDM", str(model_path)), f"{model_path} {name}"))
        names.append(name)
        kinds.append("model")
        subjects.append("")
        sessions.append(0)
        regions.append("")

    supp = _read_mat(supp_path)
    for field in ("RDMs_mIT_hIT_fig1", "stimuli_92objs", "categoryVectors", "categoryLabels"):
        if field not in supp:
            raise MissingFieldError(f"{supp_path}: variable {field!r} is missing.")
    for entry in np.asarray(supp["RDMs_mIT_hIT_fig1"]).ravel():
        name = _text(_field(entry, "name", str(supp_path)))
        rdms.append(_square(_field(entry, "RDM", str(supp_path)), f"{supp_path} {name}"))
        names.append(name)
        kinds.append("brain")
        subjects.append("")
        sessions.append(0)
        regions.append("mIT" if name.startswith("mIT") else "hIT")

    stimuli = np.asarray(supp["stimuli_92objs"]).ravel()
    vectors = np.asarray(supp["categoryVectors"])
    labels = [_text(label) for label in np.asarray(supp["categoryLabels"]).ravel()]
    if stimuli.size != 92 or vectors.shape != (92, len(labels)):
        raise FormatError(f"{supp_path}: {stimuli.size} stimuli and category vectors of shape "
                          f"{vectors.shape}; expected 92 of each.")
    images = np.stack([np.asarray(_field(s, "image", str(supp_path)), dtype=np.uint8)
                       for s in stimuli])
    stim_coords = {
        "stimulus_id": ("stimulus", np.array([str(i) for i in range(92)])),
        "category": ("stimulus", np.array([_text(s["category"]) for s in stimuli], dtype=str)),
        "natural": ("stimulus", np.array([bool(np.ravel(s["natural"])[0]) for s in stimuli])),
    }
    for j, label in enumerate(labels):
        stim_coords[label] = ("stimulus", vectors[:, j].astype(bool))
    ds = xr.Dataset(
        {
            "dissimilarity": (("rdm", "stimulus", "stimulus_"), np.stack(rdms)),
            "image": (("stimulus", "y", "x", "channel"), images),
        },
        coords={
            "rdm_name": ("rdm", np.array(names, dtype=str)),
            "rdm_kind": ("rdm", np.array(kinds, dtype=str)),
            "subject": ("rdm", np.array(subjects, dtype=str)),
            "session": ("rdm", np.array(sessions, dtype=np.int64)),
            "region": ("rdm", np.array(regions, dtype=str)),
            **stim_coords,
        },
        attrs={
            "schema_version": SCHEMA_VERSION,
            "source": folder.name,
            "format": "matlab",
            "layout": "kriegeskorte2008",
            "files": list(KRIEGESKORTE_FILES),
            "species": "Homo sapiens, Macaca mulatta",
            "citation": "Kriegeskorte et al. 2008, Neuron 60(6):1126-1141",
            "origin": "rsagroup/rsatoolbox@f1f83cadb7243492a1aae7460466e0f0140b20ac:"
                      "demos/92imageData",
            "history": [],
        },
    )
    return validate(ds)


LAYOUTS = {"stevenson2011": load_stevenson2011, "kriegeskorte2008": load_kriegeskorte2008}


def detect_layout(path: str | Path) -> str:
    """The layout of a MATLAB file or folder: ``"kriegeskorte2008"`` or ``"stevenson2011"``."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir() or path.name in KRIEGESKORTE_FILES:
        if (folder / KRIEGESKORTE_FILES[0]).exists():
            return "kriegeskorte2008"
        raise FormatError(f"{path}: not a known MATLAB layout; pass layout= one of "
                          f"{sorted(LAYOUTS)}.")
    return "stevenson2011"


def load(path: Path, layout: str | None = None) -> xr.Dataset:
    """Load a MATLAB file or folder whose ``layout`` neurodata knows.

    Parameters
    ----------
    path
        A ``.mat`` file, or the folder of the 92-image RSA data.
    layout
        One of :data:`LAYOUTS`; default :func:`detect_layout` (a folder holding
        ``92_brainRDMs.mat`` is ``"kriegeskorte2008"``, a single file ``"stevenson2011"``).

    Returns
    -------
    xarray.Dataset
    """
    layout = layout or detect_layout(path)
    if layout not in LAYOUTS:
        raise FormatError(f"unknown MATLAB layout {layout!r}; known: {sorted(LAYOUTS)}.")
    return LAYOUTS[layout](Path(path))
