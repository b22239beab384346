"""The dense-CRF refiner: each image's seed scores (the chosen background threshold as the
background plane, its CAMs) refined by the fully connected CRF with psa / SEAM's parameters
(:mod:`plda.inference.crf`), in worker processes on rank 0."""

from __future__ import annotations

from plda.refinement.base import SeedScoreRefiner
from plda.registry import REFINERS


@REFINERS.register("crf", description="each image's seed scores (the chosen background "
                   "threshold and its CAMs) refined by the dense CRF")
class CRFRefiner(SeedScoreRefiner):
    processes = "all"

    def setup(self, dist) -> None:
        from plda.inference.crf import require_pydensecrf

        require_pydensecrf()
        super().setup(dist)

    def refine_scores(self, image, probs, keys):
        from plda.inference.crf import crf_labels

        return crf_labels(image, probs, keys)
