"""Model families. Estimators are imported on first use so that ``import neurodata`` stays fast.

======================  =========================================
``GPFA``                :mod:`neurodata.models.gpfa`
``MMGPVAE``             :mod:`neurodata.models.gpvae`
``HMMGLM``              :mod:`neurodata.models.hmmglm`
``NTF``                 :mod:`neurodata.models.ntf`
``DynamicConnectome``   :mod:`neurodata.models.ntf`
``WeightedSBM``         :mod:`neurodata.models.community`
``BiClustering``        :mod:`neurodata.models.bicluster`
======================  =========================================

RSA and the other comparison measures are functions in :mod:`neurodata.models.rsa`;
community detection is :mod:`neurodata.models.community`.
"""

from __future__ import annotations

import importlib

_ESTIMATORS = {
    "GPFA": "gpfa",
    "MMGPVAE": "gpvae",
    "HMMGLM": "hmmglm",
    "NTF": "ntf",
    "DynamicConnectome": "ntf",
    "WeightedSBM": "community",
    "BiClustering": "bicluster",
}
_MODULES = ("gpfa", "gpvae", "hmmglm", "affinity", "ntf", "community", "bicluster", "rsa")

__all__ = [*_ESTIMATORS, *_MODULES]


def __getattr__(name: str):
    if name in _ESTIMATORS:
        return getattr(importlib.import_module(f"neurodata.models.{_ESTIMATORS[name]}"), name)
    if name in _MODULES:
        return importlib.import_module(f"neurodata.models.{name}")
    raise AttributeError(f"module 'neurodata.models' has no attribute {name!r}")
