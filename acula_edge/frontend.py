"""The one definition of the log-mel front-end: its parameters, presets, window and mel filterbank.

Training (torch), export (manifest), the device runtime (numpy) and the C front-end (firmware header) all read a
:class:`FrontendConfig`; nothing else declares a sample rate, an FFT size or a number of mel bins.

Framing convention (chosen so streaming equals offline exactly): no centre padding. Frame ``i`` covers samples
``[i * hop_length, i * hop_length + win_length)``; the ``win_length``-sample window is zero-padded on both sides to
``n_fft`` before the real FFT. A signal of N samples has ``1 + (N - win_length) // hop_length`` frames.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from acula_edge.errors import ConfigError

# "hann"/"hamming" are periodic (DFT-even); "hann_symmetric" is 0.5 - 0.5 cos(2 pi n / (N - 1)) (Kaldi's
# "hanning", the window of transformers' ASTFeatureExtractor).
WINDOWS = ("hann", "hamming", "hann_symmetric")
# "global": (x - norm_mean) / norm_std per frame. "per_window": each model window to zero mean, unit std.
# "per_window_band": each mel band of a window to zero mean (the window's mean spectrum is removed: a fixed
# microphone/stethoscope response is an additive offset per band in log-mel), then the window to unit std.
# "per_window_db_minmax": OPERA's pre_process_audio_mel_t: the window's mel power in dB relative to its peak
# (librosa power_to_db(ref=max)), clipped top_db below the peak, then min-max scaled to [0, 1].
NORMALISATIONS = ("global", "per_window", "per_window_band", "per_window_db_minmax")
WINDOW_NORMALISATIONS = ("per_window", "per_window_band", "per_window_db_minmax")  # on whole model windows
MEL_SCALES = ("htk", "slaney")  # htk: 2595 log10(1 + f / 700); slaney (librosa's default): linear below 1 kHz
MEL_TRIANGLES = ("hz", "mel")  # where each band's triangle is linear: in Hz (librosa) or in mel (Kaldi)
MEL_NORMS = ("area", "none")  # "area": each band scaled to unit area (Slaney); "none": peak weight 1 (Kaldi)
REPRESENTATIONS = ("logmel", "waveform")


@dataclass(frozen=True)
class FrontendConfig:
    """Parameters of the log-mel front-end. Units: Hz for rates and frequencies, samples for lengths."""

    sample_rate: int = 2000  # audio is resampled to this rate before analysis
    n_fft: int = 256  # real-FFT size; win_length samples are zero-padded to it
    win_length: int = 200  # analysis window length in samples
    hop_length: int = 40  # samples between frame starts
    window: str = "hann"  # periodic window shape, one of WINDOWS
    n_mels: int = 32  # mel bands (the model's frequency axis)
    fmin: float = 25.0  # lowest mel band edge, Hz
    fmax: float = 800.0  # highest mel band edge, Hz (<= sample_rate / 2)
    power: float = 2.0  # 2 = power spectrum, 1 = magnitude
    log_floor: float = 1e-8  # mel energies are clamped to at least this before log (~90 dB below full scale)
    log_offset: float = 0.0  # added to mel energies before log (0 = pure log)
    normalisation: str = "global"  # one of NORMALISATIONS (see there)
    norm_mean: float = 0.0  # subtracted from log-mel (global normalisation)
    norm_std: float = 1.0  # log-mel is divided by it (global normalisation)
    # The fields below reproduce other authors' preprocessing for teacher models (presets "opera", "ast" and the
    # front-ends derived from Hugging Face folders). Device presets keep the defaults: the C front-end and the
    # streaming runtime implement only those.
    mel_scale: str = "htk"  # one of MEL_SCALES
    mel_triangles: str = "hz"  # one of MEL_TRIANGLES
    mel_norm: str = "area"  # one of MEL_NORMS
    remove_dc: bool = False  # subtract each frame's mean before pre-emphasis (Kaldi)
    preemphasis: float = 0.0  # per frame: x[n] - preemphasis * x[n - 1], x[0] * (1 - preemphasis) (Kaldi: 0.97)
    center: bool = False  # pad n_fft // 2 zeros at both ends of each model window before framing (librosa's
    # center=True, pad_mode="constant"): a window's frames then come from its own samples only, so it is computed
    # per window, never cut from a recording's frames or streamed
    top_db: float = 80.0  # per_window_db_minmax: values more than this many dB below the window's peak are clipped
    representation: str = "logmel"  # "waveform": no analysis; each frame is hop_length raw samples (n_mels ==
    # win_length == n_fft == hop_length), for models that consume the waveform (wav2vec2, HuBERT)

    def __post_init__(self) -> None:
        problems = []
        if self.sample_rate <= 0:
            problems.append(f"sample_rate must be positive, got {self.sample_rate}")
        if not 0 < self.win_length <= self.n_fft:
            problems.append(f"win_length must be in 1..n_fft ({self.n_fft}), got {self.win_length}")
        if self.hop_length <= 0:
            problems.append(f"hop_length must be positive, got {self.hop_length}")
        if self.window not in WINDOWS:
            problems.append(f"window must be one of {WINDOWS}, got {self.window!r}")
        if self.normalisation not in NORMALISATIONS:
            problems.append(f"normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            problems.append(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, fmax={self.fmax}, "
                            f"sample_rate={self.sample_rate}")
        if self.n_mels <= 0:
            problems.append(f"n_mels must be positive, got {self.n_mels}")
        if self.power not in (1.0, 2.0):
            problems.append(f"power must be 1.0 or 2.0, got {self.power}")
        if self.log_floor <= 0 or self.norm_std <= 0:
            problems.append("log_floor and norm_std must be positive")
        for name, allowed in (("mel_scale", MEL_SCALES), ("mel_triangles", MEL_TRIANGLES), ("mel_norm", MEL_NORMS),
                              ("representation", REPRESENTATIONS)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 <= self.preemphasis < 1.0:
            problems.append(f"preemphasis must be in [0, 1), got {self.preemphasis}")
        if self.top_db <= 0:
            problems.append(f"top_db must be positive, got {self.top_db}")
        if self.center and self.win_length != self.n_fft:
            problems.append(f"center=True needs win_length == n_fft (librosa frames), got {self.win_length} and "
                            f"{self.n_fft}")
        if self.representation == "waveform" and not (self.n_mels == self.win_length == self.n_fft
                                                      == self.hop_length):
            problems.append(f"the waveform representation needs n_mels == win_length == n_fft == hop_length (samples "
                            f"per frame), got {self.n_mels}, {self.win_length}, {self.n_fft}, {self.hop_length}")
        if problems:
            raise ConfigError("invalid front-end config: " + "; ".join(problems))

    @property
    def device_ready(self) -> bool:
        """True when the C front-end and the streaming runtime implement this config (none of the teacher-only
        options: centred frames, waveform frames, Slaney/Kaldi banks, DC removal, pre-emphasis, dB min-max)."""
        teacher_only = (self.center, self.representation != "logmel", self.mel_scale != "htk",
                        self.mel_triangles != "hz", self.mel_norm != "area", self.remove_dc, self.preemphasis != 0.0,
                        self.window == "hann_symmetric", self.normalisation == "per_window_db_minmax")
        return not any(teacher_only)

    @property
    def n_freqs(self) -> int:
        """Number of real-FFT bins."""
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """Frames in a signal of ``num_samples`` samples (0 if shorter than one analysis window; with ``center``
        the signal is first padded by n_fft // 2 samples at both ends)."""
        if self.center and num_samples > 0:
            num_samples += 2 * (self.n_fft // 2)
        if num_samples < self.win_length:
            return 0
        return 1 + (num_samples - self.win_length) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FrontendConfig":
        """Strict (:func:`acula_edge.config.from_dict`): unknown keys and wrong types are refused by name."""
        from acula_edge.config import from_dict

        return from_dict(cls, data, "front-end config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FrontendConfig":
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Windowing:
    """How a recording is cut into model inputs. Units: seconds."""

    window_s: float = 4.0  # length of one model input
    hop_s: float = 1.0  # distance between consecutive window starts

    def window_samples(self, frontend: FrontendConfig) -> int:
        return int(round(self.window_s * frontend.sample_rate))

    def hop_samples(self, frontend: FrontendConfig) -> int:
        return int(round(self.hop_s * frontend.sample_rate))

    def frames_per_window(self, frontend: FrontendConfig) -> int:
        """Log-mel frames in one model input window."""
        return frontend.num_frames(self.window_samples(frontend))

    def frames_per_hop(self, frontend: FrontendConfig) -> int:
        """Frames between window starts; windows start on frame boundaries (checked by :meth:`validate`)."""
        return self.hop_samples(frontend) // frontend.hop_length

    def validate(self, frontend: FrontendConfig) -> None:
        """Raise ConfigError unless windows are whole numbers of samples that start on frame boundaries."""
        win, hop = self.window_samples(frontend), self.hop_samples(frontend)
        if abs(win - self.window_s * frontend.sample_rate) > 1e-6 or abs(hop - self.hop_s * frontend.sample_rate) > 1e-6:
            raise ConfigError(f"window_s={self.window_s} and hop_s={self.hop_s} must be whole numbers of samples "
                              f"at {frontend.sample_rate} Hz")
        if hop <= 0 or hop % frontend.hop_length:
            raise ConfigError(f"hop_s={self.hop_s} s = {hop} samples must be a positive multiple of the front-end "
                              f"hop_length ({frontend.hop_length} samples) so windows share frames")
        if frontend.num_frames(win) < 1:
            raise ConfigError(f"window_s={self.window_s} s is shorter than one analysis window "
                              f"({frontend.win_length} samples)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Windowing":
        return cls(window_s=float(data["window_s"]), hop_s=float(data["hop_s"]))


# Presets. "heart": PCG at 2 kHz (PhysioNet 2016 rate), 100 ms windows every 20 ms, 32 mel bands over 25-800 Hz
# (heart sounds and most murmurs). "heart-4k": the same analysis at 4 kHz (digital stethoscopes often record
# 4 kHz), wider band for high-pitched murmurs. "acula": AcuLa / OPERA-GT: 16 kHz, n_fft 1024, hop 512, 64 mel
# bands over 50-8000 Hz, 8 s clips. "heart-band": "heart" limited to the physiological band of heart sounds,
# 25-400 Hz (less of the device's hiss and high-frequency colouring; loses the highest murmur components).
# "opera": OPERA's own preprocessing (src/util.py pre_process_audio_mel_t with f_max=8000, as its feature extraction
# calls it): librosa's mel power spectrogram (center=True, periodic Hann, Slaney mel scale and area norm) of each
# 8 s window (251 frames), power_to_db(ref=max, amin=1e-10, top_db=80), min-max to [0, 1].
# "ast": transformers' ASTFeatureExtractor defaults (AudioSet AST): Kaldi-style 128-band fbank (25 ms symmetric
# Hann frames every 10 ms, DC removal, pre-emphasis 0.97, triangles in mel space, natural log floored at float32
# eps), normalised with the AudioSet mean and twice its std; 8 s windows (798 frames) every 4 s, which the AST pads
# to its 1024 frames as the extractor pads a short clip.
PRESETS: dict[str, tuple[FrontendConfig, Windowing]] = {
    "heart": (FrontendConfig(), Windowing(window_s=4.0, hop_s=1.0)),
    "heart-band": (FrontendConfig(fmax=400.0), Windowing(window_s=4.0, hop_s=1.0)),
    "heart-4k": (FrontendConfig(sample_rate=4000, n_fft=512, win_length=400, hop_length=80, n_mels=40,
                                fmin=25.0, fmax=1000.0), Windowing(window_s=4.0, hop_s=1.0)),
    "lung": (FrontendConfig(sample_rate=4000, n_fft=512, win_length=400, hop_length=80, n_mels=40,
                            fmin=50.0, fmax=2000.0), Windowing(window_s=4.0, hop_s=1.0)),
    "acula": (FrontendConfig(sample_rate=16000, n_fft=1024, win_length=1024, hop_length=512, n_mels=64,
                             fmin=50.0, fmax=8000.0), Windowing(window_s=8.0, hop_s=4.0)),
    "opera": (FrontendConfig(sample_rate=16000, n_fft=1024, win_length=1024, hop_length=512, n_mels=64,
                             fmin=50.0, fmax=8000.0, log_floor=1e-10, normalisation="per_window_db_minmax",
                             mel_scale="slaney", center=True), Windowing(window_s=8.0, hop_s=4.0)),
    "ast": (FrontendConfig(sample_rate=16000, n_fft=512, win_length=400, hop_length=160, window="hann_symmetric",
                           n_mels=128, fmin=20.0, fmax=8000.0, log_floor=float(np.finfo(np.float32).eps),
                           norm_mean=-4.2677393, norm_std=2 * 4.5689974, mel_triangles="mel", mel_norm="none",
                           remove_dc=True, preemphasis=0.97), Windowing(window_s=8.0, hop_s=4.0)),
}


def preset(name: str) -> tuple[FrontendConfig, Windowing]:
    """Return the (front-end, windowing) preset called ``name``."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown front-end preset {name!r}; choose one of {sorted(PRESETS)}") from None


# Slaney's mel scale (librosa htk=False): linear (3 mel per 200 Hz) below 1 kHz, logarithmic above.
_SLANEY_BREAK_HZ, _SLANEY_BREAK_MEL, _SLANEY_LOGSTEP = 1000.0, 15.0, math.log(6.4) / 27.0


def device_preset_for(windowing: Windowing) -> str | None:
    """Name of the first device-ready preset cutting windows as ``windowing`` does (None if none does): the
    default student front-end for a teacher whose own front-end is teacher-only."""
    return next((name for name, (fe, win) in PRESETS.items() if fe.device_ready and win == windowing), None)


def hz_to_mel(hz: np.ndarray | float, scale: str = "htk") -> np.ndarray:
    """Frequency in Hz -> mel on ``scale`` (MEL_SCALES), float64."""
    f = np.asarray(hz, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    mel = 3.0 * f / 200.0
    log_part = _SLANEY_BREAK_MEL + np.log(np.maximum(f, 1e-300) / _SLANEY_BREAK_HZ) / _SLANEY_LOGSTEP
    return np.where(f >= _SLANEY_BREAK_HZ, log_part, mel)


def mel_to_hz(mel: np.ndarray | float, scale: str = "htk") -> np.ndarray:
    """Mel on ``scale`` -> Hz, float64."""
    m = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    log_part = _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOGSTEP * (m - _SLANEY_BREAK_MEL))
    return np.where(m >= _SLANEY_BREAK_MEL, log_part, 200.0 * m / 3.0)


def analysis_window(cfg: FrontendConfig) -> np.ndarray:
    """The periodic window of ``win_length`` samples, zero-padded (centred) to ``n_fft``; float64."""
    n = np.arange(cfg.win_length, dtype=np.float64)
    if cfg.window == "hann_symmetric":
        w = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / max(cfg.win_length - 1, 1))
    elif cfg.window == "hann":
        w = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / cfg.win_length)
    else:  # hamming
        w = 0.54 - 0.46 * np.cos(2.0 * math.pi * n / cfg.win_length)
    left = (cfg.n_fft - cfg.win_length) // 2
    out = np.zeros(cfg.n_fft, dtype=np.float64)
    out[left:left + cfg.win_length] = w
    return out


def mel_filterbank(cfg: FrontendConfig) -> np.ndarray:
    """Triangular mel filterbank, shape (n_freqs, n_mels), float64: bands equally spaced on ``cfg.mel_scale``,
    triangles linear in Hz (``mel_triangles="hz"``, librosa's construction) or in mel ("mel", Kaldi's), each band
    normalised to unit area (``mel_norm="area"``, Slaney-style, so band energies do not depend on band width) or
    peaking at 1 ("none").

    A band narrower than one FFT bin would be empty; such configs are rejected with a hint to lower n_mels or
    raise n_fft (except Kaldi-style banks, which reproduce their authors' empty bands).
    """
    freqs = np.linspace(0.0, cfg.sample_rate / 2.0, cfg.n_freqs)
    mel_edges = np.linspace(hz_to_mel(cfg.fmin, cfg.mel_scale), hz_to_mel(cfg.fmax, cfg.mel_scale), cfg.n_mels + 2)
    edges = mel_to_hz(mel_edges, cfg.mel_scale)
    if cfg.mel_triangles == "mel":
        axis, points = hz_to_mel(freqs, cfg.mel_scale), mel_edges
    else:
        axis, points = freqs, edges
    lower, centre, upper = points[:-2, None], points[1:-1, None], points[2:, None]
    rising = (axis[None, :] - lower) / (centre - lower)
    falling = (upper - axis[None, :]) / (upper - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, n_freqs)
    empty = np.flatnonzero(bank.sum(axis=1) == 0)
    if empty.size and cfg.mel_triangles == "hz":
        raise ConfigError(f"mel bands {empty.tolist()} contain no FFT bin (n_fft={cfg.n_fft}, n_mels={cfg.n_mels}, "
                          f"{cfg.fmin}-{cfg.fmax} Hz): lower n_mels or raise n_fft")
    if cfg.mel_norm == "area":
        bank *= (2.0 / (edges[2:, None] - edges[:-2, None]))
    return bank.T.copy()
