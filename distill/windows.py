"""Keyed windows for distillation: every window knows its recording id and its index inside the recording.

Teacher and student may use different front-ends; their outputs are joined on (recording id, window index), which
names the same stretch of audio whenever both use the same :class:`~acula_edge.frontend.Windowing` (window ``k``
starts at ``k * hop_s`` seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acula_edge.data import Dataset
from acula_edge.errors import AudioError, DatasetError
from acula_edge.features import LogMel
from acula_edge.frontend import FrontendConfig, Windowing
from acula_edge.windows import recording_windows


def select_windows(n_windows: int, max_windows: int | None) -> np.ndarray:
    """Indices of the windows kept from a recording of ``n_windows`` windows: all, or ``max_windows`` evenly spaced."""
    if max_windows is None or n_windows <= max_windows:
        return np.arange(n_windows, dtype=np.int64)
    return np.unique(np.linspace(0, n_windows - 1, int(max_windows)).round().astype(np.int64))


@dataclass
class KeyedWindows:
    """Windows of a dataset; arrays share the first axis."""

    x: np.ndarray  # (N, frames, n_mels) float32 log-mel windows, or (N, samples) float32 audio windows
    recording: np.ndarray  # (N,) index into dataset.recordings
    window_index: np.ndarray  # (N,) index of the window inside its recording
    y: np.ndarray  # (N,) label index into ``labels``; -1 = unlabelled
    labels: tuple[str, ...]
    dataset: Dataset

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def record_ids(self) -> np.ndarray:
        """(N,) recording id of every window (numpy unicode array)."""
        ids = np.array([r.record_id for r in self.dataset.recordings])
        return ids[self.recording] if len(self.recording) else np.zeros(0, dtype="<U1")

    def keys(self) -> list[tuple[str, int]]:
        return list(zip(self.record_ids.tolist(), self.window_index.tolist()))

    def take(self, idx: np.ndarray) -> "KeyedWindows":
        return KeyedWindows(self.x[idx], self.recording[idx], self.window_index[idx], self.y[idx], self.labels,
                            self.dataset)


def extract_keyed(dataset: Dataset, frontend: FrontendConfig, windowing: Windowing,
                  labels: tuple[str, ...] | None = None, max_windows_per_recording: int | None = None) -> KeyedWindows:
    """Log-mel windows of every recording, shape (N, frames, n_mels); short recordings are zero-padded to one
    window. Unreadable recordings are reported together in one DatasetError."""
    windowing.validate(frontend)
    return _extract(dataset, frontend.sample_rate, windowing, labels, max_windows_per_recording,
                    logmel=LogMel(frontend), frontend=frontend)


def extract_audio_windows(dataset: Dataset, sample_rate: int, windowing: Windowing,
                          labels: tuple[str, ...] | None = None,
                          max_windows_per_recording: int | None = None) -> KeyedWindows:
    """The raw audio of every window at ``sample_rate`` Hz, shape (N, window_s * sample_rate), for teachers that
    bring their own feature extraction. Window k starts at k * hop_s seconds, as for log-mel windows."""
    return _extract(dataset, sample_rate, windowing, labels, max_windows_per_recording, logmel=None, frontend=None)


def _extract(dataset: Dataset, sample_rate: int, windowing: Windowing, labels: tuple[str, ...] | None,
             max_windows_per_recording: int | None, logmel: LogMel | None,
             frontend: FrontendConfig | None) -> KeyedWindows:
    labels = tuple(labels or dataset.labels)
    need, hop = int(round(windowing.window_s * sample_rate)), int(round(windowing.hop_s * sample_rate))
    audio = logmel is None
    xs, recs, idxs, ys, problems = [], [], [], [], []
    for i, rec in enumerate(dataset):
        try:
            samples = rec.load(sample_rate, min_samples=need, pad=True)
        except AudioError as e:
            problems.append(str(e))
            continue
        if audio:
            n = 1 + (samples.shape[0] - need) // hop
            keep = select_windows(n, max_windows_per_recording)
            w = np.stack([samples[k * hop:k * hop + need] for k in keep]).astype(np.float32)
        else:
            w = recording_windows(samples, frontend, windowing, logmel)
            keep = select_windows(w.shape[0], max_windows_per_recording)
            w = w[keep]
        xs.append(w)
        recs.append(np.full(len(keep), i, dtype=np.int64))
        idxs.append(keep)
        ys.append(np.full(len(keep), labels.index(rec.label) if rec.label in labels else -1, dtype=np.int64))
    if problems:
        raise DatasetError(f"{dataset.name}: {len(problems)} recording(s) could not be used:\n  "
                           + "\n  ".join(problems), problems)
    if not xs:
        raise DatasetError(f"{dataset.name}: the dataset has no recordings")
    return KeyedWindows(np.concatenate(xs), np.concatenate(recs), np.concatenate(idxs), np.concatenate(ys),
                        labels, dataset)
