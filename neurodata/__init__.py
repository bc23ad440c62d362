"""neurodata: systems-neuroscience recordings in one xarray data model, models in JAX.

The public face: :func:`load` (any supported file or folder), :func:`validate`, the
constructors :func:`from_arrays` / :func:`from_spike_times`, :func:`bin_spikes`,
:func:`save` / :func:`open_dataset`, and the subpackages :mod:`neurodata.datasets`
(the registry), :mod:`neurodata.preprocess`, :mod:`neurodata.models`, :mod:`neurodata.plot`.

JAX's 64-bit mode is switched on at import: models that need float64 (GPFA, the HMM
E-step, MCMC) use it, and models that run well in float32 (the GP-VAE, NTF) choose float32
themselves; each model documents its choice.
"""

from __future__ import annotations

import importlib
import os

# jaxlib 0.10.2's CPU runtime intermittently deadlocks in long Cholesky-heavy while loops
# (GPFA EM on trials of 120+ bins, the time-domain GP-VAE); switching off the
# concurrency-optimised scheduler made it rarer in our reproductions (see README, Known
# issue). XLA reads XLA_FLAGS when the backend starts, so this runs before any computation.
_XLA_CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
if "xla_cpu_enable_concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_XLA_CPU_FLAG}".strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from neurodata.data import (  # noqa: E402
    SCHEMA_VERSION,
    bin_spikes,
    from_arrays,
    from_spike_times,
    open_dataset,
    save,
    validate,
)
from neurodata.errors import NeurodataError, SchemaError  # noqa: E402
from neurodata.loaders import load  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "NeurodataError",
    "SchemaError",
    "bin_spikes",
    "datasets",
    "from_arrays",
    "from_spike_times",
    "load",
    "models",
    "open_dataset",
    "plot",
    "preprocess",
    "save",
    "validate",
]


def __getattr__(name: str):
    if name in ("datasets", "preprocess", "models", "plot", "loaders", "parallel"):
        return importlib.import_module(f"neurodata.{name}")
    raise AttributeError(f"module 'neurodata' has no attribute {name!r}")
