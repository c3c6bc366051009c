"""The exported teacher model: zero-shot head, optional linear head, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from acula_edge.align.cnn_encoder import CNNConfig, CNNEncoder
from acula_edge.align.teacher import ARCHITECTURE, AlignedTeacher
from acula_edge.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from acula_edge.errors import ConfigError
from acula_edge.frontend import preset


def _teacher(head: bool = False) -> AlignedTeacher:
    torch.manual_seed(0)
    enc = CNNEncoder(CNNConfig(n_mels=32, channels=(4, 8), strides=(2, 2), dim=8))
    return AlignedTeacher(enc, hidden_dim=16, embedding_dim=6, labels=("normal", "abnormal"), head=head).eval()


def test_label_embeddings_are_normalised_prompt_means():
    t = _teacher()
    prompts = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0], [0, 0, 3.0, 0, 0, 0]])
    t.set_label_embeddings(prompts, ("normal", "normal", "abnormal"))
    s = 2 ** -0.5
    torch.testing.assert_close(t.label_embeddings, torch.tensor([[s, s, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0]]))
    with pytest.raises(ConfigError, match="no prompt stands for label 'abnormal'"):
        t.set_label_embeddings(prompts[:2], ("normal", "normal"))


def test_linear_head_replaces_zero_shot_and_round_trips(tmp_path):
    t = _teacher(head=True)
    fe, win = preset("heart")
    info = CheckpointInfo(kind="teacher", architecture=ARCHITECTURE, model_config=t.config_dict(), frontend=fe,
                          windowing=win, labels=t.labels, embedding_dim=6)
    save_checkpoint(t, info, tmp_path / "teacher")
    loaded, _ = load_checkpoint(tmp_path / "teacher")
    x = torch.randn(2, 1, win.frames_per_window(fe), fe.n_mels)
    emb, logits = loaded(x)
    torch.testing.assert_close(logits, loaded.head(emb))
    torch.testing.assert_close(emb, t(x)[0])
    assert loaded.config_dict()["head"] is True
