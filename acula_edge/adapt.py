"""Site adaptation from unlabeled recordings: the estimators (what is re-estimated on the new site's audio).

- front-end correction (:class:`~acula_edge.runtime.site_shift.FrontendCorrection`): per-band log-mel mean and
  spread moved onto the training audio's. No weight changes; needs only a bundle with a site description.
- AdaBN (:func:`adabn`): every batch-norm layer's running mean and variance re-estimated on the site's windows.
  Changes the model: needs the checkpoint, and a re-export through the parity gate.
- operating point (:func:`prior_threshold`): the decision threshold re-chosen so that the site's share of positive
  decisions equals the training prevalence. Needs only the model's scores on the site (bundle or checkpoint).

Torch is imported inside :func:`adabn` only: the front-end and threshold estimators run on the device path.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def prior_threshold(scores: np.ndarray, prevalence: float) -> float:
    """Threshold on the positive-class probability that calls the top ``prevalence`` share of ``scores`` positive.

    ``scores``: per-recording P(positive) on the site's unlabeled recordings; ``prevalence`` in (0, 1): the training
    data's share of positive recordings.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0 or not 0.0 < prevalence < 1.0:
        raise ValueError(f"need scores and a prevalence in (0, 1); got {s.size} scores, prevalence {prevalence}")
    return float(np.quantile(s, 1.0 - prevalence))


def adabn(model: Any, windows: np.ndarray, batch_size: int = 64, seed: int = 0) -> Any:
    """A copy of ``model`` whose batch-norm running statistics are re-estimated on ``windows`` (N, frames, n_mels).

    Every BatchNorm layer's running mean and variance become the cumulative average over shuffled batches of
    ``batch_size`` windows (``momentum=None``); all weights, and dropout (kept in eval mode), are unchanged.
    """
    import copy

    import torch

    m = copy.deepcopy(model).float().eval()
    norms = [mod for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no batch-norm layer: AdaBN has nothing to re-estimate")
    x = np.asarray(windows, dtype=np.float32)
    if len(x) < 2:
        raise ValueError(f"AdaBN needs at least 2 windows, got {len(x)}")
    momenta = [mod.momentum for mod in norms]
    for mod in norms:
        mod.reset_running_stats()
        mod.momentum = None  # cumulative moving average: every batch weighs the same
        mod.train()
    order = np.random.default_rng(seed).permutation(len(x))
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            idx = order[s:s + batch_size]
            if len(idx) < 2:  # a batch of one has no variance
                continue
            m(torch.from_numpy(np.ascontiguousarray(x[idx]))[:, None])
    for mod, momentum in zip(norms, momenta):
        mod.momentum = momentum
        mod.eval()
    return m
