"""SGD with per-group learning-rate / weight-decay multipliers and the poly schedule.

:class:`SGD` is this package's own optimizer, numerically the update of ``torch.optim.SGD``
(dampening 0, no Nesterov) with the same ``state_dict`` layout. Two reasons not to use torch's:
constructing any ``torch.optim.Optimizer`` imports TorchDynamo (about 150 MB of resident memory
for nothing on a CPU run), and the update can run *inside* the backward pass
(:meth:`SGD.attach_to_backward`): each parameter is stepped the moment its gradient is complete
and the gradient is freed at once, so the whole model's gradients never exist together.

Models describe their groups with ``parameter_groups()``: dicts with ``params``, ``lr_mult``,
``weight_decay_mult`` and ``name`` (stage 1: backbone weights / backbone biases / new-layer
weights / new-layer biases with lr_mult 1/2/10/20 and weight_decay_mult 1/0/1/0).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from plda.engine.config import TrainConfig

_GROUP_KEYS = ("params", "lr_mult", "weight_decay_mult", "name")


class SGD:
    """Stochastic gradient descent with momentum and (coupled) weight decay, per group::

        d = grad + weight_decay * p;  buf = d (first step) | momentum * buf + d;  p -= lr * buf

    Exactly ``torch.optim.SGD``'s single-tensor update with ``dampening=0, nesterov=False``, so
    results match it bit for bit on CPU; ``state_dict()`` / ``load_state_dict()`` use its layout
    (state keyed by parameter index, groups listing indices). Groups are dicts with ``params``,
    ``lr``, ``momentum``, ``weight_decay`` and any further keys, which are kept.
    """

    def __init__(self, param_groups: Iterable[dict[str, Any]]) -> None:
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        seen: set[int] = set()
        for i, group in enumerate(param_groups):
            group = dict(group)
            group["params"] = list(group["params"])
            for key in ("lr", "momentum", "weight_decay"):
                if key not in group:
                    raise ValueError(f"SGD: parameter group {i} lacks {key!r}")
            for p in group["params"]:
                if id(p) in seen:
                    raise ValueError(f"SGD: a parameter appears twice (again in group {i})")
                seen.add(id(p))
            self.param_groups.append(group)
        self._group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        self._hooks: list[Any] = []

    # -- the update ------------------------------------------------------------------------
    @torch.no_grad()
    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        grad = p.grad
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        if group["momentum"] != 0:
            state = self.state.setdefault(p, {})
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.clone(grad).detach()
            else:
                buf.mul_(group["momentum"]).add_(grad)
            grad = buf
        p.add_(grad, alpha=-group["lr"])

    def step(self) -> None:
        """Update every parameter that has a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    # -- stepping inside backward ------------------------------------------------------------
    def attach_to_backward(self) -> None:
        """From now on every backward pass updates each parameter as soon as its gradient is
        complete (``register_post_accumulate_grad_hook``) and frees that gradient; no
        :meth:`step` call is needed. Only valid when one backward pass makes one update: no
        gradient accumulation, clipping, loss scaling or DDP reduction in between."""
        if self._hooks:
            return

        def hook(p: torch.Tensor) -> None:
            self._update(p, self._group_of[id(p)])
            p.grad = None

        self._hooks = [p.register_post_accumulate_grad_hook(hook)
                       for g in self.param_groups for p in g["params"]]

    def detach_from_backward(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @property
    def steps_in_backward(self) -> bool:
        return bool(self._hooks)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: {k: v for k, v in s.items()} for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or len(groups) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(groups) if isinstance(groups, list) else 0}"
                             f" parameter groups; this model has {len(self.param_groups)}")
        params: dict[int, torch.Tensor] = {}
        for i, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"optimizer state: group {i} ({group.get('name', i)}) has "
                                 f"{len(saved['params'])} parameters; this model has "
                                 f"{len(group['params'])}")
            params.update(zip(saved["params"], group["params"]))
        self.state = {}
        for key, value in state_dict.get("state", {}).items():
            p = params.get(int(key))
            if p is None:
                raise ValueError(f"optimizer state names parameter {key}, which no group holds")
            buf = value.get("momentum_buffer")
            if buf is not None:
                if buf.shape != p.shape:
                    raise ValueError(f"optimizer state: momentum buffer {key} has shape "
                                     f"{tuple(buf.shape)}, the parameter {tuple(p.shape)}")
                value = {**value, "momentum_buffer": buf.to(p.device, p.dtype)}
            self.state[p] = dict(value)
        for saved, group in zip(groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})


def build_optimizer(param_groups: Iterable[dict[str, Any]], cfg: TrainConfig) -> SGD:
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
    return SGD(groups)


class PolyLR:
    """Poly decay: before optimizer step ``k`` (0-based), lr = base · (1 − k/total)^power.

    ``base`` is each group's lr when the scheduler is created (``cfg.lr * lr_mult``). Call
    :meth:`step` once after every optimizer step. The first update uses the full base lr, as
    in the reference's ``PolyOptimizer``; the factor is clamped at 0 past ``total_steps``.
    """

    def __init__(self, optimizer: Any, total_steps: int, power: float = 0.9):
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
