"""Teacher front-end presets reproduce their authors' preprocessing: "opera" = OPERA's librosa pipeline, "ast" =
transformers' ASTFeatureExtractor; numpy and torch twins agree; teacher-only options stay off the device path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from acula_edge.errors import ConfigError
from acula_edge.features import LogMel, LogMelStream, normalise_window
from acula_edge.frontend import PRESETS, FrontendConfig, Windowing, device_preset_for, mel_filterbank, preset
from acula_edge.torch_frontend import TorchLogMel
from acula_edge.torch_frontend import normalise_window as torch_normalise_window

RATE = 16000


def _wave(n: int, seed: int = 0, scale: float = 0.3) -> np.ndarray:
    t = np.arange(n) / RATE
    rng = np.random.default_rng(seed)
    x = np.sin(2 * np.pi * (120 + 300 * t) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    return (scale * x + 0.02 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("n", [128000, 32256, 5000])  # 8 s (251 frames), 64 frames, a short clip
def test_opera_preset_equals_librosa_pipeline(n):
    librosa = pytest.importorskip("librosa")
    y = _wave(n, seed=n)
    # OPERA's src/util.py pre_process_audio_mel_t(y, f_max=8000): the same three librosa steps
    S = librosa.feature.melspectrogram(y=y, sr=RATE, n_mels=64, fmin=50, fmax=8000, n_fft=1024, hop_length=512)
    S = librosa.power_to_db(S, ref=np.max)
    want = ((S - S.min()) / (S.max() - S.min())).T
    fe, win = preset("opera")
    got = normalise_window(LogMel(fe)(y), fe)
    assert got.shape == want.shape == (1 + n // 512, 64)
    assert np.abs(got - want).max() < 1e-5
    assert got.min() == 0.0 and got.max() == 1.0
    np.testing.assert_allclose(mel_filterbank(fe), librosa.filters.mel(sr=RATE, n_fft=1024, n_mels=64, fmin=50,
                                                                      fmax=8000).T, atol=1e-7)
    assert win.frames_per_window(fe) == 251


def test_db_minmax_clips_at_top_db_and_maps_a_constant_window_to_zero():
    fe = preset("opera")[0]
    ln = np.log(np.array([[1.0, 1e-3], [1e-9, 1e-12]], dtype=np.float32))  # 0, -30, -90, -120 dB
    got = normalise_window(ln, fe)
    np.testing.assert_allclose(got, [[1.0, 50 / 80], [0.0, 0.0]], atol=1e-6)  # clipped 80 dB below the peak
    assert not normalise_window(np.full((4, 3), -5.0, dtype=np.float32), fe).any()
    torch.testing.assert_close(torch_normalise_window(torch.from_numpy(ln), fe), torch.from_numpy(got))


@pytest.mark.parametrize("n", [40000, 170000])  # 248 frames (padded by the extractor), 1061 (cropped)
def test_ast_preset_equals_ast_feature_extractor(n):
    transformers = pytest.importorskip("transformers")
    y = _wave(n, seed=1)
    ext = transformers.ASTFeatureExtractor()
    want = ext(y, sampling_rate=RATE, return_tensors="np")["input_values"][0]
    fe, win = preset("ast")
    got = LogMel(fe)(y)
    k = min(got.shape[0], ext.max_length)
    assert np.abs(got[:k] - want[:k]).max() < 1e-5
    np.testing.assert_allclose(mel_filterbank(fe), ext.mel_filters, atol=1e-12)
    if got.shape[0] < ext.max_length:  # the extractor pads zeros BEFORE normalising
        np.testing.assert_allclose(want[k:], (0.0 - fe.norm_mean) / fe.norm_std, rtol=1e-6)
    assert win.frames_per_window(fe) == 798 and ext.max_length == 1024  # 8 s windows, padded by the model


@pytest.mark.parametrize("name", ["opera", "ast"])
def test_torch_twin_equals_numpy(name):
    fe, _ = preset(name)
    y = _wave(24000, seed=2)
    want = normalise_window(LogMel(fe)(y), fe)
    got = torch_normalise_window(TorchLogMel(fe)(torch.from_numpy(y)[None]), fe)[0].numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5


def test_waveform_representation_lays_samples_out_as_frames():
    fe = FrontendConfig(sample_rate=RATE, n_fft=80, win_length=80, hop_length=80, n_mels=80, fmin=0.0,
                        fmax=8000.0, representation="waveform")
    y = _wave(1000)
    frames = LogMel(fe)(y)
    np.testing.assert_array_equal(frames, y[:960].reshape(12, 80))
    np.testing.assert_array_equal(TorchLogMel(fe)(torch.from_numpy(y))[0].numpy(), frames)
    with pytest.raises(ConfigError, match="waveform representation needs n_mels == win_length"):
        dataclasses.replace(fe, n_mels=40)


def test_centred_windows_come_from_their_own_samples():
    from acula_edge.windows import recording_windows

    fe, win = preset("opera")
    assert fe.num_frames(128000) == 251 and FrontendConfig().num_frames(400) == 1 + (400 - 200) // 40
    y = _wave(3 * RATE * 4 + 16000, seed=3)  # 13 s: windows at 0 and 4 s
    w = recording_windows(y, fe, win)
    assert w.shape == (2, 251, 64)
    np.testing.assert_array_equal(w[1], normalise_window(LogMel(fe)(y[64000:192000]), fe))
    with pytest.raises(ConfigError, match="cannot be streamed"):
        LogMelStream(fe)
    with pytest.raises(ConfigError, match="center=True needs win_length == n_fft"):
        dataclasses.replace(fe, win_length=800)


def test_teacher_presets_are_not_device_ready_and_map_to_a_device_preset():
    assert {n for n, (fe, _) in PRESETS.items() if not fe.device_ready} == {"opera", "ast"}
    assert device_preset_for(preset("opera")[1]) == "acula"
    assert device_preset_for(Windowing(4.0, 1.0)) == "heart"
    assert device_preset_for(preset("ast")[1]) == "acula"
    assert device_preset_for(Windowing(10.255, 5.12)) is None
    with pytest.raises(ConfigError, match="mel_scale must be one of"):
        FrontendConfig(mel_scale="mel")
    assert FrontendConfig.from_json(preset("opera")[0].to_json()) == preset("opera")[0]


def test_c_front_end_refuses_teacher_only_configs():
    from acula_edge.errors import ExportError
    from acula_edge.export.firmware.header import firmware_tables

    for name in ("opera", "ast"):
        with pytest.raises(ExportError, match="C front-end does not implement"):
            firmware_tables(preset(name)[0])
    assert set(firmware_tables(preset("acula")[0])) >= {"window", "mel_weights"}
