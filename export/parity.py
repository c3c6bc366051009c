"""The parity gate: does the exported model, run in its real runtime, compute what the PyTorch model computes?

Per output: mean and minimum per-window cosine similarity, and max absolute error. For labelled held-out data and a
binary model: the recording-level AUROC of the runtime's outputs and of the PyTorch fp32 model (score = mean over a
recording's windows of the softmax probability of the last label). Every bar of the declared
:class:`~acula_edge.export.tolerances.Tolerance` is checked and *all* failures are raised together.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from acula_edge.errors import ParityError
from acula_edge.export.tolerances import MIN_RECORDINGS_PER_CLASS, Tolerance

COSINE_EPS = 1e-12


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


def recording_scores(logits: np.ndarray, recording: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, label) per labelled recording of a binary model: mean over its windows of P(last label)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    prob = np.exp(z[:, -1]) / np.exp(z).sum(axis=1)
    recs = np.unique(recording)
    labels = np.array([y[recording == r][0] for r in recs])
    scores = np.array([prob[recording == r].mean() for r in recs])
    known = labels >= 0
    return scores[known], labels[known]


def recording_auroc(logits: np.ndarray, recording: np.ndarray, y: np.ndarray) -> float | None:
    """Recording-level AUROC of a binary model: score = mean over windows of P(last label). None if undefined."""
    if logits.ndim != 2 or logits.shape[1] != 2:
        return None
    scores, labels = recording_scores(logits, recording, y)
    return auroc(scores, labels == 1)


def parity_report(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                  recording: np.ndarray | None = None, y: np.ndarray | None = None,
                  data: str = "") -> dict[str, Any]:
    """Compare ``candidate`` (the runtime's outputs) with ``reference`` (PyTorch fp32) on the same windows."""
    report: dict[str, Any] = {"windows": int(next(iter(reference.values())).shape[0]), "data": data, "outputs": {}}
    for name, ref in reference.items():
        got = candidate[name]
        if got.shape != ref.shape:
            report["outputs"][name] = {"shape_mismatch": f"runtime {list(got.shape)} vs PyTorch {list(ref.shape)}"}
            continue
        cos = cosine_rows(ref, got)
        report["outputs"][name] = {
            "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "max_abs_error": float(np.abs(ref.astype(np.float64) - got).max()),
            "reference_max_abs": float(np.abs(ref).max()),
        }
    if recording is not None and y is not None and "logits" in reference and "logits" in candidate:
        ref_auc = recording_auroc(reference["logits"], recording, y)
        got_auc = recording_auroc(candidate["logits"], recording, y) if candidate["logits"].shape == \
            reference["logits"].shape else None
        if ref_auc is not None and got_auc is not None:
            _, labels = recording_scores(reference["logits"], recording, y)
            per_class = [int((labels == c).sum()) for c in (0, 1)]
            report["auroc"] = {"pytorch_fp32": ref_auc, "runtime": got_auc, "delta": got_auc - ref_auc,
                               "recordings_per_class": per_class,
                               "gated": min(per_class) >= MIN_RECORDINGS_PER_CLASS}
    return report


def mismatches(report: dict[str, Any], tolerance: Tolerance) -> list[str]:
    """Every way ``report`` misses ``tolerance`` (empty list: parity holds)."""
    problems = []
    for name, stats in report["outputs"].items():
        if "shape_mismatch" in stats:
            problems.append(f"{name}: shape mismatch, {stats['shape_mismatch']}")
    for name, bar in tolerance.min_cosine.items():
        stats = report["outputs"].get(name)
        if stats is None:
            problems.append(f"{name}: output missing from the runtime's results")
        elif "cosine_mean" in stats and not stats["cosine_mean"] >= bar:  # "not >=" also catches NaN
            problems.append(f"{name}: mean cosine {stats['cosine_mean']:.6f} < {bar} (min over windows "
                            f"{stats['cosine_min']:.6f}, max abs error {stats['max_abs_error']:.4g})")
    if tolerance.max_auroc_delta is not None and report.get("auroc", {}).get("gated"):
        delta = report["auroc"]["delta"]
        if not abs(delta) <= tolerance.max_auroc_delta:
            problems.append(f"AUROC: runtime {report['auroc']['runtime']:.4f} vs PyTorch fp32 "
                            f"{report['auroc']['pytorch_fp32']:.4f} (|delta| {abs(delta):.4f} > "
                            f"{tolerance.max_auroc_delta})")
    return problems


def gate(report: dict[str, Any], tolerance: Tolerance, what: str) -> dict[str, Any]:
    """Record the tolerance and verdict in ``report``; raise ParityError listing every mismatch."""
    problems = mismatches(report, tolerance)
    report["tolerance"] = tolerance.to_dict()
    report["passed"] = not problems
    if problems:
        error = ParityError(f"{what}: the exported model does not match PyTorch within the declared tolerances "
                            f"(acula_edge/export/tolerances.py)", problems)
        error.report = report  # the full figures, for callers that log failures (benchmarks)
        raise error
    return report
