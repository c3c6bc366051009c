"""Cutting recordings into model-input windows of log-mel frames (numpy; shared by training, export and device).

A window is ``Windowing.frames_per_window`` consecutive frames; window ``k`` starts at frame
``k * frames_per_hop``, i.e. at ``k * hop_s`` seconds. The streaming session produces exactly these windows.

Training, distillation and export hold windows of a dataset as one type, :class:`Windows`; which windows of a
recording they keep is decided in one place, :func:`choose_windows`; and a recording's score from its windows'
probabilities is formed in one place, :func:`recording_scores` (the device's mean aggregation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from acula_edge.data import Dataset, Recording
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


def choose_windows(n_windows: int, max_windows: int | None = None, skip_ends: bool = False) -> np.ndarray:
    """Indices (int64, ascending) of the windows kept from a recording of ``n_windows`` windows.

    All of them when ``max_windows`` is None or the recording has no more; else ``max_windows`` evenly spaced from
    the first window to the last. ``skip_ends``: ``max_windows + 2`` evenly spaced with the two ends dropped, since
    a recording's first and last windows (onsets, clipping at the edges) are not what most of it looks like; a
    recording with one window too many for that spacing can give fewer than ``max_windows``.
    """
    if max_windows is None or n_windows <= max_windows:
        return np.arange(n_windows, dtype=np.int64)
    if skip_ends:
        return np.unique(np.linspace(0, n_windows - 1, int(max_windows) + 2)[1:-1].round().astype(np.int64))
    return np.unique(np.linspace(0, n_windows - 1, int(max_windows)).round().astype(np.int64))


@dataclass(frozen=True)
class Windows:
    """Windows cut from a dataset's recordings, each knowing its recording and its place in it. Arrays share the
    first axis; window ``k`` of a recording starts at ``k * hop_s`` seconds, so (recording id, window index) names
    the same stretch of audio for any front-end with the same :class:`~acula_edge.frontend.Windowing`."""

    x: np.ndarray  # float32 (N, frames, n_mels) log-mel, (N, 1, frames, n_mels) model inputs, or (N, samples) audio
    recording: np.ndarray  # (N,) int64: index into ``dataset.recordings``
    window_index: np.ndarray  # (N,) int64: index of the window inside its recording
    y: np.ndarray  # (N,) int64: label index into ``labels``; -1 = unlabelled
    labels: tuple[str, ...]
    dataset: Dataset | None = None  # the recordings ``recording`` indexes; None for windows made in memory
    source: str = ""  # where the windows came from (dataset spec or a description); default: the dataset's name

    def __post_init__(self) -> None:
        if not self.source and self.dataset is not None:
            object.__setattr__(self, "source", self.dataset.name)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_recordings(self) -> int:
        """Recordings with at least one window here."""
        return int(np.unique(self.recording).size)

    @property
    def record_ids(self) -> np.ndarray:
        """(N,) recording id of every window (numpy unicode array)."""
        ids = np.array([r.record_id for r in self._recordings()])
        return ids[self.recording] if len(self.recording) else np.zeros(0, dtype="<U1")

    def keys(self) -> list[tuple[str, int]]:
        """(recording id, window index) of every window: the key teacher and student outputs are joined on."""
        return list(zip(self.record_ids.tolist(), self.window_index.tolist()))

    def recording_labels(self) -> np.ndarray:
        """(R,) label index of every recording of ``dataset`` (-1 unlabelled)."""
        return np.array([self.labels.index(r.label) if r.label in self.labels else -1 for r in self._recordings()],
                        dtype=np.int64)

    def take(self, idx: np.ndarray | slice) -> "Windows":
        """The windows at ``idx`` (indices, mask or slice), same dataset and source."""
        return dataclasses.replace(self, x=self.x[idx], recording=self.recording[idx],
                                   window_index=self.window_index[idx], y=self.y[idx])

    @staticmethod
    def concatenate(parts: Sequence["Windows"]) -> "Windows":
        """The windows of ``parts`` one after another; all must index the same recordings (the first's dataset)."""
        first = parts[0]
        if any(w.labels != first.labels for w in parts):
            raise ValueError(f"cannot concatenate windows with different labels: {sorted({w.labels for w in parts})}")
        return Windows(np.concatenate([w.x for w in parts]), np.concatenate([w.recording for w in parts]),
                       np.concatenate([w.window_index for w in parts]), np.concatenate([w.y for w in parts]),
                       first.labels, first.dataset, first.source)

    def _recordings(self) -> tuple[Recording, ...]:
        if self.dataset is None:
            raise ValueError(f"windows from {self.source or 'memory'} carry no dataset to name their recordings")
        return self.dataset.recordings


def extract_windows(dataset: Dataset, frontend: FrontendConfig, windowing: Windowing,
                    labels: tuple[str, ...] | None = None, pad: bool = True,
                    max_windows_per_recording: int | None = None, skip_ends: bool = False) -> Windows:
    """Log-mel windows (N, frames, n_mels) of every recording, those :func:`choose_windows` keeps. Short recordings
    are zero-padded to one window when ``pad``. All unreadable recordings are reported together in one
    DatasetError."""
    windowing.validate(frontend)
    logmel = LogMel(frontend)

    def cut(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = recording_windows(samples, frontend, windowing, logmel)
        keep = choose_windows(w.shape[0], max_windows_per_recording, skip_ends)
        return w[keep], keep

    return _extract(dataset, frontend.sample_rate, windowing.window_samples(frontend), labels, pad, cut)


def extract_audio_windows(dataset: Dataset, sample_rate: int, windowing: Windowing,
                          labels: tuple[str, ...] | None = None,
                          max_windows_per_recording: int | None = None) -> Windows:
    """The raw audio (N, window_s * sample_rate) float32 of every window :func:`choose_windows` keeps, at
    ``sample_rate`` Hz, for teachers that bring their own feature extraction. Window k starts at k * hop_s seconds,
    as for log-mel windows; short recordings are zero-padded to one window."""
    need, hop = int(round(windowing.window_s * sample_rate)), int(round(windowing.hop_s * sample_rate))

    def cut(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = choose_windows(1 + (samples.shape[0] - need) // hop, max_windows_per_recording)
        w = np.zeros((keep.size, need), dtype=np.float32)
        for j, k in enumerate(keep):
            w[j] = samples[k * hop:k * hop + need]
        return w, keep

    return _extract(dataset, sample_rate, need, labels, True, cut)


def _extract(dataset: Dataset, sample_rate: int, need: int, labels: tuple[str, ...] | None, pad: bool,
             cut: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Windows:
    """Load every recording at ``sample_rate`` (at least ``need`` samples when ``pad``) and keep what ``cut`` gives:
    (windows, their indices inside the recording)."""
    labels = tuple(labels or dataset.labels)
    xs, recs, idxs, ys, problems = [], [], [], [], []
    for i, rec in enumerate(dataset):
        try:
            samples = rec.load(sample_rate, min_samples=need, pad=pad)
        except AudioError as e:
            problems.append(str(e))
            continue
        w, keep = cut(samples)
        xs.append(w)
        recs.append(np.full(keep.size, i, dtype=np.int64))
        idxs.append(keep)
        ys.append(np.full(keep.size, labels.index(rec.label) if rec.label in labels else -1, dtype=np.int64))
    if problems:
        raise DatasetError(f"{dataset.name}: {len(problems)} recording(s) could not be used:\n  "
                           + "\n  ".join(problems), problems)
    if not xs:
        raise DatasetError(f"{dataset.name}: the dataset has no recordings")
    return Windows(np.concatenate(xs), np.concatenate(recs), np.concatenate(idxs), np.concatenate(ys), labels,
                   dataset)


def recording_scores(probabilities: np.ndarray, recording: np.ndarray,
                     included: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(recording indices, ascending; (R, ...) float32 score of each): the mean of a recording's window
    probabilities (N, ...) exactly as the device's ``mean`` aggregation forms it
    (:class:`~acula_edge.runtime.aggregation.RecordingAccumulator`: a float64 running sum in window order over the
    count, rounded to float32). ``included``: (N,) bool, the windows that passed the quality checks; a recording
    none of whose windows passed falls back to all of them, as on the device."""
    order = np.argsort(recording, kind="stable")  # stable: each recording's windows stay in window order
    p = np.asarray(probabilities, dtype=np.float64)[order]
    ok = None if included is None else np.asarray(included, dtype=bool)[order]
    ids, starts, counts = np.unique(np.asarray(recording)[order], return_index=True, return_counts=True)
    out = np.zeros((ids.size,) + p.shape[1:], dtype=np.float32)
    for j, (s, n) in enumerate(zip(starts, counts)):
        rows = p[s:s + n]
        if ok is not None and ok[s:s + n].any():
            rows = rows[ok[s:s + n]]
        # cumsum adds in order, as the device's running sum does (a plain sum may pair terms differently)
        out[j] = (np.cumsum(rows, axis=0)[-1] / rows.shape[0]).astype(np.float32)
    return ids, out
