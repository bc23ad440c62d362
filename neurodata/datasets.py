"""The dataset registry: ``datasets.yaml`` resolved from a mirror, the cache or the web.

Resolution order for every file of an entry:

1. ``$NEURODATA_MIRROR/<mirror_path>`` (a local folder holding the files, e.g. the project's
   ``../shared/data`` in CI),
2. the cache folder ``$NEURODATA_DATA_DIR`` (default: the pooch user cache for neurodata),
   where the files of dataset ``id`` live in ``<cache>/<id>/``,
3. a download with pooch (progress bar) into the cache, trying ``url`` then ``mirrors``.

Files are matched by sha256 in every case; a mismatch raises :class:`ChecksumError` naming
the file and both sums, and a bad download is not kept. Two opt-ins guard what cannot be
checked: an entry whose sha256 is not pinned (``sha256: null``, only allowed together with
``offline_checked: false``) is refused unless ``allow_unverified=True``, and an entry whose
``license`` is ``unknown`` is refused unless ``allow_unlicensed=True``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import yaml

from neurodata.errors import (
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    FormatError,
    LicenseError,
)

REGISTRY_ENV = "NEURODATA_REGISTRY"
MIRROR_ENV = "NEURODATA_MIRROR"
CACHE_ENV = "NEURODATA_DATA_DIR"

SIZE_CLASSES = ("ci", "tutorial", "large")
PROCESSORS = (None, "unzip", "untar")


@dataclass(frozen=True)
class FileEntry:
    """One file of a registry entry.

    ``sha256`` is ``None`` only for entries marked ``offline_checked: false`` whose checksum
    nobody could pin yet; such files are fetched only with ``allow_unverified=True``.
    """

    name: str
    url: str
    sha256: str | None
    mirror_path: str = ""
    size_bytes: int | None = None
    processor: str | None = None
    mirrors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Entry:
    """One dataset of the registry (one item of ``datasets.yaml``).

    ``verify_options`` are loader options that :func:`verify` (and the demo) pass when the
    loader needs information the files lack, e.g. the Suite2p frame rate.
    """

    id: str
    title: str
    modality: str
    format: str
    loader: str
    files: tuple[FileEntry, ...]
    license: str
    citation: str
    size_class: str
    description: str = ""
    loader_kwargs: dict = field(default_factory=dict)
    verify_options: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)
    origin_version: str = ""
    derived_version: str = "1"
    expected: dict = field(default_factory=dict)
    offline_checked: bool = False
    requires: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def pinned(self) -> bool:
        """Whether every file has a sha256."""
        return all(f.sha256 for f in self.files)


def registry_path() -> Path:
    """Path of the ``datasets.yaml`` in use (``$NEURODATA_REGISTRY`` overrides)."""
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    packaged = resources.files("neurodata") / "datasets.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "datasets.yaml"


def _build(cls, raw: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise FormatError(f"{where}: unknown keys {unknown}; allowed keys are {sorted(known)}.")
    try:
        return cls(**raw)
    except TypeError as exc:  # a required key is missing
        raise FormatError(f"{where}: {exc}. See the schema in neurodata/datasets.py.") from exc


def _parse_entry(item: Any, path: str, index: int) -> Entry:
    if not isinstance(item, dict) or "id" not in item:
        raise FormatError(f"dataset registry {path}: item {index} has no 'id'.")
    item = dict(item)
    where = f"dataset registry {path}, entry {item['id']!r}"
    files = []
    for f in item.pop("files", None) or []:
        f = dict(f)
        f["mirrors"] = tuple(f.get("mirrors") or ())
        files.append(_build(FileEntry, f, f"{where}, file {f.get('name')!r}"))
    if not files:
        raise FormatError(f"{where}: 'files' is empty; every entry needs at least one file.")
    for key in ("requires", "tags"):
        item[key] = tuple(item.get(key) or ())
    for key in ("loader_kwargs", "verify_options", "origin", "expected"):
        item[key] = dict(item.get(key) or {})
    entry = _build(Entry, {**item, "files": tuple(files)}, where)
    if entry.size_class not in SIZE_CLASSES:
        raise FormatError(f"{where}: size_class {entry.size_class!r} is not one of "
                          f"{list(SIZE_CLASSES)}.")
    for f in entry.files:
        if f.sha256 is None and entry.offline_checked:
            raise FormatError(f"{where}: file {f.name!r} has no sha256 but the entry says "
                              "offline_checked: true; pin the checksum or set it to false.")
        if f.processor not in PROCESSORS:
            raise FormatError(f"{where}: file {f.name!r} has processor {f.processor!r}; "
                              f"choose one of {list(PROCESSORS)}.")
    if str(entry.origin.get("version", "")).lower() == "draft":
        raise FormatError(f"{where}: origin version 'draft' is not reproducible; pin a "
                          "published version.")
    return entry


@lru_cache(maxsize=8)
def _read_registry(path: str, mtime: float) -> dict[str, Entry]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FormatError(f"dataset registry {path} cannot be read: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), list):
        raise FormatError(f"dataset registry {path}: expected a top-level 'datasets:' list.")
    entries: dict[str, Entry] = {}
    for index, item in enumerate(raw["datasets"]):
        entry = _parse_entry(item, path, index)
        if entry.id in entries:
            raise FormatError(f"dataset registry {path}: id {entry.id!r} appears twice.")
        entries[entry.id] = entry
    return entries


def registry() -> dict[str, Entry]:
    """All registry entries by id."""
    path = registry_path()
    if not path.is_file():
        raise FormatError(f"dataset registry {path} does not exist; set {REGISTRY_ENV} to a "
                          "datasets.yaml.")
    return _read_registry(str(path), path.stat().st_mtime)


def list_datasets(size_class: str | None = None) -> list[str]:
    """Ids of all registered datasets, optionally only those of one ``size_class``."""
    return sorted(k for k, e in registry().items() if size_class in (None, e.size_class))


def info(dataset_id: str) -> Entry:
    """The registry entry of ``dataset_id``.

    Examples
    --------
    >>> import neurodata
    >>> neurodata.datasets.info("stevenson2011-m1").license
    'MIT'
    """
    entries = registry()
    if dataset_id not in entries:
        raise DatasetNotFoundError(
            f"unknown dataset id {dataset_id!r}; known ids: {', '.join(sorted(entries))}. "
            "Run `neurodata datasets list`."
        )
    return entries[dataset_id]


def sha256sum(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, entry: FileEntry, dataset_id: str) -> Path:
    if entry.sha256 is None:  # only reachable with allow_unverified=True
        warnings.warn(
            f"checksum not pinned for file {entry.name!r} of dataset {dataset_id!r}: using "
            f"{path} unverified (its sha256 is {sha256sum(path)}; pin it in datasets.yaml).",
            stacklevel=3,
        )
        return path
    size = path.stat().st_size
    if entry.size_bytes is not None and size != entry.size_bytes:
        raise ChecksumError(
            f"{path} (file {entry.name!r} of dataset {dataset_id!r}) has {size} bytes, expected "
            f"{entry.size_bytes} (sha256 {entry.sha256}); it is truncated or another file. "
            f"Delete it or point {MIRROR_ENV} at a good copy."
        )
    actual = sha256sum(path)
    if actual != entry.sha256:
        raise ChecksumError(
            f"{path} (file {entry.name!r} of dataset {dataset_id!r}) has sha256 {actual}, "
            f"expected {entry.sha256}; delete it or point {MIRROR_ENV} at a good copy."
        )
    return path


def cache_dir() -> Path:
    """The download cache (``$NEURODATA_DATA_DIR`` or the pooch user cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import pooch

    return Path(pooch.os_cache("neurodata"))


def _guard(entry: Entry, allow_unverified: bool, allow_unlicensed: bool) -> None:
    if entry.license.strip().lower() == "unknown" and not allow_unlicensed:
        raise LicenseError(
            f"dataset {entry.id!r} has licence 'unknown': its terms of reuse are not known. "
            "Check them yourself, then pass allow_unlicensed=True (CLI: --allow-unlicensed)."
        )
    if not entry.pinned and not allow_unverified:
        raise ChecksumError(
            f"dataset {entry.id!r}: checksum not pinned (offline_checked: false), so its files "
            "cannot be verified. Pass allow_unverified=True (CLI: --allow-unverified) to fetch "
            "them anyway; the sums they had are printed so that you can pin them."
        )


def fetch(
    dataset_id: str,
    *,
    progress: bool = True,
    allow_unverified: bool = False,
    allow_unlicensed: bool = False,
) -> list[Path]:
    """Resolve every file of ``dataset_id`` to a local, checksum-verified path.

    Parameters
    ----------
    dataset_id
        A registry id.
    progress
        Show a progress bar while downloading.
    allow_unverified
        Accept files whose sha256 the registry does not pin (with a warning).
    allow_unlicensed
        Accept an entry whose licence is ``unknown``.

    Returns
    -------
    list of pathlib.Path
        One path per file, in registry order (processed archives resolve to their folder).

    Raises
    ------
    DatasetNotFoundError, LicenseError, ChecksumError, DownloadError
    """
    entry = info(dataset_id)
    _guard(entry, allow_unverified, allow_unlicensed)
    return [_fetch_file(entry, f, progress) for f in entry.files]


def _fetch_file(entry: Entry, f: FileEntry, progress: bool) -> Path:
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and f.mirror_path and (Path(mirror) / f.mirror_path).is_file():
        return _process(_check(Path(mirror) / f.mirror_path, f, entry.id), f, entry)
    cached = cache_dir() / entry.id / f.name
    if cached.is_file():
        return _process(_check(cached, f, entry.id), f, entry)
    return _process(_download(entry, f, cached, progress), f, entry)


def _download(entry: Entry, f: FileEntry, target: Path, progress: bool) -> Path:
    """Download ``f`` to a temporary name beside ``target``, verify it, rename into place."""
    import pooch
    import requests

    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in (f.url, *f.mirrors):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{f.name}.", suffix=".part", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            try:
                pooch.HTTPDownloader(progressbar=progress, timeout=60)(url, str(tmp), None)
            except (requests.RequestException, OSError) as exc:
                errors.append(f"{url}: {exc}")
                continue
            _check(tmp, f, entry.id)
            os.replace(tmp, target)
            return target
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(
        f"file {f.name!r} of dataset {entry.id!r} could not be downloaded ("
        + "; ".join(errors)
        + f"). Check the network, or set {MIRROR_ENV} to a folder holding {f.mirror_path or f.name}"
        f" (or put the file at {target})."
    )


def _process(path: Path, f: FileEntry, entry: Entry) -> Path:
    """Unpack an archive once into ``<cache>/<id>/<name>.d/`` (atomically) and return it."""
    if f.processor is None:
        return path
    out = cache_dir() / entry.id / f"{f.name}.d"
    if out.is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if f.processor == "unzip":
            with zipfile.ZipFile(path) as archive:
                archive.extractall(tmp)
        else:
            with tarfile.open(path) as archive:
                archive.extractall(tmp, filter="data")
        os.replace(tmp, out)
    except (zipfile.BadZipFile, tarfile.TarError) as exc:
        raise FormatError(f"{path}: cannot unpack ({exc}).") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _loader_input(entry: Entry, paths: list[Path]) -> Path:
    """The single file, or the one folder that holds all files of a multi-file entry."""
    if len(paths) == 1:
        return paths[0]
    parents = {p.parent for p in paths}
    if len(parents) == 1:
        return parents.pop()
    # Files resolved from different places (part mirror, part cache): gather them in the cache.
    folder = cache_dir() / entry.id
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if p.parent != folder:
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=folder)
            os.close(fd)
            shutil.copyfile(p, tmp)
            os.replace(tmp, folder / p.name)
    return folder


def _run_loader(entry: Entry, path: Path, options: dict) -> xr.Dataset:
    from neurodata.loaders import FORMATS

    module_name = FORMATS.get(entry.loader, entry.loader)
    try:
        module = importlib.import_module(f"neurodata.loaders.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"neurodata.loaders.{module_name}":
            raise
        raise FormatError(f"dataset {entry.id!r} needs loader {entry.loader!r}, which this "
                          "neurodata installation does not have.") from exc
    return module.load(path, **{**entry.loader_kwargs, **options})


def load(
    dataset_id: str,
    *,
    progress: bool = True,
    allow_unverified: bool = False,
    allow_unlicensed: bool = False,
    **options: Any,
) -> xr.Dataset:
    """Load a registered dataset into the neurodata data model.

    A single-file entry passes its file to the loader; a multi-file entry passes the folder
    that holds all its files.

    Parameters
    ----------
    dataset_id
        A registry id (see :func:`list_datasets`).
    progress, allow_unverified, allow_unlicensed
        See :func:`fetch`.
    **options
        Loader options that override the registry's ``loader_kwargs`` (e.g.
        ``sampling_rate=30.0`` for a Suite2p entry).

    Returns
    -------
    xarray.Dataset
        With ``source`` set to the dataset id and ``license`` / ``citation`` attrs.

    Examples
    --------
    >>> import neurodata
    >>> ds = neurodata.datasets.load("stevenson2011-m1")  # doctest: +SKIP
    >>> ds = neurodata.datasets.load("suite2p-plane0-demo", sampling_rate=30.0)  # doctest: +SKIP
    """
    entry = info(dataset_id)
    paths = fetch(dataset_id, progress=progress, allow_unverified=allow_unverified,
                  allow_unlicensed=allow_unlicensed)
    ds = _run_loader(entry, _loader_input(entry, paths), options)
    ds.attrs.update(source=dataset_id, license=entry.license, citation=entry.citation)
    if entry.origin_version:
        ds.attrs["origin_version"] = str(entry.origin_version)
    return ds


def _mismatch(dataset_id: str, what: str, got: Any, expected: Any) -> FormatError:
    return FormatError(f"dataset {dataset_id!r}: {what} is {got}, but the registry expects "
                       f"{expected}. The loader or the files changed; fix one or update "
                       "'expected' in datasets.yaml.")


def verify(dataset_id: str, ds: xr.Dataset | None = None, **options: Any) -> xr.Dataset:
    """Load ``dataset_id`` (unless ``ds`` is given) and check the entry's ``expected`` block.

    Checked keys: ``dims`` (``{dim: size}``), ``variables`` (names that must exist),
    ``n_spikes`` (size of the ``spike`` dim), ``time_range_s`` (first and last time, to
    1 ms) and ``attrs`` (exact values).

    Parameters
    ----------
    dataset_id
        A registry id.
    ds
        An already loaded dataset to check instead of loading it again.
    **options
        Loader options; default the entry's ``verify_options``.

    Returns
    -------
    xarray.Dataset
        The checked dataset.

    Raises
    ------
    FormatError
        Naming the first expectation that does not hold.
    """
    entry = info(dataset_id)
    if ds is None:
        ds = load(dataset_id, progress=False, **{**entry.verify_options, **options})
    exp = entry.expected
    for dim, size in exp.get("dims", {}).items():
        if ds.sizes.get(dim) != size:
            raise _mismatch(dataset_id, f"the size of dim {dim!r}", ds.sizes.get(dim), size)
    for name in exp.get("variables", []):
        if name not in ds.variables:
            raise _mismatch(dataset_id, f"variable {name!r}", "missing", "present")
    if "n_spikes" in exp and ds.sizes.get("spike") != exp["n_spikes"]:
        raise _mismatch(dataset_id, "the number of spikes", ds.sizes.get("spike"),
                        exp["n_spikes"])
    if "time_range_s" in exp:
        times = ds["spike_time"].values if "spike_time" in ds else ds["time"].values
        got = [float(np.min(times)), float(np.max(times))]
        if not np.allclose(got, exp["time_range_s"], atol=1e-3):
            raise _mismatch(dataset_id, "the time range (s)", got, exp["time_range_s"])
    for key, value in exp.get("attrs", {}).items():
        if ds.attrs.get(key) != value:
            raise _mismatch(dataset_id, f"attr {key!r}", ds.attrs.get(key), value)
    return ds
