"""State-dict files (load/save), weights inspection, CLI and the MXNet ResNet-38 conversion."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from plda.cli import convert_weights as convert_cli
from plda.cli import weights as weights_cli
from plda.errors import WeightsError
from plda.models.backbones.resnet38 import convert_imagenet_params as convert_resnet38
from plda.weights.convert import ConvertReport, resnet38_name_map
from plda.weights.inspect import inspect_weights
from plda.weights.io import load_state_dict_file, save_state_dict_file
from plda.weights.mxnet import read_params, write_params


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plda")
    sub = parser.add_subparsers(dest="command")
    weights_cli.register(sub)
    convert_cli.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    conv = torch.randn(3, 2, 3, 3, generator=g)
    # "tied", "view" and "row" share storage with other entries, which safetensors alone refuses.
    return {"conv.weight": conv, "conv.bias": torch.randn(3, generator=g), "tied": conv,
            "bn.num_batches_tracked": torch.tensor(7), "half": torch.randn(5, generator=g).half(),
            "view": base[:, 1:3], "row": base[1], "base": base}


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


# ---- load / save -------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt", ".bin", ".ckpt"])
def test_save_load_round_trip(tmp_path, suffix):
    state = _state()
    path = tmp_path / f"w{suffix}"
    save_state_dict_file(path, state)
    _assert_same(load_state_dict_file(path), state)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporaries left behind


def test_format_comes_from_magic_not_suffix(tmp_path):
    state = _state()
    save_state_dict_file(tmp_path / "a.weights", state, fmt="safetensors")
    save_state_dict_file(tmp_path / "b.weights", state, fmt="pth")
    write_params(tmp_path / "c.weights", {"arg:x": np.arange(3, dtype=np.float32)})
    _assert_same(load_state_dict_file(tmp_path / "a.weights"), state)
    _assert_same(load_state_dict_file(tmp_path / "b.weights"), state)
    assert list(load_state_dict_file(tmp_path / "c.weights")) == ["x"]


def test_training_checkpoint_yields_model_weights(tmp_path):
    state = _state()
    for key in ("model", "state_dict"):
        ckpt = {key: {**state, "note": "not a tensor", "nested": {"x": torch.ones(1)}},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]}, "epoch": 3}
        torch.save(ckpt, tmp_path / f"{key}.pth")
        _assert_same(load_state_dict_file(tmp_path / f"{key}.pth"), state)


def test_mxnet_params_load_as_torch_without_prefixes(tmp_path):
    arrays = {"arg:w": np.arange(6, dtype=np.float32).reshape(2, 3), "aux:m": np.arange(2, dtype=np.float64)}
    write_params(tmp_path / "x.params", arrays, version="v1")
    got = load_state_dict_file(tmp_path / "x.params")
    assert list(got) == ["w", "m"]
    assert torch.equal(got["w"], torch.from_numpy(arrays["arg:w"])) and got["m"].dtype == torch.float64


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weight": torch.ones(2), "payload": Payload()}, tmp_path / "evil.pth")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match="arbitrary Python objects and was refused") as err:
        load_state_dict_file(tmp_path / "evil.pth")
    assert "evil.pth" in str(err.value)
    assert not marker.exists()


def test_unreadable_files(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json....")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    (tmp_path / "notes.txt").write_text("hello")
    for name, pattern in [("bad.pth", "not a readable torch checkpoint"),
                          ("bad.safetensors", "not a readable .safetensors"),
                          ("list.pth", "expected a dict of tensors, found list"),
                          ("empty.pth", "no tensors found"),
                          ("notes.txt", "unrecognised weights file"),
                          ("absent.pth", "cannot read")]:
        with pytest.raises(WeightsError, match=pattern) as err:
            load_state_dict_file(tmp_path / name)
        assert name in str(err.value)
    with pytest.raises(WeightsError, match="safetensors' or 'pth'"):
        save_state_dict_file(tmp_path / "out.npz", _state())


# ---- inspect -----------------------------------------------------------------------------------

def test_inspect_sums_match_numpy(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"arg:w": rng.standard_normal((64, 3, 3, 3)).astype(np.float32),
              "aux:n": rng.integers(-9, 9, 17).astype(np.int64),
              "h": rng.standard_normal(5).astype(np.float16)}
    write_params(tmp_path / "x.params", arrays)
    entries = inspect_weights(tmp_path / "x.params")
    assert [e["name"] for e in entries] == list(arrays)  # prefixes kept
    for e, arr in zip(entries, arrays.values()):
        assert e["shape"] == list(arr.shape) and e["dtype"] == arr.dtype.name
        assert isinstance(e["sum"], float)
        assert e["sum"] == pytest.approx(arr.astype(np.float64).sum(), rel=1e-12, abs=1e-12)

    state = {"a": torch.randn(3, 4, dtype=torch.float64), "b": torch.ones(2, dtype=torch.bfloat16) * 1.5,
             "c": torch.tensor(4)}
    save_state_dict_file(tmp_path / "s.safetensors", state)
    by_name = {e["name"]: e for e in inspect_weights(tmp_path / "s.safetensors")}
    assert by_name["a"]["sum"] == pytest.approx(state["a"].numpy().sum(), rel=1e-12)
    assert (by_name["b"]["dtype"], by_name["b"]["sum"]) == ("bfloat16", 3.0)
    assert (by_name["c"]["shape"], by_name["c"]["dtype"], by_name["c"]["sum"]) == ([], "int64", 4.0)


@pytest.mark.realdata
def test_inspect_cli_on_real_file(shared_data, tmp_path, capsys):
    src = shared_data / "mxnet-params" / "mobilefacenet-model-0000.params"
    out = tmp_path / "report" / "mfn.json"
    assert run_cli(["weights", "inspect", str(src), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[-1] == "total: 284 arrays, 1,022,848 parameters"
    entries = json.loads(out.read_text())
    assert len(entries) == 284 and entries == inspect_weights(src)
    arrays = read_params(src)
    for e in entries:
        assert e["sum"] == pytest.approx(arrays[e["name"]].astype(np.float64).sum(), rel=1e-12, abs=1e-9)
        assert re.search(rf"^{re.escape(e['name'])}\s+{'x'.join(map(str, e['shape']))}\s+float32\s", text,
                         re.M)


def test_weights_without_action_shows_help(capsys):
    assert run_cli(["weights"]) == 2
    assert "inspect" in capsys.readouterr().out


# ---- ResNet-38 name map ------------------------------------------------------------------------

@pytest.mark.parametrize("mx_name,ours", [
    ("arg:res2a_branch2a_weight", "b2.conv_branch2a.weight"),
    ("res2a_branch1_weight", "b2.conv_branch1.weight"),
    ("arg:bn2a_branch2a_gamma", "b2.bn_branch2a.weight"),
    ("arg:bn3b2_branch2b1_beta", "b3_2.bn_branch2b1.bias"),
    ("aux:bn4b5_branch2b1_moving_mean", "b4_5.bn_branch2b1.running_mean"),
    ("aux:bn6a_branch2b2_moving_var", "b6.bn_branch2b2.running_var"),
    ("res7a_branch2b2_weight", "b7.conv_branch2b2.weight"),
    ("res5b1_branch2b1_weight", "b5_1.conv_branch2b1.weight"),
    ("arg:conv1a_weight", "conv1a.weight"),
    ("arg:bn7_gamma", "bn7.weight"), ("aux:bn7_moving_var", "bn7.running_var"),
    ("arg:linear1000_weight", None), ("linear1000_bias", None),
    ("res2a_branch2a_bias", None), ("bn2a_branch2a_weight", None), ("fc_weight", None),
])
def test_resnet38_name_map(mx_name, ours):
    assert resnet38_name_map(mx_name) == ours


# ---- ResNet-38 conversion ----------------------------------------------------------------------

_MX_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}


def reference_mxnet_name(key: str) -> str:
    """Our key -> its name in ilsvrc-cls_rna-a1_cls1000_ep-0001.params (the inverse rule)."""
    if key == "conv1a.weight":
        return "arg:conv1a_weight"
    parts = key.split(".")
    mx_param = _MX_BN.get(parts[-1])
    prefix = "aux" if mx_param and mx_param.startswith("moving") else "arg"
    if len(parts) == 2:
        return f"{prefix}:bn7_{mx_param}"
    module, layer, _ = parts
    stage, _, index = module[1:].partition("_")
    block = f"{stage}b{index}" if index else f"{stage}a"
    kind, branch = layer.split("_", 1)
    return f"arg:res{block}_{branch}_weight" if kind == "conv" else f"{prefix}:bn{block}_{branch}_{mx_param}"


@pytest.fixture(scope="module")
def resnet38():
    from plda.models.backbones.resnet38 import ResNet38

    with torch.device("meta"):  # skip 105 M random inits: every test loads its own weights
        model = ResNet38()
    return model.to_empty(device="cpu").eval()


def _reference_arrays(model) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """Random weights of the model's shapes, under reference MXNet names and under ours."""
    g = torch.Generator().manual_seed(1)
    ours: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            ours[key] = torch.zeros_like(value)
        elif key.endswith("running_var") or (key.endswith("weight") and value.ndim == 1):
            ours[key] = 0.5 + torch.rand(value.shape, generator=g)
        elif value.ndim == 4:
            ours[key] = torch.randn(value.shape, generator=g) * (2.0 / value[0].numel()) ** 0.5
        else:
            ours[key] = 0.1 * torch.randn(value.shape, generator=g)
    mx = {reference_mxnet_name(k): v.numpy() for k, v in ours.items()
          if not k.endswith("num_batches_tracked")}
    mx["arg:linear1000_weight"] = np.ones((1000, 4096), np.float32)
    mx["arg:linear1000_bias"] = np.zeros(1000, np.float32)
    return mx, ours


@pytest.mark.slow
def test_convert_resnet38_loads_strictly_and_matches(resnet38, tmp_path):
    mx, ours = _reference_arrays(resnet38)
    assert len(mx) == 2 + sum(not k.endswith("num_batches_tracked") for k in ours)  # names are unique
    src = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    write_params(src, mx, version="legacy")
    report = convert_resnet38(src, tmp_path / "r38.safetensors")
    assert isinstance(report, ConvertReport)
    assert report.dropped == ["arg:linear1000_weight", "arg:linear1000_bias"]
    assert (report.missing, report.unexpected, report.shape_mismatches) == ([], [], [])
    assert sorted(report.converted) == sorted(k for k in ours if not k.endswith("num_batches_tracked"))

    converted = load_state_dict_file(tmp_path / "r38.safetensors")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        resnet38.load_state_dict(ours, strict=True)
        direct = resnet38(x)
        result = resnet38.load_state_dict(converted, strict=True)
        via_file = resnet38(x)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in ours.items():
        assert torch.equal(converted[key], value), key
    assert direct.keys() == via_file.keys()
    for level in direct:
        assert torch.isfinite(direct[level]).all() and direct[level].abs().sum() > 0
        torch.testing.assert_close(via_file[level], direct[level], rtol=0, atol=0)


def _small_file(path: Path, **extra: np.ndarray) -> None:
    arrays = {"arg:conv1a_weight": np.ones((64, 3, 3, 3), np.float32),
              "arg:bn2a_branch2a_gamma": np.full(64, 2.0, np.float32),
              "aux:bn2a_branch2a_moving_var": np.full(64, 3.0, np.float64),
              "arg:linear1000_bias": np.zeros(1000, np.float32), **extra}
    write_params(path, arrays, version="v2")


def test_convert_partial_file_needs_allow_missing(tmp_path, capsys):
    src, out = tmp_path / "part.params", tmp_path / "part.pth"
    _small_file(src, **{"arg:res2a_branch2a_bias": np.zeros(128, np.float32)})
    with pytest.raises(WeightsError, match=r"parameters are not in the file: .*b2\.bn_branch2a\.bias"):
        convert_resnet38(src, out)
    assert not out.exists()
    assert run_cli(["convert-weights", "resnet38", str(src), str(out), "--allow-missing"]) == 0
    printed = capsys.readouterr().out
    assert f"converted 3 tensors -> {out}" in printed and "unexpected (1): arg:res2a_branch2a_bias" in printed
    state = load_state_dict_file(out)
    assert torch.equal(state["conv1a.weight"], torch.ones(64, 3, 3, 3))
    assert state["b2.bn_branch2a.running_var"].dtype == torch.float32  # cast to the model's dtype
    assert torch.equal(state["b2.bn_branch2a.running_var"], torch.full((64,), 3.0))
    assert state["b2.bn_branch2a.num_batches_tracked"].item() == 0


def test_convert_refuses_wrong_shape(tmp_path):
    src, out = tmp_path / "bad.params", tmp_path / "bad.safetensors"
    _small_file(src, **{"arg:res2a_branch1_weight": np.zeros((128, 64, 3, 3), np.float32)})
    with pytest.raises(WeightsError, match=r"arg:res2a_branch1_weight \(b2\.conv_branch1\.weight\): "
                                           r"file \(128, 64, 3, 3\) vs model \(128, 64, 1, 1\)"):
        convert_resnet38(src, out, allow_missing=True)
    assert not out.exists()
    with pytest.raises(WeightsError, match="expected format 'safetensors' or 'pth'"):
        convert_resnet38(src, tmp_path / "out.npz")


def test_convert_refuses_two_names_for_one_parameter(tmp_path):
    src = tmp_path / "dup.params"
    _small_file(src, conv1a_weight=np.zeros((64, 3, 3, 3), np.float32))
    with pytest.raises(WeightsError,
                       match="'arg:conv1a_weight' and 'conv1a_weight' both map to 'conv1a.weight'"):
        convert_resnet38(src, tmp_path / "dup.safetensors", allow_missing=True)
