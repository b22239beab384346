"""Load and save state dicts: MXNet ``.params``, safetensors and weights-only torch pickles.

Torch pickles are always opened with ``weights_only=True``: a checkpoint that needs arbitrary
Python objects to unpickle is refused instead of executed.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from plda.errors import WeightsError
from plda.utils.io import atomic_write, atomic_write_bytes

if TYPE_CHECKING:
    import torch

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_SUFFIX_FORMATS = {".params": "mxnet", ".safetensors": "safetensors",
                   **{s: "torch" for s in TORCH_SUFFIXES}}
# Training checkpoints keep the weights under one of these keys, the rest is optimizer/epoch/args.
CHECKPOINT_KEYS = ("state_dict", "model")


def detect_format(path: str | os.PathLike) -> str:
    """Return ``"mxnet"``, ``"safetensors"`` or ``"torch"`` from the file's magic, else its suffix."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    if head[:8] == struct.pack("<Q", 0x112):
        return "mxnet"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive / legacy pickle
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and path.suffix.lower() != ".params":
        return "safetensors"  # uint64 header length, then the JSON header
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise WeightsError(f"{path}: unrecognised weights file; expected an MXNet .params, a "
                           f".safetensors or a torch checkpoint ({', '.join(TORCH_SUFFIXES)})")
    return fmt


def _load_torch(path: Path) -> dict[str, "torch.Tensor"]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise WeightsError(
                f"{path}: the file contains arbitrary Python objects and was refused (only tensors "
                "and plain containers are loaded, torch.load(weights_only=True)); re-save it as a "
                "plain state dict or as .safetensors from code you trust") from None
        raise WeightsError(f"{path}: not a readable torch checkpoint ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - garbage bytes make the unpickler raise anything
        # (IndexError, KeyError, struct.error, ...): each means the same, an unreadable file.
        raise WeightsError(f"{path}: not a readable torch checkpoint "
                           f"({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    for key in CHECKPOINT_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{path}: no tensors found (expected a state dict, or a checkpoint "
                           f"with one under {' or '.join(map(repr, CHECKPOINT_KEYS))})")
    return tensors


def load_state_dict_file(path: str | os.PathLike) -> dict[str, "torch.Tensor"]:
    """Load a state dict (CPU tensors) from ``.params``, ``.safetensors`` or a torch checkpoint.

    MXNet names lose their ``arg:``/``aux:`` prefixes. A training checkpoint with a ``model`` or
    ``state_dict`` entry yields that entry; non-tensor entries are ignored.
    """
    import torch

    path = Path(path)
    fmt = detect_format(path)
    if fmt == "mxnet":
        from plda.weights.mxnet import read_params

        return {k: torch.from_numpy(v) for k, v in read_params(path, strip_prefix=True).items()}
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable .safetensors file ({exc})") from None
    return _load_torch(path)


def state_dict_mismatch(expected: Mapping[str, "torch.Tensor"], found: Mapping[str, "torch.Tensor"],
                        limit: int = 5, ignore_missing: tuple[str, ...] = ("num_batches_tracked",)
                        ) -> str:
    """Why ``found`` cannot be loaded into a model whose state dict is ``expected``, or ``""``.

    ``load_state_dict`` reports a foreign checkpoint as a traceback listing hundreds of keys;
    this names a few of each kind (missing, unexpected, wrong shape) so that one line tells
    the user which architecture or class count the file was made for.
    """
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")

    missing = [k for k in expected if k not in found and not k.endswith(ignore_missing)]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
              if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"missing {few(missing)}")
    if unexpected:
        parts.append(f"unexpected {few(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch (file vs model) {few(shapes)}")
    return "; ".join(parts)


def save_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """Check ``fmt`` (``"safetensors"``/``"pth"``) or derive it from ``path``'s suffix."""
    suffix = Path(path).suffix.lower()
    if fmt is None:
        fmt = "safetensors" if suffix == ".safetensors" else "pth" if suffix in TORCH_SUFFIXES else None
    if fmt not in ("safetensors", "pth"):
        raise WeightsError(f"cannot save weights to {path}: expected format 'safetensors' or 'pth' "
                           f"(or a .safetensors / {'/'.join(TORCH_SUFFIXES)} file name), got {fmt!r}")
    return fmt


def save_state_dict_file(path: str | os.PathLike, state_dict: Mapping[str, "torch.Tensor"],
                         fmt: str | None = None) -> None:
    """Save ``state_dict`` atomically as safetensors or as a plain dict of tensors (torch.save).

    ``fmt`` is ``"safetensors"`` or ``"pth"``; by default the suffix decides (``.safetensors``,
    or one of ``.pth/.pt/.bin/.ckpt``).
    """
    import torch

    path = Path(path)
    fmt = save_format(path, fmt)
    tensors = {str(k): v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    if fmt == "safetensors":
        from safetensors.torch import save

        # safetensors refuses tensors that share storage (tied or sliced weights): clone those.
        seen: set[int] = set()
        for k, v in tensors.items():
            ptr = v.untyped_storage().data_ptr()
            if ptr in seen or v.numel() != v.untyped_storage().nbytes() // v.element_size():
                tensors[k] = v.clone()
            seen.add(ptr)
        atomic_write_bytes(path, save(tensors))
    else:
        with atomic_write(path, "wb") as fh:
            torch.save(tensors, fh)
