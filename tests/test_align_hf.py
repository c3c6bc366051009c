"""Hugging Face teachers compute what transformers computes: AST from ASTFeatureExtractor's numbers (padded or not,
any num_mel_bins / max_length), wav2vec2 and HuBERT on the waveform with the folder's do_normalize; and each aligns
from the CLI, then distills. Tiny random models are built in the test (nothing downloaded)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from acula_edge.align.hf_audio import HFASTEncoder, HFWaveformEncoder, hf_frontend, load_hf_audio_encoder
from acula_edge.align.tiny_models import build_tiny_ast, build_tiny_text_model, build_tiny_wav2vec2
from acula_edge.checkpoint import load_checkpoint, read_checkpoint_info
from acula_edge.features import LogMel

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
DATA = "synthetic:heart?n=8&seed=3"


def _wave(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (0.4 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 1.1 * t) + 0.05 * rng.standard_normal(t.size)
            ).astype(np.float32)


@pytest.mark.parametrize("n_mels,max_length,do_normalize,seconds", [
    (128, 100, True, 0.6),   # 58 frames: padded to 100
    (128, 100, True, 1.2),   # 118 frames: cropped to 100
    (64, 48, False, 0.3),    # another size, extractor without normalisation: padded
])
def test_ast_embedding_equals_transformers(tmp_path, n_mels, max_length, do_normalize, seconds):
    folder = build_tiny_ast(tmp_path / "ast", frames=max_length, n_mels=n_mels, do_normalize=do_normalize)
    enc = load_hf_audio_encoder(folder)
    assert isinstance(enc, HFASTEncoder)
    fe, _ = hf_frontend(folder)
    assert fe.n_mels == n_mels and (fe.norm_std == 2 * 4.5689974) == do_normalize
    wave = _wave(seconds)
    extractor = transformers.ASTFeatureExtractor.from_pretrained(folder)
    with torch.no_grad():
        want = transformers.ASTModel.from_pretrained(folder).eval()(
            **extractor(wave, sampling_rate=16000, return_tensors="pt")).pooler_output
        ours = LogMel(fe)(wave)
        got = enc.eval().embed(torch.from_numpy(ours)[None, None])
    assert (got - want).abs().max().item() < 1e-4
    # the padding is the extractor's (a normalised zero frame), not 0
    assert enc.pad_value == pytest.approx(4.2677393 / (2 * 4.5689974) if do_normalize else 0.0)


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_waveform_embedding_equals_transformers_and_honours_do_normalize(tmp_path, kind):
    wave = 0.2 + 0.3 * _wave(0.5, seed=1)  # an offset and a scale that normalisation removes
    got = {}
    for flag in (True, False):
        folder = build_tiny_wav2vec2(tmp_path / f"{kind}-{flag}", kind=kind, do_normalize=flag)
        enc = load_hf_audio_encoder(folder)
        assert isinstance(enc, HFWaveformEncoder) and enc.do_normalize is flag
        fe, win = hf_frontend(folder)
        assert fe.representation == "waveform" and fe.hop_length == 80 and win.window_s == 4.0
        frames = LogMel(fe)(wave)  # (frames, 80 samples): the waveform laid out as frames
        extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
        with torch.no_grad():
            model = transformers.AutoModel.from_pretrained(folder).eval()
            want = model(**extractor(wave, sampling_rate=16000, return_tensors="pt")).last_hidden_state.mean(1)
            got[flag] = enc.eval().embed(torch.from_numpy(frames)[None, None])
        assert (got[flag] - want).abs().max().item() < 1e-5
    assert (got[True] - got[False]).abs().max().item() > 1e-3  # the flag changes what the model sees


def test_hf_load_report_says_what_transformers_loaded(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = transformers.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 max_length=64, num_mel_bins=32, patch_size=16, frequency_stride=16, time_stride=16,
                                 num_labels=3)
    transformers.ASTForAudioClassification(cfg).save_pretrained(tmp_path / "clf")
    report = load_hf_audio_encoder(tmp_path / "clf").load_report
    assert report.complete and report.modules[0].status == "loaded"
    assert report.unused == ("classifier.dense.bias", "classifier.dense.weight", "classifier.layernorm.bias",
                             "classifier.layernorm.weight")  # the task head: not part of the encoder
    assert "4 tensors of the file not used by this model: classifier.dense.bias" in report.summary()
    folder = build_tiny_ast(tmp_path / "ast", frames=64, n_mels=32)
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    del state["layernorm.bias"]
    save_file(state, str(weights), metadata={"format": "pt"})
    report = load_hf_audio_encoder(folder).load_report
    assert not report.complete and report.missing == ("layernorm.bias",)
    assert "model: PARTLY loaded" in report.summary() and "freshly initialised: layernorm.bias" in report.summary()


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return build_tiny_text_model(tmp_path_factory.mktemp("text") / "bert")


def _align_then_distill(tmp_path, capsys, encoder: str, text_model, extra: list[str] = ()) -> tuple:
    from acula_edge.cli import main

    main(["align", "--data", DATA, "--out", str(tmp_path / "align"), "--preset", "tiny", "--audio-encoder", encoder,
          "--text-model", str(text_model), "--max-steps", "1", "--quiet", *extra])
    seen = capsys.readouterr()
    align_out = seen.out + seen.err  # the result on stdout, the stage's progress lines (load report) on stderr
    teacher = tmp_path / "align" / "teacher"
    main(["distill", "--teacher", str(teacher), "--data", DATA, "--student", "tiny", "--out",
          str(tmp_path / "student"), "--epochs", "1", "--batch-size", "8", "--max-windows", "2", "--quiet"])
    capsys.readouterr()
    return align_out, read_checkpoint_info(teacher), read_checkpoint_info(tmp_path / "student")


def test_cli_aligns_a_128_mel_ast_then_distills(tmp_path, capsys, text_model):
    folder = build_tiny_ast(tmp_path / "ast", frames=800, n_mels=128, do_normalize=True)
    out, teacher, student = _align_then_distill(tmp_path, capsys, f"hf:{folder}", text_model,
                                                ["--frontend", "model"])
    assert "teacher:" in out and f"encoder weights: {folder}: loaded " in out
    assert teacher.extra["encoder_load_report"]["complete"] is True
    assert teacher.model_config["encoder_type"] == "hf-ast" and teacher.frontend.n_mels == 128
    assert teacher.frontend.preemphasis == 0.97 and teacher.windowing.window_s == 8.0
    # the student takes the device preset with the teacher's windows (8 s every 4 s)
    assert student.frontend.device_ready and student.windowing == teacher.windowing
    model, _ = load_checkpoint(tmp_path / "align" / "teacher")
    emb, _ = model(torch.zeros(1, 1, 798, 128))
    assert emb.shape == (1, teacher.embedding_dim)


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_cli_aligns_a_waveform_model_then_distills(tmp_path, capsys, text_model, kind):
    folder = build_tiny_wav2vec2(tmp_path / kind, kind=kind, do_normalize=False)
    # no --frontend-preset: an hf: folder defaults to its own preprocessing
    out, teacher, student = _align_then_distill(tmp_path, capsys, f"hf:{folder}", text_model)
    assert "teacher:" in out
    assert teacher.model_config["encoder_type"] == "hf-waveform"
    assert teacher.model_config["encoder"]["do_normalize"] is False
    assert teacher.frontend.representation == "waveform"
    assert student.frontend.device_ready and student.windowing == teacher.windowing


def test_waveform_model_behind_a_log_mel_front_end_is_refused(tmp_path, capsys, text_model):
    from acula_edge.cli import main

    folder = build_tiny_wav2vec2(tmp_path / "w2v")
    with pytest.raises(SystemExit) as e:
        main(["align", "--data", DATA, "--out", str(tmp_path / "a"), "--preset", "tiny", "--audio-encoder",
              f"hf:{folder}", "--frontend", "heart", "--text-model", str(text_model), "--quiet"])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (transformers' loading bars come before it)
    assert "takes raw waveforms but front-end preset 'heart' gives log-mel windows" in last
    assert last.endswith("use --frontend model (the model folder's own preprocessing)")
