"""The ``neurodata`` command: exit codes, messages, conversion without partial outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import neurodata
from neurodata.cli import main, summarize


@pytest.fixture
def recording(tmp_path):
    ds = neurodata.from_arrays(np.arange(40.0).reshape(20, 2), sampling_rate=10.0,
                               signal="dff", attrs={"subject": "mouse1", "source": "test"})
    return neurodata.save(ds, tmp_path / "rec.nc"), ds


def test_datasets_list_and_info(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "stevenson2011-m1" in out and "suite2p-plane0-demo" in out
    assert main(["datasets", "info", "stevenson2011-m1"]) == 0
    out = capsys.readouterr().out
    assert "cb1af830e34f5094e5c542ad4adfaca66dea05514680940016173b35fa6aad94" in out
    assert "license: MIT" in out


def test_datasets_fetch_from_mirror(mirror, capsys):
    assert main(["datasets", "fetch", "stevenson2011-m1", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(
        mirror / "m1_stevenson_2011" / "m1_stevenson_2011.mat")


def test_datasets_verify(mirror, capsys):
    assert main(["datasets", "verify", "suite2p-plane0-demo"]) == 0
    assert "suite2p-plane0-demo: ok (time=2000, neuron=219)" in capsys.readouterr().out


def test_unknown_id_exit_1(capsys):
    assert main(["datasets", "info", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("neurodata: error: unknown dataset id 'nope'")
    assert "Traceback" not in err


def test_unpinned_fetch_refused(capsys):
    assert main(["datasets", "fetch", "nlb-mc-maze"]) == 1
    assert "--allow-unverified" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["datasets"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0
    capsys.readouterr()


def test_info_path(recording, capsys):
    path, _ = recording
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "time=20, neuron=2" in out
    assert "duration_s      2.0" in out
    assert "dff (1)" in out and "mouse1" in out


def test_info_registry_id_with_option(mirror, capsys):
    assert main(["info", "stevenson2011-m1"]) == 0
    out = capsys.readouterr().out
    assert "neuron=171" in out and "776.8" in out
    assert main(["info", "stevenson2011-m1", "--option", "nonsense"]) == 1
    assert "key=value" in capsys.readouterr().err


def test_info_missing_path(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.nwb")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_convert(recording, tmp_path, suffix, capsys):
    path, ds = recording
    out = tmp_path / f"out{suffix}"
    assert main(["convert", str(path), str(out)]) == 0
    back = neurodata.open_dataset(out)
    np.testing.assert_array_equal(back.activity.values, ds.activity.values)
    assert back.attrs["subject"] == "mouse1"
    # An existing output is refused, and left as it was.
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["convert", str(path), str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert main(["convert", str(path), str(out), "--overwrite"]) == 0


def test_convert_failure_leaves_nothing(tmp_path, capsys):
    bad = tmp_path / "broken.nc"
    bad.write_bytes(b"not netcdf")
    out = tmp_path / "out.zarr"
    assert main(["convert", str(bad), str(out)]) == 1
    assert "broken.nc" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.nc"]
    assert main(["convert", str(bad), str(tmp_path / "out.txt")]) == 1


def test_summarize_connectome_and_spikes():
    spikes = neurodata.from_spike_times([np.array([0.1, 0.4]), np.array([0.2])], t_start=0,
                                        t_stop=2.0)
    s = summarize(spikes)
    assert s["neurons"] == 2 and s["duration_s"] == 2.0 and s["signal"] == "spike times (3 spikes)"


def test_installed_script(recording):
    script = Path(sys.executable).parent / "neurodata"
    if not script.exists():
        pytest.skip("the neurodata console script is not installed in this environment")
    path, _ = recording
    # One call (each start imports JAX): an error must exit 1 with the message, no traceback.
    bad = subprocess.run([str(script), "info", str(path) + ".missing"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("neurodata: error:")
