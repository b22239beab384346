"""The allocator setting (``plda.utils.malloc``): on glibc, freed large blocks stay in the heap
for reuse instead of being unmapped; the numbers computed do not change; a bad ``PLDA_MALLOC``
is refused by name. Each check runs in a fresh interpreter, since the setting is per process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from plda.errors import ConfigError

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the thresholds are glibc's")

# Allocate 64 MiB, read glibc's counters while it is held and after it is freed: hblkhd is the
# memory held in mmapped blocks, fordblks the free bytes kept in the heap.
_PROBE = r"""
import ctypes, json, sys
import torch
from plda.utils.malloc import tune_allocator

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
applied = tune_allocator()
block = torch.ones(64 << 20, dtype=torch.uint8)
held = libc.mallinfo2()
del block
freed = libc.mallinfo2()
print(json.dumps({"applied": applied, "mmapped_while_held": held.hblkhd,
                  "free_in_heap_after": freed.fordblks}))
"""

# One training step of a small network from a fixed seed: the loss and gradients, exactly.
_STEP = r"""
import json, torch
from plda.utils.malloc import tune_allocator
applied = tune_allocator()
torch.manual_seed(0)
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(64, 64, 3, padding=2, dilation=2, groups=64),
                          torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 4))
x = torch.randn(8, 3, 96, 96)
loss = torch.nn.functional.cross_entropy(net(x), torch.arange(8) % 4)
loss.backward()
print(json.dumps({"applied": applied["mode"], "loss": loss.item().hex(),
                  "grads": [float(p.grad.double().sum()).hex() for p in net.parameters()]}))
"""


def _run(code: str, mode: str) -> dict:
    env = dict(os.environ, PLDA_MALLOC=mode)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_tuned_keeps_a_freed_block_in_the_heap_and_system_unmaps_it():
    tuned, system = _run(_PROBE, "tuned"), _run(_PROBE, "system")
    assert tuned["applied"]["mode"] == "tuned"
    assert tuned["applied"]["mmap_threshold"] >= 64 << 20
    assert system["applied"] == {"mode": "system", "reason": "PLDA_MALLOC=system"}
    # The C library's default maps a 64 MiB block on its own and unmaps it on free...
    assert system["mmapped_while_held"] >= 64 << 20
    assert system["free_in_heap_after"] < 64 << 20
    # ...the tuned allocator serves it from the heap and keeps it there for the next step.
    assert tuned["mmapped_while_held"] < 64 << 20
    assert tuned["free_in_heap_after"] >= 64 << 20


def test_the_allocator_setting_leaves_the_numbers_unchanged():
    tuned, system = _run(_STEP, "tuned"), _run(_STEP, "system")
    assert system["applied"] == "system"
    assert (tuned["loss"], tuned["grads"]) == (system["loss"], system["grads"])


def test_a_bad_setting_is_refused_by_name(monkeypatch, capsys):
    from plda.cli.main import main
    from plda.utils import malloc

    monkeypatch.setenv("PLDA_MALLOC", "jemalloc")
    monkeypatch.setattr(malloc, "_applied", None)
    with pytest.raises(ConfigError, match=r"PLDA_MALLOC='jemalloc': expected one of tuned, "
                                          r"system"):
        malloc.tune_allocator()
    assert main(["config", "show", "synth_cam"]) == 2
    assert "PLDA_MALLOC='jemalloc'" in capsys.readouterr().err
    assert malloc._applied is None  # nothing was applied
