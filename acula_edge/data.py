"""Datasets from a single spec string, and group-aware splits.

Specs:
- ``PATH`` — a folder with ``labels.csv`` (columns ``path,label`` plus any metadata columns, e.g. subset, site, age),
  or the original PhysioNet 2016 layout with ``REFERENCE.csv`` (``record,-1|1``; -1 normal, 1 abnormal) beside
  ``record.wav`` files; a path to the CSV itself works too. Labels, classes and metadata come from the file.
- ``synthetic:heart`` / ``synthetic:lung`` with optional ``?n=120&seed=0&rate=2000`` — the embedded, seeded default.

Any spec may end with a metadata filter in brackets: ``SPEC[subset=a,b]`` keeps those groups, ``SPEC[subset!=b]``
drops them; this is how a held-out site is named on the command line (quote it in the shell).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence
from urllib.parse import parse_qsl

import numpy as np

from acula_edge.errors import AudioError, DatasetError

LABEL_FILES = ("labels.csv", "REFERENCE.csv")
# Negative class for binary metrics when the data names one of these; otherwise the first label in sorted order.
NEGATIVE_LABEL_NAMES = ("normal", "healthy", "negative", "0")


@dataclass(frozen=True)
class Recording:
    """One labelled recording: a file on disk, or in-memory samples (synthetic data)."""

    record_id: str
    label: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    samples: np.ndarray | None = field(default=None, repr=False, compare=False)
    sample_rate: int | None = None

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else f"synthetic:{self.record_id}"

    def load(self, sample_rate: int, min_samples: int = 1, pad: bool = False) -> np.ndarray:
        """Float32 mono samples at ``sample_rate`` Hz (see acula_edge.audio.load_audio)."""
        from acula_edge import audio

        if self.path is not None:
            return audio.load_audio(self.path, sample_rate, min_samples=min_samples, pad=pad)
        return audio.prepare_samples(self.samples, int(self.sample_rate), sample_rate, min_samples=min_samples,
                                     pad=pad, source=self.source)


@dataclass(frozen=True)
class Dataset:
    """An ordered collection of recordings with the label set found in the data."""

    name: str
    recordings: tuple[Recording, ...]

    def __len__(self) -> int:
        return len(self.recordings)

    def __iter__(self) -> Iterator[Recording]:
        return iter(self.recordings)

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names present in the data, negative class first for binary data, otherwise sorted."""
        return order_labels({r.label for r in self.recordings if r.label is not None})

    def subset(self, indices: Iterable[int], name: str | None = None) -> "Dataset":
        return Dataset(name or self.name, tuple(self.recordings[i] for i in indices))

    def group_values(self, column: str) -> list[str]:
        """The value of metadata ``column`` for every recording (DatasetError if any lacks it)."""
        missing = [r.record_id for r in self.recordings if column not in r.metadata]
        if missing:
            available = sorted({k for r in self.recordings for k in r.metadata})
            raise DatasetError(f"{self.name}: {len(missing)} recordings have no metadata column {column!r} "
                               f"(first: {missing[0]}); available columns: {available}")
        return [r.metadata[column] for r in self.recordings]

    def where(self, column: str, values: Sequence[str], keep: bool = True) -> "Dataset":
        """Recordings whose ``column`` is (keep=True) or is not (keep=False) in ``values``."""
        wanted = set(values)
        groups = self.group_values(column)
        idx = [i for i, g in enumerate(groups) if (g in wanted) == keep]
        return self.subset(idx, f"{self.name}[{column}{'' if keep else '!'}={','.join(sorted(wanted))}]")


def order_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """Sorted labels, with a conventional negative class ("normal", ...) moved first when present."""
    ordered = sorted(labels)
    for name in NEGATIVE_LABEL_NAMES:
        if name in ordered:
            ordered.remove(name)
            return (name, *ordered)
    return tuple(ordered)


def load_dataset(spec: str | os.PathLike) -> Dataset:
    """Parse a dataset spec (see module docstring) and return the Dataset."""
    text = str(spec)
    base, column, values, keep = split_filter(text)
    if column is not None:
        return load_dataset(base).where(column, values, keep=keep)
    if text.startswith("synthetic:"):
        return _synthetic(text)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return _from_csv(path)
    if path.is_dir():
        for name in LABEL_FILES:
            if (path / name).is_file():
                return _from_csv(path / name)
        raise DatasetError(f"{path}: no {' or '.join(LABEL_FILES)} in this folder; add a labels.csv with columns "
                           f"'path,label' (plus optional metadata columns)")
    raise DatasetError(f"{text!r} is not a dataset: give a folder with labels.csv, a labels CSV file, or "
                       f"synthetic:heart / synthetic:lung")


def split_filter(spec: str) -> tuple[str, str | None, list[str], bool]:
    """``"SPEC[col=a,b]"`` -> (SPEC, col, [a, b], True); ``"SPEC[col!=a]"`` -> (..., False); no filter -> column None."""
    if not spec.endswith("]") or "[" not in spec:
        return spec, None, [], True
    base, _, inner = spec[:-1].rpartition("[")
    column, op, rest = inner.partition("!=") if "!=" in inner else inner.partition("=")
    values = [v.strip() for v in rest.split(",") if v.strip()]
    if not op or not column.strip() or not values:
        raise DatasetError(f"{spec!r}: a filter must look like SPEC[column=value,...] or SPEC[column!=value,...]")
    return base, column.strip(), values, op == "="


def with_filter(spec: str, column: str, values: Sequence[str], keep: bool) -> str:
    """The spec string selecting (keep) or dropping recordings whose ``column`` is in ``values``."""
    base, old, _, _ = split_filter(spec)
    if old is not None:
        raise DatasetError(f"{spec!r} already has a filter; combine filters by listing values in one")
    return f"{base}[{column}{'=' if keep else '!='}{','.join(values)}]"


def _synthetic(spec: str) -> Dataset:
    from acula_edge import synthetic

    kind, _, query = spec[len("synthetic:"):].partition("?")
    options = dict(parse_qsl(query, strict_parsing=False)) if query else {}
    allowed = {"n", "seed", "rate"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DatasetError(f"{spec}: unknown option(s) {unknown}; allowed: {sorted(allowed)} "
                           f"(e.g. synthetic:heart?n=200&seed=1&rate=4000)")
    try:
        n = int(options.get("n", 120))
        seed = int(options.get("seed", 0))
        rate = int(options.get("rate", 2000))
    except ValueError as e:
        raise DatasetError(f"{spec}: n, seed and rate must be integers ({e})") from e
    recs = synthetic.generate(kind, n=n, seed=seed, sample_rate=rate)
    return Dataset(spec, tuple(
        Recording(record_id=r.record_id, label=r.label, metadata=dict(r.metadata), samples=r.samples,
                  sample_rate=r.sample_rate) for r in recs))


def _from_csv(csv_path: Path) -> Dataset:
    root = csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{csv_path}: cannot read label file ({e})") from e
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise DatasetError(f"{csv_path}: the label file is empty")
    header = [c.strip() for c in rows[0]]
    if "path" in header and "label" in header:
        recs = _rows_with_header(csv_path, root, header, rows[1:])
    elif len(header) == 2 and header[1].strip() in ("-1", "1", "0"):
        recs = _physionet_reference(csv_path, root, rows)
    else:
        raise DatasetError(f"{csv_path}: expected a header with 'path' and 'label' columns (got {header}), or the "
                           f"PhysioNet REFERENCE.csv layout 'record,-1|1'")
    return Dataset(str(root), tuple(recs))


def _rows_with_header(csv_path: Path, root: Path, header: list[str], rows: list[list[str]]) -> list[Recording]:
    problems, recs = [], []
    ip, il = header.index("path"), header.index("label")
    for lineno, row in enumerate(rows, start=2):
        if len(row) != len(header):
            problems.append(f"{csv_path}:{lineno}: {len(row)} fields, header has {len(header)}")
            continue
        rel = row[ip].strip()
        path = (root / rel) if not Path(rel).is_absolute() else Path(rel)
        if not path.is_file():
            problems.append(f"{csv_path}:{lineno}: audio file {path} does not exist")
            continue
        meta = {h: v.strip() for h, v in zip(header, row) if h not in ("path", "label")}
        record_id = meta.get("record") or Path(rel).stem
        recs.append(Recording(record_id=record_id, label=row[il].strip() or None, metadata=meta, path=path))
    if problems:
        raise DatasetError(f"{csv_path}: {len(problems)} problem(s) in the label file:\n  " + "\n  ".join(problems),
                           problems)
    return recs


def _physionet_reference(csv_path: Path, root: Path, rows: list[list[str]]) -> list[Recording]:
    names = {"-1": "normal", "1": "abnormal", "0": "unsure"}
    problems, recs = [], []
    for lineno, row in enumerate(rows, start=1):
        record, code = row[0].strip(), row[1].strip()
        path = root / f"{record}.wav"
        if code not in names:
            problems.append(f"{csv_path}:{lineno}: label {code!r} is not -1, 0 or 1")
        elif not path.is_file():
            problems.append(f"{csv_path}:{lineno}: audio file {path} does not exist")
        else:
            recs.append(Recording(record_id=record, label=names[code],
                                  metadata={"record": record, "subset": root.name}, path=path))
    if problems:
        raise DatasetError(f"{csv_path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems), problems)
    return recs


def scan_audio(dataset: Dataset, sample_rate: int, min_samples: int = 1) -> list[str]:
    """Try to load every recording; return one message per bad file (empty list = all good)."""
    problems = []
    for rec in dataset:
        try:
            rec.load(sample_rate, min_samples=min_samples)
        except AudioError as e:
            problems.append(str(e))
    return problems


def leave_one_group_out(dataset: Dataset, column: str,
                        test_groups: Sequence[str] | None = None) -> list[tuple[str, Dataset, Dataset]]:
    """(held-out group, train, test) for each group value of metadata ``column`` (or only ``test_groups``).

    No recording of the held-out group is ever in train: use this for every reported figure on multi-site data.
    """
    groups = sorted(set(dataset.group_values(column)))
    chosen = list(test_groups) if test_groups else groups
    unknown = sorted(set(chosen) - set(groups))
    if unknown:
        raise DatasetError(f"{dataset.name}: groups {unknown} not found in column {column!r}; present: {groups}")
    return [(g, dataset.where(column, [g], keep=False), dataset.where(column, [g], keep=True)) for g in chosen]


def stratified_holdout(dataset: Dataset, fraction: float, seed: int = 0,
                       group_column: str | None = None) -> tuple[Dataset, Dataset]:
    """Split into (train, held-out) keeping label proportions; with ``group_column``, whole groups per side."""
    rng = np.random.default_rng(seed)
    if group_column:
        values = dataset.group_values(group_column)
        groups = sorted(set(values))
        rng.shuffle(groups)
        n_out = max(1, int(round(fraction * len(groups))))
        out = set(groups[:n_out])
        held = [i for i, v in enumerate(values) if v in out]
    else:
        held = []
        by_label: dict[str | None, list[int]] = {}
        for i, r in enumerate(dataset):
            by_label.setdefault(r.label, []).append(i)
        for idx in by_label.values():
            idx = list(idx)
            rng.shuffle(idx)
            held += idx[:max(1, int(round(fraction * len(idx))))]
    held_set = set(held)
    train = [i for i in range(len(dataset)) if i not in held_set]
    return dataset.subset(train, f"{dataset.name}[train]"), dataset.subset(sorted(held), f"{dataset.name}[held]")
