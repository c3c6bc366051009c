"""Reading and checking audio: files via soundfile, mono mix-down, polyphase resampling, validation.

Every problem is an :class:`~acula_edge.errors.AudioError` naming the file (or "<buffer>") and what to do.
"""

from __future__ import annotations

import os
import stat
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np

from acula_edge.errors import AudioError

# Largest input rate accepted; higher is almost certainly a wrong header, and resampling it would be slow.
MAX_SAMPLE_RATE = 768_000
MIN_SAMPLE_RATE = 500
# Most channels accepted in one (samples, channels) buffer: more is almost surely a channel-first array, whose
# transpose would be read as thousands of channels of a recording a few samples long.
MAX_CHANNELS = 64


def to_mono_float(samples: np.ndarray, source: str = "<buffer>") -> np.ndarray:
    """Float32 mono from int or float PCM of shape (n,) or (n, channels); ints are scaled to [-1, 1)."""
    x = np.asarray(samples)
    if x.ndim not in (1, 2):
        raise AudioError(f"{source}: expected samples shaped (n,) or (n, channels), got {x.shape}")
    if x.ndim == 2 and x.shape[1] > MAX_CHANNELS:
        raise AudioError(f"{source}: samples shaped {x.shape} would be {x.shape[1]} channels of {x.shape[0]} "
                         f"sample(s); give (samples, channels) with at most {MAX_CHANNELS} channels (transpose a "
                         f"channel-first array: x.T)")
    if x.dtype.kind in "iu":
        x = x.astype(np.float64) / _int_scale(x.dtype)
    elif x.dtype.kind != "f":
        raise AudioError(f"{source}: unsupported sample dtype {x.dtype}; give int or float PCM")
    if x.ndim == 2:
        x = x.mean(axis=1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _int_scale(dtype: np.dtype) -> float:
    info = np.iinfo(dtype)
    if info.min == 0:  # unsigned PCM (8-bit wav): centre first is the caller's job; scale by half-range
        return float(info.max + 1) / 2.0
    return float(-info.min)


def resample(samples: np.ndarray, orig_rate: int, target_rate: int, source: str = "<buffer>") -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly) from ``orig_rate`` to ``target_rate`` Hz; float32."""
    check_sample_rate(orig_rate, source)
    if orig_rate == target_rate:
        return np.asarray(samples, dtype=np.float32)
    from scipy.signal import resample_poly

    ratio = Fraction(int(target_rate), int(orig_rate))
    out = resample_poly(np.asarray(samples, dtype=np.float64), ratio.numerator, ratio.denominator)
    return out.astype(np.float32)


def check_sample_rate(rate: object, source: str = "<buffer>") -> int:
    """``rate`` as an int after checking it is a whole number of Hz in the supported range (AudioError otherwise,
    also for None, strings and booleans)."""
    ok = isinstance(rate, (int, float, np.integer, np.floating)) and not isinstance(rate, (bool, np.bool_))
    if not ok or not np.isfinite(rate) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE or int(rate) != rate:
        raise AudioError(f"{source}: sample rate {rate!r} Hz is outside the supported {MIN_SAMPLE_RATE}-"
                         f"{MAX_SAMPLE_RATE} Hz integer range; check the file header or pass the right --sample-rate")
    return int(rate)


def check_samples(x: np.ndarray, source: str = "<buffer>", min_samples: int = 1) -> None:
    """Raise AudioError for empty or non-finite audio, or audio shorter than ``min_samples``."""
    if x.shape[0] == 0:
        raise AudioError(f"{source}: the recording has no samples (zero length)")
    bad = ~np.isfinite(x)
    if bad.any():
        raise AudioError(f"{source}: {int(bad.sum())} samples are NaN or Inf (first at sample "
                         f"{int(np.flatnonzero(bad)[0])}); the recording is corrupt")
    if x.shape[0] < min_samples:
        raise AudioError(f"{source}: too short: the recording has {x.shape[0]} samples but one analysis window "
                         f"needs {min_samples}; use a longer recording, or accept zero-padding with pad=True / --pad")


def check_audio_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path after checking it exists, is a file and is not empty (AudioError otherwise)."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such file")
    if p.is_dir():
        raise AudioError(f"{p}: is a folder, expected an audio file")
    mode = p.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file (a device or socket)"
        raise AudioError(f"{p}: is {kind}, which cannot be read as an audio file; to stream live audio pipe raw "
                         f"PCM into 'acula-edge stream BUNDLE -'")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: the file is empty (0 bytes)")
    check_wav_length(p)
    return p


def check_wav_length(path: Path) -> None:
    """For a RIFF/WAVE file, raise AudioError when the header's data chunk promises more bytes than the file holds.

    libsndfile sizes a cut WAV from the file and reads what is there, so a recording cut in transfer (or a header
    claiming 2^31 frames over 100 bytes) would otherwise be classified silently as a shorter one. Sizes 0 and
    0xFFFFFFFF are the "length unknown" placeholders of streaming writers and are accepted.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not a plain WAV (FLAC, OGG, RF64...): its decoder checks its own framing
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                available = size - pos - 8
                if length not in (0, 0xFFFFFFFF) and length > available:
                    raise AudioError(f"{path}: truncated: the WAV header promises {length} bytes of audio but the "
                                     f"file holds {available}; the recording was cut (re-copy or re-record it)")
                return
            pos += 8 + length + (length & 1)  # chunks are padded to an even length


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a wav/flac/ogg file as float32 mono at its own rate; returns (samples, sample_rate)."""
    import soundfile as sf

    p = check_audio_file(path)
    try:
        with sf.SoundFile(str(p)) as f:
            rate = f.samplerate
            frames = f.frames
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{p}: cannot decode as audio ({e}); supported: WAV, FLAC, OGG/Vorbis (what libsndfile "
                         f"reads)") from e
    if data.shape[0] < frames:
        raise AudioError(f"{p}: truncated: the header promises {frames} samples but only {data.shape[0]} could be "
                         f"read")
    return to_mono_float(data, str(p)), int(rate)


def load_audio(path: str | os.PathLike, sample_rate: int, min_samples: int = 1, pad: bool = False) -> np.ndarray:
    """Read ``path``, mix to mono, resample to ``sample_rate`` Hz and check it; float32 samples.

    ``min_samples`` is the shortest usable length (one analysis window); shorter recordings raise AudioError unless
    ``pad`` is true, in which case they are zero-padded at the end.
    """
    x, rate = read_audio(path)
    check_sample_rate(rate, str(path))
    check_samples(x, str(path), min_samples=1)
    x = resample(x, rate, sample_rate, str(path))
    return ensure_length(x, min_samples, pad, str(path))


def ensure_length(x: np.ndarray, min_samples: int, pad: bool, source: str) -> np.ndarray:
    if x.shape[0] >= min_samples:
        return x
    if not pad:
        check_samples(x, source, min_samples=min_samples)
    out = np.zeros(min_samples, dtype=np.float32)
    out[:x.shape[0]] = x
    return out


def prepare_samples(samples: np.ndarray, rate: int, sample_rate: int, min_samples: int = 1,
                    pad: bool = False, source: str = "<buffer>") -> np.ndarray:
    """The in-memory twin of :func:`load_audio`: mono, checked, resampled, length-checked."""
    x = to_mono_float(samples, source)
    check_sample_rate(rate, source)
    check_samples(x, source, min_samples=1)
    x = resample(x, rate, sample_rate, source)
    return ensure_length(x, min_samples, pad, source)
