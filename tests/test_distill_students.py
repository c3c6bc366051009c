"""Students: size budgets, MAC counting, the checkpoint contract and export-friendly operations."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from acula_edge.checkpoint import CheckpointInfo, load_checkpoint, resolve_architecture, save_checkpoint
from acula_edge.errors import ConfigError
from acula_edge.frontend import preset
from acula_edge.distill.students import (ARCHITECTURE, PARAM_BUDGETS, PRESETS, DSCNNStudent, StudentConfig,
                                         build_student, count_macs, count_parameters, model_report,
                                         space_to_depth_weight, student_config)

FE, WIN = preset("heart")
FRAMES = WIN.frames_per_window(FE)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_heart_window_shape_is_196_by_32():
    assert (FRAMES, FE.n_mels) == (196, 32)


@pytest.mark.parametrize("size", sorted(PRESETS))
@pytest.mark.parametrize("embedding_dim", [128, 384])
def test_each_size_is_within_its_parameter_budget(size, embedding_dim):
    model = build_student(size, embedding_dim, 2)
    report = model_report(model, FRAMES, FE.n_mels)
    assert report["parameters"] <= PARAM_BUDGETS[size]
    assert report["macs_per_window"] > 0


def test_sizes_are_ordered_and_tiny_is_a_real_network():
    params = {s: count_parameters(build_student(s, 384, 2)) for s in PRESETS}
    assert params["tiny"] < params["small"] < params["base"]
    assert params["tiny"] > 15_000  # not a degenerate trunk
    assert params["small"] > PARAM_BUDGETS["tiny"] and params["base"] > PARAM_BUDGETS["small"]


def test_macs_match_a_hand_count():
    cfg = StudentConfig(channels=(4, 8), strides=((2, 2), (1, 1)), stem_kernel=(3, 3), embedding_dim=5,
                        num_classes=3, input_norm=False)
    model = DSCNNStudent(cfg)
    # stem: out 4 x 10 x 4 on a 20 x 8 input (stride 2, pad 1), 3x3x1 kernel; dw: 4 x 10 x 4, 3x3;
    # pw: 8 x 10 x 4, 4 inputs; embed 8 -> 5; head 5 -> 3
    expected = 4 * 10 * 4 * 9 + 4 * 10 * 4 * 9 + 8 * 10 * 4 * 4 + 8 * 5 + 5 * 3
    assert count_macs(model, (1, 1, 20, 8)) == expected
    # the space-to-depth stem reads 2 x 2 blocks (4 channels) with a 3 x 3 kernel: 36 MACs per output, not 9
    s2d = DSCNNStudent(dataclasses.replace(cfg, stem="space_to_depth"))
    assert count_macs(s2d, (1, 1, 20, 8)) == expected + 4 * 10 * 4 * (36 - 9)


def test_forward_shapes_and_only_int8_friendly_operations():
    model = build_student("tiny", 64, 3).for_export()  # the form export writes
    emb, logits = model(torch.randn(2, 1, FRAMES, FE.n_mels))
    assert emb.shape == (2, 64) and logits.shape == (2, 3)
    graph = torch.export.export(model, (torch.randn(1, 1, FRAMES, FE.n_mels),)).graph
    ops = {n.target.__name__.split(".")[0] for n in graph.nodes if n.op == "call_function"}
    # the space-to-depth (view/permute), conv + batch-norm, relu, residual add, the pool XNNPACK delegates
    # (adaptive_avg_pool2d, not mean(dim=(2, 3))), linear layers; no float ops that stay float in int8 models
    assert ops <= {"view", "reshape", "permute", "conv2d", "batch_norm", "getitem",
                   "relu", "add", "adaptive_avg_pool2d", "flatten", "linear", "dropout"}, ops
    assert {"adaptive_avg_pool2d", "permute", "conv2d"} <= ops
    # the input goes straight into the stem (space-to-depth, then conv): a batch-norm before a padded conv
    # cannot be folded at export
    first = next(n for n in graph.nodes if n.op == "call_function")
    assert first.target.__name__.split(".")[0] in {"view", "reshape"}, first.target


@pytest.mark.parametrize("size", ["tiny", "small", "small-mcu"])
@pytest.mark.parametrize("shape", [(FRAMES, FE.n_mels), (21, 9)])  # whole blocks, and a padded last block
def test_space_to_depth_stem_equals_the_plain_stem_conv_with_converted_weights(size, shape):
    torch.manual_seed(0)
    cfg = student_config(size, 16, 2, stem="space_to_depth")
    plain = DSCNNStudent(dataclasses.replace(cfg, stem="conv"))
    for m in plain.modules():  # non-trivial batch-norm statistics, so the comparison covers them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    plain.eval()
    s2d = DSCNNStudent(cfg).eval()
    s2d.load_state_dict(plain.state_dict())  # the plain (C, 1, 9, 5) stem weight converts on load
    assert tuple(s2d.stem[0].weight.shape) == (cfg.channels[0], 8, 3, 3)
    x = torch.randn(3, 1, *shape)
    with torch.no_grad():
        for a, b in zip(plain(x), s2d(x)):
            torch.testing.assert_close(b, a, atol=2e-6, rtol=1e-5)


def test_for_export_is_the_same_function_with_the_space_to_depth_stem(tmp_path):
    torch.manual_seed(1)
    model = build_student("tiny", 16, 2)
    assert model.config.stem == "conv"  # students train with the plain stem
    info = CheckpointInfo(kind="student", architecture=ARCHITECTURE, model_config=model.config_dict(), frontend=FE,
                          windowing=WIN, labels=("normal", "abnormal"), embedding_dim=16)
    save_checkpoint(model, info, tmp_path / "s")
    loaded, _ = load_checkpoint(tmp_path / "s")
    fast = loaded.for_export()
    assert fast.config.stem == "space_to_depth" and not fast.training and loaded.config.stem == "conv"
    x = torch.randn(2, 1, FRAMES, FE.n_mels)
    with torch.no_grad():
        for a, b in zip(loaded.eval()(x), fast(x)):
            torch.testing.assert_close(b, a, atol=2e-6, rtol=1e-5)


def test_space_to_depth_weight_places_every_tap_once():
    w = torch.arange(1, 46, dtype=torch.float32).reshape(1, 1, 9, 5)
    out = space_to_depth_weight(w, (4, 2))
    assert out.shape == (1, 8, 3, 3)
    nonzero = out[out != 0]
    assert sorted(nonzero.tolist()) == list(range(1, 46))  # each of the 45 taps exactly once, 27 zeros
    # block row 1 (the output's own block), channel 0 (row 0, column 0 of the block) is the kernel's centre tap
    assert out[0, 0, 1, 1] == w[0, 0, 4, 2]
    with pytest.raises(ConfigError, match="converts a 1-input-channel conv"):
        space_to_depth_weight(torch.zeros(2, 3, 3, 3), (2, 2))
    with pytest.raises(ConfigError, match="space_to_depth stem needs an odd stem_kernel"):
        StudentConfig(stem_kernel=(4, 3), stem="space_to_depth")
    with pytest.raises(ConfigError, match="stem must be one of"):
        StudentConfig(stem="pixel")


def test_checkpoint_round_trip_rebuilds_the_student(tmp_path):
    model = build_student("tiny", 32, 2).eval()
    info = CheckpointInfo(kind="student", architecture=ARCHITECTURE, model_config=model.config_dict(),
                          frontend=FE, windowing=WIN, labels=("normal", "abnormal"), embedding_dim=32)
    save_checkpoint(model, info, tmp_path / "s")
    loaded, info2 = load_checkpoint(tmp_path / "s")
    x = torch.randn(3, 1, FRAMES, FE.n_mels)
    for a, b in zip(model(x), loaded(x)):
        torch.testing.assert_close(a, b)
    assert resolve_architecture(ARCHITECTURE) is DSCNNStudent
    assert loaded.config == student_config("tiny", 32, 2)


def test_config_round_trip_and_validation():
    cfg = student_config("small", 100, 4, activation="relu6")
    assert StudentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown student size 'huge'"):
        student_config("huge", 10, 2)
    with pytest.raises(ConfigError, match="activation must be one of"):
        StudentConfig(activation="gelu")
    with pytest.raises(ConfigError, match="unknown student config keys"):
        StudentConfig.from_dict({"channels": [4], "strides": [[1, 1]], "width": 3})
