"""A readable summary of what the front-end makes of one recording (for `acula-edge features`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from acula_edge.audio import read_audio, resample
from acula_edge.features import LogMel
from acula_edge.frontend import preset as get_preset


def summarise_file(path: str, preset_name: str = "heart") -> dict[str, Any]:
    """Rates, duration, level, frame/window counts and log-mel statistics of ``path`` under a front-end preset."""
    frontend, windowing = get_preset(preset_name)
    raw, rate = read_audio(path)
    from acula_edge.audio import check_sample_rate, check_samples

    check_sample_rate(rate, path)
    check_samples(raw, path)
    x = resample(raw, rate, frontend.sample_rate, path)
    frames = LogMel(frontend)(x)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    wf, hf = windowing.frames_per_window(frontend), windowing.frames_per_hop(frontend)
    n_windows = 0 if frames.shape[0] < wf else 1 + (frames.shape[0] - wf) // hf
    return {
        "file": str(path),
        "file_sample_rate_hz": rate,
        "model_sample_rate_hz": frontend.sample_rate,
        "duration_s": round(raw.shape[0] / rate, 3),
        "peak": round(peak, 4),
        "rms_dbfs": round(20 * np.log10(max(rms, 1e-12)), 2),
        "clipped_fraction": round(float(np.mean(np.abs(x) >= 0.999)), 5),
        "frames": int(frames.shape[0]),
        "n_mels": frontend.n_mels,
        "windows": f"{n_windows} x {windowing.window_s} s every {windowing.hop_s} s ({wf} frames each)",
        "logmel_min_mean_max": [round(float(v), 3) for v in (frames.min(), frames.mean(), frames.max())]
        if frames.size else [],
    }
