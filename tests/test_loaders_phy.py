"""Phy/Kilosort loader on synthetic folders: layouts, labels, params.py safety, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import neurodata
from neurodata.errors import FormatError, MissingFieldError, UnsafeFileError
from neurodata.loaders import detect_format
from neurodata.loaders.phy import read_params

RATE = 25000.0


def _phy(folder, rng, n_spikes=500, params=True, tables=True):
    folder.mkdir()
    samples = np.sort(rng.integers(0, int(10 * RATE), n_spikes)).astype(np.uint64)
    clusters = rng.choice([0, 3, 7, 9], n_spikes).astype(np.int32)
    np.save(folder / "spike_times.npy", np.asfortranarray(samples[:, None]))
    np.save(folder / "spike_clusters.npy", clusters)
    if params:
        marker = folder / "PWNED"
        (folder / "params.py").write_text(
            "dat_path = 'raw.bin'\nn_channels_dat = 32\ndtype = 'int16'\noffset = 0\n"
            f"sample_rate = {RATE}\nhp_filtered = False\nimport os\n"
            f"os.system('touch {marker}')\nsample_rate2 = __import__('os').getcwd()\n"
        )
    if tables:
        (folder / "cluster_group.tsv").write_text(
            "cluster_id\tgroup\n0\tgood\n3\tnoise\n7\tmua\n9\tgood\n")
        (folder / "cluster_info.tsv").write_text(
            "cluster_id\tKSLabel\tch\tdepth\tgroup\n0\tgood\t1\t20.0\tgood\n3\tmua\t4\t80.0\t"
            "noise\n7\tmua\t5\t100.0\tmua\n9\tgood\t12\t240.0\tgood\n")
    return samples, clusters


def test_folder_layout_labels_and_values(tmp_path, rng):
    samples, clusters = _phy(tmp_path / "ks", rng)
    assert detect_format(tmp_path / "ks") == "phy"
    ds = neurodata.load(tmp_path / "ks")
    assert not (tmp_path / "ks" / "PWNED").exists()  # params.py was never executed
    assert ds.neuron_id.values.tolist() == ["0", "3", "7", "9"]
    assert ds.group.values.tolist() == ["good", "noise", "mua", "good"]
    assert ds.KSLabel.values.tolist() == ["good", "mua", "mua", "good"]
    assert ds.depth.values.tolist() == [20.0, 80.0, 100.0, 240.0]
    assert ds.sizes["spike"] == samples.size
    for i, cid in enumerate([0, 3, 7, 9]):
        mine = ds.spike_time.values[ds.spike_neuron.values == i]
        np.testing.assert_array_equal(mine, np.sort(samples[clusters == cid] / RATE))
    assert ds.attrs["spike_sample_rate"] == RATE and ds.attrs["phy_dat_path"] == "raw.bin"
    clean = neurodata.load(tmp_path / "ks", exclude_groups=("noise",), bin_size=1.0)
    assert clean.neuron_id.values.tolist() == ["0", "7", "9"]
    assert clean.sizes["time"] == int(np.floor(samples.max() / RATE))
    np.testing.assert_array_equal(clean.activity.sum("time").values,
                                  [np.sum(clusters[samples < clean.sizes["time"] * RATE] == c)
                                   for c in (0, 7, 9)])


def test_params_parsed_never_executed(tmp_path):
    p = tmp_path / "params.py"
    p.write_text("import os\nos.system('echo hi')\nsample_rate = 30000.\nx = [1, 2]\n"
                 "y = open('/etc/passwd').read()\n")
    assert read_params(p) == {"sample_rate": 30000.0, "x": [1, 2]}


def test_missing_params_needs_sampling_rate(tmp_path, rng):
    samples, _ = _phy(tmp_path / "np", rng, params=False, tables=False)
    with pytest.raises(MissingFieldError, match="sampling_rate="):
        neurodata.load(tmp_path / "np")
    ds = neurodata.load(tmp_path / "np", sampling_rate=20000.0)
    assert ds.spike_time.values.max() == pytest.approx(samples.max() / 20000.0)
    with pytest.raises(MissingFieldError, match="exclude_groups"):
        neurodata.load(tmp_path / "np", sampling_rate=20000.0, exclude_groups=("noise",))


def test_templates_fallback(tmp_path, rng):
    _phy(tmp_path / "t", rng, tables=False)
    (tmp_path / "t" / "spike_clusters.npy").rename(tmp_path / "t" / "spike_templates.npy")
    assert neurodata.load(tmp_path / "t").sizes["neuron"] == 4


def test_bad_folders(tmp_path, rng):
    _phy(tmp_path / "mismatch", rng)
    np.save(tmp_path / "mismatch" / "spike_clusters.npy", np.zeros(10, np.int32))
    with pytest.raises(FormatError, match=r"mismatch.*500 spikes.*spike_clusters\.npy 10"):
        neurodata.load(tmp_path / "mismatch")
    _phy(tmp_path / "noclu", rng)
    (tmp_path / "noclu" / "spike_clusters.npy").unlink()
    with pytest.raises(MissingFieldError, match=r"noclu/spike_clusters\.npy"):
        neurodata.load(tmp_path / "noclu")
    _phy(tmp_path / "pickle", rng)
    np.save(tmp_path / "pickle" / "spike_times.npy", np.array([object()] * 3), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match=r"pickle/spike_times\.npy"):
        neurodata.load(tmp_path / "pickle")
    _phy(tmp_path / "cut", rng)
    raw = (tmp_path / "cut" / "spike_times.npy").read_bytes()
    (tmp_path / "cut" / "spike_times.npy").write_bytes(raw[:300])
    with pytest.raises(FormatError, match=r"cut/spike_times\.npy"):
        neurodata.load(tmp_path / "cut")


def test_same_spikes_as_neo(tmp_path, rng):
    rawio = pytest.importorskip("neo.rawio")
    samples, clusters = _phy(tmp_path / "clean", rng, params=False)
    (tmp_path / "clean" / "params.py").write_text(f"sample_rate = {RATE}\ndtype = 'int16'\n")
    np.save(tmp_path / "clean" / "spike_templates.npy", clusters)
    reader = rawio.PhyRawIO(dirname=str(tmp_path / "clean"))
    reader.parse_header()
    ds = neurodata.load(tmp_path / "clean")
    for i, name in enumerate(reader.header["spike_channels"]["id"]):
        theirs = reader.rescale_spike_timestamp(reader.get_spike_timestamps(0, 0, i, None, None),
                                                "float64").ravel()
        mine = ds.spike_time.values[ds.spike_neuron.values == list(ds.neuron_id.values).index(
            str(name))]
        np.testing.assert_allclose(mine, np.sort(theirs), rtol=0, atol=1e-12)
