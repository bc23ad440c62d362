"""The dataset registry: ``datasets.yaml`` resolved from a mirror, the cache or the web.

Resolution order for every file of an entry:

1. ``$NEURODATA_MIRROR/<mirror_path>`` (a local folder holding the files, e.g. the project's
   ``../shared/data`` in CI),
2. the cache folder ``$NEURODATA_DATA_DIR`` (default: the pooch user cache for neurodata),
3. a download with pooch (progress bar), into the cache.

Files are matched by sha256 in every case; a mismatch raises :class:`ChecksumError` naming
the file and both sums, and a bad download is not kept.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import xarray as xr
import yaml

from neurodata.errors import ChecksumError, DatasetNotFoundError, FormatError

REGISTRY_ENV = "NEURODATA_REGISTRY"
MIRROR_ENV = "NEURODATA_MIRROR"
CACHE_ENV = "NEURODATA_DATA_DIR"


@dataclass(frozen=True)
class FileEntry:
    """One file of a registry entry."""

    name: str
    url: str
    sha256: str
    mirror_path: str
    size_bytes: int | None = None
    processor: str | None = None


@dataclass(frozen=True)
class Entry:
    """One dataset of the registry (one item of ``datasets.yaml``)."""

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
    origin: dict = field(default_factory=dict)
    origin_version: str = ""
    derived_version: str = "1"
    expected: dict = field(default_factory=dict)
    offline_checked: bool = False
    requires: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


def registry_path() -> Path:
    """Path of the ``datasets.yaml`` in use (``$NEURODATA_REGISTRY`` overrides)."""
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    packaged = resources.files("neurodata") / "datasets.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "datasets.yaml"


@lru_cache(maxsize=8)
def _read_registry(path: str, mtime: float) -> dict[str, Entry]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FormatError(f"dataset registry {path} cannot be read: {exc}") from exc
    entries = {}
    for item in raw.get("datasets", []):
        item = dict(item)
        files = tuple(FileEntry(**f) for f in item.pop("files"))
        for key in ("requires", "tags"):
            item[key] = tuple(item.get(key, ()))
        entries[item["id"]] = Entry(files=files, **item)
    return entries


def registry() -> dict[str, Entry]:
    """All registry entries by id."""
    path = registry_path()
    return _read_registry(str(path), path.stat().st_mtime)


def list_datasets() -> list[str]:
    """Ids of all registered datasets."""
    return sorted(registry())


def info(dataset_id: str) -> Entry:
    """The registry entry of ``dataset_id``."""
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


def fetch(dataset_id: str, *, progress: bool = True) -> list[Path]:
    """Resolve every file of ``dataset_id`` to a local, checksum-verified path."""
    entry = info(dataset_id)
    return [_fetch_file(entry, f, progress) for f in entry.files]


def _fetch_file(entry: Entry, f: FileEntry, progress: bool) -> Path:
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and (Path(mirror) / f.mirror_path).is_file():
        return _check(Path(mirror) / f.mirror_path, f, entry.id)
    cached = cache_dir() / entry.id / f.name
    if cached.is_file():
        return _check(cached, f, entry.id)
    return _download(entry, f, cached, progress)


def _download(entry: Entry, f: FileEntry, target: Path, progress: bool) -> Path:
    raise NotImplementedError  # completed by the registry work


def load(dataset_id: str, **options: Any) -> xr.Dataset:
    """Load a registered dataset into the neurodata data model.

    Parameters
    ----------
    dataset_id
        A registry id (see :func:`list_datasets`).
    **options
        Loader options that override the registry's ``loader_kwargs``.

    Returns
    -------
    xarray.Dataset

    Examples
    --------
    >>> import neurodata
    >>> ds = neurodata.datasets.load("stevenson2011-m1")  # doctest: +SKIP
    """
    from neurodata.loaders import load as load_path

    entry = info(dataset_id)
    paths = fetch(dataset_id)
    kwargs = {**entry.loader_kwargs, **options}
    ds = load_path(paths[0], format=entry.loader, **kwargs)
    ds.attrs["source"] = dataset_id
    return ds
