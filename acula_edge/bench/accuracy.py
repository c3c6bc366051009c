"""Recording-level accuracy of bundles on a labelled dataset, with bootstrap confidence intervals.

Every recording is read and cut into log-mel windows once per front-end (bundles exported from one model share
it), and the same windows go through every bundle, so fp32 / int8 / runtime differences line up recording by
recording. A recording's probabilities are the mean of its windows' probabilities over the windows that pass the
quality checks (all windows if none does), exactly as :meth:`EdgeModel.classify` computes them.

Figures per class, one-vs-rest: AUROC and AUPRC of that class's probability; sensitivity, specificity and MAcc of
the decision. Binary bundles report their positive class (the last label) decided at the bundle's operating point
(the manifest's, chosen by distill on validation data, unless ``load(..., threshold=)`` replaced it);
multi-class bundles report every class, decided by the most probable class. Intervals come from resampling
recordings (seeded; within groups when ``group_by`` is set).

``group_by`` (a metadata column such as ``subset``) adds per-group figures beside the pooled ones. For already
trained bundles this is a breakdown of the evaluated data by group, not leave-one-group-out training: a bundle's
figures on a group it was trained on are not an unseen-site estimate.

Leave-one-group-out: a bundle given as ``GROUP=PATH`` (with ``group_by``) was trained without ``GROUP``; it is
run on that group's recordings only. Fold bundles of the same target and precision are pooled into one
leave-one-group-out entry, each recording scored (at its fold's threshold) by the bundle that never saw its group:
its per-group figures are per-fold, unseen-group figures and its pooled figures cover every fold.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from acula_edge.bench.metrics import BOOTSTRAP_SAMPLES, CONFIDENCE, bootstrap
from acula_edge.data import Dataset
from acula_edge.errors import AudioError, ConfigError, DatasetError
from acula_edge.runtime.aggregation import decide_scores

# Below this held-out sensitivity or specificity the shipped operating point has not transferred to the data.
TRANSFER_WARNING_BELOW = 0.2

GROUP_NOTE = ("Per-group figures break the evaluated recordings down by '{col}'. Plain bundles were already "
              "trained: unless a bundle was trained without a group, its figures on that group are not an "
              "unseen-site estimate. Leave-one-group-out entries (bundles given as GROUP=PATH, each trained "
              "without its GROUP and run on that group only) are: their per-group figures are unseen-group figures.")


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


@dataclass(frozen=True)
class BundleSpec:
    """A bundle to evaluate; ``held_out``: the group it was trained without (a leave-one-group-out fold)."""

    path: str
    held_out: str | None = None

    @classmethod
    def parse(cls, arg: str) -> "BundleSpec":
        """``PATH`` or ``GROUP=PATH`` (an existing folder whose name contains '=' stays a plain path)."""
        group, sep, path = str(arg).partition("=")
        if not sep or Path(arg).is_dir() or not group or "/" in group or os.sep in group:
            return cls(str(arg))
        return cls(path, group)


@dataclass
class BundlePredictions:
    """Recording-level outputs of one bundle, rows in the order of :attr:`Predictions.record_ids`."""

    bundle: str
    info: dict[str, Any]  # target, precision, runtime, labels, threshold, model bytes
    probabilities: np.ndarray  # (R, C) float32; NaN rows = recordings this bundle did not score
    embeddings: np.ndarray  # (R, D) float32: mean embedding of the included windows (for probes)
    held_out: str | None = None  # the group this bundle was trained without (evaluated on it only)
    row_thresholds: np.ndarray | None = None  # (R,) decision threshold per recording (pooled folds)
    n_windows: int = 0
    n_excluded: int = 0
    seconds: float = 0.0  # model time over all windows
    site_shift: list[dict[str, Any] | None] | None = None  # per-recording site-shift verdicts (None: no description)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.info["labels"])

    @property
    def scored(self) -> np.ndarray:
        """(R,) bool: recordings this bundle scored."""
        return ~np.isnan(self.probabilities).any(axis=1)


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
            "runtime": model.backend.name, "labels": list(m.labels), "threshold": model.threshold,
            "operating_point": model.operating_point.to_dict(), "decision_rule": model.operating_point.rule,
            "model_bytes": path.stat().st_size if path.is_file() else None}


def predict(models: Sequence[Any], dataset: Dataset, group_by: str | None = None,
            progress: Callable[[str], None] | None = None,
            held_out: Sequence[str | None] | None = None) -> Predictions:
    """Run every loaded model (:class:`~acula_edge.runtime.EdgeModel`) on every recording of ``dataset``.

    ``held_out[i]``: model ``i`` was trained without that group of ``group_by``; it runs on that group only (its
    other rows are NaN).
    """
    from acula_edge.runtime.site_shift import CORRECTION_KEY

    if not models:
        raise ConfigError("give at least one bundle")
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.name}: the dataset has no recordings")
    groups = dataset.group_values(group_by) if group_by else None
    held = list(held_out) if held_out is not None else [None] * len(models)
    if len(held) != len(models):
        raise ConfigError(f"held_out has {len(held)} entries for {len(models)} models")
    if any(h is not None for h in held):
        if groups is None:
            raise ConfigError("GROUP=BUNDLE (a leave-one-group-out fold) needs --group-by COLUMN")
        unknown = sorted({h for h in held if h is not None} - set(groups))
        if unknown:
            raise DatasetError(f"{dataset.name}: fold group(s) {unknown} not found in column {group_by!r}; present: "
                               f"{sorted(set(groups))}")
    say = progress or (lambda _msg: None)
    # Bundles sharing a front-end, windowing and quality settings share the windows of each recording.
    by_frontend: dict[tuple[str, str, str, str], list[int]] = {}
    for i, m in enumerate(models):
        key = (m.frontend.to_json(), repr(m.windowing), repr(m.manifest.extra.get(CORRECTION_KEY)), repr(m.quality))
        by_frontend.setdefault(key, []).append(i)
    n_rec = len(dataset)
    probs = [np.full((n_rec, len(m.labels)), np.nan, dtype=np.float32) for m in models]
    embs: list[np.ndarray | None] = [None] * len(models)
    n_windows = [0] * len(models)
    n_excluded = [0] * len(models)
    seconds = [0.0] * len(models)
    shifts: list[list[dict[str, Any] | None]] = [[None] * n_rec for _ in models]
    problems = []
    step = max(1, n_rec // 10)
    for r, rec in enumerate(dataset):
        for all_members in by_frontend.values():
            members = [i for i in all_members if held[i] is None or held[i] == groups[r]]
            if not members:
                continue
            first = models[members[0]]
            try:
                x = rec.load(first.sample_rate, min_samples=first.window_samples, pad=True)
            except AudioError as e:
                problems.append(str(e))
                break
            prepared = first.prepare(x, site_features=any(models[i].site is not None for i in members))
            for i in members:
                m = models[i]
                t0 = time.perf_counter()
                res = m.score_prepared(prepared, x.shape[0] / m.sample_rate, rec.source)
                seconds[i] += time.perf_counter() - t0
                shifts[i][r] = res.site_shift
                probs[i][r] = res.probabilities
                if embs[i] is None:
                    embs[i] = np.full((n_rec, res.embedding.shape[0]), np.nan, dtype=np.float32)
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
                                             n_windows=n_windows[i], n_excluded=n_excluded[i], seconds=seconds[i],
                                             held_out=held[i], site_shift=shifts[i] if m.site is not None else None))
    return out


def rows(bp: BundlePredictions, labels: Sequence[str | None]) -> np.ndarray:
    """(R,) bool: the recordings that count for ``bp``: labelled and scored."""
    return np.array([lab is not None for lab in labels], dtype=bool) & bp.scored


def class_targets(bp: BundlePredictions, labels: Sequence[str | None]) -> list[tuple[str, np.ndarray, np.ndarray,
                                                                                      np.ndarray]]:
    """(class, y, scores, decisions) per reported class, over :func:`rows` (labelled, scored recordings).

    Binary: the positive class (last label), decided at the bundle's operating point (per recording for pooled
    folds) by :func:`~acula_edge.runtime.aggregation.decide_scores`, the rule classify and stream apply.
    Multi-class: every class, one-vs-rest, decided by the most probable class. Raises DatasetError when the data
    has labels the bundle does not know.
    """
    names = bp.labels
    keep = rows(bp, labels)
    unknown = sorted({lab for lab, k in zip(labels, keep) if k and lab not in names})
    if unknown:
        raise DatasetError(f"the data has labels {unknown} that bundle {bp.bundle} does not know (its labels: "
                           f"{list(names)}); evaluate it on data with the same classes")
    y_idx = np.array([names.index(lab) if k else -1 for lab, k in zip(labels, keep)])[keep]
    p = bp.probabilities[keep]
    if len(names) == 2:
        scores = p[:, -1].astype(np.float64)
        thr = bp.info["threshold"] if bp.row_thresholds is None else bp.row_thresholds[keep]
        return [(names[-1], y_idx == 1, scores, decide_scores(scores, thr))]
    top = np.argmax(p, axis=1)
    return [(c, y_idx == j, p[:, j].astype(np.float64), top == j) for j, c in enumerate(names)]


def pool_folds(folds: Sequence[BundlePredictions], groups: Sequence[str]) -> BundlePredictions:
    """One leave-one-group-out entry from fold bundles of one target and precision: each recording of a fold's
    group takes that fold's outputs and threshold; recordings of groups without a fold stay unscored."""
    first = folds[0]
    seen: dict[str, str] = {}
    for f in folds:
        if f.labels != first.labels:
            raise ConfigError(f"fold bundles {first.bundle} and {f.bundle} have different labels "
                              f"({list(first.labels)} vs {list(f.labels)}); they cannot be pooled")
        if f.held_out in seen:
            raise ConfigError(f"two {first.info['target']} {first.info['precision']} bundles hold out group "
                              f"{f.held_out!r}: {seen[f.held_out]} and {f.bundle}; give one per group")
        seen[f.held_out] = f.bundle
    g = np.asarray(groups)
    probs = np.full_like(first.probabilities, np.nan)
    emb = np.full((probs.shape[0], first.embeddings.shape[1]), np.nan, dtype=np.float32)
    thr = np.full(probs.shape[0], np.nan)
    shift: list[dict[str, Any] | None] | None = None
    if all(f.site_shift is not None for f in folds):  # each fold's warning on its own held-out group
        shift = [None] * probs.shape[0]
        for f in folds:
            for i in np.flatnonzero(g == f.held_out):
                shift[i] = f.site_shift[i]
    for f in folds:
        mask = g == f.held_out
        probs[mask] = f.probabilities[mask]
        if f.embeddings.shape[1] == emb.shape[1]:
            emb[mask] = f.embeddings[mask]
        thr[mask] = f.info["threshold"]
    ordered = sorted(folds, key=lambda f: str(f.held_out))
    info = {**first.info, "bundle": f"leave-one-group-out/{first.info['target']}-{first.info['precision']}",
            "threshold": {f.held_out: f.info["threshold"] for f in ordered},
            "operating_point": {f.held_out: f.info.get("operating_point") for f in ordered},
            "decision_rule": "per fold: " + "; ".join(f"{f.held_out}: {f.info.get('decision_rule')}" for f in ordered),
            "folds": {f.held_out: f.bundle for f in ordered}}
    return BundlePredictions(bundle=info["bundle"], info=info, probabilities=probs, embeddings=emb,
                             n_windows=sum(f.n_windows for f in folds), n_excluded=sum(f.n_excluded for f in folds),
                             seconds=sum(f.seconds for f in folds), held_out=None, row_thresholds=thr,
                             site_shift=shift)


def entries(pred: Predictions) -> list[BundlePredictions]:
    """What is reported: plain bundles in the order given, then one pooled entry per fold target/precision."""
    plain = [bp for bp in pred.bundles if bp.held_out is None]
    by_kind: dict[tuple[str, str], list[BundlePredictions]] = {}
    for bp in pred.bundles:
        if bp.held_out is not None:
            by_kind.setdefault((bp.info["target"], bp.info["precision"]), []).append(bp)
    return plain + [pool_folds(f, pred.groups or []) for f in by_kind.values()]


def _figures(y: np.ndarray, s: np.ndarray, d: np.ndarray, cfg: AccuracyConfig,
             strata: np.ndarray | None = None) -> dict[str, Any]:
    est = bootstrap(y, s, d, n_boot=cfg.n_boot, seed=cfg.seed, confidence=cfg.confidence, strata=strata)
    out: dict[str, Any] = {k: e.to_dict() for k, e in est.items()}
    out["n"] = int(y.shape[0])
    out["n_positive"] = int(y.sum())
    return out


def _agreement(bp: BundlePredictions, ref: BundlePredictions, labels: Sequence[str | None]) -> dict[str, Any]:
    """Probability differences and decision agreement with ``ref`` on the recordings both scored."""
    both = rows(bp, labels) & rows(ref, labels)
    diff = np.abs(bp.probabilities[both].astype(np.float64) - ref.probabilities[both])
    a = BundlePredictions(bp.bundle, bp.info, np.where(both[:, None], bp.probabilities, np.nan), bp.embeddings,
                          row_thresholds=bp.row_thresholds)
    b = BundlePredictions(ref.bundle, ref.info, np.where(both[:, None], ref.probabilities, np.nan), ref.embeddings,
                          row_thresholds=ref.row_thresholds)
    mine = np.stack([t[3] for t in class_targets(a, labels)], axis=1)
    theirs = np.stack([t[3] for t in class_targets(b, labels)], axis=1)
    agree = (mine == theirs).all(axis=1)
    return {"bundle": ref.bundle, "n": int(both.sum()),
            "max_abs_probability_diff": float(diff.max()) if diff.size else None,
            "mean_abs_probability_diff": float(diff.mean()) if diff.size else None,
            "decision_agreement": float(agree.mean()) if agree.size else None,
            "decisions_differ": int((~agree).sum())}


def evaluate(pred: Predictions, cfg: AccuracyConfig = AccuracyConfig()) -> list[dict[str, Any]]:
    """Figures of every entry (:func:`entries`): pooled, and per group when ``pred.groups`` is set."""
    if not any(lab is not None for lab in pred.labels):
        raise DatasetError(f"{pred.data}: no recording has a label; accuracy needs labelled data")
    all_groups = None if pred.groups is None else np.asarray(pred.groups)
    results = []
    reported = entries(pred)
    for bp in reported:
        keep = rows(bp, pred.labels)
        groups = None if all_groups is None else all_groups[keep]
        kind = "bundle" if bp.row_thresholds is None else "leave-one-group-out"
        rec: dict[str, Any] = {**bp.info, "kind": kind, "task": "binary" if len(bp.labels) == 2 else "multiclass",
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
            if kind == "bundle":  # one model embedded every group: how much site is in its embedding
                from acula_edge.bench.probe import site_probe

                rec["site_probe"] = site_probe(bp.embeddings[keep], list(groups),
                                               [lab for lab, k in zip(pred.labels, keep) if k], seed=cfg.seed)
        rec["warnings"] = transfer_warnings(rec)
        if bp.site_shift is not None:  # the site-shift warning: pooled, and per group (one site each)
            from acula_edge.runtime.site_shift import batch_verdict

            verdicts = [v for v, k in zip(bp.site_shift, keep) if k]
            rec["site_shift"] = {"pooled": batch_verdict(verdicts), "by_group": {} if groups is None else {
                g: batch_verdict([v for v, gg in zip(verdicts, groups) if gg == g]) for g in sorted(set(groups))}}
        ref = next(r for r in reported if (r.row_thresholds is None) == (bp.row_thresholds is None))
        if bp is not ref and bp.labels == ref.labels:
            rec["vs_first"] = _agreement(bp, ref, pred.labels)
        results.append(rec)
    return results


def transfer_warnings(rec: dict[str, Any]) -> list[str]:
    """One line per pooled or per-group figure set whose Se or Sp at the shipped operating point is below
    :data:`TRANSFER_WARNING_BELOW` (binary bundles; multi-class bundles report every class and get none)."""
    from acula_edge.bench.report import fmt_threshold

    if rec["task"] != "binary":
        return []
    out = []
    blocks = [("all recordings", rec["pooled"])] + [(f"{g}", b) for g, b in rec["by_group"].items()]
    for where, block in blocks:
        for cls, fig in block.items():
            low = [f"{name} {fig[key]['value']:.3f}" for key, name in (("sensitivity", "Se"), ("specificity", "Sp"))
                   if fig[key]["value"] is not None and fig[key]["value"] < TRANSFER_WARNING_BELOW]
            if low:
                out.append(f"{where}: {', '.join(low)} at threshold {fmt_threshold(rec['threshold'])}: this operating "
                           f"point does not transfer to this data (n = {fig['n']}, {fig['n_positive']} {cls})")
    return out


def bench_accuracy(bundles: Sequence[str | Path | BundleSpec], data: str, cfg: AccuracyConfig = AccuracyConfig(),
                   progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], Predictions]:
    """Load ``bundles`` (paths, ``GROUP=PATH`` folds or :class:`BundleSpec`), run them on the dataset spec ``data``
    and return (accuracy JSON document, predictions)."""
    from acula_edge.bench.fingerprint import fingerprint
    from acula_edge.bench.report import ACCURACY_SCHEMA, ACCURACY_SCHEMA_VERSION
    from acula_edge.data import load_dataset
    from acula_edge.runtime.model import load

    if not bundles:
        raise ConfigError("give at least one bundle folder to evaluate")
    specs = [b if isinstance(b, BundleSpec) else BundleSpec.parse(str(b)) for b in bundles]
    if any(s.held_out is not None for s in specs) and not cfg.group_by:
        raise ConfigError("a GROUP=BUNDLE argument (a leave-one-group-out fold) needs --group-by COLUMN")
    models = [load(s.path, num_threads=cfg.threads) for s in specs]  # fail on a bad bundle before reading data
    dataset = load_dataset(data)
    if cfg.group_by:
        dataset.group_values(cfg.group_by)  # fail early on a missing column
    say = progress or (lambda _msg: None)
    say(f"{len(dataset)} recordings from {data}; {len(models)} bundle(s)")
    t0 = time.perf_counter()
    pred = predict(models, dataset, cfg.group_by, progress, held_out=[s.held_out for s in specs])
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
