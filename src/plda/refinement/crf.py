"""The dense-CRF refiner: each image's seed scores (the chosen background threshold as the
background plane, its CAMs) refined by the fully connected CRF with psa / SEAM's parameters
(:mod:`plda.inference.crf`), in worker processes on rank 0."""

from __future__ import annotations

from plda.refinement.base import Refiner, seed_scores
from plda.registry import REFINERS


@REFINERS.register("crf", description="each image's seed scores (the chosen background "
                   "threshold and its CAMs) refined by the dense CRF")
class CRFRefiner(Refiner):
    processes = "all"

    def setup(self, dist) -> None:
        from plda.inference.crf import require_pydensecrf
        from plda.runfolder import background_threshold

        require_pydensecrf()
        self.threshold = background_threshold(self.cfg)

    def pseudo_info(self) -> dict:
        return {"bg_threshold": self.threshold}

    def mask(self, image_id, cam_path, image_path):
        from plda.data.camfile import load_cams
        from plda.inference.crf import crf_labels
        from plda.inference.seeds import load_image_for_cams

        probs, keys = seed_scores(cam_path, self.threshold)
        image = load_image_for_cams(image_path, load_cams(cam_path), cam_path)
        return crf_labels(image, probs, keys)
