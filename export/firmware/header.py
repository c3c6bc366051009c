"""Generate ``frontend_params.h``: the log-mel front-end of a :class:`FrontendConfig` as C constants and tables.

The C front-end (``acula_frontend.c``) has no parameters of its own: every size, coefficient and constant comes from
this header, so the firmware computes exactly what :class:`acula_edge.features.LogMel` computes. Regenerate the
header whenever the config changes; its ``ACULA_CONFIG_SHA256`` names the config it was made from.

Tables (flash, ``static const``; compiled only into ``acula_frontend.c``):

- ``acula_window``: the ``win_length`` window coefficients. The ``n_fft`` frame is zero outside
  ``[ACULA_WIN_OFFSET, ACULA_WIN_OFFSET + win_length)``, so the zero padding is not stored.
- ``acula_twiddle_cos`` / ``acula_twiddle_sin``: cos and sin of ``2*pi*k/n_fft`` for ``k < n_fft/2``; they serve
  both the ``n_fft/2``-point complex FFT and the real-FFT split step.
- ``acula_mel_start`` / ``acula_mel_len`` (uint16, one per band) and ``acula_mel_weights`` (float32, all bands'
  non-zero triangle weights, concatenated): the sparse mel filterbank.

The window and twiddles are written with float64 precision and cast to ``acula_fft_t``: float32 by default,
float64 when the firmware is built with ``-DACULA_FFT_DOUBLE=1``, Q15 (int16, rounded, 1.0 saturated to 32767)
with ``-DACULA_Q15=1``.

Memory budget in bytes (:func:`frontend_memory`), with ``r`` = 4 (float32 build) or 8 (``ACULA_FFT_DOUBLE``)::

    flash_bytes = r*win_length + r*n_fft + 2*2*n_mels + 4*n_weights      # the tables only, not code
    ram_bytes   = r*n_fft + 4*win_length + 4*(n_fft/2 + 1) + 2*4          # sizeof(acula_frontend_t),
                                                                          # rounded up to a multiple of r

where ``n_weights`` is the number of non-zero filterbank weights; the ``-DACULA_Q15=1`` build has ``r`` = 2, a
``2*win_length`` sample buffer and the struct rounded up to a multiple of 4. The caller also needs ``4*n_mels`` bytes per
output frame and, for a model window, ``4*n_mels*window_frames`` bytes (``window_bytes``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from acula_edge.atomic import write_text
from acula_edge.errors import ConfigError, ExportError
from acula_edge.frontend import FrontendConfig, Windowing, analysis_window, mel_filterbank

# Bumped when the header's layout changes; acula_frontend.c refuses a header of another version.
PARAMS_VERSION = 1
# mel_start / mel_len are uint16, so n_fft/2 + 1 bins must fit in 16 bits.
MAX_N_FFT = 65536
FLOAT_BYTES = 4
INDEX_BYTES = 2  # uint16_t
COUNTER_BYTES = 4  # int32_t
Q15_BYTES = 2  # int16_t: acula_fft_t and acula_sample_t of the ACULA_Q15 build


def _check_exportable(cfg: FrontendConfig) -> None:
    if not isinstance(cfg, FrontendConfig):
        raise ConfigError(f"expected a FrontendConfig, got {type(cfg).__name__}")
    if not cfg.device_ready:
        raise ExportError("this front-end reproduces a teacher's preprocessing (centred frames, waveform frames, "
                          "Slaney/Kaldi mel banks, DC removal, pre-emphasis or dB min-max), which the C front-end "
                          "does not implement; distill the student with a device preset")
    n = cfg.n_fft
    if n < 2 or n & (n - 1) or n > MAX_N_FFT:
        raise ExportError(f"the C front-end needs n_fft to be a power of two in 2..{MAX_N_FFT} (its FFT is radix-2), "
                          f"got n_fft={n}; use e.g. n_fft={_next_pow2(n)} (win_length={cfg.win_length} is zero-padded "
                          f"to it) and retrain, or keep this config off the firmware target")


def _next_pow2(n: int) -> int:
    return 1 << max(1, (max(n, 1) - 1).bit_length())


def config_sha256(cfg: FrontendConfig) -> str:
    """Hex SHA-256 of the config's canonical JSON; the header and the bundle manifest can be matched by it."""
    return hashlib.sha256(cfg.to_json().encode("utf-8")).hexdigest()


def firmware_tables(cfg: FrontendConfig) -> dict[str, np.ndarray]:
    """The constant tables of the C front-end, as the arrays written into the header.

    Keys: window (float64, win_length) and twiddle_cos / twiddle_sin (float64, n_fft/2), which the C compiler
    rounds to acula_fft_t; mel_start / mel_len (uint16, n_mels); mel_weights (float32, n_weights).
    Raises ExportError if the config cannot run in C.
    """
    _check_exportable(cfg)
    left = (cfg.n_fft - cfg.win_length) // 2
    window = analysis_window(cfg)[left:left + cfg.win_length]
    bank = mel_filterbank(cfg).astype(np.float32)  # (n_freqs, n_mels), the float32 weights LogMel uses
    starts, lens, weights = [], [], []
    for b in range(cfg.n_mels):
        nz = np.flatnonzero(bank[:, b])  # mel_filterbank guarantees every band has a bin
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        starts.append(lo)
        lens.append(hi - lo)
        weights.append(bank[lo:hi, b])
    k = np.arange(cfg.n_fft // 2, dtype=np.float64)
    angle = 2.0 * np.pi * k / cfg.n_fft
    cos, sin = np.cos(angle), np.sin(angle)
    # cos(pi/2) evaluates to 6e-17; store the exact zero.
    cos[np.abs(cos) < 1e-12] = 0.0
    sin[np.abs(sin) < 1e-12] = 0.0
    return {
        "window": window,
        "twiddle_cos": cos,
        "twiddle_sin": sin,
        "mel_start": np.asarray(starts, dtype=np.uint16),
        "mel_len": np.asarray(lens, dtype=np.uint16),
        "mel_weights": np.concatenate(weights).astype(np.float32),
    }


FFT_TABLES = ("window", "twiddle_cos", "twiddle_sin")  # stored as acula_fft_t


def _memory_from_tables(cfg: FrontendConfig, tables: dict[str, np.ndarray], windowing: Windowing | None,
                        fft_double: bool, q15: bool = False) -> dict[str, Any]:
    if fft_double and q15:
        raise ConfigError("the C front-end builds with ACULA_FFT_DOUBLE or ACULA_Q15, not both")
    real = 8 if fft_double else Q15_BYTES if q15 else FLOAT_BYTES  # sizeof(acula_fft_t)
    sample = Q15_BYTES if q15 else FLOAT_BYTES  # sizeof(acula_sample_t)
    flash = {name: int(arr.size) * (real if name in FFT_TABLES else arr.itemsize) for name, arr in tables.items()}
    ram = {
        "work": real * cfg.n_fft,  # windowed frame, FFT in place
        "buf": sample * cfg.win_length,  # samples of the frame being filled
        "power": FLOAT_BYTES * cfg.n_freqs,  # power / magnitude spectrum
        "counters": 2 * COUNTER_BYTES,  # fill, skip
    }
    ram_total = sum(ram.values())
    # the struct is aligned like its most aligned member: the double array (8 on ARM EABI and x86-64), else 4
    ram["padding"] = -ram_total % max(real, COUNTER_BYTES)
    out: dict[str, Any] = {
        "flash_bytes": sum(flash.values()),
        "ram_bytes": sum(ram.values()),
        "flash_tables": flash,
        "ram_state": ram,
        "fft_double": bool(fft_double),
        "q15": bool(q15),
        "frame_bytes": FLOAT_BYTES * cfg.n_mels,
        "mel_weights": int(tables["mel_weights"].size),
        "config_sha256": config_sha256(cfg),
        "formula": "flash = r*(win_length + n_fft) + 4*n_mels + 4*n_weights (tables, not code); "
                   "ram = sizeof(acula_frontend_t) = r*n_fft + 4*(win_length + n_fft/2 + 1) + 8, rounded up to r; "
                   "r = 4 (float32) or 8 (ACULA_FFT_DOUBLE); ACULA_Q15: r = 2 and buf takes 2*win_length",
    }
    if windowing is not None:
        frames = windowing.frames_per_window(cfg)
        out["window_frames"] = frames
        out["window_hop_frames"] = windowing.frames_per_hop(cfg)
        out["window_bytes"] = FLOAT_BYTES * cfg.n_mels * frames  # the model-input buffer the caller keeps
    return out


def frontend_memory(cfg: FrontendConfig, windowing: Windowing | None = None,
                    fft_double: bool = False, q15: bool = False) -> dict[str, Any]:
    """Memory budget of the C front-end for ``cfg`` in bytes, without writing anything.

    ``flash_bytes``: the constant tables (code not included); ``ram_bytes``: ``sizeof(acula_frontend_t)``;
    ``frame_bytes``: one output frame; with ``windowing``, also ``window_bytes`` for a model-input window of
    ``window_frames`` frames. Per-table / per-buffer sizes are under ``flash_tables`` / ``ram_state``.
    ``fft_double``: the budget of a build with ``-DACULA_FFT_DOUBLE=1``; ``q15``: with ``-DACULA_Q15=1``.
    """
    if windowing is not None:
        windowing.validate(cfg)
    return _memory_from_tables(cfg, firmware_tables(cfg), windowing, fft_double, q15)


def _c_float(v: float) -> str:
    """A float32 literal: 9 significant digits round-trip any float32."""
    s = f"{float(np.float32(v)):.9g}"
    if not any(ch in s for ch in ".e"):
        s += ".0"
    return s + "f"


def _c_real(v: float) -> str:
    """A float64 literal cast to acula_fft_t: 17 significant digits round-trip any float64."""
    s = f"{float(v):.17g}"
    if not any(ch in s for ch in ".e"):
        s += ".0"
    return f"ACULA_R({s})"


def _c_array(ctype: str, name: str, size: str, items: list[str], per_line: int) -> str:
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{size}] = {{\n    {body}\n}};\n"


def render_frontend_header(cfg: FrontendConfig, windowing: Windowing | None = None) -> str:
    """The text of ``frontend_params.h`` for ``cfg`` (see :func:`write_frontend_header`)."""
    tables = firmware_tables(cfg)
    if windowing is not None:
        windowing.validate(cfg)
    mem32 = _memory_from_tables(cfg, tables, windowing, fft_double=False)
    mem64 = _memory_from_tables(cfg, tables, windowing, fft_double=True)
    mem16 = _memory_from_tables(cfg, tables, windowing, fft_double=False, q15=True)
    left = (cfg.n_fft - cfg.win_length) // 2
    d = [
        "/* frontend_params.h: log-mel front-end constants for acula_frontend.c.",
        " * Generated by acula_edge.export.firmware.header.write_frontend_header; do not edit, regenerate.",
        f" * FrontendConfig: {cfg.to_json()}",
    ]
    if windowing is not None:
        d.append(f" * Windowing: window_s={windowing.window_s}, hop_s={windowing.hop_s}")
    d += [
        f" * float32 build: tables (flash) {mem32['flash_bytes']} bytes, state (RAM) {mem32['ram_bytes']} bytes.",
        " */",
        "#ifndef ACULA_FRONTEND_PARAMS_H",
        "#define ACULA_FRONTEND_PARAMS_H",
        "",
        f"#define ACULA_PARAMS_VERSION {PARAMS_VERSION}",
        f"#define ACULA_CONFIG_SHA256 \"{mem32['config_sha256']}\"",
        f"#define ACULA_SAMPLE_RATE {cfg.sample_rate} /* Hz */",
        f"#define ACULA_N_FFT {cfg.n_fft} /* real-FFT size, a power of two */",
        f"#define ACULA_N_FREQS {cfg.n_freqs} /* n_fft/2 + 1 bins */",
        f"#define ACULA_WIN_LENGTH {cfg.win_length} /* samples per analysis window */",
        f"#define ACULA_WIN_OFFSET {left} /* zeros before the window in the n_fft frame */",
        f"#define ACULA_HOP_LENGTH {cfg.hop_length} /* samples between frame starts */",
        f"#define ACULA_N_MELS {cfg.n_mels} /* floats per output frame */",
        f"#define ACULA_POWER {int(cfg.power)} /* 2: power spectrum, 1: magnitude */",
        f"#define ACULA_LOG_FLOOR {_c_float(cfg.log_floor)}",
        f"#define ACULA_LOG_OFFSET {_c_float(cfg.log_offset)}",
        f"#define ACULA_NORM_GLOBAL {int(cfg.normalisation == 'global')} "
        "/* 1: frames are (log - mean) / std; 0: per-window normalisation is the caller's */",
        f"#define ACULA_NORM_PER_BAND {int(cfg.normalisation == 'per_window_band')} "
        "/* 1: the caller removes each mel band's window mean before the window's std (see main.c) */",
        f"#define ACULA_NORM_MEAN {_c_float(cfg.norm_mean)}",
        f"#define ACULA_NORM_STD {_c_float(cfg.norm_std)}",
        f"#define ACULA_MEL_N_WEIGHTS {mem32['mel_weights']} /* non-zero filterbank weights */",
    ]
    if windowing is not None:
        d += [
            f"#define ACULA_WINDOW_FRAMES {mem32['window_frames']} /* frames per model input */",
            f"#define ACULA_WINDOW_HOP_FRAMES {mem32['window_hop_frames']} /* frames between model inputs */",
        ]
    d += [
        "",
        "#ifndef ACULA_FFT_DOUBLE",
        "#define ACULA_FFT_DOUBLE 0 /* 1: window product, FFT and power in double (acula_fft_t) */",
        "#endif",
        "#ifndef ACULA_Q15",
        "#define ACULA_Q15 0 /* 1: samples, window, FFT and power in fixed point (Q15 / integers) */",
        "#endif",
        "#if ACULA_FFT_DOUBLE",
        f"#define ACULA_FLASH_BYTES {mem64['flash_bytes']} /* tables */",
        f"#define ACULA_RAM_BYTES {mem64['ram_bytes']} /* sizeof(acula_frontend_t) */",
        "#elif ACULA_Q15",
        f"#define ACULA_FLASH_BYTES {mem16['flash_bytes']} /* tables */",
        f"#define ACULA_RAM_BYTES {mem16['ram_bytes']} /* sizeof(acula_frontend_t) */",
        "#else",
        f"#define ACULA_FLASH_BYTES {mem32['flash_bytes']} /* tables */",
        f"#define ACULA_RAM_BYTES {mem32['ram_bytes']} /* sizeof(acula_frontend_t) */",
        "#endif",
        "",
        "#endif /* ACULA_FRONTEND_PARAMS_H */",
        "",
        "/* The tables are defined only where ACULA_FRONTEND_TABLES is defined (acula_frontend.c, after",
        " * acula_frontend.h, which declares acula_fft_t). */",
        "#if defined(ACULA_FRONTEND_TABLES) && !defined(ACULA_FRONTEND_TABLES_DEFINED)",
        "#define ACULA_FRONTEND_TABLES_DEFINED",
        "#include <stdint.h>",
        "#if ACULA_Q15 /* round to Q15, saturating 1.0 to 32767 / 32768 */",
        "#define ACULA_R(x) ((acula_fft_t)((x) >= 32767.0 / 32768.0 ? 32767 : (x) < -1.0 ? -32768 \\",
        "    : (x) * 32768.0 + ((x) >= 0 ? 0.5 : -0.5)))",
        "#else",
        "#define ACULA_R(x) ((acula_fft_t)(x))",
        "#endif",
        "",
        _c_array("acula_fft_t", "acula_window", "ACULA_WIN_LENGTH", [_c_real(v) for v in tables["window"]], 4),
        _c_array("acula_fft_t", "acula_twiddle_cos", "ACULA_N_FFT / 2",
                 [_c_real(v) for v in tables["twiddle_cos"]], 4),
        _c_array("acula_fft_t", "acula_twiddle_sin", "ACULA_N_FFT / 2",
                 [_c_real(v) for v in tables["twiddle_sin"]], 4),
        _c_array("uint16_t", "acula_mel_start", "ACULA_N_MELS", [str(int(v)) for v in tables["mel_start"]], 16),
        _c_array("uint16_t", "acula_mel_len", "ACULA_N_MELS", [str(int(v)) for v in tables["mel_len"]], 16),
        _c_array("float", "acula_mel_weights", "ACULA_MEL_N_WEIGHTS",
                 [_c_float(v) for v in tables["mel_weights"]], 8),
        "#undef ACULA_R",
        "#endif /* ACULA_FRONTEND_TABLES */",
        "",
    ]
    return "\n".join(d)


def write_frontend_header(cfg: FrontendConfig, path: str | os.PathLike,
                          windowing: Windowing | None = None, fft_double: bool = False) -> dict[str, Any]:
    """Write ``frontend_params.h`` for ``cfg`` to ``path`` (atomically) and return its memory budget.

    ``windowing`` (optional) adds ``ACULA_WINDOW_FRAMES`` / ``ACULA_WINDOW_HOP_FRAMES`` for the model-input
    window. The header serves both builds; ``fft_double`` only selects which budget is returned
    (:func:`frontend_memory`'s dict, plus ``path``). Raises ExportError if ``n_fft`` is not a power of two or the
    file cannot be written (nothing is left behind then).
    """
    text = render_frontend_header(cfg, windowing)
    mem = frontend_memory(cfg, windowing, fft_double)
    target = Path(path)
    try:
        write_text(target, text)  # temp file in the same folder, fsync, os.replace
    except OSError as e:
        raise ExportError(f"cannot write the front-end header to {target}: {e}") from e
    mem["path"] = str(target)
    return mem
