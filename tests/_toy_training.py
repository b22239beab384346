"""A tiny model and dataset that follow the engine contracts, and a script that trains them.

Used by tests/test_engine.py (in-process) and tests/test_ddp.py (subprocesses, torchrun). Run as
``python tests/_toy_training.py RUN_DIR [options]`` or under ``torch.distributed.run``; prints
one JSON line with the result on rank 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from plda.engine.config import TrainConfig
from plda.engine.distributed import DistInfo, cleanup, init_distributed, single_process
from plda.engine.seed import derive_seed, seed_everything
from plda.engine.trainer import TrainResult, Trainer


class ToyDataset(torch.utils.data.Dataset):
    """``n`` random 3×8×8 images with 4-class multi-hot labels; flip + noise per (seed, epoch, index)."""

    def __init__(self, n: int = 24, seed: int = 0):
        gen = torch.Generator().manual_seed(1234)
        self.images = torch.randn(n, 3, 8, 8, generator=gen)
        self.labels = (torch.rand(n, 4, generator=gen) > 0.5).float()
        self.seed, self.epoch = seed, 0
        self.loaded: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        self.loaded.append(index)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, index))
        image = self.images[index]
        if torch.rand((), generator=gen) < 0.5:
            image = image.flip(-1)
        image = image + 0.1 * torch.randn(image.shape, generator=gen)
        return {"image": image, "label": self.labels[index], "id": f"toy_{index:03d}"}


class ToyNet(nn.Module):
    """Conv backbone + dropout + 1×1 head; four parameter groups like the stage-1 networks."""

    def __init__(self, dropout: float = 0.5, nan_at_step: int = 0):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(8, 4, 1)
        self.nan_at_step = nan_at_step
        self.calls = 0

    def parameter_groups(self) -> list[dict[str, Any]]:
        def pick(module: nn.Module, kind: str) -> list[nn.Parameter]:
            return [p for n, p in module.named_parameters() if n.endswith(kind)]

        return [
            {"params": pick(self.backbone, "weight"), "lr_mult": 1, "weight_decay_mult": 1,
             "name": "backbone_weight"},
            {"params": pick(self.backbone, "bias"), "lr_mult": 2, "weight_decay_mult": 0,
             "name": "backbone_bias"},
            {"params": pick(self.head, "weight"), "lr_mult": 10, "weight_decay_mult": 1,
             "name": "head_weight"},
            {"params": pick(self.head, "bias"), "lr_mult": 20, "weight_decay_mult": 0,
             "name": "head_bias"},
        ]

    def forward(self, batch: dict[str, Any], progress: float) -> dict[str, torch.Tensor]:
        self.calls += 1
        cam = self.head(self.dropout(self.backbone(batch["image"])))
        logits = cam.mean(dim=(2, 3))
        cls = F.multilabel_soft_margin_loss(logits, batch["label"])
        reg = 0.01 * cam.pow(2).mean()
        if self.calls == self.nan_at_step:
            reg = reg * float("nan")
        return {"loss": cls + reg, "cls": cls.detach(), "reg": reg.detach(),
                "stat/progress": torch.tensor(progress)}


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: kernels this small only lose time to thread sync (badly so on a busy
    CI machine), and subprocesses use the same count so results match bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_toy(run_dir: Path, *, iterations: int = 12, batch_size: int = 4, accum: int = 1,
            dropout: float = 0.5, seed: int = 0, resume: bool = False, n: int = 24,
            checkpoint_every: int = 5, nan_at_step: int = 0, amp: str = "none",
            num_workers: int = 0, dist: DistInfo | None = None, callbacks: tuple = (),
            **overrides: Any) -> tuple[TrainResult, ToyNet, ToyDataset]:
    """Seed, build the toy model/dataset and train; returns the result, model and dataset."""
    dist = dist or single_process("cpu")
    seed_everything(seed)  # rank 0's initial weights; DDP broadcasts them to the other ranks
    model = ToyNet(dropout, nan_at_step)
    dataset = ToyDataset(n, seed)
    cfg = TrainConfig(iterations=iterations, batch_size=batch_size, grad_accum_steps=accum,
                      seed=seed, num_workers=num_workers, checkpoint_every=checkpoint_every,
                      log_every=1, amp=amp,
                      deterministic=overrides.pop("deterministic", True), **overrides)
    trainer = Trainer(model, dataset, cfg, run_dir, dist=dist, callbacks=callbacks,
                      config_dict={"toy": {"n": n, "dropout": dropout}})
    with single_thread():
        return trainer.fit(resume=resume), model, dataset


class _SignalAt:
    """Sends ``signum`` to this process when step ``step`` is logged (a real signal delivery)."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_log(self, step: int, scalars: dict[str, Any]) -> None:
        if step == self.step:
            os.kill(os.getpid(), self.signum)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--signal-at-step", type=int, default=0)
    parser.add_argument("--signal", choices=("TERM", "KILL", "INT"), default="TERM")
    args = parser.parse_args()
    dist = init_distributed()
    callbacks = ()
    if args.signal_at_step:
        callbacks = (_SignalAt(args.signal_at_step, getattr(signal, "SIG" + args.signal)),)
    try:
        result, _, _ = run_toy(args.run_dir, iterations=args.iterations,
                               batch_size=args.batch_size, accum=args.accum,
                               dropout=args.dropout, resume=args.resume,
                               checkpoint_every=args.checkpoint_every,
                               num_workers=args.num_workers, dist=dist, callbacks=callbacks)
    finally:
        cleanup()
    if dist.is_main:
        print(json.dumps({"step": result.step, "interrupted": result.interrupted,
                          "checkpoint": str(result.checkpoint)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
