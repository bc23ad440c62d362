"""Network activations -> (stimulus, neuron) datasets, one per layer."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import neurodata
from neurodata.errors import InputDataError
from neurodata.loaders.activations import activations


class TorchLike:
    """Mimics a torch tensor that requires grad: np.asarray works only after detach()."""

    def __init__(self, values):
        self.values = values
        self.detached = False

    def detach(self):
        out = TorchLike(self.values)
        out.detached = True
        return out

    def cpu(self):
        return self

    def __array__(self, dtype=None, copy=None):
        if not self.detached:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad.")
        return np.asarray(self.values, dtype=dtype)


@pytest.fixture
def layers(rng):
    return {
        "conv1": rng.standard_normal((6, 3, 4, 4)),
        "fc": jnp.asarray(rng.standard_normal((6, 10)), dtype=jnp.float32),
        "logits": TorchLike(rng.standard_normal((6, 2))),
    }


def test_layers_become_datasets(layers):
    ids = [f"img{i}" for i in range(6)]
    out = activations(layers, ids, attrs={"source": "toy cnn"})
    assert list(out) == ["conv1", "fc", "logits"]
    conv = out["conv1"]
    neurodata.validate(conv)
    assert dict(conv.sizes) == {"stimulus": 6, "neuron": 48}
    assert conv.activity.attrs == {"signal": "rate", "units": "a.u."}
    assert conv.attrs["layer"] == "conv1" and conv.attrs["unit_shape"] == [3, 4, 4]
    assert conv.attrs["source"] == "toy cnn"
    assert list(conv.stimulus.values) == ids
    # neuron_id "conv1:k" is the C-order flat index over (channel, height, width).
    k = np.ravel_multi_index((2, 1, 3), (3, 4, 4))
    assert conv.neuron_id.values[k] == f"conv1:{k}"
    np.testing.assert_array_equal(conv.activity.values[:, k], layers["conv1"][:, 2, 1, 3])
    np.testing.assert_allclose(out["fc"].activity.values, np.asarray(layers["fc"]))
    assert out["fc"].activity.dtype == np.float32
    np.testing.assert_array_equal(out["logits"].activity.values, layers["logits"].values)


def test_module_attribute_is_callable(layers):
    out = neurodata.loaders.activations({"fc": layers["fc"]}, list(range(6)))
    assert list(out["fc"].stimulus.values) == [str(i) for i in range(6)]


def test_roundtrip(tmp_path, layers):
    ds = activations({"conv1": layers["conv1"]}, list(range(6)))["conv1"]
    back = neurodata.open_dataset(neurodata.save(ds, tmp_path / "a.nc"))
    np.testing.assert_array_equal(back.activity.values, ds.activity.values)


def test_mismatched_stimulus_count(layers):
    with pytest.raises(InputDataError, match="'conv1' has shape .*the 5 stimuli"):
        activations(layers, list(range(5)))


@pytest.mark.parametrize(
    "arrays, ids, match",
    [
        ({}, [0], "empty"),
        ({"a": np.ones((2, 3))}, ["x", "x"], "duplicated"),
        ({"a": np.array([[1.0, np.nan]])}, ["x"], "NaN"),
        ({"a": np.ones((2, 0))}, ["x", "y"], "no units"),
        ({"a": np.array([["a", "b"]])}, ["x"], "numeric"),
        ({"a": np.ones((2, 3))}, [], "non-empty"),
    ],
)
def test_bad_input(arrays, ids, match):
    with pytest.raises(InputDataError, match=match):
        activations(arrays, ids)


def test_heatmap_of_a_layer(layers):
    import matplotlib.pyplot as plt

    ds = activations({"conv1": layers["conv1"]}, list(range(6)))["conv1"]
    fig = neurodata.plot.activity_heatmap(ds)
    assert fig.axes[0].get_xlabel() == "stimulus"
    plt.close("all")
