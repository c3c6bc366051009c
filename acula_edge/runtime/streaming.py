"""Streaming inference: a per-recording :class:`StreamSession` on a shared, loaded :class:`EdgeModel`.

The session holds all state (the exported graph is stateless): the incremental front-end
(:class:`~acula_edge.features.LogMelStream`, which computes only the new STFT frames on each push), a rolling
buffer of log-mel frames and one of samples (one window plus one hop each, preallocated), and the recording
accumulator. ``push`` accepts chunks of any size; each window is scored as soon as its last sample arrives and the
results equal offline :meth:`EdgeModel.classify` on the whole recording (to float tolerance) for any chunking.

Sample rate: a session runs at the model's rate (``model.sample_rate``); pushing another rate raises AudioError.
A live device opens its input at that rate; a file at another rate is resampled whole first (as ``classify_file``
and the ``stream`` CLI do), because block-wise ``resample_poly`` is not exact at block edges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import numpy as np

from acula_edge.audio import to_mono_float
from acula_edge.errors import AudioError, ConfigError
from acula_edge.features import LogMelStream, normalise_window
from acula_edge.runtime.aggregation import DecisionConfig
from acula_edge.runtime.results import ClassificationResult, RecordingUpdate, WindowEvent

if TYPE_CHECKING:  # pragma: no cover
    from acula_edge.runtime.model import EdgeModel

Event = Union[WindowEvent, RecordingUpdate]


class StreamSession:
    """One recording streamed through a shared model: ``push`` chunks, ``finish`` for the summary, ``reset``.

    Events from :meth:`push` come in pairs, in time order: a :class:`WindowEvent` for each newly complete window,
    followed by the :class:`RecordingUpdate` (running aggregate and debounced decision) after it.
    """

    def __init__(self, model: "EdgeModel", aggregation: str = "mean", ema_alpha: float = 0.3,
                 decision: DecisionConfig | None = None, pad: bool = True, source: str = "<stream>") -> None:
        self.model = model
        self.pad = pad
        self.source = source
        self._acc = model.accumulator(aggregation, ema_alpha, decision)
        m = model
        self._fe = LogMelStream(m.frontend, m.logmel)
        self._ws, self._hs = m.window_samples, m.hop_samples
        self._wf, self._hf = m.frames_per_window, m.frames_per_hop
        # Rolling buffers, preallocated: after each piece (<= one hop) at most one window + two hops are held.
        self._samples = np.zeros(self._ws + 2 * self._hs, dtype=np.float32)
        self._frames = np.zeros((self._wf + 2 * self._hf + 2, m.frontend.n_mels), dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget the current recording; the session can take a new one."""
        self._fe.reset()
        self._acc.reset()
        self._total = 0  # samples pushed (absolute index of the next sample)
        self._s0 = 0  # absolute index of _samples[0]
        self._slen = 0  # valid samples in _samples
        self._f0 = 0  # absolute index of _frames[0]
        self._flen = 0  # valid frames in _frames
        self._next = 0  # index of the next window to score
        self._finished = False

    @property
    def samples_pushed(self) -> int:
        return self._total

    @property
    def windows_done(self) -> int:
        return self._next

    def push(self, samples: np.ndarray, sample_rate: int) -> list[Event]:
        """Append a chunk (int or float PCM, (n,) or (n, channels), any n >= 0) at ``sample_rate`` Hz.

        Returns the events that became ready, oldest first (possibly none).
        """
        if self._finished:
            raise ConfigError("this session was finished; call reset() to start a new recording")
        if int(sample_rate) != self.model.sample_rate:
            raise AudioError(f"{self.source}: streaming runs at the model's rate {self.model.sample_rate} Hz, got "
                             f"{sample_rate} Hz; open the input at {self.model.sample_rate} Hz or resample the "
                             f"whole recording first (model.classify does)")
        x = to_mono_float(samples, self.source)
        if x.shape[0] and not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x))[0])
            raise AudioError(f"{self.source}: sample {self._total + bad} is NaN or Inf; the input is corrupt")
        events: list[Event] = []
        for start in range(0, x.shape[0], self._hs):
            self._feed(x[start:start + self._hs], events)
        return events

    def finish(self) -> ClassificationResult:
        """Flush and return the recording summary (equal to offline ``classify`` of everything pushed).

        A recording shorter than one window is zero-padded to one window when the session has ``pad=True``.
        """
        if self._finished:
            raise ConfigError("this session was already finished; call reset() to start a new recording")
        if self._total == 0:
            raise AudioError(f"{self.source}: no samples were pushed; nothing to classify")
        duration = self._total / self.model.sample_rate
        if self._next == 0:
            if not self.pad:
                raise AudioError(f"{self.source}: the recording has {self._total} samples but one window needs "
                                 f"{self._ws}; use a longer recording or pad=True")
            self._feed(np.zeros(self._ws - self._total, dtype=np.float32), [])
        self._finished = True
        return self._acc.result(duration_s=duration, source=self.source)

    # -- internals ------------------------------------------------------------------------------------------------

    def _feed(self, piece: np.ndarray, events: list[Event]) -> None:
        """Append at most one hop of samples, compute its new frames, score every window now complete."""
        n = piece.shape[0]
        # Samples before _s0 belong to no window (only when hop > window); skip them.
        skip = min(max(self._s0 - self._total, 0), n)
        keep = piece[skip:]
        self._samples[self._slen:self._slen + keep.shape[0]] = keep
        self._slen += keep.shape[0]
        self._total += n
        new = self._fe.push(piece)
        fabs = self._fe.frames_emitted - new.shape[0]  # absolute index of new[0]
        fskip = min(max(self._f0 - fabs, 0), new.shape[0])
        self._frames[self._flen:self._flen + new.shape[0] - fskip] = new[fskip:]
        self._flen += new.shape[0] - fskip
        while self._total >= self._next * self._hs + self._ws:
            self._emit(events)

    def _emit(self, events: list[Event]) -> None:
        k = self._next
        s = k * self._hs - self._s0
        f = k * self._hf - self._f0
        window = normalise_window(self._frames[f:f + self._wf], self.model.frontend)
        event = self.model.score_window(k, window, self._samples[s:s + self._ws])
        events.append(event)
        events.append(self._acc.add(event))
        self._next = k + 1
        # Drop what the next window no longer needs.
        sdrop = min(self._next * self._hs - self._s0, self._slen)
        self._samples[:self._slen - sdrop] = self._samples[sdrop:self._slen]
        self._slen -= sdrop
        fdrop = min(self._next * self._hf - self._f0, self._flen)
        self._frames[:self._flen - fdrop] = self._frames[fdrop:self._flen]
        self._flen -= fdrop
        # Buffers now start at the next window (later samples/frames before it, if any, are skipped on arrival).
        self._s0 = self._next * self._hs
        self._f0 = self._next * self._hf
