"""Audio encoders behind one interface: CNN, OPERA-GT-shaped MAE ViT (and its state-dict loading), HF wrappers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from acula_edge.align.cnn_encoder import CNNConfig, CNNEncoder
from acula_edge.align.encoders import build_encoder, fit_time_axis
from acula_edge.align.mae_vit import MAEViTConfig, MAEViTEncoder, vit_config_for
from acula_edge.align.pretrained import load_pretrained
from acula_edge.errors import CheckpointError, ConfigError

TINY_VIT = MAEViTConfig(input_frames=32, n_mels=16, embed_dim=16, depth=1, num_heads=2, decoder_dim=8,
                        decoder_depth=1, decoder_heads=2)


def test_cnn_embeds_any_length_and_channels_last():
    enc = CNNEncoder(CNNConfig(n_mels=32, channels=(8, 16), strides=(2, 2), dim=12))
    x = torch.randn(3, 1, 196, 32)
    out = enc.embed(x)
    assert out.shape == (3, 12)
    enc_cl = enc.to(memory_format=torch.channels_last).eval()
    enc.eval()
    torch.testing.assert_close(enc_cl(x.contiguous(memory_format=torch.channels_last)), enc(x))
    assert enc.embed(torch.randn(2, 1, 50, 32)).shape == (2, 12)
    assert not enc.supports_mae
    with pytest.raises(ConfigError, match="no masked-spectrogram decoder"):
        enc.mae_loss(x)


def test_encoder_rejects_wrong_mel_count_with_a_clear_message():
    enc = CNNEncoder(CNNConfig(n_mels=32, channels=(8,), strides=(2,), dim=8))
    with pytest.raises(ConfigError, match=r"\(batch, 1, frames, 32\), got \(2, 1, 100, 40\)"):
        enc.embed(torch.randn(2, 1, 100, 40))


def test_build_encoder_round_trips_config_and_refuses_unknown():
    enc = build_encoder("cnn", {"n_mels": 16, "channels": [4, 8], "strides": [2, 2], "dim": 8})
    assert enc.cfg.channels == (4, 8)
    assert build_encoder("mae-vit", MAEViTEncoder(TINY_VIT).config_dict()).cfg == TINY_VIT
    with pytest.raises(ConfigError, match="unknown audio encoder type 'rnn'"):
        build_encoder("rnn", {})
    with pytest.raises(ConfigError, match=r"unknown CNNConfig keys \['width'\]"):
        build_encoder("cnn", {"width": 3})


def test_fit_time_axis_pads_and_crops():
    x = torch.arange(10.0).reshape(1, 1, 5, 2)
    assert fit_time_axis(x, 7)[0, 0, 5:].abs().sum() == 0
    assert fit_time_axis(x, 3).shape == (1, 1, 3, 2)
    torch.testing.assert_close(fit_time_axis(x, 3), x[:, :, :3])


def test_vit_never_pads_and_mae_loss_trains():
    torch.manual_seed(0)
    enc = MAEViTEncoder(TINY_VIT).eval()
    x = torch.randn(4, 1, 30, 16)  # 30 frames: 7 time patches of 4 (OPERA: no padding, the rest dropped)
    assert enc.embed(x).shape == (4, 16)
    torch.testing.assert_close(enc.embed(x), enc.embed(x[:, :, :28]))
    assert (enc.embed(x) - enc.embed(torch.nn.functional.pad(x, (0, 0, 0, 2)))).abs().max() > 1e-3
    long = torch.randn(1, 1, 40, 16)  # beyond the 32-frame position embedding: cropped
    torch.testing.assert_close(enc.embed(long), enc.embed(long[:, :, :32]))
    h = enc._encode(enc._tokens(x[:, :, :28]))[:, 1:]
    torch.testing.assert_close(enc.embed(x), enc.norm(h.mean(dim=1)))  # mean of the tokens, then the norm
    other = MAEViTEncoder(dataclasses.replace(TINY_VIT, pooling="norm_then_mean")).eval()
    other.load_state_dict(enc.state_dict())
    torch.testing.assert_close(other.embed(x), enc.norm(h).mean(dim=1))
    with pytest.raises(ConfigError, match="at least patch_t = 4 frames"):
        enc.embed(torch.randn(1, 1, 3, 16))
    loss = enc.mae_loss(x, mask_t=0.7, mask_f=0.3)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert enc.decoder_pred.weight.grad is not None and enc.decoder_pred.weight.grad.abs().sum() > 0


def test_vit_2d_mask_hides_whole_rows_and_columns():
    enc = MAEViTEncoder(TINY_VIT)  # grid 8 x 4
    ids_keep, mask = enc.random_mask_2d(3, 0.7, 0.3, torch.device("cpu"))
    gh, gw = TINY_VIT.grid
    assert ids_keep.shape == (3, int(gh * 0.3) * int(gw * 0.7))
    grid = mask.reshape(3, gh, gw)
    for b in range(3):
        kept_rows = (grid[b] == 0).any(dim=1)
        kept_cols = (grid[b] == 0).any(dim=0)
        # kept cells are exactly the product of kept rows and kept columns
        assert torch.equal(grid[b] == 0, kept_rows[:, None] & kept_cols[None, :])


def test_vit_s_has_opera_gt_shape_and_parameter_names():
    cfg = vit_config_for("vit-s", 249, 64)  # the "acula" front-end: 249 frames -> 252
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.decoder_dim, cfg.decoder_depth) == (384, 12, 6, 256, 6)
    full = MAEViTConfig()
    with torch.device("meta"):
        enc = MAEViTEncoder(full)
    names = set(enc.state_dict())
    for key in ("patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.11.attn.qkv.weight",
                "blocks.0.mlp.fc2.bias", "norm.weight", "decoder_embed.weight", "mask_token", "decoder_pos_embed",
                "decoder_blocks.5.norm2.weight", "decoder_norm.bias", "decoder_pred.weight"):
        assert key in names
    assert tuple(enc.pos_embed.shape) == (1, 64 * 16 + 1, 384)
    assert tuple(enc.patch_embed.proj.weight.shape) == (384, 1, 4, 4)


def test_load_pretrained_loads_each_module_whole_or_not_at_all(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = MAEViTEncoder(TINY_VIT)
    state = {f"model.{k}": v for k, v in src.state_dict().items()}  # Lightning-style prefix
    state["model.head.weight"] = torch.zeros(3)
    state["model.decoder_pos_embed"] = torch.zeros(1, 5, 8)  # another decoder design
    del state["model.decoder_norm.bias"]
    path = tmp_path / "opera.safetensors"
    save_file(state, str(path))
    torch.manual_seed(2)
    dst = MAEViTEncoder(TINY_VIT)
    fresh_decoder = dst.decoder_pred.weight.detach().clone()
    report = load_pretrained(dst, path)
    assert report.stripped_prefix == "model."
    enc, dec = report.modules
    assert (enc.name, enc.status, enc.loaded) == ("encoder", "loaded", 18)
    assert (dec.name, dec.status, dec.loaded) == ("decoder", "architecture differs", 0)
    assert dec.missing == ("decoder_norm.bias",)
    assert dec.mismatched == ("decoder_pos_embed: file (1, 5, 8) vs model (1, 33, 8)",)
    assert "head.weight" in report.unexpected and not report.complete
    summary = report.summary()
    assert "INCOMPLETE" in summary and "encoder: loaded (18 tensors)" in summary
    assert "decoder: NOT loaded, freshly initialised (the file's decoder is another architecture" in summary
    assert "1 tensors of the file not used by this model: head.weight" in summary
    torch.testing.assert_close(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(dst.decoder_pred.weight, fresh_decoder)  # same shape in the file, still not taken
    # an inference-only encoder has no decoder group: the file's decoder is merely unused
    small = MAEViTEncoder(dataclasses.replace(TINY_VIT, decoder_depth=0))
    small_report = load_pretrained(small, path)
    assert small_report.complete and "decoder_pred.weight" in small_report.unused
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_pretrained(dst, tmp_path / "absent.pt")


def test_hf_ast_encoder_from_local_folder(tmp_path):
    from acula_edge.align.hf_audio import HFASTEncoder, load_hf_audio_encoder
    from acula_edge.align.tiny_models import build_tiny_ast

    folder = build_tiny_ast(tmp_path / "ast", frames=64, n_mels=32)
    enc = load_hf_audio_encoder(folder)
    assert isinstance(enc, HFASTEncoder) and enc.dim == 32
    assert enc.embed(torch.randn(2, 1, 50, 32)).shape == (2, 32)  # padded to the model's 64 frames
    assert enc.pad_value == pytest.approx(4.2677393 / (2 * 4.5689974))  # ASTFeatureExtractor's defaults
    rebuilt = build_encoder("hf-ast", enc.config_dict())
    rebuilt.load_state_dict(enc.state_dict())
    x = torch.randn(1, 1, 64, 32)
    torch.testing.assert_close(rebuilt.eval().embed(x), enc.eval().embed(x))
    with pytest.raises(ConfigError, match="num_mel_bins"):
        enc.embed(torch.randn(1, 1, 64, 40))


def test_hf_waveform_encoder_takes_waveform_windows_and_rebuilds(tmp_path):
    from acula_edge.align.hf_audio import HFWaveformEncoder, load_hf_audio_encoder
    from acula_edge.align.tiny_models import build_tiny_wav2vec2

    enc = load_hf_audio_encoder(build_tiny_wav2vec2(tmp_path / "w2v")).eval()
    assert isinstance(enc, HFWaveformEncoder) and enc.do_normalize  # no preprocessor_config: the extractor default
    samples = torch.randn(2, 3200)
    torch.testing.assert_close(enc.embed(samples.reshape(2, 1, 40, 80)), enc.embed_waveform(samples))
    rebuilt = build_encoder("hf-waveform", enc.config_dict())
    rebuilt.load_state_dict(enc.state_dict())
    torch.testing.assert_close(rebuilt.eval().embed_waveform(samples), enc.embed_waveform(samples))
    with pytest.raises(ConfigError, match="expects waveform windows shaped"):
        enc.embed(torch.randn(1, 196, 32))


def test_hf_loader_refuses_non_model_folder(tmp_path):
    from acula_edge.align.hf_audio import load_hf_audio_encoder

    with pytest.raises(ConfigError, match="no config.json"):
        load_hf_audio_encoder(tmp_path)
