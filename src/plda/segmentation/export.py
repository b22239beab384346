"""Export a trained segmentation network to ONNX, for use without this package.

The exported graph is ``plda predict``'s default inference, whole: it takes ``image``, a
``(1, 3, H, W)`` float32 RGB image in 0..255 of any size, normalises it with the network's own
statistics, runs the network on it and on its mirror image, upsamples the logits to ``H x W``,
averages the two softmaxes and returns ``probs`` ``(1, K, H, W)`` and ``labels`` ``(1, H, W)``
int64 (the argmax: value k is line k of the class list, 0 background). The class names are
stored in the model's metadata (``class_names``, a JSON list, background first) and written to a
``.classes.txt`` beside the file. :func:`check_onnx` runs the file with onnxruntime on images
and compares it with the PyTorch network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.errors import ConfigError, DataError

OPSET = 18


class ExportedSegmenter(nn.Module):
    """The network wrapped with its input normalisation, flip averaging and upsampling."""

    def __init__(self, net: nn.Module, flip: bool = True) -> None:
        super().__init__()
        self.net = net
        self.flip = flip
        mean = torch.tensor(net.input_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(net.input_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", mean / std)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        x = image * self.scale - self.shift
        size = x.shape[-2:]
        if self.flip:
            x = torch.cat([x, x.flip(-1)])
        logits = F.interpolate(self.net(x).float(), size=size, mode="bilinear",
                               align_corners=False)
        probs = torch.softmax(logits, dim=1)
        if self.flip:
            probs = (probs[:1] + probs[1:].flip(-1)) * 0.5
        return probs, probs.argmax(dim=1)


def require_onnx() -> None:
    """Fail before any work when the ONNX packages are missing."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: pip install "
                          "'plda-wsss[onnx]'")


def export_onnx(weights: str | os.PathLike, out: str | os.PathLike, *, flip: bool = True,
                sample_size: tuple[int, int] = (224, 288)) -> dict[str, Any]:
    """Write the segmentation network of ``weights`` (a file or a run folder) to ``out`` as
    ONNX (module docstring); returns ``{"path", "classes_file", "class_names", "opset"}``."""
    import warnings

    from plda.segmentation.models import load_segmentation_net
    from plda.utils.io import atomic_write, atomic_write_text, check_output_file

    require_onnx()
    import onnx

    out = check_output_file(out, "--onnx")
    net, meta = load_segmentation_net(weights, device="cpu")
    class_names = list(meta["class_names"])
    model = ExportedSegmenter(net.float().eval(), flip=flip).eval()
    sample = torch.rand(1, 3, *sample_size) * 255.0
    free = torch.export.Dim.DYNAMIC  # any image size (torch.export records the least it takes)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (sample,), dynamo=True, opset_version=OPSET,
                                    input_names=["image"], output_names=["probs", "labels"],
                                    dynamic_shapes={"image": {2: free, 3: free}},
                                    verbose=False)
    proto = program.model_proto
    for key, value in (("class_names", json.dumps(class_names)),
                       ("producer", "plda-wsss"), ("arch", str(meta.get("arch", ""))),
                       ("input", "image: (1, 3, H, W) float32 RGB 0..255"),
                       ("flip", json.dumps(flip))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    with atomic_write(out) as fh:
        fh.write(proto.SerializeToString())
    classes_file = Path(str(out) + ".classes.txt")
    atomic_write_text(classes_file, "".join(f"{n}\n" for n in class_names[1:]))
    return {"path": str(out), "classes_file": str(classes_file), "class_names": class_names,
            "opset": OPSET}


def onnx_labels(path: str | os.PathLike, rgb: np.ndarray, session=None) -> np.ndarray:
    """The ``(H, W) uint8`` labels the ONNX file gives for one ``(H, W, 3) uint8`` image."""
    import onnxruntime as ort

    session = session or ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(np.asarray(rgb, np.float32).transpose(2, 0, 1)[None])
    _, labels = session.run(None, {"image": x})
    return labels[0].astype(np.uint8)


def check_onnx(path: str | os.PathLike, weights: str | os.PathLike,
               images: Sequence[np.ndarray], *, flip: bool = True,
               margin: float = 1e-3) -> dict[str, Any]:
    """Run the ONNX file and the PyTorch network (``plda predict``'s inference, one scale,
    ``flip``) on ``images`` (uint8 RGB arrays); return how many pixels agree. A pixel may differ
    only where the two best PyTorch probabilities lie within ``margin`` (float rounding decides
    a near tie); any other difference is a ``DataError``."""
    import onnxruntime as ort

    from plda.segmentation.inference import multiscale_probs
    from plda.segmentation.models import load_segmentation_net

    net, _ = load_segmentation_net(weights, device="cpu")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    total = agree = 0
    for k, rgb in enumerate(images):
        probs = multiscale_probs(net, rgb, (1.0,), flip)
        torch_labels = probs.argmax(0).numpy().astype(np.uint8)
        labels = onnx_labels(path, rgb, session)
        differ = labels != torch_labels
        if differ.any():
            top2 = torch.topk(probs, 2, dim=0).values.numpy()
            gap = (top2[0] - top2[1])[differ]
            if gap.max() > margin:
                raise DataError(f"{path}: image {k} gives other labels than the PyTorch network "
                                f"at {int(differ.sum())} pixels, where PyTorch's top two "
                                f"probabilities differ by up to {gap.max():.4f}")
        total += labels.size
        agree += int((~differ).sum())
    return {"images": len(images), "pixels": total, "agree": agree,
            "agreement": agree / total if total else 1.0}


__all__ = ["ExportedSegmenter", "check_onnx", "export_onnx", "onnx_labels", "require_onnx"]
