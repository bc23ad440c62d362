"""The ``neurodata`` command.

::

    neurodata datasets list
    neurodata datasets info ID
    neurodata datasets fetch ID [--allow-unverified] [--allow-unlicensed]
    neurodata datasets verify ID [--option key=value ...]
    neurodata info PATH_OR_ID [--format F] [--option key=value ...]
    neurodata convert PATH_OR_ID OUT.zarr|OUT.nc [--overwrite] [--format F] [--option ...]
    neurodata fit MODEL SOURCE... --out DIR [--config fit.yaml] [--scheduler ADDRESS]
                  [--format zarr|nc] [--overwrite] [--retries N] [--workers N] [-q]

Exit codes: 0 success, 1 a neurodata error (its message on stderr, no traceback) or, for
``fit``, any session failed (each session's error is printed), 2 a usage error, 130
interrupted.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import yaml

from neurodata.errors import InputDataError, NeurodataError, OutputExistsError

PROVENANCE = ("source", "format", "subject", "session", "species", "sampling_rate", "license",
              "citation", "schema_version")


def summarize(ds: xr.Dataset) -> dict[str, Any]:
    """A short description of a dataset: dims, neurons, duration, signal, provenance.

    Parameters
    ----------
    ds
        Any neurodata dataset (recording, spike table, response matrix, connectome).

    Returns
    -------
    dict
        Keys ``dims``, ``neurons``, ``duration_s`` (``None`` without a time axis),
        ``signal``, ``history`` and the provenance attrs that are present.

    Examples
    --------
    >>> import numpy as np, neurodata
    >>> from neurodata.cli import summarize
    >>> s = summarize(neurodata.from_arrays(np.zeros((100, 3)), sampling_rate=10.0))
    >>> s["neurons"], s["duration_s"], s["signal"]
    (3, 10.0, 'spike_count (count)')
    """
    out: dict[str, Any] = {"dims": {str(k): int(v) for k, v in ds.sizes.items()}}
    out["neurons"] = int(ds.sizes.get("neuron", ds.sizes.get("pre", 0)))
    duration = None
    if "time" in ds.coords and ds.sizes.get("time", 0) > 0:
        t = np.asarray(ds["time"].values, dtype=float)
        step = 1.0 / ds.attrs["sampling_rate"] if ds.attrs.get("sampling_rate") else 0.0
        duration = float(t[-1] - t[0] + step)
    elif "valid_intervals" in ds:
        bounds = np.asarray(ds["valid_intervals"].values, dtype=float)
        duration = float(np.sum(bounds[:, 1] - bounds[:, 0]))
    out["duration_s"] = None if duration is None else round(duration, 6)
    if "activity" in ds:
        attrs = ds["activity"].attrs
        out["signal"] = f"{attrs.get('signal')} ({attrs.get('units')})"
    elif "spike_time" in ds:
        out["signal"] = f"spike times ({ds.sizes['spike']} spikes)"
    elif "weight" in ds:
        out["signal"] = f"connectome weight ({ds['weight'].attrs.get('units', '')})"
    elif "response" in ds:
        out["signal"] = f"response ({ds['response'].attrs.get('units', '')})"
    else:
        out["signal"] = ", ".join(str(v) for v in ds.data_vars) or "none"
    for key in PROVENANCE:
        if key in ds.attrs:
            out[key] = ds.attrs[key]
    history = ds.attrs.get("history", [])
    out["history"] = [history] if isinstance(history, str) else list(history)
    return out


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputDataError(f"--option {pair!r}: write key=value, e.g. sampling_rate=30.")
        options[key.strip()] = yaml.safe_load(value)  # "30" -> 30, "true" -> True, "a" -> "a"
    return options


def _open(target: str, fmt: str | None, options: dict[str, Any]) -> xr.Dataset:
    """A file or folder path, or else a registry id."""
    import neurodata
    from neurodata import datasets

    if not Path(target).exists() and target in datasets.registry():
        return datasets.load(target, **options)
    return neurodata.load(target, format=fmt, **options)


def _print_summary(summary: dict[str, Any]) -> None:
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if key == "dims":
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif key == "history":
            value = "; ".join(value) or "(none)"
        print(f"{key:<{width}}  {value}")


def _cmd_list(args: argparse.Namespace) -> int:
    from neurodata import datasets

    rows = [(e.id, e.size_class, e.modality, e.license,
             "yes" if e.offline_checked else "no", e.title)
            for e in (datasets.info(i) for i in datasets.list_datasets())]
    header = ("id", "size", "modality", "license", "checked", "title")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        print("  ".join(f"{str(c):<{w}}" for c, w in zip(row[:5], widths, strict=True))
              + "  " + row[5])
    return 0


def _cmd_dataset_info(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from neurodata import datasets

    entry = asdict(datasets.info(args.id))
    entry["files"] = [{k: v for k, v in f.items() if v not in (None, (), "")}
                      for f in entry["files"]]
    entry = {k: list(v) if isinstance(v, tuple) else v for k, v in entry.items()
             if v not in ({}, (), "")}
    print(yaml.safe_dump(entry, sort_keys=False, width=100).rstrip())
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from neurodata import datasets

    paths = datasets.fetch(args.id, progress=not args.quiet,
                           allow_unverified=args.allow_unverified,
                           allow_unlicensed=args.allow_unlicensed)
    for path in paths:
        print(path)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from neurodata import datasets

    ds = datasets.verify(args.id, **_parse_options(args.option))
    print(f"{args.id}: ok ({', '.join(f'{k}={v}' for k, v in ds.sizes.items())})")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    _print_summary(summarize(_open(args.path, args.format, _parse_options(args.option))))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    import neurodata

    out = Path(args.out)
    if out.suffix.lower() not in (".zarr", ".nc", ".nc4"):
        raise InputDataError(f"output {out}: name it *.zarr or *.nc.")
    if out.exists() and not args.overwrite:  # refuse before the (possibly long) load
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it.")
    ds = _open(args.path, args.format, _parse_options(args.option))
    neurodata.save(ds, out, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from neurodata.fit_config import read_config
    from neurodata.parallel import fit_sessions

    config = read_config(args.model, args.config)  # fails before any cluster starts
    if importlib.util.find_spec("distributed") is None:
        raise NeurodataError("`neurodata fit` runs on dask.distributed, which is not "
                             "installed; pip install 'neurodata[dist]'.")
    summary = fit_sessions(
        config.model, args.sources, out=args.out, scheduler=args.scheduler,
        prepare=config.prepare, load_options=config.load_options, file_format=args.format,
        overwrite=args.overwrite, retries=args.retries, n_workers=args.workers,
        progress=not args.quiet)
    rows = [(r.session, r.status, f"{r.seconds:.1f}", r.path) for r in summary.itertuples()]
    header = ("session", "status", "seconds", "result")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(f"{c:<{w}}" for c, w in zip(row[:3], widths, strict=True))
              + "  " + row[3])
    failed = summary[summary.status == "failed"]
    for r in failed.itertuples():
        print(f"neurodata: session {r.session} failed: {r.error}", file=sys.stderr)
    counts = summary.status.value_counts()
    print(", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "skipped", "failed")))
    return 1 if len(failed) else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``neurodata`` command."""
    parser = argparse.ArgumentParser(
        prog="neurodata", description="Load, inspect and convert neuroscience recordings.")
    sub = parser.add_subparsers(dest="command", required=True)

    ds_parser = sub.add_parser("datasets", help="the dataset registry")
    ds_sub = ds_parser.add_subparsers(dest="action", required=True)
    ds_sub.add_parser("list", help="list registered datasets").set_defaults(func=_cmd_list)
    p = ds_sub.add_parser("info", help="show a registry entry")
    p.add_argument("id")
    p.set_defaults(func=_cmd_dataset_info)
    p = ds_sub.add_parser("fetch", help="download (or find) a dataset's files")
    p.add_argument("id")
    p.add_argument("--allow-unverified", action="store_true",
                   help="accept files whose checksum the registry does not pin")
    p.add_argument("--allow-unlicensed", action="store_true",
                   help="accept a dataset whose licence is unknown")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fetch)
    p = ds_sub.add_parser("verify", help="load a dataset and check the registry's expectations")
    p.add_argument("id")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="loader option (default: the entry's verify_options)")
    p.set_defaults(func=_cmd_verify)

    def add_load_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", default=None, help="force a loader (nwb, suite2p, ...)")
        p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="loader option, e.g. sampling_rate=30 (repeatable)")

    p = sub.add_parser("info", help="summarise a recording (a path or a registry id)")
    p.add_argument("path")
    add_load_args(p)
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("convert", help="convert a recording to neurodata zarr or netCDF")
    p.add_argument("path")
    p.add_argument("out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_load_args(p)
    p.set_defaults(func=_cmd_convert)

    from neurodata.fit_config import MODELS

    p = sub.add_parser("fit", help="fit one model per session on dask.distributed",
                       description="Fit one model per session on dask.distributed; results "
                       "go to OUT/<session>.<format> and a rerun skips finished sessions.")
    p.add_argument("model", metavar="MODEL", help=f"one of {', '.join(sorted(MODELS))}")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="recording paths or registry ids")
    p.add_argument("--out", required=True, help="folder of the fitted models")
    p.add_argument("--config", default=None,
                   help="YAML file with sections model:, load:, prepare: (see tutorial 08)")
    p.add_argument("--scheduler", default=None,
                   help="dask scheduler address (default: a local cluster on this machine)")
    p.add_argument("--format", default="zarr", choices=("zarr", "nc"),
                   help="file format of the results")
    p.add_argument("--overwrite", action="store_true", help="refit sessions already done")
    p.add_argument("--retries", type=int, default=2, help="retries of a failed or lost task")
    p.add_argument("--workers", type=int, default=None,
                   help="workers of the local cluster (default: one per core)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Parameters
    ----------
    argv
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 for a neurodata error, 2 for a usage error, 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 after --help
        return int(exc.code or 0)
    try:
        return args.func(args)
    except NeurodataError as exc:
        print(f"neurodata: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("neurodata: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
