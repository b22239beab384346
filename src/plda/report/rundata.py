"""Reading a run folder for the report: whatever the stages left behind, nothing more.

A report is often made of a run that is half done, or copied away from its dataset, so an
absent piece (no ``metrics.json`` yet, no dataset folder, a stage not run) becomes a note on the
page; a piece that exists but cannot be read (broken JSON, an invalid config) is an error
naming the file, since a report that silently skips it would mislead.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plda.errors import DataError
from plda.runfolder import STAGES, stage_files


def label_stages() -> tuple[tuple[str, str, str], ...]:
    """(metrics section, folder of label PNGs, title): the label-map stages, least refined
    first, as the run folder's stage records declare them."""
    return tuple((files.metrics[0], files.labels, files.title)
                 for files in map(stage_files, STAGES) if files.labels)


def train_stages() -> tuple[tuple[str, str, str], ...]:
    """(metrics section, training-log folder, title): every network a stage trains."""
    return tuple(log for stage in STAGES for log in stage_files(stage).logs)


def known_sections() -> set[str]:
    """Sections the page shows in their own places ("data": the summary; "classification": the
    scores section)."""
    return ({s for s, _, _ in label_stages()} | {s for s, _, _ in train_stages()}
            | {"data", "classification", "cam"})


# Log-record keys that are bookkeeping, not loss terms.
NON_LOSS_KEYS = frozenset({"step", "epoch", "lr", "images_per_s", "wall_time_s", "event"})


@dataclass
class TrainLog:
    """One training log: ``steps`` and, per numeric key, its values (``None`` where a record
    lacks the key)."""

    title: str
    path: Path
    steps: list[float]
    values: dict[str, list[float | None]]

    @property
    def loss_terms(self) -> list[str]:
        terms = [k for k in self.values if k not in NON_LOSS_KEYS and not k.startswith("stat/")]
        return sorted(terms, key=lambda k: (k != "loss", k))


@dataclass
class RunData:
    root: Path
    config: Any = None                     # RunConfig, or None without config.yaml
    metrics: dict = field(default_factory=dict)
    layout: Any = None                     # DatasetLayout, or None when the dataset is absent
    notes: list[str] = field(default_factory=list)

    @property
    def class_names(self) -> list[str] | None:
        """Every label value's name (background first): the dataset's, else the first per-class
        table in ``metrics.json``."""
        if self.layout is not None:
            return list(self.layout.class_names)
        for section, _, _ in label_stages():
            for entry in split_entries(self.metrics.get(section)).values():
                if isinstance(entry.get("iou"), dict):
                    return list(entry["iou"])
        return None

    @property
    def palette(self):
        """The colours of the label maps on the page: the dataset's (``palette_for``)."""
        from plda.data.labels import palette_for

        return palette_for(self.class_names)

    @property
    def dataset_name(self) -> str:
        """What the page calls the data: "synthetic set", the name ``plda prepare folder``
        recorded, or the dataset folder's name."""
        if self.config is not None and self.config.data.root == "synth":
            return "the built-in synthetic set"
        if self.layout is not None:
            info = self.layout.root / "import.json"
            if info.is_file():
                try:
                    name = json.loads(info.read_text(encoding="utf-8")).get("name")
                    if isinstance(name, str) and name:
                        return name
                except (OSError, ValueError, AttributeError):
                    pass
            return self.layout.root.resolve().name
        if self.config is not None:
            return Path(self.config.data.root).name
        return "unknown data"

    def mask_coverage(self) -> dict[str, tuple[int, int]]:
        """``{split: (images with a mask, images)}`` of the evaluation splits."""
        out: dict[str, tuple[int, int]] = {}
        if self.layout is None or self.config is None:
            return out
        for split in self.config.data.eval_splits:
            if self.layout.list_path(split).is_file():
                out[split] = (len(self.layout.masked_ids(split)), len(self.layout.ids(split)))
        return out

    def splits(self) -> list[str]:
        """The splits seen anywhere in the run: the configured evaluation splits first, then
        any other with label maps, CAMs or scores, in name order."""
        found: list[str] = []
        if self.config is not None:
            found += list(self.config.data.eval_splits)
        extra = set()
        for folder in ("cams", "seeds", "pseudo", "seg"):
            base = self.root / folder
            if base.is_dir():
                extra |= {p.name for p in base.iterdir() if p.is_dir()}
        for section, _, _ in label_stages():
            extra |= set(split_entries(self.metrics.get(section)))
        return found + sorted(extra - set(found))

    def label_dir(self, folder: str, split: str) -> Path | None:
        path = self.root / folder / split
        return path if path.is_dir() and any(path.glob("*.png")) else None

    def cam_dir(self, split: str) -> Path | None:
        path = self.root / "cams" / split
        return path if path.is_dir() and any(path.glob("*.npz")) else None

    def ids(self, split: str) -> list[str]:
        """The split's image ids: the dataset's list, else the files of its outputs."""
        if self.layout is not None and self.layout.list_path(split).is_file():
            return self.layout.ids(split)
        names: set[str] = set()
        for folder in ("seg", "pseudo", "seeds"):
            d = self.label_dir(folder, split)
            if d is not None:
                names |= {p.stem for p in d.glob("*.png") if not p.name.startswith(".")}
        d = self.cam_dir(split)
        if d is not None:
            names |= {p.stem for p in d.glob("*.npz") if not p.name.startswith(".")}
        return sorted(names)


def split_entries(section: Any) -> dict[str, dict]:
    """The per-split score entries of a metrics section (those holding ``miou``)."""
    if not isinstance(section, dict):
        return {}
    return {k: v for k, v in section.items() if isinstance(v, dict) and "miou" in v}


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc}); expected the run's metrics object") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of metric sections, got "
                        f"{type(data).__name__}")
    return data


def load_run(run_dir: str | Path) -> RunData:
    """The config, metrics and dataset of a run folder; absent pieces become ``notes``."""
    from plda.config import load_run_config

    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"run folder {root} not found; expected a folder written by 'plda run'")
    data = RunData(root=root)
    cfg_path = root / "config.yaml"
    if cfg_path.is_file():
        # The folder may have moved since the run: its own location wins over the recorded one,
        # so that the synthetic dataset (<run_dir>/data) is found where the folder is now.
        data.config = dataclasses.replace(load_run_config(str(cfg_path)), run_dir=str(root))
    else:
        data.notes.append("config.yaml is missing: no run summary and no dataset "
                          "(images, ground truth) for the gallery")
    metrics_path = root / "metrics.json"
    if metrics_path.is_file():
        data.metrics = _load_json(metrics_path)
    else:
        data.notes.append("metrics.json is missing: no stage has recorded scores yet")
    if data.config is not None:
        from plda.runfolder import load_layout

        try:
            data.layout = load_layout(data.config, generate=False)
        except DataError as exc:
            data.notes.append(f"dataset not available ({exc}): the gallery has no images or "
                              "ground truth")
    if data.layout is not None and data.layout.mask_dir is None:
        data.notes.append(f"the dataset at {data.layout.root} has no ground-truth masks: "
                          "nothing is scored, the background threshold was chosen without "
                          "labels, and the gallery is not ranked")
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def read_train_log(path: Path, title: str) -> TrainLog:
    """A ``train.jsonl`` written by ``TrainLogger``: the step records, event lines skipped."""
    steps: list[float] = []
    rows: list[dict[str, float]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read training log {path} ({exc})") from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON line ({exc}); expected one "
                            "training record per line") from exc
        if not isinstance(record, dict) or "event" in record:
            continue
        step = _number(record.get("step"))
        if step is None:
            continue
        steps.append(step)
        rows.append({k: v for k, v in ((k, _number(v)) for k, v in record.items())
                     if v is not None and k != "step"})
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    values = {k: [row.get(k) for row in rows] for k in keys}
    return TrainLog(title=title, path=path, steps=steps, values=values)


def train_logs(run: RunData) -> list[TrainLog]:
    """The training logs of the known stages, then any other ``<folder>/logs/train.jsonl``."""
    found: list[TrainLog] = []
    seen: set[Path] = set()
    for _, folder, title in train_stages():
        path = run.root / folder / "logs" / "train.jsonl"
        if path.is_file():
            found.append(read_train_log(path, title))
            seen.add(path.resolve())
    for path in sorted(run.root.glob("*/logs/train.jsonl")):
        if path.resolve() not in seen:
            found.append(read_train_log(path, path.parent.parent.name))
    return found
