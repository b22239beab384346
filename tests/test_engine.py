"""Training engine: config, optimizer quirk, poly LR, checkpoints, sampler, trainer behaviour."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from _toy_training import ToyDataset, ToyNet, run_toy, single_thread
from plda.engine.checkpoint import (checkpoint_path, latest_checkpoint, list_checkpoints,
                                    load_checkpoint, prune_checkpoints, save_checkpoint)
from plda.engine.config import TrainConfig
from plda.engine.distributed import init_distributed, shard
from plda.engine.optim import PolyLR, build_optimizer
from plda.engine.seed import capture_rng_state, derive_seed, restore_rng_state
from plda.engine.trainer import EpochShardSampler
from plda.errors import ConfigError, PldaError, WeightsError


def _weights(run_dir: Path, step: int = 12) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint_path(run_dir / "checkpoints", step))["model"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """12 steps of the toy model with dropout, never interrupted."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result, _, _ = run_toy(run_dir)
    assert result.step == 12 and not result.interrupted
    return run_dir


# ---------------------------------------------------------------- config
def test_train_config_rejects_bad_budgets_and_values():
    with pytest.raises(ConfigError, match="exactly one of 'epochs' and 'iterations'"):
        TrainConfig(epochs=2, iterations=10)
    with pytest.raises(ConfigError, match="exactly one"):
        TrainConfig()
    with pytest.raises(ConfigError, match="train.amp"):
        TrainConfig(iterations=5, amp="fp8")
    with pytest.raises(ConfigError, match="train.batch_size"):
        TrainConfig(iterations=5, batch_size=0)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lr_policy'\]"):
        TrainConfig.from_dict({"iterations": 5, "lr_policy": "step"})
    cfg = TrainConfig(iterations=5, batch_size=12, grad_accum_steps=3)
    assert cfg.local_batch_size(world_size=2) == 2
    with pytest.raises(ConfigError, match="not divisible by world_size 5 x grad_accum_steps 3"):
        cfg.local_batch_size(world_size=5)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------- optimizer / schedule
def test_poly_lr_follows_formula_and_restores_state():
    w = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [w], "lr": 0.01}, {"params": [b], "lr": 0.2}], lr=0.01)
    sched = PolyLR(opt, total_steps=10, power=0.9)
    for k in range(11):
        expected = (1 - k / 10) ** 0.9
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * expected, rel=1e-12)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.2 * expected, rel=1e-12)
        if k == 4:
            saved = sched.state_dict()
        sched.step()
    assert sched.get_last_lr() == [0.0, 0.0]  # clamped past the end, never NaN
    opt2 = torch.optim.SGD([{"params": [w], "lr": 1.0}, {"params": [b], "lr": 1.0}], lr=1.0)
    sched2 = PolyLR(opt2, total_steps=99)
    sched2.load_state_dict(saved)
    assert opt2.param_groups[1]["lr"] == pytest.approx(0.2 * 0.6 ** 0.9)


def test_optimizer_groups_get_lr_and_decay_multipliers():
    model = ToyNet()
    model.backbone[0].bias.requires_grad_(False)
    opt = build_optimizer(model.parameter_groups(), TrainConfig(iterations=1, lr=0.01))
    names = [g["name"] for g in opt.param_groups]
    assert names == ["backbone_weight", "backbone_bias", "head_weight", "head_bias"]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.02, 0.1, 0.2])
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0, 5e-4, 0.0]
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    assert len(opt.param_groups[1]["params"]) == 1  # the frozen bias is left out
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['lr_mult'"):
        build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}],
                        TrainConfig(iterations=1))


def test_reference_optimizer_reproduces_positional_sgd_quirk():
    """The reference calls SGD(groups, lr, weight_decay): the 3rd positional slot is momentum."""
    torch.manual_seed(0)
    ours, ref = ToyNet(dropout=0.0), ToyNet(dropout=0.0)
    ref.load_state_dict(ours.state_dict())
    cfg = TrainConfig(iterations=6, lr=0.01, weight_decay=5e-4, reference_optimizer=True)
    opt = build_optimizer(ours.parameter_groups(), cfg)
    assert [g["momentum"] for g in opt.param_groups] == [5e-4] * 4
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0, 5e-4, 0.0]
    sched = PolyLR(opt, total_steps=6)

    groups = ref.parameter_groups()
    ref_opt = torch.optim.SGD([
        {"params": groups[0]["params"], "lr": 0.01, "weight_decay": 5e-4},
        {"params": groups[1]["params"], "lr": 0.02, "weight_decay": 0},
        {"params": groups[2]["params"], "lr": 0.1, "weight_decay": 5e-4},
        {"params": groups[3]["params"], "lr": 0.2, "weight_decay": 0},
    ], 0.01, 5e-4)
    initial = [g["lr"] for g in ref_opt.param_groups]
    data = ToyDataset(8)
    batch = {"image": data.images[:4], "label": data.labels[:4]}
    for step in range(6):
        for model, optimizer in ((ours, opt), (ref, ref_opt)):
            optimizer.zero_grad()
            with single_thread():
                model(batch, 0.0)["loss"].backward()
        for g, lr0 in zip(ref_opt.param_groups, initial):
            g["lr"] = lr0 * (1 - step / 6) ** 0.9
        opt.step()
        sched.step()
        ref_opt.step()
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_sgd_in_backward_equals_step_after_backward_for_a_shared_parameter():
    """A weight used by two branches (as the backbone by SEAM's two views) is updated once,
    with the sum of both gradients, the moment that sum is complete; the gradient is freed."""
    torch.manual_seed(0)
    w0, b0 = torch.randn(4, 3), torch.randn(4)
    x1, x2 = torch.randn(5, 3), torch.randn(2, 3)
    results = []
    for in_backward in (False, True):
        w, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
        opt = build_optimizer([{"params": [w], "lr_mult": 1, "weight_decay_mult": 1, "name": "w"},
                               {"params": [b], "lr_mult": 2, "weight_decay_mult": 0, "name": "b"}],
                              TrainConfig(iterations=3, lr=0.1))
        if in_backward:
            opt.attach_to_backward()
        for _ in range(3):
            loss = (x1 @ w.t() + b).square().mean() + (x2 @ w.t()).sin().sum()
            loss.backward()
            if in_backward:
                assert w.grad is None and b.grad is None  # stepped and freed during backward
            else:
                opt.step()
                opt.zero_grad()
        results.append((w.detach(), b.detach(), opt.state_dict()))
    (wa, ba, sa), (wb, bb, sb) = results
    assert torch.equal(wa, wb) and torch.equal(ba, bb)
    for k in sa["state"]:
        assert torch.equal(sa["state"][k]["momentum_buffer"], sb["state"][k]["momentum_buffer"])


def test_sgd_matches_torch_sgd_and_loads_its_state_dict():
    torch.manual_seed(0)
    ours, ref = ToyNet(dropout=0.0), ToyNet(dropout=0.0)
    ref.load_state_dict(ours.state_dict())
    cfg = TrainConfig(iterations=4, lr=0.05, momentum=0.9, weight_decay=1e-3)
    opt = build_optimizer(ours.parameter_groups(), cfg)
    ref_opt = torch.optim.SGD([{"params": g["params"], "lr": og["lr"], "momentum": 0.9,
                                "weight_decay": og["weight_decay"]}
                               for g, og in zip(ref.parameter_groups(), opt.param_groups)])
    batch = {"image": torch.randn(4, 3, 8, 8), "label": torch.ones(4, 4)}
    for _ in range(3):
        for model, optimizer in ((ours, opt), (ref, ref_opt)):
            optimizer.zero_grad()
            with single_thread():
                model(batch, 0.0)["loss"].backward()
            optimizer.step()
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    fresh = build_optimizer(ToyNet(dropout=0.0).parameter_groups(), cfg)
    fresh.load_state_dict(ref_opt.state_dict())  # torch's layout loads as is
    for a, b in zip(fresh.state_dict()["state"].values(), opt.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    bad = opt.state_dict()
    bad["param_groups"] = bad["param_groups"][:2]
    with pytest.raises(ValueError, match="2 parameter groups; this model has 4"):
        fresh.load_state_dict(bad)


def test_step_in_backward_applies_only_where_it_is_the_same_update():
    cfg = TrainConfig(iterations=1)
    assert cfg.steps_in_backward(world_size=1)
    assert not cfg.steps_in_backward(world_size=2)  # DDP reduces gradients after backward
    assert not TrainConfig(iterations=1, grad_accum_steps=2, batch_size=8).steps_in_backward(1)
    assert not TrainConfig(iterations=1, amp="fp16").steps_in_backward(1)  # loss scaling
    assert not TrainConfig(iterations=1, max_grad_norm=1.0).steps_in_backward(1)
    assert not TrainConfig(iterations=1, step_in_backward=False).steps_in_backward(1)


def test_trainer_step_in_backward_gives_the_same_weights(tmp_path):
    run_toy(tmp_path / "after", step_in_backward=False)
    run_toy(tmp_path / "inside", step_in_backward=True)
    after, inside = _weights(tmp_path / "after"), _weights(tmp_path / "inside")
    for k in after:
        assert torch.equal(after[k], inside[k]), k


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_weights_only_with_rng_states(tmp_path):
    model = ToyNet()
    opt = build_optimizer(model.parameter_groups(), TrainConfig(iterations=3))
    model({"image": torch.randn(2, 3, 8, 8), "label": torch.ones(2, 4)}, 0.0)["loss"].backward()
    opt.step()
    torch.manual_seed(5), np.random.seed(6), random.seed(7)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3,
             "rng": [capture_rng_state()], "config": {"train": {"lr": 0.01, "amp": "none"}}}
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    path = save_checkpoint(tmp_path / "ck" / "step_00000003.pt", state)
    loaded = load_checkpoint(path)
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert loaded["optimizer"]["param_groups"][2]["name"] == "head_weight"
    assert loaded["config"] == state["config"]
    restore_rng_state(loaded["rng"][0])
    again = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    assert torch.equal(again[0], expected[0]) and np.array_equal(again[1], expected[1])
    assert again[2:] == expected[2:]


class _Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_checkpoint_loader_refuses_pickled_objects_and_junk(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Payload()}, evil)
    with pytest.raises(WeightsError, match="evil.pt.*refused"):
        load_checkpoint(evil)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt"):
        load_checkpoint(junk)
    with pytest.raises(WeightsError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_latest_and_prune_checkpoints(tmp_path):
    for step in (5, 10, 15, 100):
        save_checkpoint(checkpoint_path(tmp_path, step), {"step": step})
    (tmp_path / ".tmp-step_00000200.pt.abc").write_bytes(b"partial")  # a killed writer's file
    assert latest_checkpoint(tmp_path).name == "step_00000100.pt"
    assert not list(tmp_path.glob(".tmp-*"))
    prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [15, 100]
    assert latest_checkpoint(tmp_path / "none") is None


# ---------------------------------------------------------------- distribution of samples
@pytest.mark.parametrize("world,accum", [(2, 1), (1, 2), (2, 2)])
def test_sampler_steps_see_the_same_samples_for_any_split(world, accum):
    n, batch = 21, 4
    single = EpochShardSampler(n, global_batch=batch, local_batch=batch, rank=0, world_size=1,
                               seed=3)
    single.set_epoch(2)
    reference = [i for _, i in single]
    assert len(reference) == 5 * batch and len(set(reference)) == 20
    local = batch // (world * accum)
    per_rank = []
    for rank in range(world):
        s = EpochShardSampler(n, global_batch=batch, local_batch=local, rank=rank,
                              world_size=world, seed=3)
        s.set_epoch(2)
        per_rank.append([i for _, i in s])
        assert len(per_rank[-1]) == len(s)
    for step in range(5):
        got = sorted(i for r in per_rank for i in r[step * batch // world:
                                                       (step + 1) * batch // world])
        assert got == sorted(reference[step * batch:(step + 1) * batch])
    single.set_epoch(2, start_step=3)
    assert [i for _, i in single] == reference[3 * batch:]
    single.set_epoch(3)
    assert [i for _, i in single] != reference  # a new order each epoch
    padded = EpochShardSampler(n, global_batch=batch, local_batch=batch, rank=0, world_size=1,
                               seed=3, drop_last=False)
    assert padded.steps_per_epoch == 6 and len(padded) == 24


def test_shard_and_single_process_fallback(monkeypatch):
    items = list(range(11))
    shards = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == items and shards[1] == [1, 4, 7, 10]
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed()
    assert (info.rank, info.world_size, info.is_distributed, info.is_main) == (0, 1, False, True)
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 2, 4)


# ---------------------------------------------------------------- trainer
def test_nan_loss_stops_naming_step_and_terms_and_keeps_last_checkpoint(tmp_path):
    with pytest.raises(PldaError) as info:
        run_toy(tmp_path, nan_at_step=7, checkpoint_every=5)
    msg = str(info.value)
    assert "non-finite loss at step 7/12" in msg
    assert "loss=nan" in msg and "reg=nan" in msg and "cls=0.6" in msg
    assert "step_00000005.pt" in msg
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [5]
    kept = load_checkpoint(tmp_path / "checkpoints" / "step_00000005.pt")
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


def test_gradient_accumulation_equals_large_batch(tmp_path):
    run_toy(tmp_path / "big", dropout=0.0, batch_size=4, accum=1)
    run_toy(tmp_path / "acc", dropout=0.0, batch_size=4, accum=2)
    big, acc = _weights(tmp_path / "big"), _weights(tmp_path / "acc")
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-5, atol=1e-6)
    logs = [json.loads(line) for line in
            (tmp_path / "acc" / "logs" / "train.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in
           (tmp_path / "big" / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logs[:-1]] == pytest.approx([r["loss"] for r in ref[:-1]],
                                                           rel=1e-5)


def test_sigterm_saves_checkpoint_and_resume_matches_uninterrupted(tmp_path, uninterrupted):
    class SigtermAt3:
        def on_log(self, step, scalars):
            if step == 3:
                signal.raise_signal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    result, _, _ = run_toy(tmp_path, callbacks=(SigtermAt3(),))
    # All ranks learn of a stop request with the next step's reduction, so step 4 still runs.
    assert result.interrupted and result.step == 4
    assert result.checkpoint == tmp_path / "checkpoints" / "step_00000004.pt"
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run_toy(tmp_path)
    with pytest.raises(ConfigError, match="train.batch_size=8 differs from 4"):
        run_toy(tmp_path, resume=True, batch_size=8)

    result, _, dataset = run_toy(tmp_path, resume=True)
    assert result.step == 12 and not result.interrupted
    assert len(dataset.loaded) == (12 - 4) * 4  # consumed batches are skipped, not loaded
    _assert_same_weights(_weights(tmp_path), _weights(uninterrupted))
    records = [json.loads(line) for line in
               (tmp_path / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "event" not in r] == list(range(1, 13))
    assert records[-1]["event"] == "end" and records[-1]["wall_time_s"] > 0
    ref = [json.loads(line) for line in
           (uninterrupted / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records[:-1]] == [r["loss"] for r in ref[:-1]]
    first = records[0]
    assert {"step", "epoch", "lr", "loss", "cls", "reg", "stat/progress", "images_per_s",
            "wall_time_s"} <= first.keys()
    assert first["lr"] == 0.01 and records[1]["stat/progress"] == pytest.approx(1 / 12)


def test_visualise_callback_does_not_disturb_training(tmp_path, uninterrupted):
    seen = []

    class Vis:
        def on_visualise(self, step, model, batch):
            assert not torch.is_grad_enabled()
            model.eval()  # the trainer must put the model back in train mode
            seen.append((step, batch["image"].shape[0], batch["id"][0][:4]))
            model(batch, 0.0)

    run_toy(tmp_path, callbacks=(Vis(),), vis_every=4)
    assert seen == [(4, 4, "toy_"), (8, 4, "toy_"), (12, 4, "toy_")]
    _assert_same_weights(_weights(tmp_path), _weights(uninterrupted))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cpu_trains_with_finite_loss(tmp_path, amp):
    result, model, _ = run_toy(tmp_path, amp=amp, iterations=3, max_grad_norm=10.0)
    assert result.step == 3 and np.isfinite(result.metrics["loss"])
    assert "stat/grad_norm" in result.metrics
    state = load_checkpoint(result.checkpoint)
    assert (state["scaler"] is not None) == (amp == "fp16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
