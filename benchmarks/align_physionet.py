"""AcuLa alignment on PhysioNet 2016, leave-one-subset-out: does aligning with text help the encoder?

    python benchmarks/align_physionet.py [--holdout b a d f] [--preset cpu] [--epochs 3] [--work /tmp/align-bench]

For every held-out subset: train_alignment on the other subsets (the teacher's reports carry the label, the
recording database/device, duration, heart rate and signal quality), then on the held-out subset, per recording
(mean over its windows):

- linear-probe AUROC (abnormal vs normal) of the encoder output BEFORE alignment (the very initial weights the
  alignment starts from) and AFTER it; the probe is an L2 logistic regression fitted on the training subsets'
  recordings (never on the held-out subset);
- linear-probe AUROC of the teacher embedding (projected, shared space) after alignment;
- zero-shot AUROC after alignment: the teacher's logit difference abnormal - normal from the label prompts (no
  held-out labels and no probe used);
- with ``--supervised``: the same encoder from the same initial weights trained on the labels instead (a linear
  head, class-balanced cross-entropy, the same windows, epochs, batch, learning rate and warm-up), its own head's
  AUROC and the same linear probe on its output: alignment vs supervised training of one encoder;
- the site-shortcut probe (acula_edge.bench.probe.site_probe) of every encoder output: balanced accuracy of
  predicting the subset from the recording embedding, over the training and held-out subsets (chance 0.20).

Runs with one thread (``torch.set_num_threads(1)``). Run folders go to ``--work`` (outside the repo). Prints a
markdown table and writes JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from acula_edge.align.text_teacher import TextTeacher
from acula_edge.bench.metrics import auroc as metrics_auroc
from acula_edge.bench.probe import site_probe
from acula_edge.align.train import align_frontend, build_audio_encoder, preset_config, train_alignment
from acula_edge.checkpoint import load_checkpoint
from acula_edge.data import Dataset, load_dataset
from acula_edge.training import seed_everything, warmup_cosine
from acula_edge.windows import extract_windows

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "physionet2016"


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The project's AUROC (acula_edge.bench.metrics) with this script's argument order."""
    return metrics_auroc(np.asarray(positive, dtype=bool), scores)


def per_recording(values: np.ndarray, recording: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n,) + values.shape[1:], dtype=np.float64)
    counts = np.bincount(recording, minlength=n).astype(np.float64)
    np.add.at(out, recording, values)
    return out / np.maximum(counts, 1)[(...,) + (None,) * (values.ndim - 1)]


def logistic_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, l2: float = 1e-2) -> np.ndarray:
    """Scores of an L2-regularised logistic regression (features standardised on the training set)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.tensor((x_train - mu) / sd, dtype=torch.float64)
    yt = torch.tensor(y_train, dtype=torch.float64)
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")
    pos_weight = (1 - yt.mean()) / yt.mean().clamp_min(1e-6)  # balance classes

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt, pos_weight=pos_weight)
        loss = loss + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (torch.tensor((x_test - mu) / sd) @ w + b).numpy()


@torch.no_grad()
def embed_windows(fn, x: np.ndarray, batch: int = 256, channels_last: bool = False) -> np.ndarray:
    out = []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i:i + batch]).unsqueeze(1)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        r = fn(xb)
        out.append(r.float().numpy() if isinstance(r, torch.Tensor) else np.concatenate(
            [t.float().numpy() for t in r], axis=1))
    return np.concatenate(out)


def train_supervised(cfg, w_train, positive: int, w_test, y_test: np.ndarray) -> tuple[torch.nn.Module, float, float]:
    """The alignment run's encoder, from the same initial weights, trained on the labels with a linear head."""
    seed_everything(cfg.seed, 0)
    frames, n_mels = w_train.x.shape[1], w_train.x.shape[2]
    enc, _ = build_audio_encoder(cfg, frames, n_mels)
    head = torch.nn.Linear(enc.dim, 2)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    y = torch.from_numpy((w_train.y == positive).astype(np.int64))
    batch = cfg.batch_size * cfg.accumulation
    steps = cfg.epochs * -(-len(y) // batch)
    sched = warmup_cosine(opt, min(cfg.warmup_steps, steps // 5), steps)
    weight = (len(y) / (2.0 * torch.bincount(y, minlength=2).clamp_min(1))).float()
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    enc.train()
    done = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            if cfg.max_steps and done >= cfg.max_steps:  # as the alignment run stops
                break
            done += 1
            idx = order[i:i + batch]
            x = torch.from_numpy(w_train.x[idx.numpy()]).unsqueeze(1)
            loss = torch.nn.functional.cross_entropy(head(enc.embed(x)), y[idx], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
    seconds = time.perf_counter() - t0
    enc.eval()
    logits = embed_windows(lambda x: head(enc.embed(x)), w_test.x)
    score = per_recording(logits[:, 1] - logits[:, 0], w_test.recording, int(w_test.recording.max()) + 1)
    return enc, auroc(score, y_test), seconds


def run_fold(dataset: Dataset, holdout: str, cfg, work: Path, teacher_text: TextTeacher,
             supervised: bool = False) -> dict:
    train, test = dataset.where("subset", [holdout], keep=False), dataset.where("subset", [holdout], keep=True)
    fe, win = align_frontend(cfg)
    labels = dataset.labels
    cap = cfg.max_windows_per_recording or None
    w_train = extract_windows(train, fe, win, labels, max_windows_per_recording=cap)
    w_test = extract_windows(test, fe, win, labels, max_windows_per_recording=cap)
    y_train = w_train.recording_labels() == labels.index("abnormal")
    y_test = w_test.recording_labels() == labels.index("abnormal")
    frames, n_mels = w_train.x.shape[1], w_train.x.shape[2]

    seed_everything(cfg.seed, 0)  # the same initial weights train_alignment starts from
    before, _ = build_audio_encoder(cfg, frames, n_mels)
    before.eval()
    cl = before.encoder_type == "cnn"
    res: dict = {"holdout": holdout, "train_recordings": len(train), "test_recordings": len(test),
                 "test_abnormal": int(y_test.sum()), "train_windows": len(w_train.x)}

    groups = [r.metadata["subset"] for r in train] + [r.metadata["subset"] for r in test]
    rec_labels = [r.label for r in train] + [r.label for r in test]

    def probe(fn, channels_last: bool, name: str) -> float:
        f_tr = per_recording(embed_windows(fn, w_train.x, channels_last=channels_last), w_train.recording, len(train))
        f_te = per_recording(embed_windows(fn, w_test.x, channels_last=channels_last), w_test.recording, len(test))
        res[f"site_{name}"] = site_probe(np.concatenate([f_tr, f_te]), groups, rec_labels)["balanced_accuracy"]
        return auroc(logistic_probe(f_tr, y_train.astype(float), f_te), y_test)

    res["probe_before"] = probe(before.embed, cl, "before")
    if supervised:
        enc, head_auroc, seconds = train_supervised(cfg, w_train, labels.index("abnormal"), w_test, y_test)
        res.update(supervised_head=head_auroc, supervised_train_s=seconds)
        res["probe_supervised"] = probe(enc.embed, cl, "supervised")
    t0 = time.perf_counter()
    result = train_alignment(cfg, train, work / f"fold-{holdout}", resume=False, text_teacher=teacher_text)
    res["train_s"] = time.perf_counter() - t0
    res["steps"] = result.steps
    res["final_loss"] = result.final_loss
    teacher, info = load_checkpoint(result.teacher_dir)
    res["probe_after"] = probe(teacher.encoder.embed, cl, "after")
    res["probe_after_shared"] = probe(teacher.embed, cl, "after_shared")
    logits = embed_windows(lambda x: teacher(x)[1], w_test.x, channels_last=cl)
    diff = per_recording(logits[:, labels.index("abnormal")] - logits[:, labels.index("normal")],
                         w_test.recording, len(test))
    res["zero_shot"] = auroc(diff, y_test)
    res["calibration_residual"] = info.extra.get("calibration", {}).get("relative_residual")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--holdout", nargs="+", default=["b", "a", "d", "f"])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--encoder", default=None, help="override the preset's encoder (cnn, mae-vit)")
    ap.add_argument("--loss", default=None, help="override the alignment loss (cka, infonce, siglip)")
    ap.add_argument("--contrastive", type=float, default=None, help="lambda of an extra InfoNCE term (CKA loss)")
    ap.add_argument("--normalisation", default=None, help="front-end normalisation override (per_window, global)")
    ap.add_argument("--exclude", nargs="*", default=None, help="metadata columns left out of the reports")
    ap.add_argument("--supervised", action="store_true", help="also train the same encoder on the labels")
    ap.add_argument("--work", default="/tmp/acula-align-bench")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = dataclasses.replace(preset_config(args.preset), progress=False, text_cache=str(Path(args.work) / "text"))
    if args.epochs:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    if args.encoder:
        cfg = dataclasses.replace(cfg, encoder=args.encoder)
    if args.loss:
        cfg = dataclasses.replace(cfg, align_loss=args.loss)
    if args.contrastive is not None:
        cfg = dataclasses.replace(cfg, lambda_contrastive=args.contrastive)
    if args.normalisation:
        cfg = dataclasses.replace(cfg, frontend_normalisation=args.normalisation)
    if args.exclude is not None:
        cfg = dataclasses.replace(cfg, report_exclude=tuple(args.exclude))
    dataset = load_dataset(args.data)
    text = TextTeacher(cfg.text_model or None, cfg.text_layer, cfg.text_max_length)
    rows = []
    started = time.perf_counter()
    for h in args.holdout:
        row = run_fold(dataset, h, cfg, Path(args.work), text, args.supervised)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"), "machine": platform.platform(),
            "processor": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": 1,
            "config": cfg.to_dict(), "wall_s": time.perf_counter() - started}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "folds": rows}, indent=2))
    print("\n| held out | train rec | test rec (abn) | probe before | probe after (encoder) | probe after (shared) "
          "| zero-shot | supervised: head / probe | site probe: before / aligned / supervised | steps | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sup = (f"{r['supervised_head']:.3f} / {r['probe_supervised']:.3f}" if "supervised_head" in r else "")
        site = " / ".join(f"{r[k]:.3f}" for k in ("site_before", "site_after", "site_supervised") if k in r)
        print(f"| {r['holdout']} | {r['train_recordings']} | {r['test_recordings']} ({r['test_abnormal']}) "
              f"| {r['probe_before']:.3f} | {r['probe_after']:.3f} | {r['probe_after_shared']:.3f} "
              f"| {r['zero_shot']:.3f} | {sup} | {site} | {r['steps']} | {r['train_s']:.0f} |")
    print(f"\n{meta['date']}, {meta['machine']}, torch {meta['torch']}, 1 thread, wall {meta['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
