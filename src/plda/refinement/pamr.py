"""The PAMR refiner: each image's seed scores (the chosen background threshold as the
background plane, its CAMs) refined by PAMR (:class:`plda.methods.pamr.PAMR`, the pixel-
adaptive mask refinement SEAM+PLDA trains with) and their argmax taken: pure torch, no extra
dependency."""

from __future__ import annotations

import numpy as np

from plda.refinement.base import Refiner, seed_scores
from plda.registry import REFINERS


@REFINERS.register("pamr", description="each image's seed scores (the chosen background "
                   "threshold and its CAMs) refined by PAMR")
class PAMRRefiner(Refiner):

    def setup(self, dist) -> None:
        from plda.runfolder import background_threshold

        self.threshold = background_threshold(self.cfg)

    def pseudo_info(self) -> dict:
        return {"bg_threshold": self.threshold}

    def mask(self, image_id, cam_path, image_path):
        import torch

        from plda.data.camfile import load_cams
        from plda.inference.seeds import load_image_for_cams
        from plda.methods.pamr import PAMR

        probs, keys = seed_scores(cam_path, self.threshold)
        image = load_image_for_cams(image_path, load_cams(cam_path), cam_path)
        rgb = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0
        refined = PAMR()(rgb, torch.from_numpy(probs)[None])[0]
        return keys[refined.argmax(0).numpy()].astype(np.uint8)
