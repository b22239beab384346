"""The PAMR refiner: each image's seed scores (the chosen background threshold as the
background plane, its CAMs) refined by PAMR (:class:`plda.methods.pamr.PAMR`, the pixel-
adaptive mask refinement SEAM+PLDA trains with) and their argmax taken: pure torch, no extra
dependency."""

from __future__ import annotations

import numpy as np

from plda.refinement.base import SeedScoreRefiner
from plda.registry import REFINERS


@REFINERS.register("pamr", description="each image's seed scores (the chosen background "
                   "threshold and its CAMs) refined by PAMR")
class PAMRRefiner(SeedScoreRefiner):

    def refine_scores(self, image, probs, keys):
        import torch

        from plda.methods.pamr import PAMR

        rgb = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0
        refined = PAMR()(rgb, torch.from_numpy(probs)[None])[0]
        return keys[refined.argmax(0).numpy()].astype(np.uint8)
