"""Run BLAS and LAPACK single-threaded while a model computes on the CPU.

jaxlib's CPU Cholesky, triangular solve and eigendecomposition call the LAPACK of scipy's
bundled OpenBLAS, which splits a matrix of more than about 32 rows over its own threads.
XLA itself runs single-threaded here (``PJRT_NPROC=1``, set by ``import neurodata``), and it
issues these calls on batches of small matrices (one per trial, latent or chain) and inside
gradients, where each call is microseconds of arithmetic: OpenBLAS's thread hand-off then
dominates, and on a machine whose cores are all busy its waiting threads are descheduled
and a call takes milliseconds. Measured on a loaded 2-core machine: the gradient through a
batch of 60 Cholesky factorisations of 40 x 40 matrices took 3.0 s with OpenBLAS's default
threads and 4.5 ms with one; a GP-VAE epoch at the paper's simulation size 3.0 s and 0.6 s;
an 800 x 800 Cholesky 1.5 s and 30 ms; 30 GPFA EM iterations at 200-bin trials missed a
150 s limit in 3 of 3 runs and finished in 3 of 3 with one thread.

The limit is scoped to the decorated call (restored on exit) rather than set at import,
so that a user's own numpy and scipy work, and the peer libraries in the benchmarks, keep
their threads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from threadpoolctl import threadpool_limits

P = ParamSpec("P")
R = TypeVar("R")


def one_blas_thread() -> threadpool_limits:
    """Context manager that limits BLAS/LAPACK to one thread until it exits.

    Returns
    -------
    threadpoolctl.threadpool_limits
        Restores the previous limits on exit.

    Examples
    --------
    >>> from neurodata.models._jax.blas import one_blas_thread
    >>> with one_blas_thread():
    ...     pass
    """
    return threadpool_limits(limits=1, user_api="blas")


def single_threaded_blas(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate ``fn`` so that it runs with BLAS/LAPACK limited to one thread.

    Parameters
    ----------
    fn
        A function or method that runs JAX computations on the CPU (a model's ``fit``).

    Returns
    -------
    callable
        ``fn`` run inside :func:`one_blas_thread`.

    Examples
    --------
    >>> from neurodata.models._jax.blas import single_threaded_blas
    >>> @single_threaded_blas
    ... def fit():
    ...     from threadpoolctl import threadpool_info
    ...     return {d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}
    >>> fit() <= {1}
    True
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with one_blas_thread():
            return fn(*args, **kwargs)

    return wrapper
