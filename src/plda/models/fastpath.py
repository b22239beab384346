"""What this CPU can do fast, decided at run time: bf16 support and the faster of two
convolution paths per layer shape, measured once per machine and cached.

Nothing here changes results beyond float rounding; it only picks between equivalent kernels.

* :func:`cpu_features` reads the CPU's model name and the instruction-set flags that matter
  (AVX2, AVX-512, AVX512-BF16, AMX). ``PLDA_CPU_FLAGS=avx2,avx512f`` replaces the detected flags
  (to simulate another CPU).
* :func:`resolve_amp` turns ``amp="bf16"`` on a CPU without native bf16 dot products into
  ``"none"`` with one warning: emulated bf16 is several times slower than fp32 there.
* :class:`ConvPathTuner` times the candidates for one convolution (forward and backward on
  random tensors of the layer's shapes, dtype and memory format) the first time that shape is
  trained, keeps the faster, and stores the choice in ``<cache>/conv_paths-<machine>.json``
  (``PLDA_CACHE_DIR``, else ``$XDG_CACHE_HOME/plda``, else ``~/.cache/plda``). ``PLDA_CONV_PATH``
  = ``auto`` (default), ``joint`` or ``onednn`` forces a path; the older ``PLDA_JOINT_CONV=0``
  still means ``onednn``.
* :func:`choose_channels_last` times one training forward + backward of the model in NHWC and
  in NCHW, once per machine and setting (``train.channels_last: auto``, the default, on CPU).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

_log = logging.getLogger(__name__)

# Flags reported by benchmarks and used for decisions (x86 names from /proc/cpuinfo; "bf16" is
# the Arm feature name).
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "avx512_fp16",
                     "amx_fp16", "bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
CONV_PATHS = ("auto", "joint", "onednn")


def _cpuinfo() -> tuple[str, set[str]]:
    name, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return name or platform.processor() or platform.machine(), flags


@functools.lru_cache(maxsize=None)
def _detected() -> tuple[str, frozenset[str]]:
    name, flags = _cpuinfo()
    return name, frozenset(flags)


def cpu_features() -> dict:
    """``{"model", "flags" (those of FLAGS_OF_INTEREST present), "torch_capability",
    "bf16_native", "threads"}`` of this machine's CPU."""
    name, flags = _detected()
    override = os.environ.get("PLDA_CPU_FLAGS")
    if override is not None:
        flags = frozenset(f.strip() for f in override.split(",") if f.strip())
    present = [f for f in FLAGS_OF_INTEREST if f in flags]
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - only informative
        capability = "unknown"
    if override is None and not flags:
        # No flag list to read (not Linux): oneDNN's own check is the best evidence there is.
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    else:
        native = any(f in flags for f in BF16_FLAGS)
    return {"model": name, "flags": present, "torch_capability": capability,
            "bf16_native": native, "threads": torch.get_num_threads()}


def describe_cpu() -> str:
    """One line for benchmark tables: model, flags, bf16 verdict, threads."""
    f = cpu_features()
    return (f"CPU: {f['model']} | flags: {' '.join(f['flags']) or 'none of interest'} | "
            f"torch dispatch: {f['torch_capability']} | native bf16: "
            f"{'yes' if f['bf16_native'] else 'no'} | threads: {f['threads']}")


_warned: set[str] = set()


def resolve_amp(amp: str, device: torch.device | str, setting: str = "amp") -> str:
    """The precision to run: ``amp`` itself, except ``"bf16"`` on a CPU without native bf16
    instructions, which runs fp32 (``"none"``) after one warning naming ``setting``."""
    device = torch.device(device)
    if amp != "bf16" or device.type != "cpu" or cpu_features()["bf16_native"]:
        return amp
    if setting not in _warned:
        _warned.add(setting)
        message = (f"{setting}=bf16: this CPU ({cpu_features()['model']}) has no native bf16 "
                   f"instructions (none of {', '.join(BF16_FLAGS[:2])}), where bf16 is slower "
                   "than fp32; running fp32 instead")
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        _log.warning(message)
    return "none"


def full_precision(x: Tensor) -> Tensor:
    """``x`` in float32 when it is a reduced-precision float (bf16/fp16), else unchanged (so
    float64 reference computations stay float64)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def conv_path_mode() -> str:
    """``PLDA_CONV_PATH`` (``auto``, ``joint`` or ``onednn``); ``PLDA_JOINT_CONV=0`` means
    ``onednn`` and ``=1`` means ``joint`` when ``PLDA_CONV_PATH`` is unset."""
    mode = os.environ.get("PLDA_CONV_PATH")
    if mode is None:
        legacy = os.environ.get("PLDA_JOINT_CONV")
        mode = {"0": "onednn", "1": "joint"}.get(legacy or "", "auto")
    mode = mode.strip().lower()
    if mode not in CONV_PATHS:
        from plda.errors import ConfigError

        raise ConfigError(f"PLDA_CONV_PATH={mode!r}: expected one of {', '.join(CONV_PATHS)}")
    return mode


def cache_dir() -> Path:
    explicit = os.environ.get("PLDA_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "plda"


def machine_id() -> str:
    """Stable id of (CPU model, flags, torch version): choices measured on one machine and
    torch build are never reused on another."""
    name, flags = _detected()
    text = "|".join([name, ",".join(sorted(flags)), torch.__version__, platform.machine()])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class ConvPathTuner:
    """Measured choices between convolution paths, one per (shape, dtype, threads) key."""

    def __init__(self, path: Path | None = None, repeats: int = 3) -> None:
        self.path = path
        self.repeats = repeats
        self._choices: dict[str, str] | None = None
        self._lock = threading.Lock()
        self._announced = False

    def _file(self) -> Path:
        return self.path if self.path is not None else \
            cache_dir() / f"conv_paths-{machine_id()}.json"

    def _load(self) -> dict[str, str]:
        if self._choices is None:
            try:
                data = json.loads(self._file().read_text())
                self._choices = {str(k): str(v) for k, v in data.get("choices", {}).items()}
            except (OSError, ValueError, AttributeError):
                self._choices = {}
        return self._choices

    def _store(self, key: str, choice: str, timings: dict[str, float]) -> None:
        from plda.utils.io import atomic_write_json

        file = self._file()
        try:
            try:  # merge with what other processes stored meanwhile
                data = json.loads(file.read_text())
                if not isinstance(data.get("choices"), dict):
                    raise ValueError
            except (OSError, ValueError, AttributeError):
                data = {"machine": cpu_features()["model"], "torch": torch.__version__,
                        "choices": {}, "seconds": {}}
            data["choices"][key] = choice
            data.setdefault("seconds", {})[key] = timings
            file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(file, data)
        except OSError as exc:  # a read-only home: the choice still holds for this process
            _log.debug("conv path cache %s not written: %s", file, exc)

    def choose(self, key: str, candidates: Callable[[], dict[str, Callable[[], None]]],
               names: tuple[str, ...] | None = None) -> str:
        """The name of the fastest candidate for ``key``: the cached choice (one of ``names``
        when given), else measured now. ``candidates()`` makes the runnable candidates; it is
        called only to measure (making them can cost more than running the choice). Each
        candidate runs once to warm up, then ``repeats`` times; the minimum counts."""
        with self._lock:
            choices = self._load()
            if not (key in choices and (names is None or choices[key] in names)):
                # Another process (a run being resumed, a DDP rank) may have measured it since
                # this one read the file: its verdict keeps the two runs' arithmetic identical.
                self._choices = None
                choices = self._load()
            if key in choices and (names is None or choices[key] in names):
                return choices[key]
            candidates = candidates()
            if not self._announced:
                self._announced = True
                _log.info("measuring the faster convolution path for each new layer shape on "
                          "this CPU (once; cached in %s)", self._file())
            best: dict[str, float] = {}
            for name, run in candidates.items():
                run()
            for _ in range(self.repeats):
                for name, run in candidates.items():
                    t0 = time.perf_counter()
                    run()
                    best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
            choice = min(best, key=best.get)
            choices[key] = choice
            self._store(key, choice, {k: round(v, 6) for k, v in best.items()})
            return choice

    def clear(self) -> None:
        """Forget in-memory choices (the file is read again on next use)."""
        with self._lock:
            self._choices = None


TUNER = ConvPathTuner()


def batch_to_device(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Tensors of a batch on ``device``; with ``channels_last``, 4-d float tensors (images)
    in NHWC order to match the weights."""
    if isinstance(obj, Tensor):
        if channels_last and obj.dim() == 4 and obj.is_floating_point():
            return obj.to(device, memory_format=torch.channels_last, non_blocking=True)
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: batch_to_device(v, device, channels_last) for k, v in obj.items()}
    if isinstance(obj, list):
        return [batch_to_device(v, device, channels_last) for v in obj]
    return obj


def _shapes(obj) -> str:
    if isinstance(obj, Tensor):
        return "x".join(map(str, obj.shape))
    if isinstance(obj, dict):
        return ",".join(f"{k}:{_shapes(v)}" for k, v in sorted(obj.items()) if _shapes(v))
    return ""


def choose_channels_last(model: torch.nn.Module, batch, amp_dtype: torch.dtype | None,
                         device: torch.device | str = "cpu", tuner: ConvPathTuner | None = None
                         ) -> bool:
    """Whether training ``model`` runs faster with NHWC ("channels last") weights and images
    than with NCHW on this machine: one forward (``model(batch, 0.0)["loss"]``) and backward of
    a copy of the model in each layout, timed once per (model, backbone, batch shapes, dtype,
    threads) and cached like the convolution paths. The model itself is not touched; the caller
    keeps the RNG (dropout draws in the probe) as it needs it."""
    import copy

    device = torch.device(device)
    backbone = getattr(model, "backbone", None)
    # The output stride changes which layers run dilated, and so which layout is faster.
    strides = getattr(backbone, "strides", None) or {}
    stride = strides.get(getattr(backbone, "final_level", None), "-")
    key = (f"layout|{type(model).__name__}|{type(backbone).__name__ if backbone is not None else '-'}"
           f"|os{stride}"
           f"|{str(amp_dtype).replace('torch.', '') if amp_dtype else 'float32'}|{_shapes(batch)}"
           f"|t{torch.get_num_threads()}").replace(" ", "")

    def candidates() -> dict[str, Callable[[], None]]:
        copies = {}

        def run(layout: str) -> None:
            if layout not in copies:
                fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
                copies[layout] = (copy.deepcopy(model).to(device, memory_format=fmt),
                                  batch_to_device(batch, device, layout == "nhwc"))
            net, data = copies[layout]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = net(data, 0.0)["loss"]
            loss.float().backward()
            net.zero_grad(set_to_none=True)

        return {"nhwc": lambda: run("nhwc"), "nchw": lambda: run("nchw")}

    tuner = tuner if tuner is not None else LAYOUT_TUNER
    return tuner.choose(key, candidates, ("nhwc", "nchw")) == "nhwc"


# Whole training steps are long: one timed run per layout after the warm-up.
LAYOUT_TUNER = ConvPathTuner(repeats=1)
