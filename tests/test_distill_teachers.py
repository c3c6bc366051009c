"""Teachers (checkpoint, transformers folder, torch module, precomputed file), the output cache and the probe."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch

from acula_edge.checkpoint import CheckpointInfo, save_checkpoint, weights_sha256
from acula_edge.data import Dataset, Recording, load_dataset
from acula_edge.errors import CheckpointError, ConfigError
from acula_edge.frontend import preset
from acula_edge.manifest import Prompts
from acula_edge.distill.probe import ProbeConfig, class_weights, fit_probe
from acula_edge.distill.students import ARCHITECTURE, build_student
from acula_edge.distill.teachers import (HFAudioTeacher, ModuleTeacher, PrecomputedTeacher, Teacher,
                                         TeacherOutputs, load_teacher, teacher_outputs)
from acula_edge.windows import choose_windows, extract_windows

FE, WIN = preset("heart")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> Dataset:
    return load_dataset("synthetic:heart?n=4&seed=3")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> object:
    torch.manual_seed(0)
    model = build_student("tiny", 24, 2).eval()
    prompts = Prompts(texts=("normal heart", "murmur"), embeddings=((1.0,) * 24, (-1.0,) * 24),
                      labels=("normal", "abnormal"))
    info = CheckpointInfo(kind="teacher", architecture=ARCHITECTURE, model_config=model.config_dict(), frontend=FE,
                          windowing=WIN, labels=("normal", "abnormal"), embedding_dim=24, prompts=prompts)
    return save_checkpoint(model, info, tmp_path_factory.mktemp("t") / "teacher")


def _outputs(n=5, d=3, logits=True) -> TeacherOutputs:
    rng = np.random.default_rng(0)
    return TeacherOutputs(np.array([f"r{i // 2}" for i in range(n)]), np.arange(n) % 2,
                          rng.normal(size=(n, d)).astype(np.float32),
                          rng.normal(size=(n, 2)).astype(np.float32) if logits else None,
                          ("normal", "abnormal") if logits else ())


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_outputs_file_round_trip(tmp_path, suffix):
    out = _outputs()
    loaded = TeacherOutputs.load(out.save(tmp_path / f"o{suffix}"))
    assert loaded.record_ids.tolist() == out.record_ids.tolist()
    np.testing.assert_array_equal(loaded.window_index, out.window_index)
    np.testing.assert_array_equal(loaded.embedding, out.embedding)
    np.testing.assert_array_equal(loaded.logits, out.logits)
    assert loaded.labels == ("normal", "abnormal")
    no_logits = TeacherOutputs.load(_outputs(logits=False).save(tmp_path / f"n{suffix}"))
    assert no_logits.logits is None and no_logits.labels == ()


def test_outputs_file_with_pickled_objects_is_refused(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, record_id=np.array([{"a": 1}], dtype=object), window_index=np.zeros(1, np.int64),
             embedding=np.zeros((1, 2), np.float32))
    (tmp_path / "evil.npz").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="unreadable teacher-outputs file"):
        TeacherOutputs.load(tmp_path / "evil.npz")


def test_inconsistent_outputs_are_refused():
    with pytest.raises(CheckpointError, match="embedding has 2 rows"):
        TeacherOutputs(np.array(["a", "b", "c"]), np.arange(3), np.zeros((2, 4), np.float32))


def test_lookup_joins_on_recording_and_window():
    out = _outputs()
    rows, found = out.lookup(np.array(["r1", "r0", "zz"]), np.array([0, 1, 0]))
    assert found.tolist() == [True, True, False]
    np.testing.assert_array_equal(out.embedding[rows[:2]], out.embedding[[2, 1]])


def test_load_teacher_specs(tmp_path, teacher_dir):
    assert load_teacher("none") is None and load_teacher(None) is None
    t = load_teacher(teacher_dir)
    assert isinstance(t, ModuleTeacher)
    assert t.identity == weights_sha256(teacher_dir)
    assert t.labels == ("normal", "abnormal") and t.frontend == FE and t.prompts.texts == ("normal heart", "murmur")
    p = load_teacher(_outputs().save(tmp_path / "o.npz"))
    assert isinstance(p, PrecomputedTeacher) and p.labels == ("normal", "abnormal")
    assert isinstance(load_teacher(torch.nn.Linear(2, 2), FE, WIN), ModuleTeacher)
    with pytest.raises(CheckpointError, match="is not usable"):
        load_teacher(tmp_path / "missing")


def test_checkpoint_teacher_with_wrong_weights_reports_mismatch(tmp_path, teacher_dir):
    bigger = build_student("small", 24, 2)
    info = CheckpointInfo.from_dict(json.loads((teacher_dir / "config.json").read_text()))
    save_checkpoint(bigger, info, tmp_path / "wrong")  # config says tiny, weights are small
    with pytest.raises(CheckpointError, match="weights do not match the architecture: .*unexpected.*other shapes"):
        load_teacher(tmp_path / "wrong")


def test_module_teacher_outputs_match_direct_forward_and_are_cached(tmp_path, data, teacher_dir):
    calls = []

    class Counting(ModuleTeacher):
        def compute(self, *a, **k):
            calls.append(1)
            return super().compute(*a, **k)

    model = load_teacher(teacher_dir).module
    t = Counting(model, FE, WIN, labels=("normal", "abnormal"), identity="abc")
    out, path = teacher_outputs(t, data, FE, WIN, max_windows_per_recording=3, cache_dir=tmp_path)
    w = extract_windows(data, FE, WIN, max_windows_per_recording=3)
    assert out.record_ids.tolist() == w.record_ids.tolist() and out.window_index.tolist() == w.window_index.tolist()
    with torch.no_grad():
        e, lg = model(torch.from_numpy(w.x[:2])[:, None])
    np.testing.assert_allclose(out.embedding[:2], e.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.logits[:2], lg.numpy(), rtol=1e-5, atol=1e-6)
    again, path2 = teacher_outputs(t, data, FE, WIN, max_windows_per_recording=3, cache_dir=tmp_path)
    assert len(calls) == 1 and path2 == path and path.is_file()
    np.testing.assert_array_equal(again.embedding, out.embedding)
    # another front-end normalisation (a different key) computes again
    fe2 = dataclasses.replace(FE, normalisation="per_window")
    t2 = Counting(model, None, None, identity="abc")
    teacher_outputs(t2, data, fe2, WIN, max_windows_per_recording=3, cache_dir=tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("teacher-*.npz"))) == 2


def test_embedding_only_module_teacher_has_no_logits(data):
    class EmbOnly(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(1, 2))

    out = ModuleTeacher(EmbOnly(), FE, WIN).compute(data, FE, WIN, max_windows_per_recording=2)
    assert out.logits is None and out.embedding.shape == (len(out.record_ids), FE.n_mels)


def test_student_windows_of_another_front_end_join_teacher_windows(data):
    fe4, win4 = preset("heart-4k")
    assert win4 == WIN
    a = extract_windows(data, FE, WIN, max_windows_per_recording=4)
    b = extract_windows(data, fe4, win4, max_windows_per_recording=4)
    assert a.keys() == b.keys()
    assert choose_windows(10, 3).tolist() == [0, 4, 9] and choose_windows(2, 3).tolist() == [0, 1]


def test_transformers_ast_teacher_from_a_local_folder(tmp_path, data):
    transformers = pytest.importorskip("transformers")
    frames = WIN.frames_per_window(FE)
    cfg = transformers.ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                 patch_size=16, frequency_stride=16, time_stride=16, max_length=frames,
                                 num_mel_bins=FE.n_mels)
    torch.manual_seed(0)
    transformers.ASTModel(cfg).save_pretrained(tmp_path / "ast")
    t = load_teacher(tmp_path / "ast", FE, WIN)
    assert isinstance(t, HFAudioTeacher) and t.labels == () and len(t.identity) == 64
    out = t.compute(data, FE, WIN, max_windows_per_recording=2)
    assert out.embedding.shape == (len(out.record_ids), 16) and out.logits is None
    assert np.isfinite(out.embedding).all()
    with pytest.raises(ConfigError, match="rejected inputs of shape"):
        load_teacher(tmp_path / "ast").compute(data, dataclasses.replace(FE, n_mels=16), WIN,
                                               max_windows_per_recording=1)


def test_transformers_classifier_with_its_own_feature_extractor(tmp_path, data):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2),
                                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_labels=2,
                                      id2label={0: "normal", 1: "abnormal"}, label2id={"normal": 0, "abnormal": 1})
    torch.manual_seed(0)
    transformers.Wav2Vec2ForSequenceClassification(cfg).save_pretrained(tmp_path / "w2v")
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=4000).save_pretrained(tmp_path / "w2v")
    t = load_teacher(tmp_path / "w2v")
    assert isinstance(t, HFAudioTeacher) and t.labels == ("normal", "abnormal")
    out = t.compute(data, FE, WIN, max_windows_per_recording=2)
    # the model heard 4 kHz audio windows, keyed like the student's log-mel windows
    keys = extract_windows(data, FE, WIN, max_windows_per_recording=2).keys()
    assert list(zip(out.record_ids.tolist(), out.window_index.tolist())) == keys
    assert out.embedding.shape == (len(keys), 16) and out.logits.shape == (len(keys), 2)


def test_probe_fits_separable_data_and_picks_c_from_training_folds():
    rng = np.random.default_rng(0)
    n = 120
    y = (np.arange(n) % 4 == 0).astype(np.int64)  # imbalanced: 25% positives
    emb = rng.normal(size=(n, 5)) + 3.0 * y[:, None] * np.array([1, 0, 0, 0, 0])
    groups = np.arange(n) // 3
    probe = fit_probe(emb, y, groups, 2, ProbeConfig(cs=(0.001, 1.0), folds=3))
    assert set(probe.cv_loss) == {0.001, 1.0} and probe.c == min(probe.cv_loss, key=probe.cv_loss.get)
    pred = probe.logits(emb).argmax(1)
    assert (pred[y == 1] == 1).mean() > 0.85 and (pred[y == 0] == 0).mean() > 0.85
    np.testing.assert_allclose(probe.logits(emb[:3]), emb[:3].astype(np.float32) @ probe.weight.T + probe.bias,
                               rtol=1e-5)
    with pytest.raises(ConfigError, match="at least two classes"):
        fit_probe(emb, np.zeros(n, np.int64), groups, 2)


def test_class_weights_are_inverse_frequency():
    w = class_weights(np.array([0, 0, 0, 1, -1]), 3)
    assert w[2] == 0 and w[1] == pytest.approx(3 * w[0])
    assert (w[np.array([0, 0, 0, 1])]).mean() == pytest.approx(1.0)


def test_teacher_base_class_is_abstract(data):
    with pytest.raises(NotImplementedError):
        Teacher().compute(data, FE, WIN)


def test_short_recording_gives_one_padded_window():
    rec = Recording("short", "normal", samples=np.zeros(100, np.float32), sample_rate=2000)
    w = extract_windows(Dataset("d", (rec,)), FE, WIN)
    assert w.x.shape == (1, WIN.frames_per_window(FE), FE.n_mels) and w.window_index.tolist() == [0]


def test_students_never_get_a_teacher_only_front_end():
    from acula_edge.distill.train import TrainConfig, _resolve_frontend
    from acula_edge.frontend import Windowing, preset

    class _Opera:  # a teacher that fixes OPERA's front-end (8 s windows every 4 s)
        frontend, windowing = preset("opera")

    fe, win = _resolve_frontend(TrainConfig.from_dict({}), _Opera())
    assert (fe, win) == preset("acula")  # the device preset cutting the same windows
    with pytest.raises(ConfigError, match="reproduces a teacher's preprocessing"):
        _resolve_frontend(TrainConfig.from_dict({"frontend_preset": "opera"}), None)

    class _Ast:  # an AST taking 10.255 s windows whole: no device preset cuts those
        frontend, windowing = preset("ast")[0], Windowing(10.255, 5.12)

    with pytest.raises(ConfigError, match="no device preset cuts its windows"):
        _resolve_frontend(TrainConfig.from_dict({}), _Ast())
