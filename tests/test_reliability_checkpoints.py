"""Reliability: a checkpoint's config.json is read strictly (one CheckpointError line naming the file and the field,
never a TypeError traceback in ``export`` or ``distill --teacher``), and pickled Hugging Face weights are refused
with a conversion hint, never an invitation to unpickle them."""

from __future__ import annotations

import json

import pytest

from acula_edge.checkpoint import CheckpointInfo, read_checkpoint_info, require_safetensors
from acula_edge.errors import CheckpointError
from acula_edge.frontend import preset

ARCH = "acula_edge.distill.students:DSCNNStudent"  # the student class a distilled checkpoint names


def _config(**changes) -> dict:
    fe, win = preset("heart")
    d = CheckpointInfo(kind="student", architecture=ARCH, model_config={}, frontend=fe,
                       windowing=win, labels=("normal", "abnormal"), embedding_dim=8).to_dict()
    for path, value in changes.items():
        node = d
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return d


# (changes, message): every one a one-line CheckpointError naming config.json
BAD = [
    ({"version": "abc"}, "version must be an integer, got 'abc'"),
    ({"version": 99}, "checkpoint version 99 is newer"),
    ({"frontend__n_mels": 32.0}, "frontend.n_mels must be an integer, got 32.0"),
    ({"frontend__hop_length": "40"}, "frontend.hop_length must be an integer"),
    ({"windowing__window_s": 1e300}, r"windowing.window_s must be in \(0.0, 600.0\]"),
    ({"labels": []}, "labels must have 1..1000 entries"),
    ({"threshold": 2}, r"threshold must be in \(0.0, 1.0\)"),
    ({"embedding_dim": "8"}, "embedding_dim must be an integer"),
    ({"model_config": [1]}, "model_config must be a JSON object"),
    ({"kind": "teacherr"}, "kind 'teacherr' not in"),
    ({"typo": 1}, r"unknown keys \['typo'\]"),
]


@pytest.mark.parametrize("changes,message", BAD, ids=[str(c)[:40] for c, _ in BAD])
def test_bad_config_values_are_one_line_checkpoint_errors(tmp_path, changes, message):
    (tmp_path / "config.json").write_text(json.dumps(_config(**changes)))
    with pytest.raises(CheckpointError, match=message) as e:
        read_checkpoint_info(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,message", [('{"format": "acula-edge-checkpoint", "threshold": NaN}', "NaN"),
                                          ("[" * 50_000 + "]" * 50_000, "nested deeper"),
                                          ('{"format": "acula-edge-checkpoint", "windowing": {"window_s": Infinity}}',
                                           "Infinity")])
def test_non_finite_and_deep_json_are_refused(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint_info(tmp_path)


def test_a_model_config_of_the_wrong_types_is_a_checkpoint_error(tmp_path):
    pytest.importorskip("torch")
    from acula_edge.checkpoint import load_checkpoint

    (tmp_path / "config.json").write_text(json.dumps(_config(model_config={"channels": "abc"})))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"config.json: its model_config does not build a {ARCH} "
                                              r"\(ConfigError: student config.channels must be a list, got 'abc'\)"):
        load_checkpoint(tmp_path)


def test_pickled_hugging_face_weights_are_refused_with_a_conversion_hint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "audio-spectrogram-transformer"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="only a pickled pytorch_model.bin, .*; convert them to safetensors") \
            as e:
        require_safetensors(tmp_path)
    assert "weights_only=False" not in str(e.value)
    pytest.importorskip("transformers")
    from acula_edge.align.hf_audio import load_hf_audio_encoder
    from acula_edge.distill.teachers import HFAudioTeacher

    for load in (load_hf_audio_encoder, HFAudioTeacher):
        with pytest.raises(CheckpointError, match="convert them to safetensors") as e:
            load(tmp_path)
        assert "weights_only" not in str(e.value)
