"""Recording-level accuracy of bundles on a labelled dataset, with bootstrap confidence intervals.

Every recording is read and cut into log-mel windows once per front-end (bundles exported from one model share
it), and the same windows go through every bundle, so fp32 / int8 / runtime differences line up recording by
recording. A recording's probabilities are the mean of its windows' probabilities over the windows that pass the
quality checks (all windows if none does), exactly as :meth:`EdgeModel.classify` computes them.

Figures per class, one-vs-rest: AUROC and AUPRC of that class's probability; sensitivity, specificity and MAcc of
the decision. Binary bundles report their positive class (the last label) decided at the manifest's threshold;
multi-class bundles report every class, decided by the most probable class. Intervals come from resampling
recordings (seeded; within groups when ``group_by`` is set).

``group_by`` (a metadata column such as ``subset``) adds per-group figures beside the pooled ones. For already
trained bundles this is a breakdown of the evaluated data by group, not leave-one-group-out training: a bundle's
figures on a group it was trained on are not an unseen-site estimate.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from acula_edge.bench.metrics import BOOTSTRAP_SAMPLES, CONFIDENCE, bootstrap
from acula_edge.data import Dataset
from acula_edge.errors import AudioError, ConfigError, DatasetError

GROUP_NOTE = ("Per-group figures break the evaluated recordings down by '{col}'. The bundles were already "
              "trained: unless a bundle was trained without a group, its figures on that group are not an "
              "unseen-site estimate (use leave-one-group-out training, e.g. 'acula-edge pipeline', for that).")


@dataclass(frozen=True)
class AccuracyConfig:
    """What to compute."""

    n_boot: int = BOOTSTRAP_SAMPLES  # bootstrap resamples per interval
    confidence: float = CONFIDENCE  # two-sided interval level
    seed: int = 0  # bootstrap seed
    threads: int | None = 1  # runtime threads; None = the runtime's default
    group_by: str | None = None  # metadata column for per-group figures (e.g. "subset")

    def __post_init__(self) -> None:
        if self.n_boot < 1:
            raise ConfigError(f"n_boot must be >= 1, got {self.n_boot}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")


@dataclass
class BundlePredictions:
    """Recording-level outputs of one bundle, rows in the order of :attr:`Predictions.record_ids`."""

    bundle: str
    info: dict[str, Any]  # target, precision, runtime, labels, threshold, model bytes
    probabilities: np.ndarray  # (R, C) float32
    embeddings: np.ndarray  # (R, D) float32: mean embedding of the included windows (for probes)
    n_windows: int = 0
    n_excluded: int = 0
    seconds: float = 0.0  # model time over all windows

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.info["labels"])


@dataclass
class Predictions:
    """All bundles on one dataset: the same recordings, in the same order."""

    data: str
    record_ids: list[str]
    labels: list[str | None]  # true label per recording
    groups: list[str] | None  # group per recording (group_by column) or None
    bundles: list[BundlePredictions] = field(default_factory=list)


def _bundle_info(model: Any) -> dict[str, Any]:
    m = model.manifest
    path = Path(model.bundle_dir) / m.model_file
    return {"bundle": str(model.bundle_dir), "target": m.target, "precision": m.precision,
            "runtime": model.backend.name, "labels": list(m.labels), "threshold": m.threshold,
            "model_bytes": path.stat().st_size if path.is_file() else None}


def predict(models: Sequence[Any], dataset: Dataset, group_by: str | None = None,
            progress: Callable[[str], None] | None = None) -> Predictions:
    """Run every loaded model (:class:`~acula_edge.runtime.EdgeModel`) on every recording of ``dataset``."""
    from acula_edge.runtime.quality import window_quality
    from acula_edge.runtime.results import WindowEvent
    from acula_edge.windows import recording_windows

    if not models:
        raise ConfigError("give at least one bundle")
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.name}: the dataset has no recordings")
    groups = dataset.group_values(group_by) if group_by else None
    say = progress or (lambda _msg: None)
    # Bundles sharing a front-end and windowing share the windows of each recording.
    by_frontend: dict[tuple[str, str], list[int]] = {}
    for i, m in enumerate(models):
        key = (m.frontend.to_json(), repr(m.windowing))
        by_frontend.setdefault(key, []).append(i)
    n_rec = len(dataset)
    probs = [np.zeros((n_rec, len(m.labels)), dtype=np.float32) for m in models]
    embs: list[np.ndarray | None] = [None] * len(models)
    n_windows = [0] * len(models)
    n_excluded = [0] * len(models)
    seconds = [0.0] * len(models)
    problems = []
    step = max(1, n_rec // 10)
    for r, rec in enumerate(dataset):
        for members in by_frontend.values():
            first = models[members[0]]
            try:
                x = rec.load(first.sample_rate, min_samples=first.window_samples, pad=True)
            except AudioError as e:
                problems.append(str(e))
                break
            windows = recording_windows(x, first.frontend, first.windowing, first.logmel)
            ws, hs = first.window_samples, first.hop_samples
            quality = [window_quality(x[k * hs:k * hs + ws], first.frontend, first.quality)
                       for k in range(windows.shape[0])]
            for i in members:
                m = models[i]
                acc = m.accumulator("mean")
                t0 = time.perf_counter()
                for k in range(windows.shape[0]):
                    emb, p = m.run_window(windows[k])
                    start = k * m.windowing.hop_s
                    acc.add(WindowEvent(index=k, start_s=start, end_s=start + m.windowing.window_s,
                                        labels=m.labels, probabilities=p, embedding=emb, quality=quality[k]))
                seconds[i] += time.perf_counter() - t0
                res = acc.result(duration_s=x.shape[0] / m.sample_rate, source=rec.source)
                probs[i][r] = res.probabilities
                if embs[i] is None:
                    embs[i] = np.zeros((n_rec, res.embedding.shape[0]), dtype=np.float32)
                embs[i][r] = res.embedding
                n_windows[i] += len(res.windows)
                n_excluded[i] += res.n_excluded
        if (r + 1) % step == 0 or r + 1 == n_rec:
            say(f"{r + 1}/{n_rec} recordings")
    if problems:
        raise DatasetError(f"{dataset.name}: {len(problems)} recording(s) could not be used:\n  "
                           + "\n  ".join(problems), problems)
    out = Predictions(data=dataset.name, record_ids=[r.record_id for r in dataset],
                      labels=[r.label for r in dataset], groups=groups)
    for i, m in enumerate(models):
        out.bundles.append(BundlePredictions(bundle=str(m.bundle_dir), info=_bundle_info(m), probabilities=probs[i],
                                             embeddings=embs[i] if embs[i] is not None else np.zeros((n_rec, 0)),
                                             n_windows=n_windows[i], n_excluded=n_excluded[i], seconds=seconds[i]))
    return out


def class_targets(bp: BundlePredictions, labels: Sequence[str | None]) -> list[tuple[str, np.ndarray, np.ndarray,
                                                                                      np.ndarray]]:
    """(class, y, scores, decisions) per reported class, over the labelled recordings.

    Binary: the positive class (last label), decided at the manifest threshold. Multi-class: every class,
    one-vs-rest, decided by the most probable class. Raises DatasetError when the data has labels the bundle does
    not know.
    """
    names = bp.labels
    keep = np.array([lab is not None for lab in labels])
    unknown = sorted({lab for lab in labels if lab is not None and lab not in names})
    if unknown:
        raise DatasetError(f"the data has labels {unknown} that bundle {bp.bundle} does not know (its labels: "
                           f"{list(names)}); evaluate it on data with the same classes")
    y_idx = np.array([names.index(lab) if lab is not None else -1 for lab in labels])[keep]
    p = bp.probabilities[keep]
    if len(names) == 2:
        scores = p[:, -1].astype(np.float64)
        return [(names[-1], y_idx == 1, scores, scores >= bp.info["threshold"])]
    top = np.argmax(p, axis=1)
    return [(c, y_idx == j, p[:, j].astype(np.float64), top == j) for j, c in enumerate(names)]


def _figures(y: np.ndarray, s: np.ndarray, d: np.ndarray, cfg: AccuracyConfig,
             strata: np.ndarray | None = None) -> dict[str, Any]:
    est = bootstrap(y, s, d, n_boot=cfg.n_boot, seed=cfg.seed, confidence=cfg.confidence, strata=strata)
    out: dict[str, Any] = {k: e.to_dict() for k, e in est.items()}
    out["n"] = int(y.shape[0])
    out["n_positive"] = int(y.sum())
    return out


def evaluate(pred: Predictions, cfg: AccuracyConfig = AccuracyConfig()) -> list[dict[str, Any]]:
    """Figures of every bundle in ``pred``: pooled, and per group when ``pred.groups`` is set."""
    labelled = np.array([lab is not None for lab in pred.labels])
    if not labelled.any():
        raise DatasetError(f"{pred.data}: no recording has a label; accuracy needs labelled data")
    groups = None if pred.groups is None else np.asarray(pred.groups)[labelled]
    results = []
    first = pred.bundles[0]
    for bp in pred.bundles:
        rec: dict[str, Any] = {**bp.info, "task": "binary" if len(bp.labels) == 2 else "multiclass",
                               "n_windows": bp.n_windows, "n_windows_excluded": bp.n_excluded,
                               "model_seconds": bp.seconds, "pooled": {}, "by_group": {}}
        for cls, y, s, d in class_targets(bp, pred.labels):
            rec["pooled"][cls] = _figures(y, s, d, cfg, strata=groups)
            if groups is not None:
                for g in sorted(set(groups)):
                    mask = groups == g
                    rec["by_group"].setdefault(g, {})[cls] = _figures(y[mask], s[mask], d[mask], cfg)
        if groups is not None:
            cls0 = next(iter(rec["pooled"]))
            vals = [v[cls0]["auroc"]["value"] for v in rec["by_group"].values()]
            vals = [v for v in vals if v is not None]
            rec["group_mean_auroc"] = float(np.mean(vals)) if vals else None
            rec["group_min_auroc"] = float(np.min(vals)) if vals else None
        if bp is not first and bp.labels == first.labels:
            diff = np.abs(bp.probabilities.astype(np.float64) - first.probabilities)
            mine = np.stack([t[3] for t in class_targets(bp, pred.labels)], axis=1)
            ref = np.stack([t[3] for t in class_targets(first, pred.labels)], axis=1)
            agree = (mine == ref).all(axis=1)
            rec["vs_first"] = {"bundle": first.bundle, "max_abs_probability_diff": float(diff.max()),
                               "mean_abs_probability_diff": float(diff.mean()),
                               "decision_agreement": float(agree.mean()), "decisions_differ": int((~agree).sum())}
        results.append(rec)
    return results


def bench_accuracy(bundles: Sequence[str | Path], data: str, cfg: AccuracyConfig = AccuracyConfig(),
                   progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], Predictions]:
    """Load ``bundles``, run them on the dataset spec ``data`` and return (accuracy JSON document, predictions)."""
    from acula_edge.bench.fingerprint import fingerprint
    from acula_edge.bench.report import ACCURACY_SCHEMA, ACCURACY_SCHEMA_VERSION
    from acula_edge.data import load_dataset
    from acula_edge.runtime.model import load

    if not bundles:
        raise ConfigError("give at least one bundle folder to evaluate")
    models = [load(b, num_threads=cfg.threads) for b in bundles]  # fail on a bad bundle before reading data
    dataset = load_dataset(data)
    if cfg.group_by:
        dataset.group_values(cfg.group_by)  # fail early on a missing column
    say = progress or (lambda _msg: None)
    say(f"{len(dataset)} recordings from {data}; {len(models)} bundle(s)")
    t0 = time.perf_counter()
    pred = predict(models, dataset, cfg.group_by, progress)
    elapsed = time.perf_counter() - t0
    labelled = [lab for lab in pred.labels if lab is not None]
    doc: dict[str, Any] = {
        "schema": ACCURACY_SCHEMA,
        "schema_version": ACCURACY_SCHEMA_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": data,
        "n_recordings": len(dataset),
        "label_counts": dict(sorted(Counter(labelled).items())),
        "config": asdict(cfg),
        "machine": fingerprint(),
        "seconds": elapsed,
        "group_by": cfg.group_by,
        "bundles": evaluate(pred, cfg),
    }
    if cfg.group_by:
        counts: dict[str, Counter] = {}
        for g, lab in zip(pred.groups or [], pred.labels):
            if lab is not None:
                counts.setdefault(g, Counter())[lab] += 1
        doc["groups"] = {g: dict(sorted(c.items())) for g, c in sorted(counts.items())}
        doc["group_note"] = GROUP_NOTE.format(col=cfg.group_by)
    return doc, pred
