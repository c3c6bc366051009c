"""Recording-level accuracy of a teacher or student checkpoint in PyTorch: the reference for its bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from acula_edge.bench.metrics import point_metrics
from acula_edge.data import Dataset, load_dataset


def evaluate_checkpoint(folder: str | Path, data: Dataset | str, batch_size: int = 128) -> dict[str, Any]:
    """Windows of ``data`` through the checkpoint; probabilities averaged per recording; binary metrics on the last
    label (the checkpoint's threshold), plus parameter count. Imports torch."""
    import torch

    from acula_edge.checkpoint import load_checkpoint
    from acula_edge.windows import extract_windows

    model, info = load_checkpoint(folder)
    dataset = load_dataset(data) if isinstance(data, str) else data
    windows = extract_windows(dataset, info.frontend, info.windowing, labels=info.labels)
    probs = []
    with torch.no_grad():
        for s in range(0, len(windows.x), batch_size):
            _, logits = model(torch.from_numpy(windows.x[s:s + batch_size])[:, None])
            probs.append(torch.softmax(logits.float(), dim=-1).numpy())
    p = np.concatenate(probs)
    n_rec = len(dataset)
    counts = np.bincount(windows.recording, minlength=n_rec)
    mean_p = np.stack([np.bincount(windows.recording, weights=p[:, c], minlength=n_rec) for c in range(p.shape[1])],
                      axis=1) / np.maximum(counts, 1)[:, None]
    y_idx = windows.recording_labels()
    keep = (counts > 0) & (y_idx >= 0)
    positive = len(info.labels) - 1
    scores = mean_p[keep, positive]
    y = y_idx[keep] == positive
    metrics = point_metrics(y, scores, scores >= info.threshold)
    return {"checkpoint": str(folder), "kind": info.kind, "recordings": int(keep.sum()),
            "parameters": int(sum(t.numel() for t in model.parameters())),
            **{k: (None if v != v else round(float(v), 4)) for k, v in metrics.items()}}
