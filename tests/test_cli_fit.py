"""``neurodata fit`` end to end on a real dask scheduler and worker started from the shell."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import neurodata
from neurodata.cli import main

pytest.importorskip("distributed")

DASK = Path(sys.executable).with_name("dask")
CONFIG = """
model:
  n_states: 1
  n_restarts: 1
  max_iter: 3
  m_steps: 5
  history_bins: 2
load: {}
prepare:
  - {step: bin, bin_size: 0.2}
  - {step: cut_windows, length: 4.0}
"""


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """Address of a ``dask scheduler`` with one ``dask worker``, both real processes."""
    if not DASK.exists():
        pytest.skip(f"{DASK} (the dask command line) is not installed")
    folder = tmp_path_factory.mktemp("dask")
    file = folder / "scheduler.json"
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(DASK), "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file",
             str(file), "--idle-timeout", "600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder))
        deadline = time.monotonic() + 60
        while not file.exists() or not file.read_text().strip():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                pytest.fail("the dask scheduler did not start within 60 s")
            time.sleep(0.2)
        procs.append(subprocess.Popen(
            [str(DASK), "worker", "--scheduler-file", str(file), "--nworkers", "1",
             "--nthreads", "1", "--no-dashboard", "--death-timeout", "60",
             "--local-directory", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder))
        address = json.loads(file.read_text())["address"]
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.fixture
def sessions(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        counts = rng.poisson(0.3 + 0.2 * i, (160, 3))  # 16 s at 10 Hz
        ds = neurodata.from_arrays(counts, sampling_rate=10.0, attrs={"subject": f"m{i}"})
        paths.append(neurodata.save(ds, tmp_path / "data" / f"s{i}.nc"))
    config = tmp_path / "fit.yaml"
    config.write_text(CONFIG)
    return paths, config


def test_fit_command_on_a_real_scheduler(scheduler, sessions, tmp_path, capsys):
    from neurodata.fit_config import read_config
    from neurodata.models import HMMGLM

    paths, config = sessions
    out = tmp_path / "fits"
    missing = tmp_path / "data" / "gone.nc"
    argv = ["fit", "hmmglm", *map(str, paths), str(missing), "--config", str(config),
            "--scheduler", scheduler, "--out", str(out), "--retries", "0"]
    assert main(argv) == 1  # one session failed, the others are done
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["session", "status", "seconds", "result"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:4]}
    assert rows == {"gone": "failed", "s0": "done", "s1": "done"}
    assert lines[-1] == "2 done, 0 skipped, 1 failed"
    assert "session gone failed" in captured.err and "gone.nc" in captured.err

    # The worker's result equals the same fit run here.
    cfg = read_config("hmmglm", config)
    remote = HMMGLM.load(out / "s1.zarr")
    local = cfg.model.fit(cfg.prepare(neurodata.load(paths[1])))
    np.testing.assert_allclose(remote.bias_.values, local.bias_.values, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(remote.coupling_.values, local.coupling_.values, rtol=1e-6,
                               atol=1e-8)
    assert HMMGLM.load(out / "s0.zarr").coupling_.shape == remote.coupling_.shape

    # A rerun skips what is done and exits 0; the missing source is left out.
    assert main(argv[:4] + argv[5:] + ["--format", "zarr", "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 done, 2 skipped, 0 failed"


def test_fit_command_errors_exit_cleanly(sessions, tmp_path, capsys):
    paths, config = sessions
    out = tmp_path / "fits"
    assert main(["fit", "pca", str(paths[0]), "--out", str(out)]) == 1
    assert "unknown model 'pca'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {n_state: 2}\n")
    assert main(["fit", "hmmglm", str(paths[0]), "--config", str(bad), "--out",
                 str(out)]) == 1
    assert "no argument 'n_state'" in capsys.readouterr().err
    assert main(["fit", "hmmglm", str(paths[0])]) == 2  # --out is required
    assert not out.exists()  # nothing started


def test_rsa_per_session_on_the_real_scheduler(scheduler, tmp_path, capsys):
    """`neurodata fit rsa`: each session's RDM and its similarity to the model RDMs."""
    import xarray as xr

    from neurodata.models import rsa
    from neurodata.parallel import SessionRSA

    rng = np.random.default_rng(1)
    groups = np.repeat([0, 1], 3)
    paths = []
    for i in range(2):
        x = rng.normal(size=(3, 6, 20)) + (groups[None, :, None] == 0) * (1.0 + i)
        ds = xr.Dataset(
            {"activity": (("trial", "stimulus", "neuron"), x, {"signal": "rate",
                                                                "units": "Hz"})},
            coords={"neuron_id": ("neuron", [str(n) for n in range(20)])},
            attrs={"schema_version": "1.0", "history": []})
        paths.append(neurodata.save(ds, tmp_path / "data" / f"r{i}.nc"))
    models = rsa.rdm_dataset((groups[:, None] != groups[None]).astype(float)[None],
                             rdm_name=["category"])
    model_path = neurodata.save(models, tmp_path / "models.nc")
    config = tmp_path / "rsa.yaml"
    config.write_text(f"model: {{method: crossnobis, model_rdms: '{model_path}', "
                      "comparator: corr}\n")
    out = tmp_path / "rsa_fits"
    assert main(["fit", "rsa", *map(str, paths), "--config", str(config), "--scheduler",
                 scheduler, "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 done, 0 skipped, 0 failed"
    for path in paths:
        remote = SessionRSA.load(out / f"{path.stem}.zarr")
        local = SessionRSA("crossnobis", str(model_path)).fit(neurodata.load(path))
        np.testing.assert_allclose(remote.rdm_.values, local.rdm_.values)
        np.testing.assert_allclose(remote.similarity_.values, local.similarity_.values)
        assert remote.similarity_.sel(model="category") > 0.5


def test_fit_command_help_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "neurodata.cli", "fit", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "--scheduler" in result.stdout and "dynamic-connectome" in result.stdout
    assert "rsa" in result.stdout
