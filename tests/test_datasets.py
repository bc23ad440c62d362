"""The registry: schema, mirror -> cache -> download resolution, checksums, real ci entries."""

from __future__ import annotations

import hashlib
import http.server
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

import neurodata
from neurodata import datasets
from neurodata.errors import (
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    FormatError,
    NeurodataError,
)

# --------------------------------------------------------------------------- local server


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 (port 0) serving ``tmp_path/www``; yields (base_url, dir)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = type("H", (_Handler,), {"requests": []})

    def make(*args, **kwargs):
        return handler(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def _write_registry(path: Path, entries: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"datasets": entries}))
    return path


def _entry(id_, files, **extra):
    return {
        "id": id_, "title": id_, "modality": "ecephys", "format": "npz", "loader": "neurodata",
        "license": "MIT", "citation": "test", "size_class": "ci", "offline_checked": True,
        "files": files, **extra,
    }


@pytest.fixture
def registry(tmp_path, monkeypatch, server):
    """A temporary registry and cache pointing at the local server; returns a helper."""
    base, root, handler = server
    cache = tmp_path / "cache"
    monkeypatch.setenv("NEURODATA_DATA_DIR", str(cache))
    monkeypatch.delenv("NEURODATA_MIRROR", raising=False)
    payload = b"neurodata test payload\n" * 100
    (root / "good.bin").write_bytes(payload)
    (root / "bad.bin").write_bytes(payload[:-1] + b"X")
    good_sum = hashlib.sha256(payload).hexdigest()
    entries = [
        _entry("good", [{"name": "good.bin", "url": f"{base}/good.bin", "sha256": good_sum}]),
        _entry("corrupt", [{"name": "bad.bin", "url": f"{base}/bad.bin", "sha256": good_sum}]),
        _entry("missing", [{"name": "gone.bin", "url": f"{base}/gone.bin", "sha256": good_sum}]),
        _entry("fallback", [{"name": "good.bin", "url": f"{base}/gone.bin", "sha256": good_sum,
                             "mirrors": [f"{base}/good.bin"]}]),
        _entry("unpinned", [{"name": "good.bin", "url": f"{base}/good.bin", "sha256": None}],
               offline_checked=False),
        _entry("unlicensed", [{"name": "good.bin", "url": f"{base}/good.bin",
                               "sha256": good_sum}], license="unknown"),
    ]
    path = _write_registry(tmp_path / "registry.yaml", entries)
    monkeypatch.setenv("NEURODATA_REGISTRY", str(path))
    return {"cache": cache, "payload": payload, "sum": good_sum, "requests": handler.requests,
            "root": root, "base": base}


# --------------------------------------------------------------------------- download path


def test_download_verifies_and_caches(registry):
    (path,) = datasets.fetch("good", progress=False)
    assert path == registry["cache"] / "good" / "good.bin"
    assert path.read_bytes() == registry["payload"]
    assert registry["requests"] == ["/good.bin"]
    # Cache reuse: the second fetch makes no request.
    (again,) = datasets.fetch("good", progress=False)
    assert again == path
    assert registry["requests"] == ["/good.bin"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_corrupted_download_raises_and_is_not_kept(registry):
    with pytest.raises(ChecksumError) as info:
        datasets.fetch("corrupt", progress=False)
    msg = str(info.value)
    assert "bad.bin" in msg and registry["sum"] in msg
    assert hashlib.sha256((registry["root"] / "bad.bin").read_bytes()).hexdigest() in msg
    folder = registry["cache"] / "corrupt"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_missing_file_is_a_download_error(registry):
    with pytest.raises(DownloadError) as info:
        datasets.fetch("missing", progress=False)
    assert f"{registry['base']}/gone.bin" in str(info.value)
    assert "NEURODATA_MIRROR" in str(info.value)
    folder = registry["cache"] / "missing"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_mirror_url_is_tried_after_a_failure(registry):
    (path,) = datasets.fetch("fallback", progress=False)
    assert path.read_bytes() == registry["payload"]
    assert registry["requests"] == ["/gone.bin", "/good.bin"]


def test_corrupted_cache_file_is_reported(registry):
    target = registry["cache"] / "good" / "good.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="good.bin"):
        datasets.fetch("good", progress=False)


def test_wrong_size_is_reported_before_hashing(registry, tmp_path, monkeypatch):
    entry = _entry("sized", [{"name": "good.bin", "url": f"{registry['base']}/good.bin",
                              "sha256": registry["sum"], "size_bytes": 5}])
    monkeypatch.setenv("NEURODATA_REGISTRY", str(_write_registry(tmp_path / "s.yaml", [entry])))
    with pytest.raises(ChecksumError, match="expected 5"):
        datasets.fetch("sized", progress=False)
    assert not (registry["cache"] / "sized" / "good.bin").exists()


def test_mirror_comes_first(registry, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "sub").mkdir(parents=True)
    (mirror / "sub" / "good.bin").write_bytes(registry["payload"])
    entry = _entry("mirrored", [{"name": "good.bin", "url": f"{registry['base']}/good.bin",
                                 "sha256": registry["sum"], "mirror_path": "sub/good.bin"}])
    monkeypatch.setenv("NEURODATA_REGISTRY",
                       str(_write_registry(tmp_path / "r2.yaml", [entry])))
    monkeypatch.setenv("NEURODATA_MIRROR", str(mirror))
    (path,) = datasets.fetch("mirrored", progress=False)
    assert path == mirror / "sub" / "good.bin"
    assert registry["requests"] == []


def test_unpinned_needs_opt_in_and_warns(registry):
    with pytest.raises(ChecksumError, match="checksum not pinned"):
        datasets.fetch("unpinned", progress=False)
    with pytest.warns(UserWarning, match="checksum not pinned"):
        (path,) = datasets.fetch("unpinned", progress=False, allow_unverified=True)
    assert path.read_bytes() == registry["payload"]


def test_unknown_license_needs_opt_in(registry):
    with pytest.raises(datasets.LicenseError, match="allow_unlicensed"):
        datasets.fetch("unlicensed", progress=False)
    (path,) = datasets.fetch("unlicensed", progress=False, allow_unlicensed=True)
    assert path.is_file()


def test_load_through_a_loader(registry, tmp_path, monkeypatch):
    ds = neurodata.from_arrays(np.arange(12.0).reshape(6, 2), sampling_rate=2.0, signal="rate")
    nc = neurodata.save(ds, registry["root"] / "tiny.nc")
    entry = _entry("tiny", [{"name": "tiny.nc", "url": f"{registry['base']}/tiny.nc",
                             "sha256": hashlib.sha256(nc.read_bytes()).hexdigest()}],
                   expected={"dims": {"time": 6, "neuron": 2}})
    monkeypatch.setenv("NEURODATA_REGISTRY",
                       str(_write_registry(tmp_path / "r3.yaml", [entry])))
    out = datasets.verify("tiny")
    assert out.attrs["source"] == "tiny" and out.attrs["license"] == "MIT"
    np.testing.assert_array_equal(out.activity.values, ds.activity.values)
    bad = _entry("tiny", entry["files"], expected={"dims": {"time": 7}})
    monkeypatch.setenv("NEURODATA_REGISTRY", str(_write_registry(tmp_path / "r4.yaml", [bad])))
    with pytest.raises(FormatError, match="'time'"):
        datasets.verify("tiny")


# --------------------------------------------------------------------------- bad input


def test_unknown_id(registry):
    with pytest.raises(DatasetNotFoundError, match="no-such-set"):
        datasets.load("no-such-set")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"size_class": "huge"}, "size_class"),
        ({"colour": "red"}, "unknown keys"),
        ({"files": []}, "files"),
        ({"origin": {"kind": "dandi", "version": "draft"}}, "draft"),
    ],
)
def test_bad_registry_entries(tmp_path, monkeypatch, change, match):
    entry = {**_entry("x", [{"name": "a", "url": "http://x/a", "sha256": "0" * 64}]), **change}
    monkeypatch.setenv("NEURODATA_REGISTRY",
                       str(_write_registry(tmp_path / "bad.yaml", [entry])))
    with pytest.raises(FormatError, match=match):
        datasets.registry()


def test_unpinned_sha_needs_offline_checked_false(tmp_path, monkeypatch):
    entry = _entry("x", [{"name": "a", "url": "http://x/a", "sha256": None}])
    monkeypatch.setenv("NEURODATA_REGISTRY", str(_write_registry(tmp_path / "b.yaml", [entry])))
    with pytest.raises(FormatError, match="offline_checked"):
        datasets.registry()


# --------------------------------------------------------------------------- the real registry


def test_real_registry_is_consistent(monkeypatch):
    monkeypatch.delenv("NEURODATA_REGISTRY", raising=False)
    entries = datasets.registry()
    for id_ in ("stevenson2011-m1", "pynapple-phy-a8604", "suite2p-plane0-demo",
                "kriegeskorte2008-92images", "nlb-mc-maze", "simeon2024-celegans-homogenized"):
        assert id_ in entries
    for entry in entries.values():
        assert entry.license and entry.citation
        for f in entry.files:
            assert f.url.startswith("https://")
            if entry.origin.get("kind") == "github":
                assert entry.origin["commit"] in f.url
        if entry.size_class == "ci":
            assert entry.offline_checked and entry.pinned and entry.expected
        if not entry.offline_checked:
            assert entry.size_class != "ci"


def test_ci_entries_match_the_mirror_checksums(mirror, monkeypatch):
    monkeypatch.delenv("NEURODATA_REGISTRY", raising=False)
    sums = dict(line.split()[::-1] for line in (mirror / "SHA256SUMS").read_text().splitlines())
    for id_ in datasets.list_datasets("ci"):
        for f in datasets.info(id_).files:
            assert sums[f.mirror_path] == f.sha256, (id_, f.name)


@pytest.mark.parametrize("dataset_id", datasets.list_datasets("ci"))
def test_ci_entry_loads_and_verifies(mirror, monkeypatch, tmp_path, dataset_id):
    monkeypatch.delenv("NEURODATA_REGISTRY", raising=False)
    monkeypatch.setenv("NEURODATA_DATA_DIR", str(tmp_path / "cache"))  # never download
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = datasets.verify(dataset_id)
    assert ds.attrs["source"] == dataset_id
    assert ds.attrs["license"] == datasets.info(dataset_id).license
    neurodata.validate(ds)
    assert not (tmp_path / "cache").exists()  # everything came from the mirror


def test_suite2p_needs_the_frame_rate(mirror, monkeypatch):
    monkeypatch.delenv("NEURODATA_REGISTRY", raising=False)
    with pytest.raises(NeurodataError, match="sampling_rate"):
        datasets.load("suite2p-plane0-demo")


def test_multi_file_entry_gets_the_folder(mirror, monkeypatch, tmp_path):
    monkeypatch.delenv("NEURODATA_REGISTRY", raising=False)
    entry = datasets.info("kriegeskorte2008-92images")
    paths = datasets.fetch(entry.id, progress=False)
    assert datasets._loader_input(entry, paths) == mirror / "rsa_92images"
    # Part mirror, part cache: the files are gathered in <cache>/<id>/.
    monkeypatch.setenv("NEURODATA_DATA_DIR", str(tmp_path / "cache"))
    mixed = [paths[0], *[tmp_path / "elsewhere" / p.name for p in paths[1:]]]
    (tmp_path / "elsewhere").mkdir()
    for p, q in zip(paths[1:], mixed[1:], strict=True):
        q.write_bytes(p.read_bytes())
    folder = datasets._loader_input(entry, mixed)
    assert folder == tmp_path / "cache" / entry.id
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)


def test_errors_are_neurodata_errors():
    assert issubclass(datasets.LicenseError, NeurodataError)


# --------------------------------------------------------------------------- figures


def test_data_figures_on_real_recordings(mirror, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.delenv("NEURODATA_REGISTRY", raising=False)
    m1 = datasets.load("stevenson2011-m1", progress=False)
    fig = neurodata.plot.activity_heatmap(m1, t_range=(0, 30))
    assert len(fig.axes) == 3  # heatmap, behaviour panel, colour bar
    assert fig.axes[1].get_ylabel() == "behaviour"
    fig = neurodata.plot.raster(m1.isel(time=slice(0, 200)), max_neurons=10)
    assert "10 of 171 neurons" in fig.axes[0].get_title()
    phy = datasets.load("pynapple-phy-a8604", progress=False)
    fig = neurodata.plot.raster(phy, t_range=(0, 10))
    n_shown = int(((phy.spike_time >= 0) & (phy.spike_time <= 10)).sum())
    assert f"{n_shown} spikes" in fig.axes[0].get_title()
    with pytest.raises(neurodata.NeurodataError, match="raster"):
        neurodata.plot.raster(datasets.load("suite2p-plane0-demo", sampling_rate=30.0))
    plt.close("all")
