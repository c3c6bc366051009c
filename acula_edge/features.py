"""Numpy log-mel front-end: the device reference, offline and streaming.

``LogMel(cfg)(samples)`` computes the whole signal; ``LogMelStream`` accepts chunks of any size and returns exactly
the frames the offline computation would (same framing, same float arithmetic per frame). The torch twin used in
training lives in ``acula_edge.torch_frontend`` and is built from the same window and filterbank.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from acula_edge.errors import ConfigError
from acula_edge.frontend import WINDOW_NORMALISATIONS, FrontendConfig, analysis_window, mel_filterbank

# Frames per FFT batch when a whole signal is computed at once: the float64 work arrays cost ~40x the audio, so an
# hour at 2 kHz in one batch would need ~1 GB; batches keep it to a few MB (each frame's arithmetic is unchanged).
FRAMES_PER_BATCH = 2048
# 10 log10(x) = ln(x) * 10 / ln(10): the front-end's natural-log power in decibels.
DB_PER_NEPER = 10.0 / np.log(10.0)


class LogMel:
    """Log-mel spectrogram of float audio at ``cfg.sample_rate``. Output shape (frames, n_mels), float32.

    Normalisation "global" is applied per frame here; the window normalisations depend on the model window and are
    applied by :func:`normalise_window` when windows are cut.
    """

    def __init__(self, cfg: FrontendConfig) -> None:
        self.cfg = cfg
        left = (cfg.n_fft - cfg.win_length) // 2
        # float64, see frames_to_logmel. Only the win_length non-zero taps are kept: zero-padding at the end instead
        # of centred is a circular shift of the FFT input, which leaves the power spectrum unchanged.
        self.window = analysis_window(cfg)[left:left + cfg.win_length].copy()
        # The filterbank as a dense (n_freqs, n_mels) matrix: one matrix product per batch of frames. For a stream's
        # hop (50 frames x 129 bins x 32 bands) it is a third of the cost of gathering each band's bins and summing
        # them with reduceat, and far below OpenBLAS's threading threshold.
        self._bank = mel_filterbank(cfg) if cfg.representation == "logmel" else np.zeros((cfg.n_freqs, 0))

    def frames_to_logmel(self, frames: np.ndarray) -> np.ndarray:
        """Log-mel of framed audio, shape (n, win_length) -> (n, n_mels). The waveform representation returns the
        frames themselves (float32)."""
        return self.frames_with_bands(frames, None)[0]

    def frames_with_bands(self, frames: np.ndarray, bands: SpectrumBands | None) -> tuple[np.ndarray,
                                                                                         np.ndarray | None]:
        """:meth:`frames_to_logmel` and, from the same power spectra, each frame's power pooled into ``bands``
        (n, bands.count) float64 (None without ``bands``, and for the waveform representation, which computes no
        spectrum). The quality checks take a window's spectral flatness from these, so no FFT of their own is run."""
        power = self.power(frames)
        pooled = None if bands is None or power is None else bands.pool(power)
        return self.logmel_of(frames, power), pooled

    def frames_with_power(self, frames: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray,
                                                                                            np.ndarray | None]:
        """:meth:`frames_to_logmel` (written into ``out``, float32 of at least n rows, when given) and the frames'
        power spectra (n, n_freqs) float64, a new array (None for the waveform representation). A stream's quality
        checks reduce these over frames before pooling them into bands."""
        power = self.power(frames)
        if power is not None and self.cfg.power == 1.0:  # the log-mel takes the magnitude: keep the power intact
            return self.logmel_of(frames, np.sqrt(power), out, magnitude=True), power
        return self.logmel_of(frames, power, out), power

    def power(self, frames: np.ndarray) -> np.ndarray | None:
        """Power spectra (n, n_freqs) float64 of framed audio (n, win_length); None for the waveform
        representation."""
        cfg = self.cfg
        if cfg.representation == "waveform":
            return None
        if cfg.remove_dc or cfg.preemphasis:
            frames = frames.astype(np.float64)
            if cfg.remove_dc:
                frames -= frames.mean(axis=1, keepdims=True)
            if cfg.preemphasis:
                frames[:, 1:] = frames[:, 1:] - cfg.preemphasis * frames[:, :-1]
                frames[:, 0] *= 1.0 - cfg.preemphasis
        # The FFT runs in float64: float32 rounding noise (~1e-7 of a frame's energy) would otherwise dominate
        # quiet bands near the log floor and make the numpy, torch and C front-ends disagree there. The windowed
        # frames are written into a zero-padded n_fft-wide array: rfft(n=n_fft) would pad them with a copy of its
        # own (the same values; ~12 % of a hop's front-end for the heart preset).
        padded = np.zeros((frames.shape[0], cfg.n_fft))
        np.multiply(frames, self.window, out=padded[:, :cfg.win_length])
        # |X|^2 = re^2 + im^2: squared in place on the spectrum's float view, then the pairs added (two passes
        # instead of three; the same values)
        parts = np.fft.rfft(padded, axis=1).view(np.float64)
        np.square(parts, out=parts)
        return parts[:, 0::2] + parts[:, 1::2]

    def logmel_of(self, frames: np.ndarray, power: np.ndarray | None, out: np.ndarray | None = None,
                  magnitude: bool = False) -> np.ndarray:
        """The finished float32 frames (n, n_mels) of ``frames`` from their :meth:`power` (written into ``out`` when
        given). ``power`` may be overwritten (the magnitude is taken in place for cfg.power == 1.0, unless
        ``magnitude``: it is one already)."""
        cfg, n = self.cfg, frames.shape[0]
        if power is None:  # the waveform representation: the frames themselves
            if out is None:
                return np.array(frames, dtype=np.float32)
            out[:n] = frames
            return out[:n]
        if cfg.power == 1.0 and not magnitude:
            np.sqrt(power, out=power)
        mel = power @ self._bank
        if cfg.log_offset:
            mel += cfg.log_offset
        np.maximum(mel, cfg.log_floor, out=mel)
        # the log in float64, rounded to float32 as it is written
        dest = np.log(mel, out=np.empty(mel.shape, dtype=np.float32) if out is None else out[:n])
        if cfg.normalisation == "global" and (cfg.norm_mean, cfg.norm_std) != (0.0, 1.0):  # (0, 1): identity
            dest -= np.float32(cfg.norm_mean)
            dest /= np.float32(cfg.norm_std)
        logmel = self.correct(dest)
        if logmel is not dest:
            dest[...] = logmel
        return dest

    def correct(self, logmel: np.ndarray) -> np.ndarray:
        """A correction applied to the finished log-mel frames (none here; see site_shift.CorrectedLogMel)."""
        return logmel

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        return self.with_bands(samples, None)[0]

    def with_bands(self, samples: np.ndarray, bands: SpectrumBands | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Log-mel frames of ``samples`` and (``bands`` given) each frame's pooled power, as
        :meth:`frames_with_bands`."""
        x = np.ascontiguousarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected mono samples of shape (n,), got {x.shape}")
        n = self.cfg.num_frames(x.shape[0])
        if self.cfg.center and n:
            x = np.pad(x, self.cfg.n_fft // 2)
        if n == 0:
            empty = None if bands is None or self.cfg.representation == "waveform" else np.zeros((0, bands.count))
            return np.zeros((0, self.cfg.n_mels), dtype=np.float32), empty
        frames = np.lib.stride_tricks.as_strided(
            x, shape=(n, self.cfg.win_length), strides=(x.strides[0] * self.cfg.hop_length, x.strides[0]),
            writeable=False)
        if n <= FRAMES_PER_BATCH:
            return self.frames_with_bands(frames, bands)
        out = np.empty((n, self.cfg.n_mels), dtype=np.float32)
        pooled = None if bands is None or self.cfg.representation == "waveform" else np.empty((n, bands.count))
        for start in range(0, n, FRAMES_PER_BATCH):
            stop = start + FRAMES_PER_BATCH
            out[start:stop], part = self.frames_with_bands(frames[start:stop], bands)
            if pooled is not None:
                pooled[start:stop] = part
        return out, pooled


@dataclass(frozen=True)
class SpectrumBands:
    """Equal-width bands of a frame's power spectrum (rfft bins ``[lo, lo + count * per_band)``) to pool into."""

    lo: int
    per_band: int
    count: int

    @classmethod
    def between(cls, frontend: FrontendConfig, count: int) -> "SpectrumBands | None":
        """``count`` bands of the front-end's FFT bins between fmin and fmax; None when there are fewer bins than
        bands (or no spectrum: the waveform representation)."""
        if frontend.representation == "waveform" or count < 1:
            return None
        hz_per_bin = frontend.sample_rate / frontend.n_fft
        lo, hi = int(math.ceil(frontend.fmin / hz_per_bin)), min(int(frontend.fmax / hz_per_bin), frontend.n_freqs)
        per_band = max(hi - lo, 0) // count
        return cls(lo, per_band, count) if per_band > 0 else None

    @functools.cached_property
    def pooling(self) -> np.ndarray:
        """(count * per_band, count) float64: 1 where a bin belongs to a band (each bin in one band)."""
        return np.kron(np.eye(self.count), np.ones((self.per_band, 1)))

    def pool(self, power: np.ndarray) -> np.ndarray:
        """(n, n_fft // 2 + 1) power -> (n, count) float64: the summed power of each band.

        One matrix product with the 0/1 band matrix: for 50 frames it cost a fifth of a reshape and a sum over the
        bins of each band (a reduction over a short inner axis). A whole recording's batch of 2,048 frames may run
        threaded: 0.40 ms instead of 0.25 ms measured with both cores busy, per 41 s of heart audio. (A stream sums
        its frames' spectra before pooling them: runtime.quality.WindowBandPower.)"""
        return power[:, self.lo:self.lo + self.per_band * self.count] @ self.pooling


def normalise_window(window: np.ndarray, cfg: FrontendConfig, out: np.ndarray | None = None) -> np.ndarray:
    """Apply window-level normalisation (cfg.normalisation in WINDOW_NORMALISATIONS); identity otherwise.

    ``window`` has shape (..., frames, n_mels), float32. "per_window": zero mean, unit std over both axes.
    "per_window_band": each mel band to zero mean over the window's frames, then unit std over both axes.
    "per_window_db_minmax": natural-log mel power -> dB, clipped ``top_db`` below the window's peak, min-max scaled
    to [0, 1] (a constant window gives zeros, as librosa's power_to_db(ref=max) does before OPERA's min-max).
    ``out``: a float32 array of the window's shape to write the result into (a stream reuses one per session).
    """
    if cfg.normalisation not in WINDOW_NORMALISATIONS:
        return window
    if cfg.normalisation == "per_window_db_minmax":
        db = np.asarray(window, dtype=np.float64) * DB_PER_NEPER
        peak = db.max(axis=(-2, -1), keepdims=True)
        db = np.maximum(db, peak - cfg.top_db)
        low = db.min(axis=(-2, -1), keepdims=True)
        span = peak - low
        scaled = np.where(span > 0, (db - low) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)
        if out is None:
            return scaled
        out[...] = scaled
        return out
    axes = (-2,) if cfg.normalisation == "per_window_band" else (-2, -1)
    centred = np.subtract(window, window.mean(axis=axes, keepdims=True), out=out, dtype=np.float32)
    std = np.sqrt((centred * centred).mean(axis=(-2, -1), keepdims=True))
    return np.divide(centred, np.maximum(std, 1e-5), out=centred)


class LogMelStream:
    """Incremental log-mel: push chunks of samples, get the newly completed frames.

    Holds only the samples not yet consumed by a frame (< win_length + chunk), so the cost per push is proportional
    to the number of new frames. Frames equal :class:`LogMel` on the concatenated signal to float rounding
    (~1e-6: the mel matrix product rounds differently for different batch sizes).
    """

    def __init__(self, cfg: FrontendConfig, logmel: LogMel | None = None) -> None:
        if cfg.center:
            raise ConfigError("a centred front-end (center=True) computes each window from its own zero-padded "
                              "samples and cannot be streamed; use a device preset (heart, heart-4k, lung, acula)")
        self.cfg = cfg
        self.logmel = logmel or LogMel(cfg)
        self._buf = np.zeros(max(4 * cfg.win_length, 4096), dtype=np.float32)
        self._framed = self._frame_view()
        self._len = 0  # valid samples in _buf
        self.frames_emitted = 0

    def _frame_view(self) -> np.ndarray:
        """Every frame _buf can hold, as a read-only strided view (made once per buffer: building a strided view
        costs more than a hop's worth of the rest of the bookkeeping)."""
        cfg, buf = self.cfg, self._buf
        return np.lib.stride_tricks.as_strided(
            buf, shape=(cfg.num_frames(buf.shape[0]), cfg.win_length),
            strides=(buf.strides[0] * cfg.hop_length, buf.strides[0]), writeable=False)

    def reset(self) -> None:
        self._len = 0
        self.frames_emitted = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append float samples (at cfg.sample_rate); return the new frames, shape (k, n_mels), k >= 0."""
        return self.push_with_power(samples)[0]

    def frames_for(self, n_samples: int) -> int:
        """How many frames a push of ``n_samples`` samples would return."""
        return self.cfg.num_frames(self._len + n_samples)

    def push_with_power(self, samples: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray,
                                                                                           np.ndarray | None]:
        """:meth:`push` (written into ``out`` when given, float32 of at least :meth:`frames_for` rows) and the new
        frames' power spectra (:meth:`LogMel.frames_with_power`; None for the waveform representation)."""
        frames = self._new_frames(samples)
        if frames is None:
            none = None if self.cfg.representation == "waveform" else np.zeros((0, self.cfg.n_freqs))
            return np.zeros((0, self.cfg.n_mels), dtype=np.float32), none
        result = self.logmel.frames_with_power(frames, out)
        self._consume(frames.shape[0])
        return result

    def _new_frames(self, samples: np.ndarray) -> np.ndarray | None:
        """Append ``samples``; the complete frames now held (a view of the buffer), or None when there is none."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        need = self._len + x.shape[0]
        if need > self._buf.shape[0]:
            grown = np.zeros(max(need, 2 * self._buf.shape[0]), dtype=np.float32)
            grown[:self._len] = self._buf[:self._len]
            self._buf = grown
            self._framed = self._frame_view()
        self._buf[self._len:need] = x
        self._len = need
        n = self.cfg.num_frames(self._len)
        return self._framed[:n] if n else None

    def _consume(self, n: int) -> None:
        """Drop the samples that only the ``n`` frames just computed needed."""
        consumed = n * self.cfg.hop_length
        remaining = self._len - consumed
        self._buf[:remaining] = self._buf[consumed:self._len]  # numpy copies overlapping ranges correctly
        self._len = remaining
        self.frames_emitted += n
