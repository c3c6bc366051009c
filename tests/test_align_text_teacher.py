"""The frozen text teacher (local folder, mask-aware mean pooling) and its disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from acula_edge.align.text_teacher import TextEmbeddingCache, TextTeacher, default_text_model_path
from acula_edge.align.tiny_models import build_tiny_text_model
from acula_edge.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    return build_tiny_text_model(tmp_path_factory.mktemp("bert") / "bert")


def test_mean_pooling_ignores_padding(tiny_text):
    teacher = TextTeacher(tiny_text)
    alone = teacher.encode(["normal heart sounds"])
    batched = teacher.encode(["normal heart sounds", "abnormal heart sounds with a murmur recorded at site b"])
    assert batched.shape == (2, 32) and batched.dtype == np.float32
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-5)
    assert not np.allclose(batched[0], batched[1])


def test_layer_choice_changes_embedding_and_is_checked(tiny_text):
    last, first = TextTeacher(tiny_text, layer=-1), TextTeacher(tiny_text, layer=1)
    assert not np.allclose(last.encode(["heart"]), first.encode(["heart"]))
    assert last.key != first.key
    with pytest.raises(ConfigError, match="text layer 7 out of range for a 2-layer model"):
        TextTeacher(tiny_text, layer=7)


def test_model_is_frozen(tiny_text):
    teacher = TextTeacher(tiny_text)
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_cache_embeds_each_text_once(tiny_text, tmp_path, monkeypatch):
    teacher = TextTeacher(tiny_text)
    cache = TextEmbeddingCache(tmp_path / "cache")
    calls = []
    real = teacher.encode
    monkeypatch.setattr(teacher, "encode", lambda texts: calls.append(list(texts)) or real(texts))
    first = cache.embed(teacher, ["a heart", "a lung", "a heart"])
    assert calls == [["a heart", "a lung"]] or calls == [["a lung", "a heart"]]
    second = cache.embed(teacher, ["a lung", "a heart"])
    assert len(calls) == 1  # nothing recomputed
    np.testing.assert_array_equal(second, first[[1, 0]])
    assert cache.path_for(teacher).is_file()
    # a fresh cache object reads the file
    np.testing.assert_array_equal(TextEmbeddingCache(tmp_path / "cache").embed(teacher, ["a heart"]), first[:1])


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no config.json; give a local transformers model folder"):
        TextTeacher(tmp_path)


def test_default_model_is_the_packaged_minilm():
    path = default_text_model_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
