"""Representational similarity analysis and brain-network comparison.

==========================  ==================================================================
:mod:`.rdm`                 RDM datasets, dissimilarities (:func:`calc_rdm`), noise precisions
:mod:`.compare`             RDM comparators (:func:`compare`)
:mod:`.topology`            topological RSA: GT transform, RGTMs, geodesic RDMs, identification
:mod:`.inference`           dual bootstrap, noise ceilings, pairwise tests, FDR
:mod:`.cka`                 linear and RBF CKA, biased and debiased
:mod:`.shape`               Procrustes, partially whitened shape metrics, CCA
:mod:`.encoding`            ridge / PLS predictivity, reverse predictivity, ceilings, kernel
                            analysis
:mod:`.layer_map`           :func:`layer_area_map`: best layer per brain area, with robustness
:mod:`.networks`            a small equinox CNN trained on scikit-learn's digits
==========================  ==================================================================
"""

from __future__ import annotations

from neurodata.models.rsa.cka import cka, hsic
from neurodata.models.rsa.compare import COMPARATORS, compare, masked_ranks, vector_similarity
from neurodata.models.rsa.encoding import (
    kernel_analysis,
    pls_predictivity,
    reverse_predictivity,
    ridge_predictivity,
    split_half_ceiling,
)
from neurodata.models.rsa.inference import (
    cv_corrected_covariance,
    dual_bootstrap,
    fdr,
    noise_ceiling,
    pairwise_tests,
)
from neurodata.models.rsa.layer_map import layer_area_map
from neurodata.models.rsa.rdm import (
    METHODS,
    LowRankPrecision,
    as_rdms,
    calc_rdm,
    condensed,
    mds,
    precision_from_residuals,
    rdm_dataset,
)
from neurodata.models.rsa.shape import ShapeMetric, cca, procrustes_distance, svcca
from neurodata.models.rsa.topology import (
    RGTM_CLASSES,
    adjacency,
    geodesic,
    gt_transform,
    identification_accuracy,
    knn_geodesic,
    rank_transform,
    rgtm_class,
    topology_grid,
)

__all__ = [
    "COMPARATORS",
    "ShapeMetric",
    "cca",
    "cka",
    "hsic",
    "kernel_analysis",
    "layer_area_map",
    "pls_predictivity",
    "procrustes_distance",
    "reverse_predictivity",
    "ridge_predictivity",
    "split_half_ceiling",
    "svcca",
    "METHODS",
    "LowRankPrecision",
    "RGTM_CLASSES",
    "adjacency",
    "as_rdms",
    "calc_rdm",
    "compare",
    "condensed",
    "cv_corrected_covariance",
    "dual_bootstrap",
    "fdr",
    "geodesic",
    "gt_transform",
    "identification_accuracy",
    "knn_geodesic",
    "masked_ranks",
    "mds",
    "noise_ceiling",
    "pairwise_tests",
    "precision_from_residuals",
    "rank_transform",
    "rdm_dataset",
    "rgtm_class",
    "topology_grid",
    "vector_similarity",
]
