"""Throughput of one AcuLa alignment step (forward + backward + AdamW) on this machine, in windows per second.

    python benchmarks/align_throughput.py [--threads 1] [--steps 5]

Sizes: the ``tiny`` and ``cpu`` CNN presets and MAE ViTs (tiny, small-cpu, OPERA-GT ViT-S) with the MAM loss
on, each on its front-end's window (heart: 196 x 32 log-mel; acula: 256 x 64 for ViT-S). Text features are random
384-d vectors (the text teacher is frozen and its embeddings cached, so it costs nothing per step). Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import time

import torch

from acula_edge.align.train import AlignmentModel, build_audio_encoder, preset_config
from acula_edge.frontend import preset as frontend_preset

CASES = [
    # (name, preset, overrides, batch)
    ("cnn tiny", "tiny", {}, 32),
    ("cnn cpu", "cpu", {}, 32),
    ("mae-vit tiny + MAM", "tiny", {"encoder": "mae-vit", "vit_size": "tiny"}, 32),
    ("mae-vit small-cpu + MAM", "cpu", {"encoder": "mae-vit", "vit_size": "small-cpu"}, 16),
    ("mae-vit ViT-S + MAM (OPERA-GT)", "vit-s", {}, 4),
]


def measure(preset: str, overrides: dict, batch: int, steps: int) -> tuple[float, int]:
    cfg = dataclasses.replace(preset_config(preset), **overrides)
    fe, win = frontend_preset(cfg.frontend_preset)
    frames = win.frames_per_window(fe)
    torch.manual_seed(0)
    enc, _ = build_audio_encoder(cfg, frames, fe.n_mels)
    model = AlignmentModel(enc, 384, cfg)
    cl = enc.encoder_type == "cnn"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, frames, fe.n_mels)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randn(batch, 384)
    g = torch.arange(batch)

    def step() -> None:
        loss, _ = model(x, t, g)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt_s = time.perf_counter() - t0
    return batch * steps / dt_s, sum(p.numel() for p in enc.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=None, help="case names to run (substring match)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| encoder | input | encoder params | batch | windows/s |")
    print("|---|---|---|---|---|")
    for name, preset, overrides, batch in CASES:
        if args.only and not any(o in name for o in args.only):
            continue
        cfg = dataclasses.replace(preset_config(preset), **overrides)
        fe, win = frontend_preset(cfg.frontend_preset)
        steps = args.steps if "ViT-S" not in name else max(2, args.steps // 2)
        rate, params = measure(preset, overrides, batch, steps)
        shape = f"{cfg.frontend_preset}: {win.frames_per_window(fe)} x {fe.n_mels}"
        if cfg.encoder == "mae-vit":  # no padding (OPERA's forward_feature): whole patches of the window
            shape += f" ({win.frames_per_window(fe) // cfg.vit_patch[0]} time patches)"
        print(f"| {name} | {shape} | {params:,} | {batch} | {rate:.3g} |", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{dt.datetime.now(dt.timezone.utc).isoformat(timespec='minutes')}, {platform.platform()}, "
          f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, load average {load:.1f}")


if __name__ == "__main__":
    main()
