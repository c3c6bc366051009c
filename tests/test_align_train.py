"""train_alignment end to end on tiny synthetic data: teacher folder contract, exact resume, torchrun, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from acula_edge.align.teacher import ARCHITECTURE, AlignedTeacher
from acula_edge.align.tiny_models import build_tiny_text_model
from acula_edge.align.train import AlignConfig, preset_config, train_alignment
from acula_edge.checkpoint import load_checkpoint, read_checkpoint_info
from acula_edge.errors import ConfigError
from acula_edge.training import read_jsonl

DATA = "synthetic:heart?n=16&seed=1"


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    return build_tiny_text_model(tmp_path_factory.mktemp("text") / "bert")


@pytest.fixture(scope="module")
def tiny_cfg(text_model) -> AlignConfig:
    return dataclasses.replace(preset_config("tiny"), text_model=str(text_model), progress=False)


def test_tiny_alignment_writes_a_teacher_that_rebuilds_alone(tiny_cfg, tmp_path):
    torch.set_num_threads(1)
    result = train_alignment(tiny_cfg, DATA, tmp_path / "run")
    assert result.steps == 4 and result.final_loss is not None
    model, info = load_checkpoint(result.teacher_dir)
    assert isinstance(model, AlignedTeacher) and info.kind == "teacher" and info.architecture == ARCHITECTURE
    assert info.labels == ("normal", "abnormal") and info.embedding_dim == tiny_cfg.embedding_dim
    assert info.frontend.sample_rate == 2000 and info.windowing.window_s == 4.0
    assert info.prompts.labels == ("normal", "normal", "abnormal", "abnormal")
    assert "abnormal heart sounds with a murmur" in info.prompts.texts
    assert np.asarray(info.prompts.embeddings).shape == (4, tiny_cfg.embedding_dim)
    assert info.extra["calibration"]["windows"] == 32
    frames = info.windowing.frames_per_window(info.frontend)
    x = torch.randn(3, 1, frames, info.frontend.n_mels)
    emb, logits = model(x)
    assert emb.shape == (3, tiny_cfg.embedding_dim) and logits.shape == (3, 2)
    # zero-shot head: logits are the scaled cosine to each label's mean prompt embedding
    prompts = torch.nn.functional.normalize(torch.tensor(info.prompts.embeddings), dim=-1)
    label_emb = torch.nn.functional.normalize(torch.stack([prompts[:2].mean(0), prompts[2:].mean(0)]), dim=-1)
    expected = tiny_cfg.logit_scale * torch.nn.functional.normalize(emb, dim=-1) @ label_emb.T
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    log = read_jsonl(result.log_path)
    steps = [r for r in log if r["event"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in steps)
    reports = [json.loads(line) for line in result.reports_path.read_text().splitlines()]
    assert len(reports) == 16 and reports[0]["text"].startswith("Heart sound recording")


def test_exact_resume_equals_uninterrupted_run(tiny_cfg, tmp_path):
    torch.set_num_threads(1)
    cfg = dataclasses.replace(tiny_cfg, encoder="mae-vit", vit_size="tiny", calibration="none",
                              checkpoint_every=1)
    straight = train_alignment(cfg, DATA, tmp_path / "a")
    train_alignment(dataclasses.replace(cfg, max_steps=2), DATA, tmp_path / "b")
    resumed = train_alignment(cfg, DATA, tmp_path / "b")
    assert resumed.steps == 4
    assert [r["event"] for r in read_jsonl(resumed.log_path)].count("resume") == 1
    a, _ = load_checkpoint(straight.teacher_dir)
    b, _ = load_checkpoint(resumed.teacher_dir)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        torch.testing.assert_close(va, vb, atol=0, rtol=0)
    mam = [r["mam"] for r in read_jsonl(straight.log_path) if r["event"] == "step"]
    assert len(mam) == 4 and all(m > 0 for m in mam)
    # run-only fields (logging, how far to train) resume; a changed lr is refused, naming the change
    again = train_alignment(dataclasses.replace(cfg, log_every=3, checkpoint_every=2, progress=False), DATA,
                            tmp_path / "b")
    assert again.steps == 4 and [r["event"] for r in read_jsonl(again.log_path)].count("resume") == 2
    with pytest.raises(ConfigError, match=r"state.pt was written by a different configuration \(lr: 0.001 -> 0.5\); "
                                          r"delete it \(or pass resume=False / --no-resume\)"):
        train_alignment(dataclasses.replace(cfg, lr=0.5), DATA, tmp_path / "b")


def test_config_from_dict_refuses_unknown_keys_and_bad_values():
    assert AlignConfig.from_dict({"cnn_channels": [4, 8]}, base=preset_config("tiny")).cnn_channels == (4, 8)
    with pytest.raises(ConfigError, match=r"unknown AlignConfig keys \['learning_rate'\]"):
        AlignConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ConfigError, match=r"AlignConfig.lr must be a finite number, got 'fast'"):
        AlignConfig.from_dict({"lr": "fast"})
    with pytest.raises(ConfigError, match="align_loss 'l2'"):
        AlignConfig(align_loss="l2")
    with pytest.raises(ConfigError, match="unknown align preset 'huge'"):
        preset_config("huge")


def test_waveform_encoder_behind_log_mel_is_refused_before_training(tiny_cfg, tmp_path):
    from acula_edge.align.tiny_models import build_tiny_wav2vec2

    folder = build_tiny_wav2vec2(tmp_path / "w2v")
    cfg = dataclasses.replace(tiny_cfg, encoder=f"hf:{folder}")
    with pytest.raises(ConfigError, match="takes raw waveforms but front-end preset 'heart' gives log-mel"):
        train_alignment(cfg, DATA, tmp_path / "run")


def test_torchrun_two_cpu_processes(text_model, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "acula_edge.align.cli", "--data", DATA, "--out", str(out), "--preset", "tiny",
           "--text-model", str(text_model), "--quiet"]
    # own process group, so a hung run's worker processes are ended with it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun alignment did not finish in 240 s")
    assert proc.returncode == 0, stderr[-3000:]
    assert "teacher:" in stdout
    info = read_checkpoint_info(out / "teacher")
    assert info.extra["world_size"] == 2 and info.kind == "teacher"
    steps = [r for r in read_jsonl(out / "train_log.jsonl") if r["event"] == "step"]
    assert steps and steps[-1]["step"] == 2  # 32 windows / 2 ranks / batch 8
    start = [r for r in read_jsonl(out / "train_log.jsonl") if r["event"] == "start"]
    assert len(start) == 1 and start[0]["world_size"] == 2  # only rank 0 logs


def test_cli_align_tiny(text_model, tmp_path, capsys):
    from acula_edge.cli import main

    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"embedding_dim": 8, "frontend_normalisation": "per_window",
                                    "report_exclude": ["device"]}))
    main(["align", "--data", DATA, "--out", str(tmp_path / "cli"), "--preset", "tiny", "--epochs", "1",
          "--text-model", str(text_model), "--config", str(cfg_file), "--quiet", "--max-steps", "2"])
    assert "teacher:" in capsys.readouterr().out
    info = read_checkpoint_info(tmp_path / "cli" / "teacher")
    assert info.embedding_dim == 8 and info.extra["steps"] == 2
    assert info.frontend.normalisation == "per_window"
    reports = (tmp_path / "cli" / "reports.jsonl").read_text()
    assert "Recorded with a" not in reports and "Data subset" in reports


def test_cli_user_error_is_one_line(tmp_path, capsys):
    from acula_edge.align.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nope": 1}))
    with pytest.raises(SystemExit) as e:
        main(["--data", DATA, "--out", str(tmp_path / "x"), "--config", str(bad)])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown AlignConfig keys ['nope']")


def test_procrustes_calibration_folds_into_the_projection():
    from acula_edge.align.train import AlignmentModel, _make_teacher, _procrustes_calibrate, build_audio_encoder

    torch.manual_seed(0)
    cfg = dataclasses.replace(preset_config("tiny"), embedding_dim=6)
    enc, _ = build_audio_encoder(cfg, 40, 32)
    model = AlignmentModel(enc, 10, cfg).eval()
    teacher = _make_teacher(model, cfg, ("normal", "abnormal"))
    x, t = torch.randn(64, 1, 40, 32), torch.randn(64, 10)
    with torch.no_grad():
        before = teacher.embed(x).double()
        target = model.text_proj(t).double()
    stats, text_mean = _procrustes_calibrate(model, teacher, x, t, "cpu", channels_last=False)
    with torch.no_grad():
        after = teacher.embed(x).double()
    torch.testing.assert_close(text_mean.double(), target.mean(0), atol=1e-5, rtol=1e-5)
    assert after.mean(0).abs().max() < 1e-4  # lands in the centred text space
    # the map is a scaled rotation of the centred embedding: pairwise distances scale uniformly
    d0, d1 = torch.cdist(before, before), torch.cdist(after, after)
    ratio = d1[d0 > 0] / d0[d0 > 0]
    factor = stats["unit_rms_factor"]
    torch.testing.assert_close(ratio, torch.full_like(ratio, stats["scale"] * factor), atol=1e-4, rtol=1e-4)
    assert float(after.square().mean().sqrt()) == pytest.approx(1.0, rel=1e-4)  # unit RMS for students
    resid = (after / factor - (target - target.mean(0))).square().sum() / (target - target.mean(0)).square().sum()
    assert stats["relative_residual"] == pytest.approx(float(resid), rel=1e-4)


def test_hf_ast_teacher_rebuilds_without_the_model_folder(tiny_cfg, tmp_path):
    import shutil

    from acula_edge.align.tiny_models import build_tiny_ast

    folder = build_tiny_ast(tmp_path / "ast", frames=196, n_mels=32)
    cfg = dataclasses.replace(tiny_cfg, encoder=f"hf:{folder}", max_steps=1)
    result = train_alignment(cfg, DATA, tmp_path / "run")
    shutil.rmtree(folder)  # the teacher must not need it
    model, info = load_checkpoint(result.teacher_dir)
    assert info.model_config["encoder_type"] == "hf-ast"
    emb, logits = model(torch.randn(2, 1, 196, 32))
    assert emb.shape == (2, cfg.embedding_dim) and logits.shape == (2, 2)
