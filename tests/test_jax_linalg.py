"""Cholesky helpers against numpy/scipy on random SPD matrices."""

from __future__ import annotations

import numpy as np
import scipy.stats

import neurodata  # noqa: F401  (x64)
from neurodata.models._jax import linalg


def _spd(rng, n):
    a = rng.normal(size=(n, n))
    return a @ a.T + n * np.eye(n)


def test_cholesky_solve_logdet_quad(rng):
    a = _spd(rng, 6)
    b = rng.normal(size=6)
    chol = linalg.psd_cholesky(a)
    np.testing.assert_allclose(linalg.chol_solve(chol, b), np.linalg.solve(a, b), rtol=1e-10)
    np.testing.assert_allclose(linalg.chol_logdet(chol), np.linalg.slogdet(a)[1], rtol=1e-12)
    np.testing.assert_allclose(linalg.chol_inv_quad(chol, b), b @ np.linalg.solve(a, b),
                               rtol=1e-10)
    mean = rng.normal(size=6)
    np.testing.assert_allclose(
        linalg.mvn_logpdf_chol(b, mean, chol),
        scipy.stats.multivariate_normal(mean, a).logpdf(b), rtol=1e-10)


def test_symmetrize_and_jitter(rng):
    a = rng.normal(size=(4, 4))
    s = np.asarray(linalg.symmetrize(a))
    np.testing.assert_allclose(s, s.T)
    chol = linalg.psd_cholesky(np.zeros((3, 3)), jitter=1e-3)
    np.testing.assert_allclose(np.asarray(chol) @ np.asarray(chol).T, 1e-3 * np.eye(3),
                               rtol=1e-12)
