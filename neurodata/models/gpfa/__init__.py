"""Gaussian-process factor analysis (Yu et al. 2009) in JAX.

:class:`GPFA` is the estimator, :func:`simulate` draws data from the model and
:func:`select_n_latents` picks the number of latents by leave-neuron-out cross-validation.
The pure functional core lives in :mod:`neurodata.models.gpfa._core`.
"""

from neurodata.models.gpfa._estimator import GPFA
from neurodata.models.gpfa._select import co_bps, select_n_latents
from neurodata.models.gpfa._simulate import simulate

__all__ = ["GPFA", "co_bps", "select_n_latents", "simulate"]
