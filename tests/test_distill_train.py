"""train_student and the ``acula-edge distill`` command: outputs, provenance, resume, errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import assert_same_weights

from acula_edge.checkpoint import CheckpointInfo, load_checkpoint, read_checkpoint_info, save_checkpoint, weights_sha256
from acula_edge.cli import main
from acula_edge.data import load_dataset
from acula_edge.errors import CheckpointError, ConfigError
from acula_edge.frontend import preset
from acula_edge.manifest import Prompts
from acula_edge.training import open_log, read_jsonl
from acula_edge.distill.students import ARCHITECTURE, build_student
from acula_edge.distill.teachers import load_teacher
from acula_edge.distill.train import TrainConfig, split_validation, train_student

FE, WIN = preset("heart")
DATA = "synthetic:heart?n=16&seed=1"
FAST = dict(student="tiny", epochs=1, batch_size=16, max_windows_per_recording=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = build_student("tiny", 16, 2).eval()
    prompts = Prompts(texts=("normal heart sounds", "abnormal heart sounds with a murmur"),
                      embeddings=(tuple(np.linspace(-1, 1, 16)), tuple(np.linspace(1, -1, 16))),
                      labels=("normal", "abnormal"))
    info = CheckpointInfo(kind="teacher", architecture=ARCHITECTURE, model_config=model.config_dict(), frontend=FE,
                          windowing=WIN, labels=("normal", "abnormal"), embedding_dim=16, threshold=0.4,
                          prompts=prompts)
    return save_checkpoint(model, info, tmp_path_factory.mktemp("teacher") / "teacher")


def _cli(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def test_cli_distills_a_student_with_provenance_and_prompts(tmp_path, teacher_dir, capsys):
    out = tmp_path / "student"
    code, io = _cli(["distill", "--teacher", str(teacher_dir), "--data", DATA, "--student", "tiny", "--out",
                     str(out), "--epochs", "2", "--batch-size", "16", "--max-windows", "2", "--quiet"], capsys)
    assert code == 0, io.err
    summary = json.loads(io.out.strip().splitlines()[-1])
    assert summary["teacher_sha256"] == weights_sha256(teacher_dir) and summary["parameters"] <= 30_000
    model, info = load_checkpoint(out)
    teacher_info = read_checkpoint_info(teacher_dir)
    assert info.kind == "student" and info.architecture == ARCHITECTURE
    assert info.frontend == teacher_info.frontend and info.windowing == teacher_info.windowing
    assert info.labels == ("normal", "abnormal") and info.embedding_dim == 16
    # the student's own operating point, chosen on its validation split (not the teacher's 0.4)
    assert info.threshold == info.operating_point.threshold and info.operating_point.method == "youden"
    assert summary["operating_point"] == info.operating_point.to_dict()
    assert info.prompts == teacher_info.prompts  # zero-shot carries over: same shared space
    assert info.extra["teacher_sha256"] == weights_sha256(teacher_dir)
    assert info.extra["teacher_logits"] == "head"
    assert info.extra["training_config"]["epochs"] == 2 and info.extra["training_config"]["student"] == "tiny"
    assert set(info.extra["metrics"]["val"]) >= {"auroc", "se", "sp", "macc", "teacher_cosine"}
    emb, logits = model(torch.zeros(1, 1, WIN.frames_per_window(FE), FE.n_mels))
    assert emb.shape == (1, 16) and logits.shape == (1, 2)
    log = read_jsonl(tmp_path / "student.run" / "train_log.jsonl")
    assert [r["event"] for r in log] == ["start", "epoch", "epoch", "done"]
    assert log[0]["split"].startswith("groups of 'subset'")


def test_resume_continues_from_the_saved_step(tmp_path, teacher_dir, capsys):
    args = ["distill", "--teacher", str(teacher_dir), "--data", DATA, "--student", "tiny", "--out",
            str(tmp_path / "s"), "--batch-size", "16", "--max-windows", "2", "--quiet"]
    assert _cli(args + ["--epochs", "1"], capsys)[0] == 0
    first = [r for r in read_jsonl(tmp_path / "s.run" / "train_log.jsonl") if r["event"] == "epoch"]
    assert _cli(args + ["--epochs", "2"], capsys)[0] == 0
    log = read_jsonl(tmp_path / "s.run" / "train_log.jsonl")
    resumed = [r for r in log if r["event"] == "resume"]
    epochs = [r for r in log if r["event"] == "epoch"]
    assert resumed == [dict(resumed[0], step=first[0]["step"], epoch=1)]
    assert [r["epoch"] for r in epochs] == [1, 2] and epochs[1]["step"] == 2 * first[0]["step"]
    assert read_checkpoint_info(tmp_path / "s").extra["metrics"]["steps"] == 2 * first[0]["step"]
    # --no-resume starts over: a new "start" record, and the step count restarts
    assert _cli(args + ["--epochs", "1", "--no-resume"], capsys)[0] == 0
    log = read_jsonl(tmp_path / "s.run" / "train_log.jsonl")
    assert [r["event"] for r in log].count("start") == 2 and log[-2]["step"] == first[0]["step"]


def test_interrupted_run_resumes_exactly(tmp_path, teacher_dir, interrupted_then_resumed):
    cfg = TrainConfig(**{**FAST, "epochs": 2})
    data = load_dataset(DATA)
    teacher = load_teacher(teacher_dir)
    train_student(cfg, teacher, data, tmp_path / "straight", progress=False)
    interrupted_then_resumed(lambda: train_student(cfg, teacher, data, tmp_path / "crashed", progress=False))
    assert_same_weights(tmp_path / "straight", tmp_path / "crashed")


def test_resume_refuses_a_changed_run_but_not_run_only_fields(tmp_path, teacher_dir):
    data = load_dataset(DATA)
    cfg = TrainConfig(**FAST)
    train_student(cfg, teacher_dir, data, tmp_path / "s", progress=False)
    # run-only fields (how far to train, patience, teacher batching, the operating-point method) resume: one more
    # epoch, one "start", and the point chosen by the new method
    out = train_student(dataclasses.replace(cfg, epochs=2, patience=1, teacher_batch_size=7,
                                            operating_point="0.25"), teacher_dir, data, tmp_path / "s", progress=False)
    assert read_checkpoint_info(out).threshold == 0.25
    events = [r["event"] for r in read_jsonl(tmp_path / "s.run" / "train_log.jsonl")]
    assert events.count("start") == 1 and events.count("resume") == 1 and events.count("epoch") == 2
    with pytest.raises(ConfigError, match=r"state.pt was written by a different configuration \(lr: 0.003 -> 0.01\); "
                                          r"delete it \(or pass resume=False / --no-resume\)"):
        train_student(dataclasses.replace(cfg, lr=0.01), teacher_dir, data, tmp_path / "s", progress=False)
    with pytest.raises(ConfigError, match=r"different configuration \(embedding_dim: 384 -> 16; teacher: "
                                          r"'[0-9a-f]{64}' -> 'none'\)"):  # the same shapes, another teacher
        train_student(dataclasses.replace(cfg, embedding_dim=16), None, data, tmp_path / "s", progress=False)


def test_a_run_folder_of_an_older_version_keeps_its_log(tmp_path):
    run = tmp_path / "s.run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"event": "start", "step": 0}\n')
    open_log(run).write(event="resume", step=3)
    assert not (run / "log.jsonl").exists()
    assert [r["event"] for r in read_jsonl(run / "train_log.jsonl")] == ["start", "resume"]


def test_run_folder_of_another_architecture_gives_a_mismatch_report(tmp_path, teacher_dir, capsys):
    args = ["distill", "--teacher", str(teacher_dir), "--data", DATA, "--out", str(tmp_path / "s"),
            "--epochs", "1", "--batch-size", "16", "--max-windows", "2", "--quiet"]
    config = tmp_path / "distill.json"
    config.write_text(json.dumps({"student": "tiny", "epochs": 7, "distill": {"temperature": 3.0}}))
    assert _cli(args + ["--config", str(config)], capsys)[0] == 0  # flags override the file: 1 epoch
    used = read_checkpoint_info(tmp_path / "s").extra["training_config"]
    assert (used["student"], used["epochs"], used["distill"]["temperature"]) == ("tiny", 1, 3.0)
    code, io = _cli(args + ["--student", "small"], capsys)
    assert code == 2
    assert "weights do not match the architecture" in io.err and "other shapes" in io.err
    assert "another student architecture" in io.err
    with pytest.raises(CheckpointError, match="weights do not match"):
        train_student(TrainConfig(**{**FAST, "student": "small"}), teacher_dir, DATA, tmp_path / "s",
                      progress=False)


def test_scratch_baseline_and_precomputed_teacher(tmp_path, teacher_dir):
    data = load_dataset(DATA)
    out = train_student(TrainConfig(**FAST, embedding_dim=12), "none", data, tmp_path / "scratch", progress=False)
    info = read_checkpoint_info(out)
    assert info.extra["teacher_sha256"] is None and info.embedding_dim == 12 and info.prompts == Prompts()
    assert info.frontend == FE  # the "heart" default when no teacher fixes a front-end
    # the same teacher as a file of precomputed outputs (per-window embedding + logits)
    outputs = load_teacher(teacher_dir).compute(data, FE, WIN, max_windows_per_recording=2)
    file = outputs.save(tmp_path / "teacher.safetensors")
    out = train_student(TrainConfig(**FAST), str(file), data, tmp_path / "pre", progress=False)
    info = read_checkpoint_info(out)
    assert info.embedding_dim == 16 and info.extra["teacher_logits"] == "head"
    assert info.extra["windows_with_teacher"] > 0


def test_validation_split_takes_whole_groups_and_config_file(tmp_path):
    data = load_dataset(DATA)
    train, val, how = split_validation(data, TrainConfig(val_fraction=0.25))
    groups_val = {r.metadata["subset"] for r in val}
    assert len(groups_val) == 1 and groups_val.isdisjoint({r.metadata["subset"] for r in train})
    _, val2, how2 = split_validation(data, TrainConfig(group_column="no_such_column"))
    assert how2.startswith("recordings") and {r.label for r in val2} == {"normal", "abnormal"}
    cfg = TrainConfig.from_dict({"student": "base", "distill": {"temperature": 4.0},
                                 "augment": {"noise_snr_db": [0, 10]}})
    assert cfg.distill.temperature == 4.0 and cfg.augment.noise_snr_db == (0, 10)
    with pytest.raises(ConfigError, match="unknown training config keys \\['epoch'\\]"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="unknown distill config keys"):
        TrainConfig.from_dict({"distill": {"temp": 3}})


@pytest.mark.slow
def test_cli_under_torchrun_with_two_processes(tmp_path, teacher_dir):
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    exe = shutil.which("acula-edge", path=os.path.dirname(sys.executable))
    if not torchrun or not exe:
        pytest.skip("torchrun or the acula-edge entry point is not installed")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", exe, "distill", "--teacher", str(teacher_dir),
           "--data", "synthetic:heart?n=12&seed=2", "--student", "tiny", "--out", str(tmp_path / "s"), "--epochs",
           "1", "--batch-size", "4", "--max-windows", "2", "--quiet", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_jsonl(tmp_path / "s.run" / "train_log.jsonl")
    start, epoch = log[0], [r for r in log if r["event"] == "epoch"][0]
    assert start["world_size"] == 2 and start["teacher_logits"] == "head"
    assert epoch["step"] == -(-(start["n_train_windows"] // 2) // 4)  # each rank takes half the windows
    assert read_checkpoint_info(tmp_path / "s").extra["teacher_sha256"] == weights_sha256(teacher_dir)
