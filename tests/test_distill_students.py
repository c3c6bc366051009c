"""Students: size budgets, MAC counting, the checkpoint contract and export-friendly operations."""

from __future__ import annotations

import pytest
import torch

from acula_edge.checkpoint import CheckpointInfo, load_checkpoint, resolve_architecture, save_checkpoint
from acula_edge.errors import ConfigError
from acula_edge.frontend import preset
from acula_edge.distill.students import (ARCHITECTURE, PARAM_BUDGETS, PRESETS, DSCNNStudent, StudentConfig,
                                         build_student, count_macs, count_parameters, model_report,
                                         student_config)

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


def test_forward_shapes_and_only_int8_friendly_operations():
    model = build_student("tiny", 64, 3).eval()
    emb, logits = model(torch.randn(2, 1, FRAMES, FE.n_mels))
    assert emb.shape == (2, 64) and logits.shape == (2, 3)
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    used = {type(modules[n.target]).__name__ for n in graph.nodes if n.op == "call_module"}
    functions = {getattr(n.target, "__name__", str(n.target)) for n in graph.nodes if n.op == "call_function"}
    methods = {n.target for n in graph.nodes if n.op == "call_method"}
    assert used <= {"Conv2d", "BatchNorm2d", "ReLU", "ReLU6", "Hardswish", "Dropout", "Linear", "Identity"}, used
    # global pooling as adaptive_avg_pool2d (XNNPACK delegates it; a plain mean(dim=(2, 3)) is not delegated)
    assert functions <= {"adaptive_avg_pool2d", "add"}, functions
    assert "adaptive_avg_pool2d" in functions
    assert methods <= {"flatten"}, methods
    # the input goes straight into the stem conv: a batch-norm before a padded conv cannot be folded at export
    first = next(n for n in graph.nodes
                 if n.op == "call_module" and not isinstance(modules[n.target], torch.nn.Identity))
    assert isinstance(modules[first.target], torch.nn.Conv2d), first.target


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
