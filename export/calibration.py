"""Real log-mel windows for int8 calibration and for the parity gate, from a dataset spec.

Windows always come from the front-end on real (or explicitly synthetic) recordings, never from random tensors:
calibration ranges fitted on noise do not match what the device sees.

Selection is deterministic and spread: recordings are taken round-robin over labels (each label's recordings in a
seeded order), and each chosen recording gives a few windows evenly spaced along it. When one dataset serves both
purposes, its recordings are split first (stratified by label) so the parity windows come from recordings the
calibration never saw.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from acula_edge.checkpoint import CheckpointInfo
from acula_edge.data import Dataset, load_dataset, stratified_holdout
from acula_edge.errors import ExportError
from acula_edge.frontend import FrontendConfig, Windowing
from acula_edge.windows import Windows, extract_windows

DEFAULT_CALIB_WINDOWS = 300  # windows used to fit int8 ranges
DEFAULT_EVAL_WINDOWS = 200  # held-out windows for the parity gate
EVAL_WINDOWS_PER_RECORDING = 2  # parity windows per recording (recording-level AUROC wants many recordings)
HELDOUT_FRACTION = 0.25  # share of the recordings held out from calibration when one dataset serves both
MIN_RECORDINGS_TO_SPLIT = 4  # below this, calibration and parity share the recordings (noted in the report)
FALLBACK_EVAL_SPEC = "synthetic:heart?n=24&seed=7&rate={rate}"  # parity data for fp32 exports given no data


def spread_recordings(dataset: Dataset, max_recordings: int, seed: int = 0) -> list[int]:
    """Indices of up to ``max_recordings`` recordings, round-robin over labels, each label in a seeded order."""
    rng = np.random.default_rng(seed)
    groups: dict[str | None, list[int]] = {}
    for i, rec in enumerate(dataset):
        groups.setdefault(rec.label, []).append(i)
    order = [list(rng.permutation(groups[k])) for k in sorted(groups, key=lambda k: (k is None, k or ""))]
    chosen: list[int] = []
    while len(chosen) < max_recordings and any(order):
        for group in order:
            if group and len(chosen) < max_recordings:
                chosen.append(int(group.pop(0)))
    return sorted(chosen)


def sample_windows(dataset: Dataset, frontend: FrontendConfig, windowing: Windowing, labels: tuple[str, ...],
                   n_windows: int, per_recording: int | None = None, seed: int = 0) -> Windows:
    """Up to ``n_windows`` model inputs (x: (N, 1, frames, n_mels)) of ``dataset`` cut with the model's front-end,
    spread over recordings and labels.

    ``per_recording`` windows come from each chosen recording (default: as few as reach ``n_windows``), evenly
    spaced without its first and last windows (:func:`~acula_edge.windows.choose_windows` with ``skip_ends``).
    ``y`` indexes ``labels`` (the model's classes); ``recording`` indexes the chosen recordings (``dataset`` of the
    result), ``source`` is ``dataset``'s name.
    """
    if n_windows < 1:
        raise ExportError(f"need at least one window, asked for {n_windows}")
    if len(dataset) == 0:
        raise ExportError(f"{dataset.name}: the dataset has no recordings")
    per = per_recording or max(1, math.ceil(n_windows / len(dataset)))
    chosen = spread_recordings(dataset, max(1, math.ceil(n_windows / per)), seed)
    ws = extract_windows(dataset.subset(chosen, dataset.name), frontend, windowing, labels=tuple(labels), pad=True,
                         max_windows_per_recording=per, skip_ends=True)
    # interleave recordings so that a prefix of the batch is still spread over recordings and labels
    rank = np.zeros(len(ws), dtype=np.int64)
    for r in np.unique(ws.recording):
        idx = np.flatnonzero(ws.recording == r)
        rank[idx] = np.arange(idx.size)
    kept = ws.take(np.sort(np.lexsort((ws.recording, rank))[:n_windows]))
    return dataclasses.replace(kept, x=kept.x[:, None, :, :].astype(np.float32))


@dataclass(frozen=True)
class ExportData:
    """Windows an export uses: calibration (int8 only) and held-out parity windows."""

    calibration: Windows | None
    evaluation: Windows
    held_out: bool  # True when the parity windows come from recordings the calibration did not use
    note: str = ""


def prepare_data(info: CheckpointInfo, precision: str | list[str], calib_data: str | None = None,
                 eval_data: str | None = None, n_calib: int = DEFAULT_CALIB_WINDOWS,
                 n_eval: int = DEFAULT_EVAL_WINDOWS, seed: int = 0) -> ExportData:
    """Load the calibration and parity windows for an export of ``info``'s model.

    - int8 (any of ``precision``) needs ``calib_data``; without it, ExportError.
    - Parity windows come from ``eval_data`` when given; else from a held-out part of ``calib_data``; else (fp32
      only) from the embedded synthetic heart sounds at the model's sample rate.
    """
    precisions = [precision] if isinstance(precision, str) else list(precision)
    needs_calib = "int8" in precisions
    if needs_calib and not calib_data:
        raise ExportError("int8 export needs real calibration windows: pass --calib-data SPEC (a folder with "
                          "labels.csv, or synthetic:heart for a smoke test); int8 ranges are never fitted on random "
                          "tensors")
    calib_set = load_dataset(calib_data) if calib_data else None
    eval_set = load_dataset(eval_data) if eval_data else None
    held_out, note = True, ""
    if eval_set is None and calib_set is not None:
        if len(calib_set) >= MIN_RECORDINGS_TO_SPLIT:
            calib_set, eval_set = stratified_holdout(calib_set, HELDOUT_FRACTION, seed=seed)
            note = f"parity on {len(eval_set)} recordings held out of {calib_data}"
        else:
            eval_set, held_out = calib_set, False
            note = f"{calib_data} has only {len(calib_set)} recordings: parity reuses the calibration recordings"
    if eval_set is None:
        spec = FALLBACK_EVAL_SPEC.format(rate=info.frontend.sample_rate)
        eval_set = load_dataset(spec)
        note = f"no data given: parity on {spec}"
    elif eval_data:
        note = f"parity on {eval_data}"
    calibration = None
    if calib_set is not None and needs_calib:
        calibration = sample_windows(calib_set, *_cut(info), n_calib, seed=seed)
    evaluation = sample_windows(eval_set, *_cut(info), n_eval, per_recording=EVAL_WINDOWS_PER_RECORDING, seed=seed)
    return ExportData(calibration, evaluation, held_out, note)


def _cut(info: CheckpointInfo) -> tuple[FrontendConfig, Windowing, tuple[str, ...]]:
    return info.frontend, info.windowing, tuple(info.labels)
