"""List the arrays of a weights file: name, shape, dtype and float64 sum."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from plda.weights.io import detect_format, load_state_dict_file


def _summary(name: str, arr: np.ndarray) -> dict[str, Any]:
    return {"name": name, "shape": [int(d) for d in arr.shape], "dtype": arr.dtype.name,
            "sum": float(arr.sum(dtype=np.float64))}


def inspect_weights(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Describe every array of a ``.params``, ``.safetensors`` or torch checkpoint file.

    Each entry is ``{"name", "shape" (list of int), "dtype" (e.g. "float32"), "sum" (float64)}``.
    MXNet names are kept as stored, ``arg:``/``aux:`` prefixes included.
    """
    if detect_format(path) == "mxnet":
        from plda.weights.mxnet import read_params

        return [_summary(k, v) for k, v in read_params(path).items()]
    out = []
    for name, tensor in load_state_dict_file(path).items():
        try:
            out.append(_summary(name, tensor.numpy()))
        except TypeError:  # bfloat16/float8 have no numpy dtype; float32 holds them exactly
            out.append({**_summary(name, tensor.float().numpy()),
                        "dtype": str(tensor.dtype).removeprefix("torch.")})
    return out


def format_table(entries: list[dict[str, Any]]) -> str:
    """Render :func:`inspect_weights` output as an aligned text table with a total line."""
    rows = [("name", "shape", "dtype", "sum")] + [
        (e["name"], "x".join(map(str, e["shape"])) or "scalar", e["dtype"], f"{e['sum']:.6g}")
        for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>14}" for r in rows]
    total = sum(int(np.prod(e["shape"], dtype=np.int64)) for e in entries)
    lines.append(f"total: {len(entries)} arrays, {total:,} parameters")
    return "\n".join(lines)
