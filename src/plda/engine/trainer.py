"""The one training loop used by every stage (CAM / SEAM / PLDA classifier, DeepLab).

Model contract: ``forward(batch: dict, progress: float) -> dict`` with ``"loss"`` (scalar with
grad), further detached scalar terms and ``"stat/<name>"`` scalars to log; ``parameter_groups()``
as described in :mod:`plda.engine.optim`. ``progress`` is ``global_step / total_steps`` of the
step being computed (0 at the first step), as in the reference's GRL schedule.

Dataset contract: map-style, dict samples, optional ``set_epoch(epoch)``; augmentation drawn from
``(seed, epoch, index)`` only (see :func:`plda.engine.seed.derive_seed`), never from global RNGs.

Exact resume: the sample order of an epoch depends only on ``(seed, epoch)``; a run resumed at
step ``s`` skips the first ``s mod steps_per_epoch`` batches of that order without loading them,
and every rank's torch/CUDA/numpy/python RNG state is restored, so (deterministic CPU) an
interrupted and resumed run ends with bit-identical weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from plda.engine.checkpoint import (checkpoint_path, latest_checkpoint, load_checkpoint,
                                    prune_checkpoints, readable_checkpoint, save_checkpoint)
from plda.engine.config import TrainConfig
from plda.engine.distributed import (DistInfo, all_gather_object, all_reduce_sum, barrier,
                                     broadcast_object, init_distributed)
from plda.engine.logging import TrainLogger
from plda.engine.optim import PolyLR, build_optimizer
from plda.engine.seed import (capture_rng_state, configure_determinism, derive_seed,
                              restore_determinism, restore_rng_state, seed_everything)
from plda.errors import ConfigError, PldaError, WeightsError
from plda.models.fastpath import batch_to_device, resolve_amp
from plda.utils.io import atomic_write_json
from plda.weights.io import state_dict_mismatch

_log = logging.getLogger("plda.engine")

CHECKPOINT_FORMAT = "plda-train-checkpoint"
# Settings that fix the sample order, step count or schedule: a resumed run must not change them.
_RESUME_FIXED = ("batch_size", "seed", "epochs", "iterations", "drop_last", "lr", "poly_power",
                 "momentum", "weight_decay", "reference_optimizer")


class EpochShardSampler(Sampler):
    """Per-epoch shuffled order shared by all ranks, cut into global batches and sharded.

    The order of epoch ``e`` is a permutation seeded by ``(seed, e)``, truncated (``drop_last``)
    or wrapped around to a whole number of global batches. Optimizer step ``s`` uses positions
    ``[s·B, (s+1)·B)``; its micro-step ``k`` on rank ``r`` takes the ``b`` samples at offset
    ``(k·W + r)·b``. Every step therefore sees the same samples whatever ``W`` and the accumulation
    split. Yields ``(epoch, index)`` so that loader workers learn the epoch with each sample.
    """

    def __init__(self, dataset_len: int, *, global_batch: int, local_batch: int, rank: int,
                 world_size: int, seed: int, drop_last: bool = True, shuffle: bool = True):
        if dataset_len < 1:
            raise ConfigError("the training dataset is empty")
        self.n = dataset_len
        self.global_batch, self.local_batch = global_batch, local_batch
        self.rank, self.world_size = rank, world_size
        self.accum = global_batch // (local_batch * world_size)
        self.seed, self.shuffle = seed, shuffle
        self.steps_per_epoch = dataset_len // global_batch if drop_last else \
            math.ceil(dataset_len / global_batch)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"the training dataset has {dataset_len} samples, fewer than one "
                              f"global batch (train.batch_size={global_batch}) with drop_last")
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch and skip its first ``start_step`` optimizer steps (resume)."""
        self.epoch, self.start_step = epoch, start_step

    def global_order(self, epoch: int) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        need = self.steps_per_epoch * self.global_batch
        while len(order) < need:
            order += order[: need - len(order)]
        return order[:need]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.global_order(self.epoch)
        b, w = self.local_batch, self.world_size
        for s in range(self.start_step, self.steps_per_epoch):
            chunk = order[s * self.global_batch:(s + 1) * self.global_batch]
            for k in range(self.accum):
                start = (k * w + self.rank) * b
                for index in chunk[start:start + b]:
                    yield self.epoch, index

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum * self.local_batch


class _EpochTagged(Dataset):
    """Calls ``dataset.set_epoch`` wherever samples are loaded (main process or each worker)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if epoch != self._epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self._epoch = epoch
        return self.dataset[index]


def _worker_init(_: int) -> None:
    # The main process handles SIGINT/SIGTERM (checkpoint, then stop); workers must survive them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class TrainResult:
    """How :meth:`Trainer.fit` ended: steps done, last checkpoint, last logged scalars."""

    step: int
    total_steps: int
    interrupted: bool
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0


class Trainer:
    """Trains ``model`` on ``dataset`` under ``cfg``; files go to ``run_dir`` (rank 0 writes).

    ``run_dir/checkpoints/step_XXXXXXXX.pt``, ``run_dir/logs/train.jsonl``,
    ``run_dir/train_config.json``. ``dist=None`` calls :func:`init_distributed`. Callbacks are
    objects with optional ``on_log(step, scalars)`` and ``on_visualise(step, model, batch)``
    (every ``vis_every`` steps, rank 0, no grad, RNG isolated from training).
    """

    def __init__(self, model: torch.nn.Module, dataset: Any, cfg: TrainConfig, run_dir: Path, *,
                 dist: DistInfo | None = None, collate_fn: Any = None,
                 callbacks: Sequence[Any] = (), config_dict: dict | None = None):
        cfg.validate()
        self.cfg = cfg
        self.dist = dist if dist is not None else init_distributed()
        self.device = self.dist.device
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.callbacks = tuple(callbacks)
        self.config_dict = config_dict
        world, rank = self.dist.world_size, self.dist.rank

        if cfg.sync_batchnorm and self.dist.is_distributed:
            if self.device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                # PyTorch's SyncBatchNorm runs on CUDA only: on CPU (gloo) each rank keeps its
                # own batch statistics.
                _log.warning("train.sync_batchnorm ignored on %s: SyncBatchNorm needs CUDA",
                             self.device.type)
        self.model = model.to(self.device)
        self.local_batch = cfg.local_batch_size(world)
        # bf16 on a CPU without bf16 instructions is slower than fp32: that runs fp32 (warned).
        self.amp = resolve_amp(cfg.amp, self.device, "train.amp")
        self._amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        self.channels_last = self._channels_last(dataset, collate_fn)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.sampler = EpochShardSampler(len(dataset), global_batch=cfg.batch_size,
                                         local_batch=self.local_batch, rank=rank, world_size=world,
                                         seed=cfg.seed, drop_last=cfg.drop_last)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = cfg.iterations if cfg.iterations is not None else \
            cfg.epochs * self.steps_per_epoch
        # A dedicated generator: creating a loader iterator must not draw from the global torch
        # RNG, or a resumed run's dropout stream would shift.
        self._loader_gen = torch.Generator()
        cuda = self.device.type == "cuda"
        self.loader = DataLoader(_EpochTagged(dataset), batch_size=self.local_batch,
                                 sampler=self.sampler, num_workers=cfg.num_workers,
                                 collate_fn=collate_fn, pin_memory=cuda, drop_last=False,
                                 persistent_workers=cuda and cfg.num_workers > 0,
                                 generator=self._loader_gen,
                                 worker_init_fn=_worker_init if cfg.num_workers > 0 else None)
        self.optimizer = build_optimizer(self.model.parameter_groups(), cfg)
        self.scheduler = PolyLR(self.optimizer, self.total_steps, cfg.poly_power)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        self._in_backward = cfg.steps_in_backward(world)
        if self.dist.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model: torch.nn.Module = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if cuda else None,
                find_unused_parameters=cfg.find_unused_parameters)
        else:
            self.train_model = self.model
        self._stop_requested = False
        self._keys: list[str] | None = None

    # ------------------------------------------------------------------ public
    def request_stop(self) -> None:
        """Finish the current step, write a checkpoint and return from :meth:`fit` (like SIGTERM)."""
        self._stop_requested = True

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``total_steps``; with ``resume`` continue from the latest checkpoint."""
        previous_determinism = configure_determinism(self.cfg.deterministic)
        previous_handlers = self._install_signal_handlers()
        self._stop_requested = False
        try:
            seed_everything(self.cfg.seed + self.dist.rank)
            start_step, wall_before, last_ckpt = self._restore(resume)
            if self.dist.is_main:
                atomic_write_json(self.run_dir / "train_config.json",
                                  {"train": self.cfg.to_dict(), "config": self.config_dict,
                                   "channels_last_resolved": self.channels_last})
            logger = TrainLogger(self.run_dir, enabled=self.dist.is_main,
                                 total_steps=self.total_steps, start_step=start_step)
            try:
                return self._loop(start_step, wall_before, last_ckpt, logger)
            finally:
                logger.close()
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            restore_determinism(previous_determinism)

    # ------------------------------------------------------------------ loop
    def _loop(self, step: int, wall_before: float, last_ckpt: Path | None,
              logger: TrainLogger) -> TrainResult:
        self.train_model.train()
        if self._in_backward:
            self.optimizer.attach_to_backward()
        try:
            return self._run_steps(step, wall_before, last_ckpt, logger)
        finally:
            self.optimizer.detach_from_backward()

    def _run_steps(self, step: int, wall_before: float, last_ckpt: Path | None,
                   logger: TrainLogger) -> TrainResult:
        cfg, total, spe = self.cfg, self.total_steps, self.steps_per_epoch
        t_start = t_window = time.perf_counter()
        # A resumed run continues the averaging window the checkpoint was written in, so its
        # logged averages (and the final metrics) equal an uninterrupted run's.
        window: dict[str, float] = dict(self._resumed_window.get("sums", {}))
        window_steps = int(self._resumed_window.get("steps", 0))
        record: dict[str, Any] = dict(self._resumed_window.get("record", {}))
        interrupted = False
        while step < total and not interrupted:
            epoch, in_epoch = divmod(step, spe)
            self.sampler.set_epoch(epoch, in_epoch)
            self._loader_gen.manual_seed(derive_seed(cfg.seed, epoch, self.dist.rank))
            batches = iter(self.loader)
            for _ in range(in_epoch, min(spe, in_epoch + total - step)):
                values, stop, batch = self._forward_backward(batches, step)
                if not math.isfinite(values["loss"]):
                    self.optimizer.zero_grad(set_to_none=True)
                    terms = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
                    kept = str(last_ckpt) if last_ckpt else "none (no checkpoint written yet)"
                    raise PldaError(f"non-finite loss at step {step + 1}/{total} (epoch "
                                    f"{epoch + 1}): {terms}; training stopped, last good "
                                    f"checkpoint: {kept}")
                lr = float(self.optimizer.param_groups[0]["lr"])
                values.update(self._optimizer_step())
                step += 1

                for k, v in values.items():
                    window[k] = window.get(k, 0.0) + v
                window_steps += 1
                postfix = {k: v for k, v in values.items() if not k.startswith("stat/")}
                logger.advance({**postfix, "img/s": record.get("images_per_s", 0.0)})
                if step % cfg.log_every == 0 or step == total or stop:
                    now = time.perf_counter()
                    record = {"step": step, "epoch": round(step / spe, 4), "lr": lr,
                              **{k: v / window_steps for k, v in window.items()},
                              "images_per_s": window_steps * cfg.batch_size / (now - t_window),
                              "wall_time_s": wall_before + now - t_start}
                    logger.log(record)
                    self._callback("on_log", step, record)
                    window, window_steps, t_window = {}, 0, now
                if cfg.vis_every and step % cfg.vis_every == 0 and self.dist.is_main:
                    self._visualise(step, batch)
                if stop or step == total or (cfg.checkpoint_every
                                             and step % cfg.checkpoint_every == 0):
                    last_ckpt = self._save(step, wall_before + time.perf_counter() - t_start,
                                           record, {"sums": dict(window), "steps": window_steps,
                                                    "record": dict(record)})
                if stop:
                    interrupted = True
                    _log.warning("stopped at step %d/%d; checkpoint %s", step, total, last_ckpt)
                    break
        wall = wall_before + time.perf_counter() - t_start
        logger.log({"event": "end", "step": step, "interrupted": interrupted, "wall_time_s": wall})
        metrics = {k: v for k, v in record.items() if isinstance(v, float)}
        return TrainResult(step, total, interrupted, last_ckpt, metrics, wall)

    def _channels_last(self, dataset: Any, collate_fn: Any) -> bool:
        """``train.channels_last``; ``auto``: NHWC on GPUs, on CPUs the layout that ran one
        step faster on this machine (measured once on a copy of the model and the first
        samples, then cached; rank 0 measures and tells the others). ``fit`` seeds the RNG at
        its start, so a run's random stream does not depend on whether this machine had
        measured before; the RNG is put back here too, for whoever uses it in between."""
        setting = self.cfg.channels_last
        if setting != "auto":
            return bool(setting)
        if self.device.type != "cpu" or self.cfg.deterministic:
            # train.deterministic promises the same bits from every process on this machine; a
            # timing must not choose its arithmetic: NHWC, as before this setting existed.
            return True
        choice = None
        settled = self.run_dir / "train_config.json"
        if self.dist.rank == 0 and settled.is_file():
            # A resumed (or re-run) run keeps the layout it started with, whatever this
            # process would measure: the same arithmetic, bit for bit.
            try:
                choice = json.loads(settled.read_text()).get("channels_last_resolved")
            except (OSError, ValueError, AttributeError):
                choice = None
        if self.dist.rank == 0 and not isinstance(choice, bool):
            from torch.utils.data import default_collate

            from plda.engine.memory import is_allocation_failure
            from plda.models.fastpath import choose_channels_last

            state = capture_rng_state(self.device)
            try:
                items = [dataset[i] for i in range(min(self.local_batch, len(dataset)))]
                batch = (collate_fn or default_collate)(items)
                choice = choose_channels_last(self.model, batch, self._amp_dtype, self.device)
            except (RuntimeError, MemoryError) as exc:
                if not is_allocation_failure(exc):
                    raise
                _log.warning("train.channels_last=auto: no memory to time both layouts (%s); "
                             "using NHWC", exc)
                choice = True
            finally:
                restore_rng_state(state, self.device)
        if self.dist.is_distributed:
            choice = broadcast_object(choice)
        return bool(choice)

    def _forward_backward(self, batches: Iterator, step: int
                          ) -> tuple[dict[str, float], bool, Any]:
        """All micro-steps of one optimizer step; returns the rank-averaged terms and stop flag."""
        accum = self.cfg.grad_accum_steps
        summed, batch = None, None
        for k in range(accum):
            batch = batch_to_device(next(batches), self.device, self.channels_last)
            sync = self.train_model.no_sync() if self.dist.is_distributed and k < accum - 1 \
                else contextlib.nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=self._amp_dtype,
                                    enabled=self._amp_dtype is not None):
                    out = self.train_model(batch, step / self.total_steps)
                vec = self._terms(out, step)
                loss = out["loss"].float() / accum
                # Stepping inside backward: a non-finite loss must not reach the weights (the
                # loop then stops with the last good checkpoint intact).
                if not (self._in_backward and not torch.isfinite(vec[0])):
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            summed = vec if summed is None else summed + vec
        flag = torch.tensor([float(self._stop_requested)], device=self.device)
        host = all_reduce_sum(torch.cat([summed, flag])).tolist()
        n = accum * self.dist.world_size
        values = {k: v / n for k, v in zip(self._keys, host[:-1])}
        return values, host[-1] > 0, batch

    def _terms(self, out: Any, step: int) -> torch.Tensor:
        if not isinstance(out, dict) or not isinstance(out.get("loss"), torch.Tensor) \
                or out["loss"].numel() != 1 or not out["loss"].requires_grad:
            raise TypeError("model.forward(batch, progress) must return a dict whose 'loss' is a "
                            f"scalar tensor with grad; got {type(out).__name__}")
        if self._keys is None:
            self._keys = ["loss"] + sorted(k for k in out if k != "loss")
        try:
            return torch.stack([out[k].detach().float().reshape(()) for k in self._keys])
        except (KeyError, AttributeError, RuntimeError) as exc:
            raise TypeError(f"model output at step {step + 1} must hold the scalar tensors "
                            f"{self._keys} at every step; got keys {sorted(out)}") from exc

    def _optimizer_step(self) -> dict[str, float]:
        stats = {}
        if self.cfg.max_grad_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
            stats["stat/grad_norm"] = float(norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif not self._in_backward:  # otherwise every parameter was updated during backward
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats

    def _callback(self, name: str, *args: Any) -> None:
        if not self.dist.is_main:
            return
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(*args)

    def _visualise(self, step: int, batch: Any) -> None:
        devices = [self.device] if self.device.type == "cuda" else []
        # fork_rng: a callback's forward pass (dropout) must not shift rank 0's training stream.
        with torch.random.fork_rng(devices=devices, device_type=self.device.type), \
                torch.no_grad():
            self._callback("on_visualise", step, self.model, batch)
        self.train_model.train()

    # ------------------------------------------------------------------ state
    def _save(self, step: int, wall_time: float, metrics: dict[str, Any],
              log_window: dict[str, Any] | None = None) -> Path:
        rng = all_gather_object(capture_rng_state(self.device))
        path = checkpoint_path(self.checkpoint_dir, step)
        if self.dist.is_main:
            save_checkpoint(path, {
                "format": CHECKPOINT_FORMAT, "version": 1,
                "step": step, "epoch": step // self.steps_per_epoch,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "world_size": self.dist.world_size,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng,
                "train_config": self.cfg.to_dict(),
                "config": _plain(self.config_dict),
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                "log_window": _plain(log_window or {}),
                "wall_time_s": wall_time,
            })
            prune_checkpoints(self.checkpoint_dir, self.cfg.keep_checkpoints)
        barrier()
        return path

    def _restore(self, resume: bool) -> tuple[int, float, Path | None]:
        self._resumed_window = {}
        found = latest_checkpoint(self.checkpoint_dir) if self.dist.is_main else None
        if not resume:
            found = broadcast_object(str(found) if found else None)
            if found is not None:
                raise ConfigError(f"{self.checkpoint_dir} already holds checkpoints (latest "
                                  f"{Path(found).name}); resume the run or use a new run folder")
            return 0, 0.0, None
        # The newest checkpoint that reads (a truncated newest one falls back to the older ones
        # kept beside it, with a warning).
        readable = readable_checkpoint(self.checkpoint_dir) if self.dist.is_main else None
        found = broadcast_object(str(readable[0]) if readable else None)
        if found is None:
            _log.info("no checkpoint in %s: starting from step 0", self.checkpoint_dir)
            return 0, 0.0, None
        path = Path(found)
        state = readable[1] if readable else load_checkpoint(path)
        self._check_resumable(state, path)
        problem = state_dict_mismatch(self.model.state_dict(), state.get("model") or {})
        if problem:
            raise WeightsError(f"{path}: the checkpoint does not fit the model being trained "
                               f"({problem}); it was written for another architecture or class "
                               "count: resume with the run's own config or use a new run folder")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank], self.device)
        else:
            _log.warning("checkpoint %s was written by %d rank(s), this run has %d: RNG streams "
                         "are reseeded, so the result will not match an uninterrupted run",
                         path, len(rng), self.dist.world_size)
            seed_everything(derive_seed(self.cfg.seed, state["step"], self.dist.rank))
        window = state.get("log_window") or {}
        self._resumed_window = window if isinstance(window, dict) else {}
        _log.info("resumed from %s (step %d/%d)", path, state["step"], self.total_steps)
        return int(state["step"]), float(state.get("wall_time_s", 0.0)), path

    def _check_resumable(self, state: dict[str, Any], path: Path) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path} is not a training checkpoint of this toolkit "
                              f"(format {state.get('format')!r})")
        old = state.get("train_config", {})
        for key in _RESUME_FIXED:
            if key in old and old[key] != getattr(self.cfg, key):
                raise ConfigError(f"train.{key}={getattr(self.cfg, key)!r} differs from "
                                  f"{old[key]!r} in {path}; a resumed run must keep it")
        if state.get("steps_per_epoch") != self.steps_per_epoch:
            raise ConfigError(f"{path} was written with {state.get('steps_per_epoch')} steps per "
                              f"epoch, this dataset gives {self.steps_per_epoch}: the training "
                              "set changed since the checkpoint")

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        return previous

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt  # a second signal stops without waiting for the step
        self._stop_requested = True
        _log.warning("%s received: finishing this step, writing a checkpoint, then stopping",
                     signal.Signals(signum).name)


def _plain(obj: Any) -> Any:
    """``obj`` with paths as strings and tuples as lists, so it loads with weights_only."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
