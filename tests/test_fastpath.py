"""Run-time fast paths on the CPU: CPU feature detection, bf16 that falls back to fp32 where the
CPU has no bf16 instructions, the per-shape choice between oneDNN and the joint-view GEMM
(measured once, cached per machine, never touching the global RNG), and bf16 results that match
fp32 / float64 within stated tolerances."""

from __future__ import annotations

import json
import time
import warnings

import pytest
import torch
from torch import nn

from plda.models import fastpath, joint_conv
from plda.models.backbones import build_backbone
from plda.models.fastpath import ConvPathTuner, cpu_features, resolve_amp
from plda.models.joint_conv import joint_conv2d


@pytest.fixture(autouse=True)
def _isolated(one_thread, monkeypatch, tmp_path):
    """A private cache and a fresh tuner per test; warnings shown again per test."""
    monkeypatch.setenv("PLDA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PLDA_CONV_PATH", raising=False)
    monkeypatch.delenv("PLDA_JOINT_CONV", raising=False)
    monkeypatch.setattr(joint_conv, "TUNER", ConvPathTuner(repeats=1))
    monkeypatch.setattr(fastpath, "_warned", set())
    yield


# ------------------------------------------------------------------ CPU features and bf16

def test_cpu_features_follow_the_flags(monkeypatch):
    monkeypatch.setenv("PLDA_CPU_FLAGS", "avx2,avx512f")
    f = cpu_features()
    assert f["flags"] == ["avx2", "avx512f"] and f["bf16_native"] is False
    monkeypatch.setenv("PLDA_CPU_FLAGS", "avx2,avx512f,avx512_bf16,amx_tile,amx_bf16")
    f = cpu_features()
    assert f["bf16_native"] is True and "amx_bf16" in f["flags"]
    assert "native bf16: yes" in fastpath.describe_cpu()


def test_bf16_falls_back_to_fp32_on_a_cpu_without_bf16(monkeypatch):
    monkeypatch.setenv("PLDA_CPU_FLAGS", "avx2,avx512f")
    with pytest.warns(RuntimeWarning, match=r"train.amp=bf16: this CPU .* running fp32"):
        assert resolve_amp("bf16", "cpu", "train.amp") == "none"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        assert resolve_amp("bf16", "cpu", "train.amp") == "none"
    assert resolve_amp("none", "cpu") == "none"
    assert resolve_amp("fp16", "cpu") == "fp16"  # only bf16 is judged here
    monkeypatch.setenv("PLDA_CPU_FLAGS", "avx2,avx512_bf16")
    assert resolve_amp("bf16", "cpu", "cam.amp") == "bf16"


def test_trainer_and_cam_inference_run_fp32_when_bf16_is_absent(monkeypatch, tmp_path):
    import _toy_training as toy
    from plda.inference import runtime

    monkeypatch.setenv("PLDA_CPU_FLAGS", "avx2")
    seen = []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        seen.append((device_type, dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    with pytest.warns(RuntimeWarning, match="train.amp=bf16"):
        result, _, _ = toy.run_toy(tmp_path / "run", iterations=2, amp="bf16")
    assert result.step == 2
    assert seen and all(not enabled for _, _, enabled in seen)
    seen.clear()
    with pytest.warns(RuntimeWarning, match="amp=bf16"):
        ctx = runtime.autocast(torch.device("cpu"), "bf16")
    with ctx:
        assert not torch.is_autocast_enabled("cpu")


def test_conv_path_setting_is_checked(monkeypatch):
    from plda.errors import ConfigError

    monkeypatch.setenv("PLDA_CONV_PATH", "fastest")
    with pytest.raises(ConfigError, match="PLDA_CONV_PATH='fastest'"):
        fastpath.conv_path_mode()
    monkeypatch.delenv("PLDA_CONV_PATH")
    monkeypatch.setenv("PLDA_JOINT_CONV", "0")
    assert fastpath.conv_path_mode() == "onednn"


# ------------------------------------------------------------------ the measured choice

def test_tuner_keeps_the_faster_candidate_and_caches_it(tmp_path):
    file = tmp_path / "paths.json"
    calls = {"slow": 0, "fast": 0}

    def slow():
        calls["slow"] += 1
        time.sleep(0.02)

    def fast():
        calls["fast"] += 1

    assert ConvPathTuner(file, repeats=2).choose("k", lambda: {"slow": slow, "fast": fast}) \
        == "fast"
    assert calls == {"slow": 3, "fast": 3}  # one warm-up and two timed runs each
    stored = json.loads(file.read_text())
    assert stored["choices"] == {"k": "fast"} and stored["seconds"]["k"]["slow"] >= 0.02

    def never():
        raise AssertionError("a cached choice must not be measured (or made) again")

    # A new process (a new tuner) reads the file instead of measuring.
    assert ConvPathTuner(file).choose("k", never, ("slow", "fast")) == "fast"
    # A cached name that is not among the candidates any more is measured again.
    assert ConvPathTuner(file, repeats=1).choose("k", lambda: {"new": lambda: None},
                                                 ("new",)) == "new"


def test_a_choice_another_process_stored_meanwhile_is_used(tmp_path):
    file = tmp_path / "paths.json"
    mine = ConvPathTuner(file, repeats=1)
    assert mine.choose("a", lambda: {"x": lambda: None}) == "x"  # file read and written
    ConvPathTuner(file, repeats=1).choose("b", lambda: {"y": lambda: None})  # "another process"

    def never():
        raise AssertionError("measured although the file had the verdict")

    assert mine.choose("b", never, ("y", "z")) == "y"


def test_a_damaged_cache_is_measured_again(tmp_path):
    file = tmp_path / "paths.json"
    file.write_text("{not json")
    assert ConvPathTuner(file, repeats=1).choose("k", lambda: {"a": lambda: None}) == "a"
    assert json.loads(file.read_text())["choices"] == {"k": "a"}


def _count_joint(monkeypatch) -> list:
    calls = []
    real = joint_conv._JointConv2d.apply
    monkeypatch.setattr(joint_conv._JointConv2d, "apply",
                        lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("choice", ["joint", "onednn"])
def test_joint_conv_follows_the_cached_choice(monkeypatch, choice):
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    views = [torch.randn(1, 3, 8, 8), torch.randn(1, 3, 3, 3)]
    key = joint_conv._path_key(conv, views, torch.float32)
    tuner = joint_conv.TUNER
    tuner._choices = {key: choice}
    calls = _count_joint(monkeypatch)
    out = joint_conv2d(conv, views)
    assert len(calls) == (1 if choice == "joint" else 0)
    for o, x in zip(out, views):
        torch.testing.assert_close(o, conv(x))


def test_measuring_a_new_shape_leaves_the_global_rng_alone():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    views = [torch.randn(1, 3, 8, 8, requires_grad=True), torch.randn(1, 3, 3, 3)]
    state = torch.get_rng_state()
    joint_conv2d(conv, views)  # measures both paths for this shape first
    assert joint_conv.TUNER._choices and torch.equal(torch.get_rng_state(), state)


def test_joint_conv_is_eligible_only_where_meant(monkeypatch):
    monkeypatch.setenv("PLDA_CONV_PATH", "joint")
    calls = _count_joint(monkeypatch)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    small = [torch.randn(1, 3, 8, 8), torch.randn(1, 3, 3, 3)]
    joint_conv2d(conv, small)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        joint_conv2d(conv, small)  # bf16: the joint GEMM in bf16
    assert len(calls) == 2
    with torch.no_grad():
        joint_conv2d(conv, small)  # inference: plain conv
    joint_conv2d(conv, [torch.randn(1, 3, 17, 17)])  # 289 output pixels > 16 x 16
    joint_conv2d(nn.Conv2d(3, 4, 3, padding=1), small)  # has a bias
    joint_conv2d(nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False),
                 [torch.randn(1, 4, 8, 8)])  # grouped
    joint_conv2d(conv.double(), [x.double() for x in small])  # float64
    with torch.autocast("cpu", dtype=torch.float16):
        joint_conv2d(conv.float(), small)  # fp16 on CPU keeps oneDNN
    assert len(calls) == 2
    monkeypatch.setenv("PLDA_CONV_PATH", "onednn")
    joint_conv2d(conv.float(), small)
    assert len(calls) == 2


# ------------------------------------------------------------------ bf16 against fp32

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


@pytest.mark.parametrize("path", ["joint", "onednn"])
def test_bf16_joint_and_onednn_convolutions_match_fp32(monkeypatch, path):
    """One wide dilated layer over two views: bf16 outputs and every gradient within 1 % (bf16
    keeps 8 significant bits; products accumulate in fp32) of fp32, on either path."""
    monkeypatch.setenv("PLDA_CONV_PATH", path)
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 48, 3, padding=2, dilation=2, bias=False)
    views = [torch.randn(2, 64, 12, 12, requires_grad=True),
             torch.randn(2, 64, 4, 4, requires_grad=True)]
    upstream = [torch.randn(2, 48, 12, 12), torch.randn(2, 48, 4, 4)]

    def run(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = joint_conv2d(conv, views)
        grads = torch.autograd.grad([o.float() for o in out], [conv.weight, *views], upstream)
        return out, grads

    out32, g32 = run(False)
    out16, g16 = run(True)
    assert all(o.dtype == torch.bfloat16 for o in out16)
    assert all(g.dtype == torch.float32 for g in g16)  # weight gradient lands in fp32
    for a, b in zip([*out16, *g16], [*out32, *g32]):
        assert _rel(a, b) < 1e-2


def test_bf16_resnet38_two_views_match_fp32():
    """The ResNet-38 backbone (random init, eval-mode BN and dropout) on SEAM's two views under
    bf16 autocast: features within 5 % and parameter gradients within 10 % (relative L2) of
    fp32 after 38 layers of bf16 rounding."""
    torch.manual_seed(0)
    net = build_backbone("resnet38", pretrained=None).eval()
    views = [torch.randn(1, 3, 64, 64), torch.randn(1, 3, 19, 19)]
    params = [p for p in net.parameters() if p.requires_grad]

    def run(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            levels = net.forward_views(views)
            loss = sum(v["conv6"].float().square().mean() for v in levels)
        return [v["conv6"].float() for v in levels], torch.autograd.grad(loss, params)

    f32, g32 = run(False)
    f16, g16 = run(True)
    for a, b in zip(f16, f32):
        assert _rel(a, b) < 0.05
    whole16 = torch.cat([g.flatten() for g in g16])
    whole32 = torch.cat([g.flatten() for g in g32])
    assert _rel(whole16, whole32) < 0.10
    assert torch.nn.functional.cosine_similarity(whole16, whole32, dim=0) > 0.99


@pytest.mark.slow
def test_bf16_seam_plda_step_against_float64():
    """The pinned SEAM+PLDA step (tests/_reference_step.py, default mode) in bf16 autocast with
    fp32 weights against float64. Tolerances: the smooth terms (cls, rvmin, ER) within 1 %, the
    total loss within 5 %, the whole gradient's cosine above 0.95 and relative error below 0.35
    (measured on an AMX CPU: 0.26 %, 1.1 %, 0.983 and 0.185).
    The thresholded parts (MaskAssign, CPS pseudo labels, ECR's top 20 %) flip a few pixels under
    bf16 rounding, so individual tensors (PCM's reductions most) can differ far more. fp32 is held
    to 1e-4 on the terms and 5e-3 on the gradient (measured: 1.3e-3, NHWC summation order).
    The bf16 arm runs where the toolkit itself runs bf16, on a CPU with native bf16 instructions:
    elsewhere ``resolve_amp`` trains in fp32, and PyTorch's emulated bf16 kernels round
    differently (rvmin 3.6 % off on an AVX2 CPU) and take ten minutes for this one step."""
    import _reference_step as pinned

    def step(dtype, bf16):
        model = pinned.pinned_model(reference=False).to(dtype)
        model = model.to(memory_format=torch.channels_last)
        image, label = pinned.pinned_batch()
        batch = {"image": image.to(dtype).contiguous(memory_format=torch.channels_last),
                 "label": label.to(dtype)}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(batch, progress=pinned.PROGRESS)
        out["loss"].backward()
        grads = torch.cat([p.grad.double().flatten() for p in model.parameters()
                           if p.grad is not None])
        return {k: float(out[k]) for k in pinned.TERMS}, grads

    ref_terms, ref_grad = step(torch.float64, False)
    arms = [(torch.float32, False, 1e-4, 1e-4, 1 - 1e-4, 5e-3)]
    if cpu_features()["bf16_native"]:
        arms.append((torch.float32, True, 0.01, 0.05, 0.95, 0.35))
    for dtype, bf16, smooth, total, cosine, rel in arms:
        terms, grad = step(dtype, bf16)
        for k in ("cls", "rvmin", "er"):
            assert abs(terms[k] - ref_terms[k]) <= smooth * abs(ref_terms[k]), (bf16, k)
        assert abs(terms["loss"] - ref_terms["loss"]) <= total * ref_terms["loss"]
        assert torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0) > cosine
        assert _rel(grad, ref_grad) < rel


# ------------------------------------------------------------------ NHWC or NCHW

@pytest.mark.parametrize("cached", ["nhwc", "nchw"])
def test_trainer_takes_the_measured_layout_and_keeps_the_random_stream(monkeypatch, tmp_path,
                                                                       cached):
    """``train.channels_last: auto`` on CPU: a cached verdict is used as is; measuring it (on a
    copy of the model, dropout drawing from the RNG) leaves the run, weights and metrics,
    identical to one told the layout outright."""
    import _toy_training as toy

    layout_file = tmp_path / "layout.json"
    monkeypatch.setattr(fastpath, "LAYOUT_TUNER", ConvPathTuner(layout_file, repeats=1))
    seen = {}
    real = fastpath.choose_channels_last

    def spy(model, batch, amp_dtype, device="cpu", tuner=None):
        seen["choice"] = real(model, batch, amp_dtype, device, tuner)
        seen["calls"] = seen.get("calls", 0) + 1
        return seen["choice"]

    monkeypatch.setattr(fastpath, "choose_channels_last", spy)
    measured, model_a, _ = toy.run_toy(tmp_path / "a", iterations=3, channels_last="auto",
                                       deterministic=False)
    assert seen["calls"] == 1 and layout_file.is_file()
    told, model_b, _ = toy.run_toy(tmp_path / "b", iterations=3, deterministic=False,
                                   channels_last=seen["choice"])
    timing = {"wall_time_s", "images_per_s"}
    assert {k: v for k, v in measured.metrics.items() if k not in timing} == \
        {k: v for k, v in told.metrics.items() if k not in timing}
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)
    # A cached verdict decides without measuring.
    data = json.loads(layout_file.read_text())
    key = next(iter(data["choices"]))
    data["choices"][key] = cached
    layout_file.write_text(json.dumps(data))
    monkeypatch.setattr(fastpath, "LAYOUT_TUNER", ConvPathTuner(layout_file, repeats=1))
    monkeypatch.setattr(fastpath, "choose_channels_last", real)
    from plda.engine.trainer import Trainer

    made = {}
    init = Trainer.__init__

    def capture(self, *a, **k):
        init(self, *a, **k)
        made["trainer"] = self

    monkeypatch.setattr(Trainer, "__init__", capture)
    toy.run_toy(tmp_path / "c", iterations=1, channels_last="auto", deterministic=False)
    assert made["trainer"].channels_last is (cached == "nhwc")
    w = next(made["trainer"].model.parameters())
    assert w.is_contiguous(memory_format=torch.channels_last) == (cached == "nhwc")
    # A resumed run keeps the layout it started with, whatever the cache says now.
    data["choices"][key] = "nhwc" if cached == "nchw" else "nchw"
    layout_file.write_text(json.dumps(data))
    monkeypatch.setattr(fastpath, "LAYOUT_TUNER", ConvPathTuner(layout_file, repeats=1))
    toy.run_toy(tmp_path / "c", iterations=1, channels_last="auto", deterministic=False,
                resume=True)
    assert made["trainer"].channels_last is (cached == "nhwc")
    # Deterministic runs never let a timing choose their arithmetic: NHWC.
    toy.run_toy(tmp_path / "d", iterations=1, channels_last="auto")
    assert made["trainer"].channels_last is True


def test_channels_last_setting_is_checked():
    from plda.engine.config import TrainConfig
    from plda.errors import ConfigError

    with pytest.raises(ConfigError, match="train.channels_last"):
        TrainConfig(iterations=1, channels_last="sometimes")
