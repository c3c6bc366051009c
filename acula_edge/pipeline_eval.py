"""Recording-level accuracy of the teacher and student checkpoints in PyTorch: the reference for their bundles.

Recordings are scored as the device scores them (:func:`acula_edge.distill.train.score_recordings`: every window,
quality-checked, averaged) and decided at the checkpoint's operating point. The teacher is shown twice, so a reader
sees whether the encoder or the prompts limit it: **zero-shot** (its logits are cosines to the text embeddings of
the label prompts; threshold 0.5, i.e. the nearer prompt, not chosen on data) and a **linear probe** on its frozen
embeddings (fit on the training groups, threshold chosen on a held-out training group exactly as ``distill``
chooses the student's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from acula_edge.bench.metrics import point_metrics
from acula_edge.data import Dataset, load_dataset
from acula_edge.operating_point import OperatingPoint

MEANINGS = {
    "teacher": "teacher zero-shot: cosine of each recording's embedding to the label prompts' text embeddings "
               "(threshold 0.5 = the nearer prompt; nothing fit on labels)",
    "teacher-probe": "teacher linear probe: logistic regression on the frozen teacher embeddings, fit on the "
                     "training sites, threshold chosen on a held-out training site (the encoder's ceiling)",
    "student": "student: the distilled device model in PyTorch fp32, at the operating point distill chose on its "
               "validation site (the reference its bundles must match)",
}


def _figures(labels: np.ndarray, probs: np.ndarray, point: OperatingPoint) -> dict[str, Any]:
    """Figures of the last label (the positive class of a binary task; one-vs-rest otherwise) on recordings with
    label indices ``labels`` and probabilities ``probs`` (R, C), decided by ``point`` via the device's rule."""
    from acula_edge.runtime.aggregation import decide

    y = labels == probs.shape[1] - 1
    decided = np.array([decide(p, point.threshold) for p in probs], dtype=bool)
    m = point_metrics(y, probs[:, -1], decided)
    return {"recordings": int(y.size), "threshold": point.threshold, "operating_point": point.to_dict(),
            **{k: (None if v != v else round(float(v), 4)) for k, v in m.items()}}


def _labels(dataset: Dataset, labels: tuple[str, ...]) -> tuple[Dataset, np.ndarray]:
    """The labelled recordings of ``dataset`` and their label indices."""
    keep = [i for i, r in enumerate(dataset) if r.label in labels]
    sub = dataset.subset(keep, dataset.name)
    return sub, np.array([labels.index(r.label) for r in sub], dtype=np.int64)


def evaluate_checkpoint(folder: str | Path, data: Dataset | str) -> dict[str, Any]:
    """The checkpoint on ``data``: Se/Sp/MAcc at its operating point (a teacher without one: its threshold), AUROC,
    parameters; figures of the last label (multi-class: one-vs-rest, decided by argmax). Imports torch."""
    from acula_edge.checkpoint import load_checkpoint
    from acula_edge.distill.train import score_recordings
    from acula_edge.operating_point import argmax_rule, fixed

    model, info = load_checkpoint(folder)
    dataset, y = _labels(load_dataset(data) if isinstance(data, str) else data, info.labels)
    probs = score_recordings(model, dataset, info.frontend, info.windowing, info.labels)
    point = info.operating_point or (fixed(info.threshold, "checkpoint threshold (not chosen on data)")
                                     if len(info.labels) == 2 else argmax_rule())
    return {"checkpoint": str(folder), "kind": info.kind,
            "parameters": int(sum(t.numel() for t in model.parameters())), **_figures(y, probs, point)}


def evaluate_teacher_probe(folder: str | Path, train: str, test: str, group_column: str,
                           max_windows: int = 8, seed: int = 0) -> dict[str, Any]:
    """A linear probe on the teacher's frozen embeddings: fit on ``train`` minus one held-out group (the same split
    distill makes), threshold chosen there (youden), scored on ``test``. Imports torch."""
    from acula_edge.checkpoint import load_checkpoint
    from acula_edge.distill.probe import fit_probe
    from acula_edge.distill.train import TrainConfig, predict, score_recordings, split_validation
    from acula_edge.operating_point import argmax_rule, choose
    from acula_edge.windows import extract_windows

    model, info = load_checkpoint(folder)
    fit_ds, val_ds, how = split_validation(load_dataset(train), TrainConfig(group_column=group_column, seed=seed))
    w = extract_windows(fit_ds, info.frontend, info.windowing, info.labels,
                        max_windows_per_recording=max_windows or None)  # 0 = all
    emb, _ = predict(model, w.x)
    probe = fit_probe(emb, w.y, w.recording, len(info.labels))
    where = f"validation split ({how})"
    if len(info.labels) == 2:
        val_ds, y_val = _labels(val_ds, info.labels)
        val_probs = score_recordings(model, val_ds, info.frontend, info.windowing, info.labels, head=probe.logits)
        point = choose(y_val == 1, val_probs[:, -1], "youden", where)
    else:
        point = argmax_rule(where)
    test_ds, y = _labels(load_dataset(test), info.labels)
    probs = score_recordings(model, test_ds, info.frontend, info.windowing, info.labels, head=probe.logits)
    return {"checkpoint": str(folder), "kind": "teacher linear probe",
            "parameters": int(sum(t.numel() for t in model.parameters())) + int(probe.weight.size + probe.bias.size),
            **_figures(y, probs, point)}
