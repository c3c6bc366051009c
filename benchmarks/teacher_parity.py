"""How exactly the project's teachers reproduce their upstream references (figures in RESULTS_align.md).

For each teacher and several random signals (and, for OPERA-GT, random weights), the max abs difference between
the project's feature and the upstream one:
- OPERA-GT (OPERA's own code from ../shared/vendor/opera, loaded as tests/opera_reference.py does): upstream's
  ``forward_feature`` on upstream's preprocessing vs the project's encoder loaded from a Lightning checkpoint, on
  (a) the same upstream spectrogram and (b) the project's "opera" front-end; and the spectrograms themselves;
- AST: ``ASTModel(**ASTFeatureExtractor(wave))`` vs the project's front-end + encoder, padded and cropped;
- wav2vec2 / HuBERT: the model on its extractor's output vs the waveform front-end + encoder, do_normalize on/off.

    python benchmarks/teacher_parity.py --seeds 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the upstream-reference loader


def _wave(n: int, seed: int, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    f0 = rng.uniform(60, 400)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t)
    x = np.sin(2 * np.pi * (f0 + rng.uniform(0, 300) * t) * t) * envelope
    return (rng.uniform(0.05, 0.8) * x + rng.uniform(0.005, 0.1) * rng.standard_normal(n)).astype(np.float32)


def opera_rows(seeds: int, tmp: Path) -> list[tuple[str, float, int]]:
    import dataclasses

    from opera_reference import OPERA_GT_KWARGS, opera_modules, opera_preprocess, save_lightning_checkpoint

    from acula_edge.align.mae_vit import MAEViTEncoder, vit_config_for
    from acula_edge.align.pretrained import load_pretrained
    from acula_edge.features import LogMel, normalise_window
    from acula_edge.frontend import preset

    mae, pre = opera_modules(), opera_preprocess()
    fe = preset("opera")[0]
    worst: dict[str, float] = {}
    for s in range(seeds):
        torch.manual_seed(s)
        up = mae.mae_vit_small(**OPERA_GT_KWARGS).float()
        with torch.no_grad():
            for name, p in up.named_parameters():
                if "norm" in name:
                    p.add_(0.3 * torch.randn_like(p))
        ckpt = save_lightning_checkpoint(up, tmp / f"gt{s}.ckpt")
        ours = MAEViTEncoder(dataclasses.replace(vit_config_for("vit-s", 256, 64), decoder_depth=0)).eval()
        assert load_pretrained(ours, ckpt).complete
        up.eval()
        for frames in (251, 64):
            y = _wave((frames - 1) * 512, 100 * s + frames)
            spec = pre(y, f_max=8000)
            mine = normalise_window(LogMel(fe)(y), fe)
            with torch.no_grad():
                want = up.forward_feature(torch.from_numpy(spec).float()[None])
                a = (ours.embed(torch.from_numpy(spec).float()[None, None]) - want).abs().max().item()
                b = (ours.embed(torch.from_numpy(mine)[None, None]) - want).abs().max().item()
            for key, v in ((f"OPERA-GT feature, upstream spectrogram, {frames} frames", a),
                           (f"OPERA-GT feature, project front-end, {frames} frames", b),
                           (f"'opera' front-end vs pre_process_audio_mel_t, {frames} frames",
                            float(np.abs(mine - spec).max()))):
                worst[key] = max(worst.get(key, 0.0), v)
    return [(k, v, seeds) for k, v in worst.items()]


def hf_rows(seeds: int, tmp: Path) -> list[tuple[str, float, int]]:
    import transformers

    from acula_edge.align.hf_audio import hf_frontend, load_hf_audio_encoder
    from acula_edge.align.tiny_models import build_tiny_ast, build_tiny_wav2vec2
    from acula_edge.features import LogMel

    worst: dict[str, float] = {}
    for s in range(seeds):
        folder = build_tiny_ast(tmp / f"ast{s}", frames=100, n_mels=128, seed=s, do_normalize=True)
        enc, fe = load_hf_audio_encoder(folder).eval(), hf_frontend(folder)[0]
        ext = transformers.ASTFeatureExtractor.from_pretrained(folder)
        model = transformers.ASTModel.from_pretrained(folder).eval()
        for label, seconds in (("padded (0.6 s)", 0.6), ("cropped (1.2 s)", 1.2)):
            y = _wave(int(seconds * 16000), s)
            with torch.no_grad():
                want = model(**ext(y, sampling_rate=16000, return_tensors="pt")).pooler_output
                got = enc.embed(torch.from_numpy(LogMel(fe)(y))[None, None])
            key = f"AST 128-mel embedding, {label}"
            worst[key] = max(worst.get(key, 0.0), (got - want).abs().max().item())
        for kind in ("wav2vec2", "hubert"):
            for flag in (True, False):
                folder = build_tiny_wav2vec2(tmp / f"{kind}{s}{flag}", seed=s, kind=kind, do_normalize=flag)
                enc, fe = load_hf_audio_encoder(folder).eval(), hf_frontend(folder)[0]
                ext = transformers.AutoFeatureExtractor.from_pretrained(folder)
                model = transformers.AutoModel.from_pretrained(folder).eval()
                y = 0.1 + _wave(8000, s)
                with torch.no_grad():
                    want = model(**ext(y, sampling_rate=16000, return_tensors="pt")).last_hidden_state.mean(1)
                    got = enc.embed(torch.from_numpy(LogMel(fe)(y))[None, None])
                key = f"{kind} embedding, do_normalize={flag}"
                worst[key] = max(worst.get(key, 0.0), (got - want).abs().max().item())
    return [(k, v, seeds) for k, v in worst.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        rows = opera_rows(args.seeds, Path(d)) + hf_rows(args.seeds, Path(d))
    print("| comparison | worst max abs diff | seeds |\n|---|---|---|")
    for name, v, n in rows:
        print(f"| {name} | {v:.2e} | {n} |")
    print(f"\nwall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
