"""Recording-level metrics (numpy): window probabilities are averaged per recording, then scored.

Binary tasks (the last label is the positive class, e.g. "abnormal"): AUROC, sensitivity, specificity and
MAcc = (Se + Sp) / 2 at a threshold on the positive-class probability. Other tasks: balanced accuracy.
"""

from __future__ import annotations

import numpy as np

from acula_edge.windows import recording_scores


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def recording_means(values: np.ndarray, recording: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recording ids present, per-recording float64 mean of ``values`` rows, e.g. embeddings), recordings in
    ascending order. Recording scores from window probabilities: :func:`acula_edge.windows.recording_scores`."""
    ids, inv = np.unique(recording, return_inverse=True)
    sums = np.zeros((len(ids),) + values.shape[1:], dtype=np.float64)
    np.add.at(sums, inv, values)
    counts = np.bincount(inv, minlength=len(ids)).reshape((-1,) + (1,) * (values.ndim - 1))
    return ids, sums / counts


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present.
    The one definition lives in acula_edge.bench.metrics."""
    from acula_edge.bench.metrics import auroc as _auroc

    return _auroc(np.asarray(y_true).astype(bool), score)


def binary_metrics(y_true: np.ndarray, p_pos: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUROC, Se, Sp, MAcc at ``threshold`` for 0/1 labels and positive-class probabilities."""
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(p_pos) >= threshold
    se = float((pred & y).sum() / y.sum()) if y.any() else float("nan")
    sp = float((~pred & ~y).sum() / (~y).sum()) if (~y).any() else float("nan")
    return {"auroc": auroc(y, p_pos), "se": se, "sp": sp, "macc": (se + sp) / 2.0, "n": int(len(y)),
            "n_pos": int(y.sum())}


def recording_metrics(logits: np.ndarray, recording: np.ndarray, recording_labels: np.ndarray,
                      threshold: float = 0.5) -> dict[str, float]:
    """Scores of window ``logits`` (N, C) pooled per recording (mean of window probabilities, as the device forms
    it: :func:`~acula_edge.windows.recording_scores`).

    ``recording`` gives each window's recording index; ``recording_labels`` the label index of every recording
    (indexed by those indices; -1 = unlabelled, ignored)."""
    ids, probs = recording_scores(softmax(logits), recording)
    y = np.asarray(recording_labels)[ids]
    keep = y >= 0
    probs, y = probs[keep], y[keep]
    n_classes = probs.shape[1]
    if n_classes == 2:
        m = binary_metrics(y == 1, probs[:, 1], threshold)
    else:
        pred = probs.argmax(1)
        recalls = [float((pred[y == c] == c).mean()) for c in range(n_classes) if (y == c).any()]
        m = {"n": int(len(y))}
        m["balanced_accuracy"] = float(np.mean(recalls)) if recalls else float("nan")
    return m


def selection_score(metrics: dict[str, float]) -> float:
    """The number model selection maximises: AUROC for binary tasks, else balanced accuracy (NaN if undefined)."""
    return float(metrics.get("auroc", metrics.get("balanced_accuracy", float("nan"))))
