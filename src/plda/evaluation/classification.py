"""Image-level classification quality of a stage-1 model: per-class average precision (mAP) and
the F1 of its labels at a score threshold, from the classifier's own scores (``sigmoid`` of the
global average of its logit map at scale 1, as ``cam.label_source=predicted`` reads them)."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np


def average_precision(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Non-interpolated AP of one class: the mean over thresholds t (the distinct scores, high to
    low) of precision(t) weighted by the recall gained at t; ``None`` without a positive. Tied
    scores form one threshold (as ``sklearn.metrics.average_precision_score``)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and labels {y.shape}: expected two equal 1-d arrays")
    positives = int(y.sum())
    if positives == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each tied group
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0, tp]) / positives
    return float((precision * recall_gain).sum())


def classification_summary(scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                           threshold: float = 0.5) -> dict[str, Any]:
    """``scores`` (N, C) probabilities and ``labels`` (N, C) multi-hot -> ``{"map", "ap": {name:
    AP}, "f1", "precision", "recall", "images", "threshold"}``: mAP over the classes with a
    positive image, and micro-averaged F1 of the labels ``scores > threshold``."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 2 or scores.shape[1] != len(class_names):
        raise ValueError(f"scores {scores.shape}, labels {labels.shape}, {len(class_names)} "
                         "class names: expected (N, C), (N, C) and C names")
    ap = {name: average_precision(scores[:, c], labels[:, c])
          for c, name in enumerate(class_names)}
    present = [v for v in ap.values() if v is not None]
    predicted = scores > threshold
    tp = int((predicted & labels).sum())
    n_pred, n_true = int(predicted.sum()), int(labels.sum())
    precision = tp / n_pred if n_pred else None
    recall = tp / n_true if n_true else None
    f1 = 2 * tp / (n_pred + n_true) if n_pred + n_true else None
    return {"map": 100.0 * float(np.mean(present)) if present else None,
            "ap": {k: (None if v is None else 100.0 * v) for k, v in ap.items()},
            "f1": f1, "precision": precision, "recall": recall,
            "images": int(len(scores)), "threshold": threshold}


def image_scores(model, layout, split: str, *, amp: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(scores (N, C) sigmoid probabilities, labels (N, C)) of every image of ``split``: one
    unflipped pass at scale 1 of ``model`` (eval mode), with a progress bar."""
    import torch

    from plda.data.transforms import EvalTransform
    from plda.inference.cams import class_scores
    from plda.inference.runtime import autocast
    from plda.utils.progress import progress_bar

    ids = layout.ids(split)
    device = next(iter(model.parameters())).device
    transform = EvalTransform(tuple(model.backbone.input_mean), tuple(model.backbone.input_std))
    scores = np.zeros((len(ids), layout.num_classes), dtype=np.float64)
    labels = np.zeros((len(ids), layout.num_classes), dtype=np.int64)
    was_training = model.training
    model.eval()
    bar = progress_bar(len(ids), desc=f"classify {split}", unit="img")
    try:
        with torch.no_grad(), autocast(device, amp):
            for i, image_id in enumerate(ids):
                x = transform(layout.load_image(image_id)).to(device)[None]
                logits = class_scores(model.cams(x, revised=False))  # PCM not needed
                scores[i] = torch.sigmoid(logits.float())[0].cpu().numpy()
                labels[i] = np.asarray(layout.labels(image_id))
                bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return scores, labels


def evaluate_classification(model, layout, split: str, *, amp: str = "none",
                            threshold: float = 0.5) -> dict[str, Any]:
    """:func:`classification_summary` of ``model`` on ``split`` (plus ``seconds``)."""
    start = time.perf_counter()
    scores, labels = image_scores(model, layout, split, amp=amp)
    out = classification_summary(scores, labels, layout.class_names[1:], threshold)
    out["seconds"] = time.perf_counter() - start
    return out
