"""Run the published PLDA code (usr922/plda) on the CPU, unchanged, for back-to-back comparisons.

The published code is not part of this project: give the path of a checkout. Its statements run
as written; only what ties it to CUDA is neutralised: ``.cuda()`` becomes the identity (on
tensors and modules) and nothing is wrapped in ``DataParallel``.

* :func:`loop_body` / :func:`functions`: the source of the training loop's body and of named
  top-level functions, taken from the files.
* :func:`training_step`: a callable that runs one published training step (the loop body from
  ``scale_factor = 0.3`` through ``optimizer.step()``) on a fixed random batch, with the
  published ``PolyOptimizer`` and parameter groups.
* :func:`cam_model`: the published ``Net`` in eval mode, whose ``forward(x)`` returns
  ``(cam, cam_rv)`` at input size, as SEAM's ``infer_SEAM.py`` uses it.
"""

from __future__ import annotations

import ast
import math
import textwrap
import types
from pathlib import Path

LOSS_FUNCTIONS = ("adaptive_min_pooling_loss", "max_onehot", "balanced_mask_loss_ce",
                  "balanced_weighted_multi_adv_domain_loss")


def functions(path: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Source text of the top-level functions or classes ``names`` of ``path``, as written."""
    source = path.read_text()
    tree = ast.parse(source)
    found = {node.name: ast.get_source_segment(source, node) for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names}
    missing = sorted(set(names) - set(found))
    if missing:
        raise SystemExit(f"{path}: {missing} not found")
    return found


def loop_body(path: Path, last: str = "optimizer.zero_grad()", include_last: bool = False) -> str:
    """The published step: the training loop's statements from ``scale_factor = 0.3`` up to
    ``last`` (included or not), dedented, as they stand in the file."""
    lines = path.read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "scale_factor = 0.3")
        end = next(i for i, line in enumerate(lines) if line.strip() == last and i > start)
    except StopIteration:
        raise SystemExit(f"{path}: the loop body was not found where expected") from None
    return textwrap.dedent("\n".join(lines[start:end + (1 if include_last else 0)]))


def patch_cuda() -> None:
    """Make ``.cuda()`` the identity on tensors and modules (the published code calls it)."""
    import torch
    from torch import nn

    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self


def _net_class(reference: Path):
    """The published ``Net``. Its modules import each other by top-level name, so the worker
    that calls this runs with the checkout on PYTHONPATH (:func:`worker_env`)."""
    import importlib

    patch_cuda()
    try:
        module = importlib.import_module("models.resnet38_plda")  # the published model
    except ImportError as exc:
        raise SystemExit(f"the published code's models.resnet38_plda did not import ({exc}): "
                         f"run with {reference} on PYTHONPATH (benchmarks.published_code."
                         "worker_env)") from None
    if Path(module.__file__).resolve().parents[1] != reference.resolve():
        raise SystemExit(f"models.resnet38_plda came from {module.__file__}, not from the "
                         f"checkout {reference}")
    return module.Net


def worker_env(reference: str | Path, env: dict | None = None) -> dict:
    """The environment of a worker that runs the published code from ``reference``."""
    import os

    from benchmarks.common import with_pythonpath

    return with_pythonpath(dict(os.environ if env is None else env), Path(reference).resolve())


def namespace(reference: Path) -> dict:
    """The published loss functions, SEAM's ``max_norm`` (as ``visualization.max_norm``) and
    ``PolyOptimizer``, executed from their files into one namespace."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    ns = {"torch": torch, "F": F, "nn": nn, "np": np}
    for code in functions(reference / "plda_train.py", LOSS_FUNCTIONS).values():
        exec(code, ns)  # noqa: S102 - the published loss functions, unchanged
    vis = dict(ns)
    exec(functions(reference / "tool" / "visualization.py", ("max_norm",))["max_norm"], vis)
    ns["visualization"] = types.SimpleNamespace(max_norm=vis["max_norm"])
    tools = dict(ns)
    exec(functions(reference / "tool" / "torchutils.py", ("PolyOptimizer",))["PolyOptimizer"],
         tools)  # noqa: S102
    ns["PolyOptimizer"] = tools["PolyOptimizer"]
    return ns


def training_step(reference: Path, batch: int = 2, crop: int = 128, classes: int = 20,
                  total_steps: int = 100, lr: float = 0.01, weight_decay: float = 5e-4):
    """A callable running one published training step on a fixed random batch (two classes per
    image, as ``benchmarks/train_step.py`` uses), returning the loss."""
    import torch

    Net = _net_class(reference)
    ns = namespace(reference)
    torch.manual_seed(0)
    model = Net(0.6)  # the published default threshold tau
    model.train()
    groups = model.get_parameter_groups()
    optimizer = ns["PolyOptimizer"]([
        {"params": groups[0], "lr": lr, "weight_decay": weight_decay},
        {"params": groups[1], "lr": 2 * lr, "weight_decay": 0},
        {"params": groups[2], "lr": 10 * lr, "weight_decay": weight_decay},
        {"params": groups[3], "lr": 20 * lr, "weight_decay": 0},
    ], lr=lr, weight_decay=weight_decay, max_step=total_steps)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, crop, crop, generator=g)
    label = torch.zeros(batch, classes)
    label[:, :2] = 1.0
    code = compile(loop_body(reference / "plda_train.py", "optimizer.step()", include_last=True),
                   str(reference / "plda_train.py"), "exec")
    state = {"step": 0}

    def step() -> float:
        p = state["step"] / total_steps
        ns.update(model=model, optimizer=optimizer, pack=(None, image, label),
                  alpha=2.0 / (1.0 + math.exp(-10 * p)) - 1)
        exec(code, ns)  # noqa: S102 - the published loop body, unchanged
        state["step"] += 1
        return float(ns["loss"])

    return step


def cam_model(reference: Path):
    """The published ``Net`` (random weights) in eval mode."""
    import torch

    Net = _net_class(reference)
    torch.manual_seed(0)
    model = Net(0.6)
    model.eval()  # the published ``train()`` override returns None: no chaining
    return model


RATIO_COLUMNS = ("time/ref", "mem/ref")
RATIO_FORMATS = dict.fromkeys(RATIO_COLUMNS, ".2f")


def ratios(row: dict, reference: dict, time_key: str, memory_key: str) -> tuple[float, float]:
    """Store ``row``'s time and memory as ratios to the published ``reference`` row
    (``time_ratio``, ``memory_ratio``) and return them (the RATIO_COLUMNS cells)."""
    row["time_ratio"] = row[time_key] / reference[time_key]
    row["memory_ratio"] = row[memory_key] / reference[memory_key]
    return row["time_ratio"], row["memory_ratio"]
