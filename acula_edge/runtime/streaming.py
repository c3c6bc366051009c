"""Streaming inference: a per-recording :class:`StreamSession` on a shared, loaded :class:`EdgeModel`.

The session holds all state (the exported graph is stateless): the incremental front-end
(:class:`~acula_edge.features.LogMelStream`, which computes only new STFT frames), a rolling buffer of log-mel
frames and one of samples (about one window plus one hop each, preallocated), and the recording accumulator.
``push`` accepts chunks of any size; each window is scored as soon as its last sample arrives and the results equal
offline :meth:`EdgeModel.classify` on the whole recording (to float tolerance) for any chunking.

Cost: a push only copies samples; when a window becomes due, the front-end computes the frames of the samples
that arrived since the previous window (one hop's worth), once. So the front-end cost per model hop is
proportional to the hop, not the window, and does not grow when a device delivers tiny chunks (the per-call
overhead of the front-end is paid once per hop, not once per push).

Sample rate: one session has one input rate, fixed by its first push. Input at another rate than the model's is
resampled on the fly by :class:`~acula_edge.runtime.resampling.StreamResampler`, which gives the same samples as
the offline ``resample_poly`` of the whole recording (to float rounding), so streamed and offline results still
agree for any chunking.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Protocol, Union

import numpy as np

from acula_edge.audio import check_sample_rate, to_mono_float
from acula_edge.errors import AudioError, ConfigError
from acula_edge.features import LogMel, LogMelStream, normalise_window
from acula_edge.frontend import FrontendConfig
from acula_edge.runtime.aggregation import DecisionConfig, RecordingAccumulator
from acula_edge.runtime.quality import BlockQuality, WindowBandPower
from acula_edge.runtime.resampling import StreamResampler
from acula_edge.runtime.site_shift import FeatureAccumulator, SiteDescription
from acula_edge.runtime.results import ClassificationResult, RecordingUpdate, WindowEvent, WindowQuality

Event = Union[WindowEvent, RecordingUpdate]
FRAME_ROOM_HOPS = 6  # hops of frames the session's frame buffer holds beyond what the next window needs

# What a hop's time is spent on, as time_stages() reports it: the incremental log-mel and the window assembly; the
# window's quality checks (per-block level statistics, the frames' band power); the model on the window
# (EdgeModel.run_window: quantize, invoke, dequantize, softmax, checks); the running recording result.
STAGES = ("frontend", "quality", "model", "aggregate")


class WindowModel(Protocol):
    """What a session needs of its model (:class:`~acula_edge.runtime.model.EdgeModel` provides it); named here so
    this module does not import the model module, which imports this one."""

    frontend: FrontendConfig
    logmel: LogMel
    meter: BlockQuality
    sample_rate: int
    window_samples: int
    hop_samples: int
    frames_per_window: int
    frames_per_hop: int
    site: SiteDescription | None  # the bundle's training audio, for the site-shift warning

    def accumulator(self, aggregation: str, ema_alpha: float, decision: DecisionConfig | None,
                    keep_windows: bool) -> RecordingAccumulator: ...

    def score_window(self, index: int, window: np.ndarray, quality: WindowQuality) -> WindowEvent: ...

    def with_site_shift(self, result: ClassificationResult, features: np.ndarray | None) -> ClassificationResult: ...


class StreamSession:
    """One recording streamed through a shared model: ``push`` chunks, ``finish`` for the summary, ``reset``.

    Events from :meth:`push` come in pairs, in time order: a :class:`WindowEvent` for each newly complete window,
    followed by the :class:`RecordingUpdate` (running aggregate and debounced decision) after it.

    A session is one recording, so it is not shared between threads: a call made while another thread is inside
    ``push``, ``finish`` or ``reset`` of the same session raises ConfigError (one session per thread; the model
    itself is shared safely).
    """

    def __init__(self, model: WindowModel, aggregation: str = "mean", ema_alpha: float = 0.3,
                 decision: DecisionConfig | None = None, pad: bool = False, source: str = "<stream>",
                 keep_windows: bool = True) -> None:
        self.model = model
        self.pad = pad
        self.source = source
        self._acc = model.accumulator(aggregation, ema_alpha, decision, keep_windows)
        m = model
        self._fe = LogMelStream(m.frontend, m.logmel)
        self._shift = FeatureAccumulator(m.frontend.n_mels) if m.site is not None else None  # site-shift warning
        self._ws, self._hs = m.window_samples, m.hop_samples
        self._wf, self._hf = m.frames_per_window, m.frames_per_hop
        # Rolling buffers, preallocated: after each piece (<= one hop) at most one window + two hops are held.
        self._pending = np.zeros(self._ws + 2 * self._hs, dtype=np.float32)  # not yet given to the front-end
        # Frames: at most one window + two hops are held; the room beyond lets the valid frames move forward for
        # several hops before they are copied back to the start (one copy every few hops, not every hop).
        self._frames = np.zeros((self._wf + (2 + FRAME_ROOM_HOPS) * self._hf + 2, m.frontend.n_mels),
                                dtype=np.float32)
        self._window = np.zeros((self._wf, m.frontend.n_mels), dtype=np.float32)  # the normalised window
        # the windows' band power (quality: spectral flatness), from per-block sums of the frames' power spectra
        self._band_power = None if m.meter.bands is None else WindowBandPower(m.meter.bands, self._hf, self._wf,
                                                                             m.frontend.n_freqs)
        # Level checks from per-block statistics (BlockQuality): a partial block, and a ring of the last blocks' rows.
        meter = self._meter = m.meter
        self._block = np.zeros(meter.block, dtype=np.float32)
        self._ring = meter.blocks_per_window + meter.blocks_per_hop + 1
        self._rows: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)] * self._ring
        self._busy = threading.Lock()
        # the stages a window goes through (time_stages() wraps them with timers)
        self._normalise = normalise_window
        self._score = m.score_window
        self._aggregate = self._acc.add
        # per-stage time, accumulated while on (time_stages): the latency benchmark's breakdown of a hop
        self.stage_ns: dict[str, int] | None = None
        self.reset()

    def time_stages(self) -> dict[str, int]:
        """Accumulate from now on the time spent per stage, in nanoseconds, into the returned dict (the caller may
        zero it between hops), per :data:`STAGES`, in wall time and in CPU time of the process ("..._cpu"). A second
        call zeroes and returns the same dict."""
        if self.stage_ns is not None:  # the stages are timed already
            for name in self.stage_ns:
                self.stage_ns[name] = 0
            return self.stage_ns
        timing = self.stage_ns = {f"{stage}{clock}": 0 for stage in STAGES for clock in ("", "_cpu")}

        def timed(stage: str, fn):
            def run(*args):
                t0, c0 = time.perf_counter_ns(), time.process_time_ns()
                try:
                    return fn(*args)
                finally:
                    timing[stage] += time.perf_counter_ns() - t0
                    timing[stage + "_cpu"] += time.process_time_ns() - c0
            return run

        # the session calls its stages through these attributes; untimed, they are the plain methods (no wrapper)
        self._quality_blocks = timed("quality", self._quality_blocks)
        self._window_quality = timed("quality", self._window_quality)
        self._frontend = timed("frontend", self._frontend)
        self._normalise = timed("frontend", self._normalise)
        self._score = timed("model", self._score)
        self._aggregate = timed("aggregate", self._aggregate)
        return timing

    def _guarded(self, what: str, call, *args):
        """``call(*args)`` holding the session's guard; a second thread gets a clear error, not corrupt state. (A
        plain lock, not a context manager: this runs on every push, and a generator-based one cost a few µs.)"""
        if not self._busy.acquire(blocking=False):
            raise ConfigError(f"{self.source}: StreamSession.{what}() was called while another thread was inside "
                              f"this session; a session holds one recording's state: give each thread its own "
                              f"session (model.stream()) or serialise the calls")
        try:
            return call(*args)
        finally:
            self._busy.release()

    def reset(self) -> None:
        """Forget the current recording; the session can take a new one."""
        self._guarded("reset", self._reset)

    def _reset(self) -> None:
        self._fe.reset()
        self._acc.reset()
        if self._shift is not None:
            self._shift.reset()
        if self._band_power is not None:
            self._band_power.reset()
        self._total = 0  # samples pushed (absolute index of the next sample)
        self._blen = 0  # samples in the partial quality block
        self._nblocks = 0  # quality blocks completed (absolute index of the next one)
        self._plen = 0  # valid samples in _pending
        self._fs = 0  # where the valid frames start in _frames
        self._f0 = 0  # absolute index of _frames[_fs]
        self._flen = 0  # valid frames in _frames, from _fs
        self._shifted = 0  # frames before this row of _frames are counted in the site-shift statistics
        self._next = 0  # index of the next window to score
        self._finished = False
        self._rate: int | None = None  # input rate, fixed by the first push
        self._resampler: StreamResampler | None = None
        self._n_in = 0  # input samples received (at the input rate)
        self.tail_events: list[Event] = []  # events that became ready only in finish() (resampler tail, padding)

    @property
    def samples_pushed(self) -> int:
        """Input samples received so far, at the input rate."""
        return self._n_in

    @property
    def windows_done(self) -> int:
        return self._next

    def push(self, samples: np.ndarray, sample_rate: int) -> list[Event]:
        """Append a chunk (int or float PCM, (n,) or (n, channels <= 64), any n >= 0) at ``sample_rate`` Hz (a whole
        number; the same for every chunk of a recording).

        Returns the events that became ready, oldest first (possibly none).
        """
        return self._guarded("push", self._push, samples, sample_rate)

    def _push(self, samples: np.ndarray, sample_rate: int) -> list[Event]:
        if self._finished:
            raise ConfigError("this session was finished; call reset() to start a new recording")
        if type(sample_rate) is int and sample_rate == self._rate:  # the rate of every earlier chunk: checked then
            rate = sample_rate
        else:
            rate = check_sample_rate(sample_rate, self.source)  # AudioError for 0, None, "2000", 2000.5...
        if self._rate is None:
            self._rate = rate
            if rate != self.model.sample_rate:
                self._resampler = StreamResampler(rate, self.model.sample_rate)
        elif rate != self._rate:
            raise AudioError(f"{self.source}: this session's input is at {self._rate} Hz, got a chunk at {rate} Hz; "
                             f"one recording has one rate (reset() to start another)")
        if (type(samples) is np.ndarray and samples.dtype == np.float32 and samples.ndim == 1
                and samples.flags.c_contiguous):
            x = samples  # the common case (mono float32), already what to_mono_float would give
        else:
            x = to_mono_float(samples, self.source)
        # One dot product finds a NaN or Inf (it makes x.x non-finite); the search runs only then, and lets through
        # finite samples so large that their squares overflow (the front-end reports those). np.vdot: numpy's dot
        # products that raise no overflow warning.
        sq = float(np.vdot(x, x))
        if not math.isfinite(sq):
            bad = np.flatnonzero(~np.isfinite(x))
            if bad.size:
                raise AudioError(f"{self.source}: sample {self._n_in + int(bad[0])} is NaN or Inf; the input is "
                                 f"corrupt")
        self._n_in += x.shape[0]
        if self._resampler is not None:
            x = self._resampler.push(x)
        events: list[Event] = []
        if self._resampler is None and 0 < x.shape[0] <= self._hs:  # one piece, as it came: its x.x is known
            self._feed(x, events, sq)
            return events
        for start in range(0, x.shape[0], self._hs):
            self._feed(x[start:start + self._hs], events)
        return events

    def finish(self) -> ClassificationResult:
        """Flush and return the recording summary (equal to offline ``classify`` of everything pushed).

        A recording shorter than one window is refused as too short (AudioError), unless the session has
        ``pad=True``: then it is zero-padded to one window.
        Windows completed only now (the resampler's last samples, or the padding) are in the summary and, as
        events, in :attr:`tail_events`.
        """
        return self._guarded("finish", self._finish)

    def _finish(self) -> ClassificationResult:
        if self._finished:
            raise ConfigError("this session was already finished; call reset() to start a new recording")
        if self._n_in == 0:
            raise AudioError(f"{self.source}: no samples were pushed; nothing to classify")
        duration = self._n_in / self._rate
        tail: list[Event] = []
        if self._resampler is not None:
            x = self._resampler.flush()
            for start in range(0, x.shape[0], self._hs):
                self._feed(x[start:start + self._hs], tail)
        if self._next == 0:
            if not self.pad:
                raise AudioError(f"{self.source}: too short: the recording has {self._total} samples at "
                                 f"{self.model.sample_rate} Hz but one window needs {self._ws}; use a longer "
                                 f"recording, or accept zero-padding with pad=True / --pad")
            zeros = np.zeros(self._ws - self._total, dtype=np.float32)
            for start in range(0, zeros.shape[0], self._hs):
                self._feed(zeros[start:start + self._hs], tail)
        self.tail_events = tail
        self._finished = True
        self._flush_shift()
        if self._shift is not None and self._plen:  # the samples after the last window: their frames count too,
            self._shift.push(self._fe.push(self._pending[:self._plen]))  # as in offline classify, for any chunking
            self._plen = 0
        return self.model.with_site_shift(self._acc.result(duration_s=duration, source=self.source),
                                          None if self._shift is None else self._shift.features())

    # -- internals ------------------------------------------------------------------------------------------------

    def _feed(self, piece: np.ndarray, events: list[Event], sq: float | None = None) -> None:
        """Append at most one hop of samples (``sq``: their sum of squares, np.vdot, when known); score every
        window now complete."""
        n = piece.shape[0]
        self._quality_blocks(piece, sq)
        self._total += n
        if self._plen or self._total < self._next * self._hs + self._ws:
            self._pending[self._plen:self._plen + n] = piece
            self._plen += n
        else:  # the piece alone completes a window (a hop pushed whole): it goes to the front-end as it is
            self._frontend(piece)
            self._emit(events)
        while self._total >= self._next * self._hs + self._ws:
            self._frontend(self._pending[:self._plen])
            self._emit(events)

    def _quality_blocks(self, piece: np.ndarray, sq: float | None = None) -> None:
        """Add ``piece`` to the quality statistics: one stats row per completed block (``sq``: the piece's sum of
        squares, when known)."""
        g, i, n = self._block.shape[0], 0, piece.shape[0]
        if self._blen:
            i = min(g - self._blen, n)
            self._block[self._blen:self._blen + i] = piece[:i]
            self._blen += i
            if self._blen < g:
                return
            self._store(self._meter.stats(self._block))
            self._blen = 0
        full = (n - i) // g
        if full:
            self._store(self._meter.stats(piece[i:i + full * g], sq if i == 0 and full * g == n else None))
            i += full * g
        if i < n:
            self._block[:n - i] = piece[i:]
        self._blen = n - i

    def _store(self, rows: list[tuple[float, float, float]]) -> None:
        for row in rows:
            self._rows[self._nblocks % self._ring] = row
            self._nblocks += 1

    def _frontend(self, samples: np.ndarray) -> None:
        """Run the incremental front-end on ``samples`` (the pending ones, or a piece that was never pending); keep
        the frames the next windows need."""
        if not samples.shape[0]:
            return
        if self._fs + self._flen + self._fe.frames_for(samples.shape[0]) > self._frames.shape[0]:
            # out of room: the valid frames back to the start
            self._flush_shift()
            self._frames[:self._flen] = self._frames[self._fs:self._fs + self._flen]
            self._fs = 0
            self._shifted = self._flen
        end = self._fs + self._flen
        first = self._fe.frames_emitted
        # the front-end writes the new frames straight into the buffer, after the valid ones
        new, power = self._fe.push_with_power(samples, self._frames[end:])
        if self._band_power is not None and power is not None:
            self._band_power.add(first, power, self._next)
        self._plen = 0
        # Frames before the next window's first (a hop longer than the window) are dropped at once; being in the
        # buffer, they still count in the site-shift statistics (_flush_shift). Only possible with no valid frame.
        fskip = min(max(self._f0 - (self._fe.frames_emitted - new.shape[0]), 0), new.shape[0])
        self._fs += fskip
        self._flen += new.shape[0] - fskip

    def _flush_shift(self) -> None:
        """Add the stored frames not yet counted to the site-shift statistics. Frames stay in the buffer until it
        runs out of room, so they are counted then, several hops at a time (the statistics are sums: the order
        does not matter), and at the end of the recording."""
        end = self._fs + self._flen
        if self._shift is not None and end > self._shifted:
            self._shift.push(self._frames[self._shifted:end])
        self._shifted = end

    def _window_quality(self, k: int) -> WindowQuality:
        """Quality of window ``k`` from its blocks' level statistics and its frames' band power."""
        meter, ring = self._meter, self._ring
        start, end = k * meter.blocks_per_hop % ring, k * meter.blocks_per_hop % ring + meter.blocks_per_window
        rows = self._rows[start:end] if end <= ring else self._rows[start:] + self._rows[:end - ring]
        return meter.quality(rows, None if self._band_power is None else self._band_power.window(k))

    def _emit(self, events: list[Event]) -> None:
        k = self._next
        f = self._fs + k * self._hf - self._f0
        window = self._normalise(self._frames[f:f + self._wf], self.model.frontend, self._window)
        event = self._score(k, window, self._window_quality(k))
        events.append(event)
        events.append(self._aggregate(event))
        self._next = k + 1
        # Drop the frames the next window no longer needs.
        fdrop = min(self._next * self._hf - self._f0, self._flen)
        self._fs += fdrop
        self._flen -= fdrop
        # The valid frames now start at the next window (later frames before it, if any, are skipped on arrival).
        self._f0 = self._next * self._hf
