"""Stateful polyphase resampling for streams: the same output as ``scipy.signal.resample_poly`` on the whole signal.

``resample_poly(x, up, down)`` (what :func:`acula_edge.audio.resample` uses offline) filters the zero-stuffed
signal with a Kaiser-windowed FIR (``firwin(20 * max(up, down) + 1, 1 / max(up, down), ('kaiser', 5.0)) * up``),
keeps every ``down``-th sample and trims the filter delay; samples outside the signal count as zero. Each output
sample depends on a fixed, finite stretch of input, so it can be computed as soon as that stretch has arrived:
:class:`StreamResampler` does exactly that, and :meth:`StreamResampler.flush` emits the last outputs (which see the
zeros after the end). Chunked output concatenated equals ``resample_poly`` of the concatenated input to float64
rounding (a different summation order), for any chunking.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

_BATCH = 2048  # outputs computed per vectorised step
# Largest (outputs x taps) gather per step: at high input rates (384 kHz -> 2 kHz: 4033 taps) a full batch would
# allocate ~280 MB of temporaries and run 25x slower; the batch shrinks so a step stays within ~2 MB per array.
_MAX_GATHER = 1 << 18


class StreamResampler:
    """Resample a stream from ``orig_rate`` to ``target_rate`` Hz (float64 inside, float32 out)."""

    def __init__(self, orig_rate: int, target_rate: int) -> None:
        from scipy.signal import firwin

        ratio = Fraction(int(target_rate), int(orig_rate))
        self.orig_rate, self.target_rate = int(orig_rate), int(target_rate)
        self.up, self.down = ratio.numerator, ratio.denominator
        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate
        h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        pre_pad = self.down - half_len % self.down
        h = np.concatenate([np.zeros(pre_pad), h])
        self._delay = (half_len + pre_pad) // self.down  # outputs resample_poly trims from the front
        self._k = math.ceil(h.shape[0] / self.up)  # taps per polyphase branch
        table = np.zeros((self.up, self._k))
        for p in range(self.up):
            taps = h[p::self.up]
            table[p, :taps.shape[0]] = taps
        self._table = table  # _table[p, m] multiplies x[i - m] for outputs of phase p
        self._taps = np.arange(self._k)
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros(self._k, dtype=np.float64)  # inputs x[_base:], with zeros standing for x[< 0]
        self._base = -self._k
        self.n_in = 0  # input samples received
        self.n_out = 0  # output samples emitted

    def _ready(self, n_in: int) -> int:
        """Outputs computable from the first ``n_in`` inputs (without the zeros after the end)."""
        return max(0, (n_in * self.up - 1) // self.down - self._delay + 1) if n_in else 0

    def _compute(self, end: int) -> np.ndarray:
        if end <= self.n_out:
            return np.zeros(0, dtype=np.float32)
        parts = []
        batch = max(1, min(_BATCH, _MAX_GATHER // self._k))
        for start in range(self.n_out, end, batch):  # bounded (outputs x taps) temporaries
            j = np.arange(start, min(start + batch, end), dtype=np.int64) + self._delay
            newest = j * self.down // self.up  # index of the newest input each output uses
            phase = j * self.down - newest * self.up
            idx = newest[:, None] - self._taps[None, :] - self._base
            parts.append(np.einsum("ij,ij->i", self._table[phase], self._buf[idx]))
        y = np.concatenate(parts)
        self.n_out = end
        # keep only the inputs later outputs can still use
        oldest_needed = (end + self._delay) * self.down // self.up - (self._k - 1)
        drop = min(max(oldest_needed - self._base, 0), self._buf.shape[0])
        if drop:
            self._buf = self._buf[drop:]
            self._base += drop
        return y.astype(np.float32)

    def push(self, x: np.ndarray) -> np.ndarray:
        """Append input samples; return the output samples that became computable (float32)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.shape[0]:
            self._buf = np.concatenate([self._buf, x])
            self.n_in += x.shape[0]
        return self._compute(self._ready(self.n_in))

    def flush(self) -> np.ndarray:
        """The remaining outputs (up to ceil(n_in * up / down) in all), with zeros after the end of the input."""
        total = -(-self.n_in * self.up // self.down)
        need = (total - 1 + self._delay) * self.down // self.up + 1 - self._base  # buffer length the last needs
        if need > self._buf.shape[0]:
            self._buf = np.concatenate([self._buf, np.zeros(need - self._buf.shape[0])])
        return self._compute(total)
