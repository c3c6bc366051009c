"""The parity gate: does the bundle, loaded as the device loads it, report what the PyTorch model reports?

:func:`check_bundle` opens a bundle folder with :func:`acula_edge.load` (the device's own loader, backend and
int8 quantize / dequantize code), runs it on windows and compares every output the device uses with the PyTorch
model's on the same windows (:func:`parity_report`):

- **embedding**: mean and minimum per-window cosine (zero-shot and retrieval use its direction);
- **probabilities** (softmax of the logits, as :mod:`acula_edge.runtime.model` computes them): largest absolute
  error over windows and classes;
- **logits**: largest absolute error relative to their spread (the standard deviation of the reference logits over
  the windows, pooled over classes; never less than the tolerance's floor): a shift of one logit shows here even
  where a softmax saturates;
- **decisions** at the bundle's threshold (P(last label) >= threshold, as the device decides): the share of windows
  whose decision changed, among those whose reference probability is farther than the declared margin from the
  threshold (a window sitting on the threshold may flip from rounding alone);
- **ranking** of recordings by their score (mean P(last label) over their windows): Spearman and Kendall
  correlations between runtime and PyTorch (gated when the scores spread wider than the decision margin: the order
  of near-equal scores is rounding noise);
- **AUROC** (labelled binary data): runtime minus PyTorch, with a paired bootstrap interval over recordings; it
  fails the gate only when the whole interval lies below ``-max_auroc_loss`` (a real loss, not sampling noise), and
  like the ranking only when the scores spread wider than the decision margin.

Every bar of the declared :class:`~acula_edge.export.tolerances.Tolerance` is checked and *all* failures are raised
together (:func:`gate`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from acula_edge.errors import ParityError
from acula_edge.export.tolerances import Tolerance
from acula_edge.runtime.aggregation import decide_scores
from acula_edge.windows import recording_scores

COSINE_EPS = 1e-12
MIN_RECORDINGS_PER_CLASS = 10  # AUROC intervals on fewer recordings per class are reported, not gated
MIN_RANK_RECORDINGS = 10  # rank agreement on fewer recordings is reported, not gated
AUROC_BOOTSTRAP = 1000  # paired resamples of the recordings for the ΔAUROC interval
BOOTSTRAP_SEED = 0  # fixed: the same bundle and windows always get the same verdict


def torch_outputs(model: Any, x: np.ndarray, names: tuple[str, ...] = ("embedding", "logits"),
                  batch_size: int = 64) -> dict[str, np.ndarray]:
    """Run the PyTorch model on windows ``x`` (N, 1, frames, n_mels); {output name: (N, ...) float32}."""
    import torch

    outs: list[list[np.ndarray]] = [[] for _ in names]
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            result = model(torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])))
            for i, tensor in enumerate(result[:len(names)]):
                outs[i].append(tensor.detach().float().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in zip(names, outs)}


def device_outputs(backend: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run a device backend (:class:`acula_edge.runtime.backends.Backend`, e.g. ``acula_edge.load(b).backend``) on
    windows ``x`` (N, 1, frames, n_mels), window by window as the device does; {"embedding": (N, D), "logits":
    (N, C)} float32."""
    embeddings, logits = [], []
    for i in range(x.shape[0]):
        emb, lg = backend.run(np.ascontiguousarray(x[i:i + 1], dtype=np.float32))
        embeddings.append(emb)
        logits.append(lg)
    return {"embedding": np.stack(embeddings), "logits": np.stack(logits)}


def file_outputs(target: str, path: str | Path, x: np.ndarray, inputs: tuple[Any, ...], outputs: tuple[Any, ...],
                 extra: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Run a bare model file (no bundle around it yet: experiments, benchmarks) on ``target``'s device backend.
    ``inputs``/``outputs``: its TensorSpecs (outputs in the file's order); ``extra``: manifest extras the backend
    reads (tflm: ``arena_bytes``)."""
    from acula_edge.atomic import sha256_file
    from acula_edge.frontend import FrontendConfig, Windowing
    from acula_edge.manifest import Manifest
    from acula_edge.runtime.backends import open_backend

    classes = int(np.prod(next(o for o in outputs if o.name == "logits").shape))
    manifest = Manifest(target=target, precision="int8", model_file=Path(path).name,
                        model_sha256=sha256_file(Path(path)), frontend=FrontendConfig(),
                        windowing=Windowing(window_s=1.0, hop_s=0.5), inputs=tuple(inputs), outputs=tuple(outputs),
                        labels=tuple(f"class{i}" for i in range(classes)), extra=dict(extra or {}))
    # no crash probe in a child: that re-validates a whole bundle's manifest, which a bare file does not have
    return device_outputs(open_backend(Path(path), manifest, 1, probe=False), x)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities per row, with the device's softmax (:func:`acula_edge.runtime.model.softmax`)."""
    from acula_edge.runtime.model import softmax

    return np.stack([softmax(row) for row in np.asarray(logits)]).astype(np.float64)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of corresponding rows of (N, ...) arrays; two all-zero rows count as identical."""
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, COSINE_EPS)
    cos[(na < COSINE_EPS) & (nb < COSINE_EPS)] = 1.0
    return cos


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (acula_edge.bench.metrics, the one definition); None unless both classes occur."""
    from acula_edge.bench.metrics import auroc as _auroc

    value = _auroc(np.asarray(positive, dtype=bool), scores)
    return None if np.isnan(value) else value


def recording_labels(recording: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The label index of each recording (sorted by id, as :func:`~acula_edge.windows.recording_scores`); -1 when
    unknown."""
    return np.array([y[recording == r][0] for r in np.unique(recording)])


def recording_auroc(logits: np.ndarray, recording: np.ndarray, y: np.ndarray) -> float | None:
    """Recording-level AUROC of a binary model: score = mean over windows of P(last label), as the device forms it
    (:func:`~acula_edge.windows.recording_scores`). None if undefined."""
    if logits.ndim != 2 or logits.shape[1] != 2:
        return None
    _, scores = recording_scores(probabilities(logits)[:, -1], recording)
    labels = recording_labels(recording, y)
    known = labels >= 0
    return auroc(scores[known], labels[known] == 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (ties share their mean rank); nan when either side is constant."""
    from acula_edge.bench.metrics import average_ranks

    ra, rb = average_ranks(a), average_ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b; nan when either side is constant."""
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(a.shape[0], 1)
    da, db = da[iu], db[iu]
    denom = math.sqrt(float(np.count_nonzero(da)) * float(np.count_nonzero(db)))
    return float((da * db).sum() / denom) if denom else math.nan


def auroc_delta(ref_scores: np.ndarray, got_scores: np.ndarray, positive: np.ndarray,
                n_boot: int = AUROC_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> dict[str, float]:
    """AUROC of both score sets, their difference (runtime - PyTorch) and its 95% paired bootstrap interval.

    Paired: each resample draws recordings (with replacement, within each class) and scores both models on the same
    draw, so the interval measures how much the difference itself depends on which recordings were held out."""
    from acula_edge.bench.metrics import auroc as _auroc, bootstrap

    def delta(y: np.ndarray, idx: np.ndarray, _pred: np.ndarray) -> dict[str, float]:
        i = idx.astype(np.int64)  # the "scores" passed below are recording indices: look both models up
        return {"delta": _auroc(y, got_scores[i]) - _auroc(y, ref_scores[i])}

    n = positive.shape[0]
    est = bootstrap(positive, np.arange(n, dtype=np.float64), np.zeros(n, bool), fn=delta, n_boot=n_boot, seed=seed,
                    strata=positive)["delta"]
    return {"delta": est.value, "ci95": [est.lo, est.hi], "bootstrap": n_boot}


def parity_report(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], threshold: float | None,
                  tolerance: Tolerance, recording: np.ndarray | None = None, y: np.ndarray | None = None,
                  data: str = "") -> dict[str, Any]:
    """Compare ``candidate`` (the bundle's outputs) with ``reference`` (PyTorch fp32) on the same windows.

    ``threshold``: the bundle's decision threshold on P(last label); ``tolerance``: only its ``decision_margin``
    (which windows count for decision agreement, whether ranks and AUROC are gated) and ``logit_spread_floor`` are
    used. ``recording``/``y``: recording id and label index (-1 unknown) per window, for the recording-level
    figures."""
    report: dict[str, Any] = {"windows": int(next(iter(reference.values())).shape[0]), "data": data, "outputs": {}}
    for name, ref in reference.items():
        got = candidate[name]
        if got.shape != ref.shape:
            report["outputs"][name] = {"shape_mismatch": f"runtime {list(got.shape)} vs PyTorch {list(ref.shape)}"}
            continue
        cos = cosine_rows(ref, got)
        stats = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                 "max_abs_error": float(np.abs(ref.astype(np.float64) - got).max()),
                 "reference_max_abs": float(np.abs(ref).max())}
        if name == "logits":
            spread = float(np.sqrt(np.mean(np.var(ref.astype(np.float64), axis=0))))
            used = max(spread, tolerance.logit_spread_floor, COSINE_EPS)
            stats.update(spread=spread, relative_error=stats["max_abs_error"] / used)
        report["outputs"][name] = stats
    lg_ref, lg_got = reference.get("logits"), candidate.get("logits")
    if lg_ref is None or lg_got is None or lg_ref.shape != lg_got.shape:
        return report
    p_ref, p_got = probabilities(lg_ref), probabilities(lg_got)
    err = np.abs(p_ref - p_got)
    report["probabilities"] = {"max_abs_error": float(err.max()) if np.isfinite(err).all() else math.inf,
                               "mean_abs_error": float(err.mean())}
    if threshold is not None and p_ref.shape[1] == 2:  # the device's binary rule (runtime.aggregation)
        d_ref, d_got = decide_scores(p_ref[:, -1], threshold), decide_scores(p_got[:, -1], threshold)
        clear = np.abs(p_ref[:, -1] - threshold) > tolerance.decision_margin
    else:  # multi-class: the most probable label; a window whose top two are within the margin may flip
        d_ref, d_got = p_ref.argmax(axis=1), p_got.argmax(axis=1)
        top2 = np.sort(p_ref, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > tolerance.decision_margin
    report["decisions"] = {
        "threshold": None if threshold is None else float(threshold), "margin": tolerance.decision_margin,
        "agreement": float(np.mean(d_ref == d_got)), "changed": int(np.sum(d_ref != d_got)),
        "windows_clear_of_threshold": int(clear.sum()),
        "agreement_clear_of_threshold": float(np.mean(d_ref[clear] == d_got[clear])) if clear.any() else None,
        "changed_clear_of_threshold": int(np.sum(d_ref[clear] != d_got[clear])),
    }
    if recording is None:
        return report
    _, s_ref = recording_scores(p_ref[:, -1], recording)
    _, s_got = recording_scores(p_got[:, -1], recording)
    # the order of recordings whose scores differ by less than the allowed rounding is not something an export can
    # keep: ranks and AUROC are judged only when the reference scores spread wider than the decision margin
    resolved = bool(s_ref.std() > tolerance.decision_margin)
    report["ranking"] = {"recordings": int(s_ref.shape[0]), "spearman": spearman(s_ref, s_got),
                         "kendall": kendall(s_ref, s_got), "reference_score_std": float(s_ref.std()),
                         "gated": bool(s_ref.shape[0] >= MIN_RANK_RECORDINGS and resolved)}
    if y is not None and lg_ref.shape[1] == 2:
        labels = recording_labels(recording, y)
        known = labels >= 0
        per_class = [int((labels[known] == c).sum()) for c in (0, 1)]
        if min(per_class) > 0 and np.isfinite(s_got).all():  # non-finite outputs already fail the other bars
            positive = labels[known] == 1
            ref_auc, got_auc = auroc(s_ref[known], positive), auroc(s_got[known], positive)
            report["auroc"] = {"pytorch_fp32": ref_auc, "runtime": got_auc,
                               **auroc_delta(s_ref[known], s_got[known], positive),
                               "recordings_per_class": per_class,
                               "gated": bool(min(per_class) >= MIN_RECORDINGS_PER_CLASS and resolved)}
    return report


def mismatches(report: dict[str, Any], tolerance: Tolerance) -> list[str]:
    """Every way ``report`` misses ``tolerance`` (empty list: parity holds). Comparisons are written ``not x <= bar``
    so that NaN fails."""
    t = tolerance
    problems = []
    outputs = report["outputs"]
    for name, stats in outputs.items():
        if "shape_mismatch" in stats:
            problems.append(f"{name}: shape mismatch, {stats['shape_mismatch']}")
    for name, bar in t.min_cosine.items():
        stats = outputs.get(name)
        if stats is None:
            problems.append(f"{name}: output missing from the runtime's results")
        elif "cosine_mean" in stats and not stats["cosine_mean"] >= bar:
            problems.append(f"{name}: mean cosine {stats['cosine_mean']:.6f} < {bar} (min over windows "
                            f"{stats['cosine_min']:.6f}, max abs error {stats['max_abs_error']:.4g})")
    probs = report.get("probabilities")
    if t.max_prob_error is not None and probs and not probs["max_abs_error"] <= t.max_prob_error:
        problems.append(f"probabilities: max abs error {probs['max_abs_error']:.4f} > {t.max_prob_error} "
                        f"(mean {probs['mean_abs_error']:.4f})")
    logits = outputs.get("logits", {})
    if t.max_logit_error is not None and "relative_error" in logits and \
            not logits["relative_error"] <= t.max_logit_error:
        problems.append(f"logits: max abs error {logits['max_abs_error']:.4g} is {logits['relative_error']:.3f} x "
                        f"their spread ({logits['spread']:.4g}, counted as at least {t.logit_spread_floor}) > "
                        f"{t.max_logit_error}")
    dec = report.get("decisions")
    if t.min_decision_agreement is not None and dec and dec["agreement_clear_of_threshold"] is not None and \
            not dec["agreement_clear_of_threshold"] >= t.min_decision_agreement:
        problems.append(f"decisions: {dec['changed_clear_of_threshold']} of {dec['windows_clear_of_threshold']} "
                        f"windows farther than {dec['margin']} from the threshold {dec['threshold']:.4g} changed "
                        f"(agreement {dec['agreement_clear_of_threshold']:.4f} < {t.min_decision_agreement})")
    rank = report.get("ranking")
    if t.min_rank_agreement is not None and rank and rank["gated"] and not rank["spearman"] >= t.min_rank_agreement:
        problems.append(f"ranking: Spearman {rank['spearman']:.4f} of {rank['recordings']} recording scores < "
                        f"{t.min_rank_agreement} (Kendall {rank['kendall']:.4f})")
    auc = report.get("auroc")
    if t.max_auroc_loss is not None and auc and auc["gated"] and not auc["ci95"][1] >= -t.max_auroc_loss:
        problems.append(f"AUROC: runtime {auc['runtime']:.4f} vs PyTorch fp32 {auc['pytorch_fp32']:.4f}, delta "
                        f"{auc['delta']:+.4f} with 95% interval [{auc['ci95'][0]:+.4f}, {auc['ci95'][1]:+.4f}] "
                        f"entirely below -{t.max_auroc_loss}")
    return problems


def gate(report: dict[str, Any], tolerance: Tolerance, what: str) -> dict[str, Any]:
    """Record the tolerance and verdict in ``report``; raise ParityError listing every mismatch."""
    problems = mismatches(report, tolerance)
    report["tolerance"] = tolerance.to_dict()
    report["passed"] = not problems
    if problems:
        error = ParityError(f"{what}: the bundle does not match PyTorch within the tolerances its target declares "
                            f"(acula_edge/export/tolerances.py)", problems)
        error.report = report  # the full figures, for callers that log failures (benchmarks)
        raise error
    return report


def decision_threshold(manifest: Any) -> float | None:
    """The operating point the bundle ships: the threshold on P(last label) its device code decides with (None for
    a multi-class bundle, which answers the most probable label)."""
    return float(manifest.threshold) if len(manifest.labels) == 2 else None


def check_bundle(folder: str | Path, x: np.ndarray, reference: dict[str, np.ndarray], tolerance: Tolerance,
                 what: str, recording: np.ndarray | None = None, y: np.ndarray | None = None,
                 data: str = "", probe: bool = True) -> dict[str, Any]:
    """The gate: load ``folder`` with :func:`acula_edge.load` (checksums, manifest, backend: the device path), run
    it on ``x`` and compare with ``reference`` (PyTorch outputs for ``x``). Returns the report (with ``runtime``,
    ``tolerance`` and ``passed``); raises ParityError listing every mismatch. ``probe``: see :func:`acula_edge.load`
    (the exporter passes False for the bytes it just wrote)."""
    import acula_edge

    edge = acula_edge.load(folder, num_threads=1, probe=probe)
    candidate = device_outputs(edge.backend, x)
    report = parity_report(reference, candidate, decision_threshold(edge.manifest), tolerance, recording, y, data)
    report["runtime"] = edge.backend.name
    return gate(report, tolerance, what)
