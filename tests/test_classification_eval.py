"""Image-level classification metrics: AP against hand computations, F1, and the scores of a
model on a tiny dataset."""

from __future__ import annotations

import numpy as np
import pytest

from plda.evaluation.classification import average_precision, classification_summary


def test_average_precision_by_hand():
    # Ranked: +, -, +, -  -> precision 1 at the first positive, 2/3 at the second.
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.1, 0.2, 0.3], [1, 1, 1]) == pytest.approx(1.0)
    assert average_precision([0.9, 0.1], [0, 1]) == pytest.approx(0.5)
    assert average_precision([0.3, 0.2], [0, 0]) is None


def test_tied_scores_form_one_threshold():
    # All tied: one threshold with precision 2/4 and the whole recall.
    assert average_precision([0.5] * 4, [1, 0, 1, 0]) == pytest.approx(0.5)
    # Order inside a tie must not matter.
    a = average_precision([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0])
    b = average_precision([0.9, 0.5, 0.5, 0.1], [1, 0, 1, 0])
    assert a == pytest.approx(b) == pytest.approx((1 + 2 / 3) / 2)


def test_average_precision_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="two equal 1-d arrays"):
        average_precision([0.1, 0.2], [1])


def test_summary_map_over_present_classes_and_micro_f1():
    scores = np.array([[0.9, 0.2, 0.1], [0.6, 0.7, 0.3], [0.2, 0.4, 0.2]])
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    out = classification_summary(scores, labels, ["a", "b", "c"])
    assert out["ap"]["a"] == pytest.approx(100.0)
    assert out["ap"]["b"] == pytest.approx(100.0)  # ranked 0.7 (+), 0.4 (+), 0.2 (-)
    assert out["ap"]["c"] is None and out["map"] == pytest.approx(100.0)
    # Predicted at 0.5: a on images 0 and 1 (both right), b on image 1 (right); b on 2 missed.
    assert out["precision"] == pytest.approx(1.0) and out["recall"] == pytest.approx(3 / 4)
    assert out["f1"] == pytest.approx(2 * 3 / (3 + 4))
    with pytest.raises(ValueError, match="class names"):
        classification_summary(scores, labels, ["a", "b"])


def test_a_model_is_scored_on_a_dataset(tmp_path):
    """``evaluate_classification`` on a made-up VOC folder: a CAM whose classifier reads the
    image's mean red / green perfectly separates the classes (mAP 100, F1 1)."""
    import torch
    from PIL import Image

    from plda.data.layout import DatasetLayout
    from plda.evaluation.classification import evaluate_classification
    from plda.methods import MethodConfig, build_method
    from test_plda_component import PoolBackbone

    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    ids, labels = [], {}
    for i, (r, g) in enumerate([(255, 0), (0, 255), (255, 255), (0, 0)]):
        image_id = f"im{i}"
        Image.new("RGB", (16, 16), (r, g, 0)).save(root / "JPEGImages" / f"{image_id}.jpg")
        ids.append(image_id)
        labels[image_id] = [name for name, on in (("red", r), ("green", g)) if on]
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    import json
    (root / "image_labels.json").write_text(json.dumps(labels))
    (root / "classes.txt").write_text("red\ngreen\n")
    layout = DatasetLayout(root)
    model = build_method(MethodConfig(name="cam"), PoolBackbone(), 2)
    with torch.no_grad():  # logit = 8 * (normalised channel) - 0: red images score high on red
        model.classifier.conv.weight.copy_(torch.tensor([[8.0, 0, 0], [0, 8.0, 0]]).view(2, 3, 1, 1))
    out = evaluate_classification(model, layout, "val")
    assert out["images"] == 4 and out["map"] == pytest.approx(100.0)
    assert out["f1"] == pytest.approx(1.0)
