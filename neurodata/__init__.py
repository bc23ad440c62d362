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

# jaxlib's CPU LAPACK kernels (Cholesky, triangular solves) split a batch of matrices over
# XLA's intra-op thread pool and block until the pieces are done. When XLA runs two such
# kernels at once, each holding one of the pool's threads, no thread is left to run the pieces:
# with a pool of 2 (a 2-core machine) GPFA EM on long trials and the time-domain GP-VAE
# deadlocked every few runs (gdb: both pool threads waiting in jax::ParallelBatchMap). A pool
# of one thread runs the pieces inline, so nothing can wait on itself; BLAS and LAPACK keep
# their own threads. jaxlib reads PJRT_NPROC (or NPROC) when the CPU backend starts, so this
# runs before any computation; a value the user set is left as it is.
if "PJRT_NPROC" not in os.environ and "NPROC" not in os.environ:
    os.environ["PJRT_NPROC"] = "1"

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
