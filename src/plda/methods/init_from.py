"""``model.init_from``: start a stage-1 model from a trained baseline's weights.

A run folder (its ``stage1.safetensors``, else its latest checkpoint) or a weights file (ours,
or the published SEAM / PLDA ``.pth``, whose names are converted) is loaded into the parts of the
model that match it by name and shape. Layers the file does not have and that PLDA adds
(``plda.*``) keep their fresh initialisation: this is how PLDA is added to a model one already
has. Any other difference (a layer the model expects and the file lacks, a tensor the model has no
place for, a shape that differs) is an error that names the keys, unless ``strict`` is off, in
which case only the matching tensors load and the rest are reported.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from plda.errors import ConfigError, WeightsError

STAGE1_WEIGHTS = "stage1.safetensors"
FRESH_PREFIXES = ("plda.",)  # layers a baseline does not have and that may start fresh
_IGNORED = ("num_batches_tracked",)


@dataclass
class InitReport:
    """What :func:`init_from` loaded: the file, the tensors loaded, the model's tensors left at
    their fresh initialisation (``fresh``) and, with ``strict`` off, what did not fit
    (``skipped``: file keys; ``not_loaded``: model keys other than ``fresh``)."""

    path: str
    loaded: int
    fresh: list[str]
    skipped: list[str]
    not_loaded: list[str]

    def summary(self) -> str:
        text = f"initialised from {self.path}: {self.loaded} tensors"
        if self.fresh:
            text += f", {len(self.fresh)} new ({_few(self.fresh)}) fresh"
        if self.skipped or self.not_loaded:
            text += (f"; not loaded: {len(self.skipped)} from the file ({_few(self.skipped)}), "
                     f"{len(self.not_loaded)} of the model ({_few(self.not_loaded)})")
        return text


def _few(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def resolve_source(source: str | os.PathLike) -> Path:
    """The weights file behind ``model.init_from``: a file as given, or a run folder's
    ``stage1.safetensors``, else the newest checkpoint in its ``checkpoints/``."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / STAGE1_WEIGHTS).is_file():
            return path / STAGE1_WEIGHTS
        from plda.engine.checkpoint import latest_checkpoint

        ckpt = latest_checkpoint(path / "checkpoints")
        if ckpt is not None:
            return ckpt
        raise ConfigError(f"model.init_from={str(source)!r}: the folder has no {STAGE1_WEIGHTS} "
                          "and no checkpoints/ (expected a finished or checkpointed stage-1 run)")
    raise ConfigError(f"model.init_from={str(source)!r}: no such file or folder (expected a "
                      f"stage-1 run folder or a weights file: .safetensors or .pth)")


def file_digest(source: str | os.PathLike) -> str:
    """SHA-256 (first 16 hex digits) of the file ``source`` resolves to: a re-trained baseline
    under the same path makes the runs that start from it stale."""
    digest = hashlib.sha256()
    with open(resolve_source(source), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def read_state(path: Path) -> dict:
    """The tensors of a weights file or training checkpoint, in this package's names."""
    from plda.methods.plda import rename_legacy_keys
    from plda.weights.io import load_state_dict_file

    state = load_state_dict_file(path)  # a checkpoint yields its "model" entry
    if not any(k.startswith(("backbone.", "classifier.", "plda.", "domain.")) for k in state):
        from plda.methods.seam_plda import convert_reference_state_dict

        state = convert_reference_state_dict(state)  # the published SEAM / PLDA names
    return rename_legacy_keys(state)


def init_from(model, source: str | os.PathLike, *, strict: bool = True) -> InitReport:
    """Load the baseline weights at ``source`` into ``model`` (module doc); returns what it did.
    Raises ``WeightsError`` naming the keys that do not fit (``strict``), or when nothing fits."""
    path = resolve_source(source)
    state = read_state(path)
    expected = model.state_dict()
    fits = {k: v for k, v in state.items()
            if k in expected and tuple(v.shape) == tuple(expected[k].shape)}
    fresh = [k for k in expected if k not in state and k.startswith(FRESH_PREFIXES)]
    missing = [k for k in expected
               if k not in state and not k.startswith(FRESH_PREFIXES) and not k.endswith(_IGNORED)]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
              for k in state if k in expected and k not in fits]
    name = type(model).__name__
    if not fits:
        raise WeightsError(f"model.init_from: {path} has no tensor that fits {name} (file keys "
                           f"such as {_few(sorted(state))}; model keys such as "
                           f"{_few(sorted(expected))})")
    if strict and (missing or unexpected or shapes):
        parts = [f"{label} {_few(keys)}" for label, keys in
                 (("missing from the file:", missing), ("not in the model:", unexpected),
                  ("shape differs:", shapes)) if keys]
        raise WeightsError(f"model.init_from: {path} does not fit {name}: " + "; ".join(parts)
                           + ". Set model.init_from_strict=false to load only the tensors that "
                           "match by name and shape")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in fits.items()}, strict=False)
    skipped = [k for k in state if k not in fits]
    not_loaded = [k for k in expected if k not in fits and k not in fresh
                  and not k.endswith(_IGNORED)]
    return InitReport(path=str(path), loaded=len(fits), fresh=fresh, skipped=skipped,
                      not_loaded=not_loaded)
