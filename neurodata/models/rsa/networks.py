"""A small CNN in JAX (equinox) trained on scikit-learn's digits, for brain-network tests.

Seeds play the role of subjects and layers the role of brain regions (the tRSA "instances"
design). Training runs in float32 (fast on CPU); activations are returned as float64
``(stimulus, neuron)`` datasets through :func:`neurodata.loaders.activations.activations`,
which takes arrays from any framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from neurodata.errors import InputDataError

__all__ = [
    "LAYERS",
    "DigitsCNN",
    "digits",
    "layer_activations",
    "network_activations",
    "to_digit_images",
    "train_digits_cnn",
]

LAYERS = ("conv1", "conv2", "fc1", "logits")


class DigitsCNN(eqx.Module):
    """conv(3x3, c) - ReLU - conv(3x3, 2c) - ReLU - 2x2 avg-pool - dense(64) - ReLU - dense(10)."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc1: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, key: jax.Array, width: int = 8):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        f32 = jnp.float32
        self.conv1 = eqx.nn.Conv2d(1, width, 3, padding=1, key=k1, dtype=f32)
        self.conv2 = eqx.nn.Conv2d(width, 2 * width, 3, padding=1, key=k2, dtype=f32)
        self.fc1 = eqx.nn.Linear(2 * width * 16, 64, key=k3, dtype=f32)
        self.out = eqx.nn.Linear(64, 10, key=k4, dtype=f32)

    def layers(self, image: jax.Array) -> dict[str, jax.Array]:
        """Activations of every layer for one ``(8, 8)`` image scaled to [0, 1]."""
        h1 = jax.nn.relu(self.conv1(image[None].astype(jnp.float32)))
        h2 = jax.nn.relu(self.conv2(h1))
        pooled = h2.reshape(h2.shape[0], 4, 2, 4, 2).mean((2, 4))
        h3 = jax.nn.relu(self.fc1(pooled.reshape(-1)))
        return {"conv1": h1, "conv2": h2, "fc1": h3, "logits": self.out(h3)}

    def __call__(self, image: jax.Array) -> jax.Array:
        """Class logits for one image."""
        return self.layers(image)["logits"]


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(1797, 8, 8)`` float32 images in [0, 1] and labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int32)


@eqx.filter_jit
def _train(keys, x_train, y_train, n_steps, batch_size, width, learning_rate, input_noise):
    opt = optax.adam(learning_rate)

    def loss(m, xb, yb):
        logits = jax.vmap(m)(xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def one(key):
        init_key, data_key = jax.random.split(key)
        model = DigitsCNN(init_key, width)
        params, static = eqx.partition(model, eqx.is_array)

        def step(carry, k):
            p, s = carry
            kb, kn = jax.random.split(k)
            idx = jax.random.choice(kb, x_train.shape[0], (batch_size,), replace=False)
            noise = jax.random.normal(kn, (batch_size, 8, 8), jnp.float32)
            xb = x_train[idx] + input_noise * noise
            grads = jax.grad(lambda q: loss(eqx.combine(q, static), xb, y_train[idx]))(p)
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                      jax.random.split(data_key, n_steps))
        return params

    return jax.vmap(one)(keys)


def train_digits_cnn(
    keys: jax.Array, *, n_steps: int = 300, batch_size: int = 64, width: int = 8,
    learning_rate: float = 3e-3, input_noise: float = 0.0,
) -> tuple[list[DigitsCNN], np.ndarray]:
    """Train one :class:`DigitsCNN` per key on the first 1500 digits (vmapped over keys).

    Parameters
    ----------
    keys
        PRNG keys ``(n_network,)`` (``jax.random.split(key, n)``): each network's "seed"
        (initialisation and batch order).
    n_steps, batch_size, learning_rate
        Adam training schedule.
    width
        Channels of the first convolution.
    input_noise
        SD of Gaussian noise added to training images (noise-trained variants).

    Returns
    -------
    models : list of DigitsCNN
    accuracy : numpy.ndarray
        Accuracy of each network on the 297 held-out digits.
    """
    keys = jnp.asarray(keys)
    if keys.ndim == 0:
        keys = keys[None]
    images, labels = digits()
    params = _train(keys, jnp.asarray(images[:1500]), jnp.asarray(labels[:1500]), n_steps,
                    batch_size, width, learning_rate, input_noise)
    static = eqx.partition(DigitsCNN(jax.random.key(0), width), eqx.is_array)[1]
    models = [eqx.combine(jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], params), static)
              for i in range(keys.shape[0])]
    test = jnp.asarray(images[1500:])
    acc = np.array([float(jnp.mean(jnp.argmax(_apply(m, test)["logits"], -1)
                                   == jnp.asarray(labels[1500:]))) for m in models])
    return models, acc


@eqx.filter_jit
def _apply(model: DigitsCNN, x: jax.Array) -> dict[str, jax.Array]:
    return jax.vmap(model.layers)(x)


def layer_activations(model: DigitsCNN, images: Any) -> dict[str, np.ndarray]:
    """Per-layer activations ``{layer: (n_image, ...)}`` (float64) for ``(n, 8, 8)`` images."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (8, 8):
        raise InputDataError(
            f"images has shape {x.shape}; give (n, 8, 8) images in [0, 1] "
            "(see to_digit_images)."
        )
    acts = _apply(model, jnp.asarray(x))
    return {k: np.asarray(v, dtype=np.float64) for k, v in acts.items()}


def network_activations(
    models: Sequence[DigitsCNN], images: Any, stimulus_ids: Sequence
) -> list[dict]:
    """Activations of several networks as ``(stimulus, neuron)`` datasets, one dict per net."""
    from neurodata.loaders.activations import activations
    return [activations(layer_activations(m, images), stimulus_ids,
                        attrs={"source": f"DigitsCNN instance {i}"})
            for i, m in enumerate(models)]


def to_digit_images(images: Any) -> np.ndarray:
    """Convert RGB or grayscale images ``(n, h, w[, 3])`` to the digits format.

    Grayscale (channel mean), area-averaged to 8 x 8, inverted so that the object is bright
    on a dark background like the digits (the 92 images have light backgrounds), scaled to
    [0, 1] per image.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 4:
        x = x.mean(-1)
    if x.ndim != 3:
        raise InputDataError(f"images has shape {np.shape(images)}; give (n, h, w[, 3]).")
    n, h, w = x.shape
    hb, wb = h // 8, w // 8
    if hb == 0 or wb == 0:
        raise InputDataError(f"images are {h} x {w}; they must be at least 8 x 8.")
    small = x[:, : hb * 8, : wb * 8].reshape(n, 8, hb, 8, wb).mean((2, 4))
    small = small.max((1, 2), keepdims=True) - small
    span = small.max((1, 2), keepdims=True)
    return (small / np.where(span > 0, span, 1.0)).astype(np.float32)
