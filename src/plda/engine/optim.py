"""SGD with per-group learning-rate / weight-decay multipliers and the poly schedule.

Models describe their groups with ``parameter_groups()``: dicts with ``params``, ``lr_mult``,
``weight_decay_mult`` and ``name`` (stage 1: backbone weights / backbone biases / new-layer
weights / new-layer biases with lr_mult 1/2/10/20 and weight_decay_mult 1/0/1/0).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from plda.engine.config import TrainConfig

_GROUP_KEYS = ("params", "lr_mult", "weight_decay_mult", "name")


def build_optimizer(param_groups: Iterable[dict[str, Any]], cfg: TrainConfig) -> torch.optim.SGD:
    """SGD whose group ``g`` has lr ``cfg.lr * g.lr_mult`` and decay ``cfg.weight_decay * g.weight_decay_mult``.

    Momentum is :meth:`TrainConfig.effective_momentum`: ``cfg.momentum``, or with
    ``cfg.reference_optimizer`` the reference's ``momentum = weight_decay`` (see
    :mod:`plda.engine.config`). Parameters with ``requires_grad=False`` are left out; groups stay
    in order (possibly empty) so that group ``i`` always means the same thing.
    """
    momentum = cfg.effective_momentum()
    groups = []
    for i, group in enumerate(param_groups):
        missing = [k for k in _GROUP_KEYS if k not in group]
        if missing:
            raise ValueError(f"parameter group {i} lacks key(s) {missing}; "
                             f"parameter_groups() must return dicts with {list(_GROUP_KEYS)}")
        groups.append({
            "params": [p for p in group["params"] if p.requires_grad],
            "lr": cfg.lr * float(group["lr_mult"]),
            "weight_decay": cfg.weight_decay * float(group["weight_decay_mult"]),
            "momentum": momentum,
            "name": str(group["name"]),
            "lr_mult": float(group["lr_mult"]),
            "weight_decay_mult": float(group["weight_decay_mult"]),
        })
    if not any(g["params"] for g in groups):
        raise ValueError("build_optimizer: the model has no trainable parameters in its groups")
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=momentum, dampening=0.0, nesterov=False)


class PolyLR:
    """Poly decay: before optimizer step ``k`` (0-based), lr = base · (1 − k/total)^power.

    ``base`` is each group's lr when the scheduler is created (``cfg.lr * lr_mult``). Call
    :meth:`step` once after every optimizer step. The first update uses the full base lr, as
    in the reference's ``PolyOptimizer``; the factor is clamped at 0 past ``total_steps``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9):
        if total_steps < 1:
            raise ValueError(f"PolyLR: total_steps must be >= 1, got {total_steps}")
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.power = float(power)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def factor(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.total_steps) ** self.power

    def _apply(self) -> None:
        f = self.factor(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "total_steps": self.total_steps,
                "power": self.power, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self.total_steps = int(state["total_steps"])
        self.power = float(state["power"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self._apply()
