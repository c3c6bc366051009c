import json

import numpy as np
import pytest

from acula_edge.errors import ConfigError
from acula_edge.frontend import PRESETS, FrontendConfig, Windowing, mel_filterbank, preset


def test_acula_preset_matches_the_paper():
    fe, win = preset("acula")
    assert (fe.sample_rate, fe.n_fft, fe.hop_length, fe.n_mels, fe.fmin, fe.fmax) == (16000, 1024, 512, 64, 50.0, 8000.0)
    assert win.window_s == 8.0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_json_and_validate(name):
    fe, win = preset(name)
    assert FrontendConfig.from_json(fe.to_json()) == fe
    assert Windowing.from_dict(json.loads(json.dumps(win.to_dict()))) == win
    win.validate(fe)
    bank = mel_filterbank(fe)
    assert bank.shape == (fe.n_freqs, fe.n_mels)
    empty = int((bank.sum(axis=0) == 0).sum())
    assert empty == (1 if name == "ast" else 0)  # Kaldi's 128 bands over 257 bins leave one empty, as upstream


def test_num_frames_follows_the_framing_convention():
    fe = FrontendConfig()
    assert fe.num_frames(fe.win_length - 1) == 0
    assert fe.num_frames(fe.win_length) == 1
    assert fe.num_frames(fe.win_length + fe.hop_length) == 2
    assert Windowing(4.0, 1.0).frames_per_window(fe) == 1 + (8000 - fe.win_length) // fe.hop_length


def test_invalid_configs_name_every_problem():
    with pytest.raises(ConfigError) as e:
        FrontendConfig(sample_rate=2000, fmax=1500.0, window="kaiser")
    assert "fmax" in str(e.value) and "window" in str(e.value)
    with pytest.raises(ConfigError, match="unknown front-end config keys"):
        FrontendConfig.from_dict({"sample_rate": 2000, "nmels": 3})
    with pytest.raises(ConfigError, match="unknown front-end preset"):
        preset("nope")


def test_windows_must_start_on_frame_boundaries():
    fe = FrontendConfig()
    with pytest.raises(ConfigError, match="multiple of the front-end hop_length"):
        Windowing(4.0, 0.0105).validate(fe)


def test_empty_mel_bands_are_rejected_with_a_hint():
    with pytest.raises(ConfigError, match="lower n_mels or raise n_fft"):
        mel_filterbank(FrontendConfig(n_fft=64, win_length=64, n_mels=60))


def test_filterbank_bands_have_unit_area():
    fe = FrontendConfig(sample_rate=16000, n_fft=4096, win_length=4096, hop_length=512, fmin=100, fmax=4000, n_mels=20)
    bank = mel_filterbank(fe)
    df = fe.sample_rate / fe.n_fft
    np.testing.assert_allclose(bank.sum(axis=0) * df, 1.0, rtol=0.02)
