"""Tiny random Hugging Face models written to a local folder, for tests and offline demos (nothing downloaded).

Each builder writes a ``save_pretrained`` folder (config, safetensors weights and, for text models, a word-level
tokenizer over :data:`WORDS`) and returns its path. The weights are random (seeded): outputs mean nothing, but
every code path that loads a local transformers folder runs exactly as with a real model.
"""

from __future__ import annotations

import os
from pathlib import Path

WORDS = ("heart lung sound sounds recording seconds long finding normal abnormal with a murmur crackles wheezes "
         "the patient is child adult senior sex recorded site subset data signal quality good fair poor "
         "clipping snr about db estimated rate beats per minute of uncertain diagnosis report facts write "
         "short clinical auscultation and . , : ( ) %").split()


def _word_tokenizer(model_max_length: int = 128):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", eos_token="[EOS]", model_max_length=model_max_length)


def build_tiny_text_model(folder: str | os.PathLike, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A tiny BERT text encoder + word-level tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tok = _word_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    folder = Path(folder)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_tiny_causal_lm(folder: str | os.PathLike, hidden: int = 32, seed: int = 0) -> Path:
    """A tiny GPT-2 causal LM + word-level tokenizer (random weights; greedy output is deterministic)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tok = _word_tokenizer(model_max_length=512)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=hidden, n_layer=1, n_head=2, n_positions=512,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    folder = Path(folder)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_tiny_ast(folder: str | os.PathLike, frames: int, n_mels: int, hidden: int = 32, seed: int = 0,
                   do_normalize: bool | None = None) -> Path:
    """A tiny ASTModel taking ``frames`` x ``n_mels`` log-mel input (16 x 16 patches, stride 16); with
    ``do_normalize`` set, also the folder's ASTFeatureExtractor (preprocessor_config.json) for that input."""
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    torch.manual_seed(seed)
    cfg = ASTConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, intermediate_size=2 * hidden,
                    max_length=frames, num_mel_bins=n_mels, patch_size=16, frequency_stride=16, time_stride=16)
    folder = Path(folder)
    ASTModel(cfg).save_pretrained(folder)
    if do_normalize is not None:
        ASTFeatureExtractor(num_mel_bins=n_mels, max_length=frames, do_normalize=do_normalize).save_pretrained(folder)
    return folder


def build_tiny_wav2vec2(folder: str | os.PathLike, hidden: int = 32, seed: int = 0, do_normalize: bool | None = None,
                        kind: str = "wav2vec2") -> Path:
    """A tiny Wav2Vec2Model, or HuBERT with ``kind="hubert"`` (raw-waveform input, 5 ms frames at 16 kHz: total
    conv stride 80); with ``do_normalize`` set, also the folder's Wav2Vec2FeatureExtractor."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config_cls, model_cls = {"wav2vec2": (Wav2Vec2Config, Wav2Vec2Model), "hubert": (HubertConfig, HubertModel)}[kind]
    torch.manual_seed(seed)
    cfg = config_cls(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, intermediate_size=2 * hidden,
                     conv_dim=(16, 16), conv_stride=(10, 8), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                     num_conv_pos_embedding_groups=2)
    folder = Path(folder)
    model_cls(cfg).save_pretrained(folder)
    if do_normalize is not None:
        Wav2Vec2FeatureExtractor(do_normalize=do_normalize).save_pretrained(folder)
    return folder
