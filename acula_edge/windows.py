"""Cutting recordings into model-input windows of log-mel frames (numpy; shared by training, export and device).

A window is ``Windowing.frames_per_window`` consecutive frames; window ``k`` starts at frame
``k * frames_per_hop``, i.e. at ``k * hop_s`` seconds. The streaming session produces exactly these windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acula_edge.data import Dataset
from acula_edge.errors import AudioError, DatasetError
from acula_edge.features import LogMel, normalise_window
from acula_edge.frontend import FrontendConfig, Windowing


def frame_windows(frames: np.ndarray, frontend: FrontendConfig, windowing: Windowing) -> np.ndarray:
    """(n_frames, n_mels) -> (n_windows, frames_per_window, n_mels), window-normalised. Zero windows if short."""
    wf, hf = windowing.frames_per_window(frontend), windowing.frames_per_hop(frontend)
    n = 0 if frames.shape[0] < wf else 1 + (frames.shape[0] - wf) // hf
    if n == 0:
        return np.zeros((0, wf, frontend.n_mels), dtype=np.float32)
    out = np.lib.stride_tricks.as_strided(
        frames, shape=(n, wf, frames.shape[1]),
        strides=(frames.strides[0] * hf, frames.strides[0], frames.strides[1]), writeable=False)
    return np.ascontiguousarray(normalise_window(out, frontend), dtype=np.float32)


def recording_windows(samples: np.ndarray, frontend: FrontendConfig, windowing: Windowing,
                      logmel: LogMel | None = None) -> np.ndarray:
    """Windows of a whole recording already at ``frontend.sample_rate``. A centred front-end (``center``) computes
    each window from its own samples, zero-padded at both ends as librosa does."""
    logmel = logmel or LogMel(frontend)
    if frontend.center:
        ws, hs = windowing.window_samples(frontend), windowing.hop_samples(frontend)
        n = 0 if samples.shape[0] < ws else 1 + (samples.shape[0] - ws) // hs
        if n == 0:
            return np.zeros((0, windowing.frames_per_window(frontend), frontend.n_mels), dtype=np.float32)
        frames = np.stack([logmel(samples[k * hs:k * hs + ws]) for k in range(n)])
        return np.ascontiguousarray(normalise_window(frames, frontend), dtype=np.float32)
    frames = logmel(samples)
    return frame_windows(frames, frontend, windowing)


@dataclass
class WindowSet:
    """All windows of a dataset, with the recording each came from. Arrays share the first axis."""

    x: np.ndarray  # (N, frames, n_mels) float32
    recording: np.ndarray  # (N,) int: index into ``dataset.recordings``
    y: np.ndarray  # (N,) int: label index into ``labels`` (-1 = unlabelled)
    labels: tuple[str, ...]
    dataset: Dataset

    def recording_labels(self) -> np.ndarray:
        """Label index per recording (-1 unlabelled)."""
        return np.array([self.labels.index(r.label) if r.label in self.labels else -1 for r in self.dataset],
                        dtype=np.int64)


def extract_windows(dataset: Dataset, frontend: FrontendConfig, windowing: Windowing,
                    labels: tuple[str, ...] | None = None, pad: bool = True,
                    max_windows_per_recording: int | None = None) -> WindowSet:
    """Log-mel windows of every recording. Short recordings are zero-padded to one window when ``pad``.

    All unreadable recordings are reported together in one DatasetError.
    """
    windowing.validate(frontend)
    labels = labels or dataset.labels
    logmel = LogMel(frontend)
    need = windowing.window_samples(frontend)
    xs, recs, ys, problems = [], [], [], []
    for i, rec in enumerate(dataset):
        try:
            samples = rec.load(frontend.sample_rate, min_samples=need, pad=pad)
        except AudioError as e:
            problems.append(str(e))
            continue
        w = recording_windows(samples, frontend, windowing, logmel)
        if max_windows_per_recording is not None and w.shape[0] > max_windows_per_recording:
            keep = np.linspace(0, w.shape[0] - 1, max_windows_per_recording).round().astype(int)
            w = w[keep]
        xs.append(w)
        recs.append(np.full(w.shape[0], i, dtype=np.int64))
        ys.append(np.full(w.shape[0], labels.index(rec.label) if rec.label in labels else -1, dtype=np.int64))
    if problems:
        raise DatasetError(f"{dataset.name}: {len(problems)} recording(s) could not be used:\n  "
                           + "\n  ".join(problems), problems)
    if not xs:
        raise DatasetError(f"{dataset.name}: the dataset has no recordings")
    return WindowSet(np.concatenate(xs), np.concatenate(recs), np.concatenate(ys), tuple(labels), dataset)
