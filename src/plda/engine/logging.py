"""Rank-0 training logs: a tqdm bar, ``logs/train.jsonl`` and (when installed) TensorBoard.

The JSONL file is rewritten atomically at every log step so that a killed run leaves whole
lines only; on resume, lines past the restored step are dropped so the log matches the weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from plda.utils.io import atomic_write_text, clean_stale_temporaries
from plda.utils.progress import progress_bar

_log = logging.getLogger("plda.engine")


def read_log_records(path: Path, before: int | None = None) -> list[dict[str, Any]]:
    """The records of a ``train.jsonl`` (those up to step ``before`` and not ``end`` events,
    when given). A damaged line (a killed writer, a hand edit) is skipped with a warning naming
    the file and line, so a resumed run or a report does not stop on it."""
    import warnings

    from plda.utils.io import read_text_file

    records, bad = [], []
    for lineno, line in enumerate(read_text_file(path, "training log").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step", 0), (int, float)):
            bad.append(lineno)
            continue
        if before is None or (record.get("step", 0) <= before and record.get("event") != "end"):
            records.append(record)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        warnings.warn(f"{path}: skipped {len(bad)} damaged line(s) ({shown})", stacklevel=2)
    return records


class TrainLogger:
    """Writes scalars on the main process; every method is a no-op elsewhere."""

    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int, start_step: int,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "logs" / "train.jsonl"
        self.records: list[dict[str, Any]] = []
        self._bar = None
        self._tb = None
        if not enabled:
            return
        # A run killed while rewriting the log leaves its temporary; the resumed run owns it.
        clean_stale_temporaries(self.path.parent, [self.path.name])
        if self.path.is_file():
            self.records = read_log_records(self.path, before=start_step)
            self._flush()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                _log.info("TensorBoard logging off: install the 'tensorboard' extra to enable it")
            else:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "logs" / "tensorboard"),
                                         purge_step=start_step + 1)
        self._bar = progress_bar(total=total_steps, initial=start_step, desc="train", unit="step")

    def _flush(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def advance(self, postfix: dict[str, float] | None = None) -> None:
        """One optimizer step done (moves the bar; ETA comes from tqdm)."""
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self._bar.update(1)

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must hold ``step``) to the JSONL file and TensorBoard."""
        if not self.enabled:
            return
        self.records.append(record)
        self._flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
