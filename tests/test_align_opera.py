"""OPERA-GT as a teacher, against OPERA's own code (../shared/vendor/opera; skipped when absent).

OPERA-GT is built by upstream's constructor with random weights, saved as upstream saves checkpoints (a Lightning
checkpoint), loaded with the project's loader; the project's feature must equal upstream's ``forward_feature``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opera_reference import OPERA_GT_KWARGS, opera_modules, opera_preprocess, save_lightning_checkpoint

from acula_edge.align.mae_vit import MAEViTEncoder, vit_config_for
from acula_edge.align.pretrained import load_pretrained
from acula_edge.features import LogMel, normalise_window
from acula_edge.frontend import preset

SAMPLE_RATE = 16000


def _audio(frames: int, seed: int) -> np.ndarray:
    """A test signal giving ``frames`` centred frames (hop 512): a chirp under noise with a slow envelope."""
    n = (frames - 1) * 512
    t = np.arange(n) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    chirp = np.sin(2 * np.pi * (100 + 400 * t) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t))
    return (0.3 * chirp + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def opera_gt(tmp_path_factory):
    """(upstream model in eval mode, path of its Lightning checkpoint)."""
    models_mae = opera_modules()
    torch.manual_seed(0)
    model = models_mae.mae_vit_small(**OPERA_GT_KWARGS).float()
    with torch.no_grad():  # random norms too, so the pooling order matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    path = save_lightning_checkpoint(model, tmp_path_factory.mktemp("opera") / "encoder-operaGT.ckpt")
    return model.eval(), path


def _ours(path, decoder: bool = True):
    cfg = vit_config_for("vit-s", 256, 64)
    if not decoder:
        import dataclasses

        cfg = dataclasses.replace(cfg, decoder_depth=0)
    torch.manual_seed(123)
    enc = MAEViTEncoder(cfg).eval()
    return enc, load_pretrained(enc, path)


@pytest.mark.parametrize("frames", [251, 64])
def test_feature_equals_upstream_forward_feature(opera_gt, frames):
    upstream, path = opera_gt
    enc, report = _ours(path, decoder=False)
    assert report.complete and report.stripped_prefix == ""
    spec = opera_preprocess()(_audio(frames, seed=frames), f_max=8000)  # as get_split_signal_librosa calls it
    assert spec.shape == (frames, 64)
    x = torch.from_numpy(spec).float()
    with torch.no_grad():
        want = upstream.forward_feature(x[None])
        got = enc.embed(x[None, None])
    assert got.shape == want.shape == (1, 384)
    assert (got - want).abs().max().item() < 1e-5
    # and from the project's own "opera" front-end on the same waveform
    fe, _ = preset("opera")
    ours_spec = normalise_window(LogMel(fe)(_audio(frames, seed=frames)), fe)
    assert np.abs(ours_spec - spec).max() < 1e-5
    with torch.no_grad():
        got2 = enc.embed(torch.from_numpy(ours_spec)[None, None])
    assert (got2 - want).abs().max().item() < 1e-5


def test_swin_decoder_is_reported_not_loaded_and_left_fresh(opera_gt):
    _, path = opera_gt
    enc, report = _ours(path, decoder=True)
    torch.manual_seed(123)
    fresh = MAEViTEncoder(vit_config_for("vit-s", 256, 64))
    modules = {m.name: m for m in report.modules}
    assert modules["encoder"].status == "loaded" and modules["encoder"].loaded == 150
    assert modules["decoder"].status == "architecture differs" and modules["decoder"].loaded == 0
    assert not report.complete
    assert "decoder: NOT loaded, freshly initialised" in report.summary()
    # the 16 Swin blocks share some names and shapes with our 6 ViT blocks (qkv, proj, norms, mlp): 80 of their
    # tensors would fit; the others (window attention's meta-MLP and tau, blocks 6-15) are the file's alone
    unexpected = modules["decoder"].unexpected
    assert len(unexpected) == 200 and all(k.startswith("decoder_blocks.") for k in unexpected)
    assert {"decoder_blocks.0.attn.tau", "decoder_blocks.15.norm1.weight"} <= set(unexpected)
    for name, value in enc.state_dict().items():  # nothing of the Swin decoder went into ours
        if name.startswith("decoder") or name == "mask_token":
            torch.testing.assert_close(value, fresh.state_dict()[name], rtol=0, atol=0)
    d = report.to_dict()
    assert d["complete"] is False and [m["status"] for m in d["modules"]] == ["loaded", "architecture differs"]


def test_cli_aligns_from_an_opera_checkpoint_then_distills(tmp_path, capsys, one_torch_thread):
    """A small model of OPERA-GT's class and decoder (upstream's MaskedAutoencoderViTMD, Swin decoder), aligned from
    its Lightning checkpoint with OPERA's preprocessing, then distilled."""
    import json
    from functools import partial

    from acula_edge.align.tiny_models import build_tiny_text_model
    from acula_edge.checkpoint import read_checkpoint_info
    from acula_edge.cli import main

    models_mae = opera_modules()
    torch.manual_seed(0)
    kwargs = {**OPERA_GT_KWARGS, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2,
              "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2, "mlp_ratio": 4,
              "norm_layer": partial(torch.nn.LayerNorm, eps=1e-6)}
    ckpt = save_lightning_checkpoint(models_mae.MaskedAutoencoderViTMD(**kwargs).float(), tmp_path / "opera.ckpt")
    cfg = tmp_path / "vit.json"
    cfg.write_text(json.dumps({"vit_size": "tiny", "vit_frames": 256}))  # OPERA's 256-frame position embedding
    text = build_tiny_text_model(tmp_path / "bert")
    data = "synthetic:heart?n=8&seed=2"
    main(["align", "--data", data, "--out", str(tmp_path / "align"), "--preset", "tiny", "--config", str(cfg),
          "--audio-encoder", "mae-vit", "--pretrained", str(ckpt), "--frontend", "model",
          "--text-model", str(text), "--max-steps", "1", "--quiet"])
    seen = capsys.readouterr()
    out = seen.out + seen.err  # the load report is a progress line (stderr)
    assert "encoder weights:" in out and "INCOMPLETE" in out
    assert "encoder: loaded (18 tensors)" in out
    assert "decoder: NOT loaded, freshly initialised (the file's decoder is another architecture" in out
    teacher = read_checkpoint_info(tmp_path / "align" / "teacher")
    stored = teacher.extra["encoder_load_report"]
    assert stored["complete"] is False and stored["source"] == str(ckpt)
    assert [(m["name"], m["status"]) for m in stored["modules"]] == [("encoder", "loaded"),
                                                                    ("decoder", "architecture differs")]
    assert teacher.frontend == preset("opera")[0] and teacher.model_config["encoder"]["pooling"] == "mean_then_norm"
    main(["distill", "--teacher", str(tmp_path / "align" / "teacher"), "--data", data, "--student", "tiny",
          "--out", str(tmp_path / "student"), "--epochs", "1", "--batch-size", "8", "--max-windows", "2", "--quiet"])
    student = read_checkpoint_info(tmp_path / "student")
    assert student.frontend == preset("acula")[0] and student.windowing == teacher.windowing
