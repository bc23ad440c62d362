"""The CPU runtime settings that `import neurodata` makes before JAX starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# Two independent batched Cholesky + triangular-solve chains in one jitted function: XLA runs
# them at the same time, and jaxlib splits each batch over its intra-op pool and waits. With a
# pool of 2 threads this deadlocked within a few hundred calls on a 2-core machine.
CONCURRENT_LAPACK = textwrap.dedent(
    """
    import neurodata  # noqa: F401  (sets the runtime before JAX starts)
    import jax, jax.numpy as jnp, numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 64, 40, 40))
    a, b = jnp.asarray(x @ np.swapaxes(x, -1, -2) + 40 * np.eye(40))
    c = jnp.asarray(rng.normal(size=(64, 40, 40)))

    @jax.jit
    def f(a, b, c):
        x = jax.scipy.linalg.solve_triangular(jnp.linalg.cholesky(a), c, lower=True)
        y = jax.scipy.linalg.solve_triangular(jnp.linalg.cholesky(b), c, lower=True)
        return x.sum() + y.sum()

    for i in range(300):
        f(a + i * 1e-9, b, c).block_until_ready()
    print("finished")
    """
)


def _run(code: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC")}


def test_import_sets_single_thread_pool_unless_user_chose():
    show = "import neurodata, os; print(os.environ['PJRT_NPROC'])"
    assert _run(show, _clean_env(), 120).stdout.strip() == "1"
    assert _run(show, {**_clean_env(), "PJRT_NPROC": "3"}, 120).stdout.strip() == "3"


def test_concurrent_batched_lapack_does_not_deadlock():
    try:
        done = _run(CONCURRENT_LAPACK, _clean_env(), 240)
    except subprocess.TimeoutExpired:
        pytest.fail("concurrent batched Cholesky/solve calls stalled: the XLA CPU pool deadlock "
                    "is back (see neurodata/__init__.py)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("finished")
