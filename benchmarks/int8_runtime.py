"""Does int8 pay? Per-window latency of the students fp32 vs int8 on every desktop runtime, beside a hand-built
reference DS-CNN, plus the SDK's per-window overhead and the streaming hop against its floor; one process,
interleaved.

    python benchmarks/int8_runtime.py [--sizes small,tiny] [--work /tmp/acula-int8-runtime] [--seconds 20]

Bundles: randomly initialised distill students (latency does not depend on the weights) exported by
acula_edge.export to onnx / tflite / executorch x fp32 / int8 (calibrated on synthetic heart sounds; a size
written ``small:plain-stem`` is exported with its 1-channel stem conv as trained instead of the space-to-depth form
export writes, for a before/after),
and the reference network of benchmarks/reference_dscnn.py exported per each runtime's docs. Cached in ``--work``.

Everything is measured in one process, 1 runtime thread, garbage collection paused, interleaved: every round runs
one step of every row, starting at a rotating row, so the load of a shared machine hits every row alike. Rows:

- ``raw``: the runtime's own call on one window (input already in the model's dtype), what a user calling the
  runtime directly pays;
- ``sdk``: :meth:`EdgeModel.run_window` on the same window (float window in, embedding + probabilities out);
  overhead = sdk - raw (medians);
- ``hop``: one 1 s hop pushed into a :class:`StreamSession` (front-end, quality, model, aggregate), vs ``floor``:
  the incremental front-end on the same hop + window assembly + the model call with the runtime's own API
  (the window quantized when the model takes int8, the logits read back and turned into probabilities: the least
  any streaming implementation must do to give a probability per hop; ``window_runner``); once right after the
  round's other rows, and in a second run as bursts of consecutive hops (``hop:steady``, ``floor:steady``), see HopPair;
  and against the ``checked`` floor: the floor plus the session's checks and statistics written by hand in numpy
  (CheckedFloor), so the report tells what the SDK's machinery costs apart from what its features cost.

Times are CPU time of the process (``time.process_time_ns``), medians over rounds; the report also gives the 90 %
interval of each ratio from a bootstrap over rounds.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
TARGETS = ("onnx", "tflite", "executorch")
from acula_edge.runtime.streaming import STAGES  # noqa: E402  (what a hop is spent on, in report order)
PRECISIONS = ("fp32", "int8")
clock = time.process_time_ns


# -- raw runtime calls ------------------------------------------------------------------------------------------

def _open(path: Path) -> Any:
    """The model file on its runtime with the runtime's own API, 1 thread: an onnxruntime session, an allocated
    LiteRT interpreter or an ExecuTorch method."""
    suffix = path.suffix
    if suffix == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    if suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
        return it
    if suffix == ".pte":
        from executorch.runtime import Runtime

        return Runtime.get().load_program(str(path)).load_method("forward")
    raise ValueError(f"unknown model file type {path}")


def _litert_input(detail: dict, x: np.ndarray) -> np.ndarray:
    """A float window as the interpreter's input tensor: quantized (round, saturate) when the model takes int8."""
    if detail["dtype"] != np.float32:
        scale, zp = detail["quantization"]
        x = np.clip(np.rint(x / scale) + zp, -128, 127).astype(detail["dtype"])
    return x.reshape(detail["shape"])


def raw_runner(path: Path, x: np.ndarray) -> Callable[[], Any]:
    """A no-argument callable running the model file once on ``x`` (float32 window) with the runtime's own API,
    1 thread; integer inputs are quantized once, here, not per call."""
    handle = _open(path)
    if path.suffix == ".onnx":
        feed = {handle.get_inputs()[0].name: x}
        return lambda: handle.run(None, feed)
    if path.suffix == ".tflite":
        d = handle.get_input_details()[0]
        q = _litert_input(d, x)
        outs = [o["index"] for o in handle.get_output_details()]

        def run() -> Any:
            handle.set_tensor(d["index"], q)
            handle.invoke()
            return [handle.get_tensor(i) for i in outs]
        return run
    import torch

    t = torch.from_numpy(x.copy())
    return lambda: handle.execute([t])


def window_runner(path: Path, embedding: bool = False) -> Callable[[np.ndarray], Any]:
    """What a hand-written streaming loop must do per window, with the runtime's own API, 1 thread: the float
    window (1, 1, frames, n_mels) quantized when the model takes int8, one call, the logits read back (dequantized
    when int8) and turned into probabilities. The floor of a streaming hop (HopPair) uses it. ``embedding``: return
    (embedding, probabilities), the embedding read back too (dequantized when int8; the checked floor's)."""
    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max())
        return e / e.sum()

    handle = _open(path)
    if path.suffix == ".onnx":
        name = handle.get_inputs()[0].name
        if embedding:
            def run_onnx(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                emb, z = handle.run(["embedding", "logits"], {name: w})
                return emb[0], softmax(z[0])
            return run_onnx
        return lambda w: softmax(handle.run(["logits"], {name: w})[0][0])
    if path.suffix == ".tflite":
        d = handle.get_input_details()[0]
        outs = handle.get_output_details()
        out = min(outs, key=lambda o: o["shape"][-1])  # the logits: the narrower output
        emb_out = max(outs, key=lambda o: o["shape"][-1])

        def read(o: dict) -> np.ndarray:
            z = handle.get_tensor(o["index"])[0]
            if o["dtype"] != np.float32:
                scale, zp = o["quantization"]
                z = (z.astype(np.float32) - zp) * scale
            return z

        def run(w: np.ndarray) -> np.ndarray:
            handle.set_tensor(d["index"], _litert_input(d, w))
            handle.invoke()
            return softmax(read(out))

        def run_both(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            handle.set_tensor(d["index"], _litert_input(d, w))
            handle.invoke()
            return read(emb_out), softmax(read(out))
        return run_both if embedding else run
    import torch

    if embedding:
        def run_pte(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            emb, z = handle.execute([torch.from_numpy(w)])
            return emb.numpy()[0], softmax(z.numpy()[0])
        return run_pte
    return lambda w: softmax(handle.execute([torch.from_numpy(w)])[1].numpy()[0])


# -- bundles ------------------------------------------------------------------------------------------------------

def build_bundles(work: Path, variant: str) -> dict[tuple[str, str], Path]:
    """Export a seeded random student (``size`` or ``size:stem``) to every target x precision, cached."""
    import torch

    from acula_edge.checkpoint import CheckpointInfo
    from acula_edge.distill.students import ARCHITECTURE, build_student
    from acula_edge.export.api import export_model
    from acula_edge.export.calibration import prepare_data
    from acula_edge.export.tolerances import tolerance_for
    from acula_edge.frontend import preset

    size, _, form = variant.partition(":")
    torch.manual_seed(0)
    fe, win = preset("heart")
    student = build_student(size, embedding_dim=128, num_classes=2).eval()
    # plain-stem: hide for_export, so export writes the 1-channel stem conv as trained
    model = torch.nn.Sequential(student).eval() if form == "plain-stem" else student
    info = CheckpointInfo(kind="student", architecture=ARCHITECTURE, model_config=student.config_dict(),
                          frontend=fe, windowing=win, labels=("normal", "abnormal"), embedding_dim=128,
                          extra=site_description(fe))
    out = {}
    for target in TARGETS:
        for precision in PRECISIONS:
            dest = work / f"{variant.replace(':', '-')}-{target}-{precision}"
            if not (dest / "manifest.json").is_file():
                data = prepare_data(info, precision, calib_data="synthetic:heart?n=24&seed=0"
                                    if precision == "int8" else None)
                # a random-init student: only speed is measured here, so the parity gate is relaxed
                export_model(model, info, dest, target, precision, data=data,
                             tolerance=tolerance_for(target, precision).scaled(0.0))
            out[(target, precision)] = dest
    return out


def site_description(fe: Any) -> dict[str, Any]:
    """A checkpoint ``extra`` with the description of training audio trained students carry (here of 24 synthetic
    heart recordings), so a streaming session accumulates the site-shift statistics as it does for a real bundle."""
    from acula_edge.runtime import site_shift
    from acula_edge.synthetic import generate

    feats = site_shift.features_of((r.samples for r in generate("heart", n=24, seed=0, sample_rate=fe.sample_rate)),
                                   fe)
    return {site_shift.DESCRIPTION_KEY: site_shift.describe(feats).to_dict()}


def calibration_windows(n: int = 32) -> np.ndarray:
    """(n, 1, frames, n_mels) normalised log-mel windows of synthetic heart sounds (the reference's calibration)."""
    from acula_edge.checkpoint import CheckpointInfo
    from acula_edge.export.calibration import prepare_data
    from acula_edge.frontend import preset

    fe, win = preset("heart")
    info = CheckpointInfo(kind="student", architecture="-", model_config={}, frontend=fe, windowing=win,
                          labels=("normal", "abnormal"), embedding_dim=128)
    return prepare_data(info, "int8", calib_data="synthetic:heart?n=24&seed=0").calibration.x[:n]


# -- steps ----------------------------------------------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> Callable[[], dict[str, int]]:
    def step() -> dict[str, int]:
        t0 = clock()
        fn()
        return {"t": clock() - t0}
    return step


def paired(**fns: Callable[[], Any]) -> Callable[[], dict[str, int]]:
    """One step timing each of ``fns`` once, the order rotating every call: whichever runs second finds the
    model's weights in cache, so a fixed order would favour one of them."""
    names = list(fns)
    calls = [0]

    def step() -> dict[str, int]:
        out = {}
        r = calls[0] % len(names)
        calls[0] += 1
        for name in names[r:] + names[:r]:
            t0 = clock()
            fns[name]()
            out[name] = clock() - t0
        return out
    return step


class CheckedFloor:
    """The floor plus, written by hand in plain numpy, every check and statistic a :class:`StreamSession` hop gives:
    what a user would write to get the same answers without the SDK (the session's figures against it say what the
    SDK's own machinery costs, beside what its features cost).

    Per 1 s hop (one quality block = one hop, as in the device presets): the input's finiteness, sum, sum of
    squares and clipped samples; the window's level, DC offset and clip fraction from its blocks; each new frame's
    power pooled into the quality bands, the window's band power summed over its frames and its spectral flatness;
    the flags (thresholds from the loaded model's QualityConfig); the model's embedding and probabilities; the
    running mean of the usable windows' probabilities and embeddings and the decision at the bundle's threshold;
    the site-shift statistics (per-band sum and sum of squares of the log-mel frames). The same facts the session
    reports, each computed the direct way."""

    def __init__(self, model: Any, run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                 first: np.ndarray) -> None:
        from collections import deque
        from acula_edge.features import LogMelStream, normalise_window

        meter = model.meter
        if meter.block != model.hop_samples or meter.bands is None:
            raise ValueError("the checked floor is written for one quality block per hop and a measured flatness")
        self.run, self.cfg, self.bands, self.fe = run, model.quality, meter.bands, model.frontend
        self.normalise, self.threshold, self.n = normalise_window, model.threshold, model.window_samples
        self.stream = LogMelStream(model.frontend, model.logmel)
        frames, power = self.stream.push_with_power(first)
        self.frames = np.array(frames)
        self.pooled = self.bands.pool(power)
        self.blocks = deque((self._block(b) for b in first.reshape(-1, meter.block)), maxlen=meter.blocks_per_window)
        f = frames.astype(np.float64)
        self.site_sum, self.site_sq = f.sum(0), (f * f).sum(0)
        self.p_sum, self.e_sum, self.count = None, None, 0
        self._window()  # the first window, as a session scores it on the first push

    def _block(self, x: np.ndarray) -> tuple[float, float, float]:
        """A block's sum, sum of squares and clipped-sample count, after checking it is finite."""
        sq = float(np.vdot(x, x))
        if not math.isfinite(sq):
            raise ValueError("non-finite input")
        return float(x.sum()), sq, float(np.count_nonzero(np.abs(x) >= self.cfg.clip_level))

    def hop(self, x: np.ndarray) -> bool | None:
        """One hop of samples in; the running decision (None before a usable window) out."""
        self.blocks.append(self._block(x))
        new, power = self.stream.push_with_power(x)
        k = new.shape[0]
        self.frames[:-k] = self.frames[k:]
        self.frames[-k:] = new
        self.pooled[:-k] = self.pooled[k:]
        self.pooled[-k:] = self.bands.pool(power)
        f = new.astype(np.float64)
        self.site_sum += f.sum(0)
        self.site_sq += (f * f).sum(0)
        return self._window()

    def _window(self) -> bool | None:
        """Score the window now held: model, quality flags, running mean and decision."""
        cfg = self.cfg
        emb, probs = self.run(self.normalise(self.frames, self.fe).reshape(1, 1, *self.frames.shape))
        total, total_sq, total_clip = (sum(c) for c in zip(*self.blocks))
        rms_db = 10.0 * math.log10(max(total_sq / self.n, 1e-24))
        band = np.maximum(self.pooled.sum(0), 1e-300)
        flat = float(np.exp(np.log(band).mean()) / band.mean())
        ok = cfg.silence_dbfs <= rms_db <= cfg.max_rms_dbfs and total_clip / self.n <= cfg.max_clip_fraction \
            and abs(total / self.n) <= cfg.max_dc_offset and flat <= cfg.max_flatness
        if ok:
            self.count += 1
            if self.p_sum is None:
                self.p_sum, self.e_sum = probs.astype(np.float64), emb.astype(np.float64)
            else:
                self.p_sum += probs
                self.e_sum += emb
        if not self.count:
            return None
        return bool(self.p_sum[-1] / self.count >= self.threshold)


class HopPair:
    """A StreamSession hop and its floor (and, given ``checked_run``, its :class:`CheckedFloor`) on the same loaded
    bundle, in rotating order inside one step.

    :meth:`step` times one hop of each right after the other rows of the round ran (``hop``, ``floor``: the caches
    hold other models' data, as on a device that does other work between hops); :meth:`steady_step` a burst of
    ``burst`` consecutive hops of each (``hop:steady``, ``floor:steady``: the mean of all but the burst's first
    hop, a device streaming one recording with nothing else running), measured in a run of its own so the bursts
    do not change what the other rows find in the caches."""

    def __init__(self, model: Any, raw: Callable[[np.ndarray], np.ndarray], burst: int = 4,
                 checked_run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        self.burst = burst
        from acula_edge.bench.latency import test_signal
        from acula_edge.features import LogMelStream, normalise_window

        self.model, self.raw = model, raw
        fe = model.frontend
        self.rate, self.hop, self.window = model.sample_rate, model.hop_samples, model.window_samples
        self.signal = test_signal(self.rate, (self.window + 64 * self.hop) / self.rate, fe.fmin, fe.fmax, 0)
        self.n_hops = (self.signal.shape[0] - self.window) // self.hop
        self.normalise = normalise_window
        self.stream = LogMelStream(fe, model.logmel)
        self.frames = np.zeros((model.frames_per_window, fe.n_mels), dtype=np.float32)
        self.frames[:] = self.stream.push(self.signal[:self.window])
        self.session = model.stream(source="bench", keep_windows=False)
        self.session.push(self.signal[:self.window], self.rate)
        # a twin session with its stage timers on: where the hop's time goes (its timers cost a little, so the
        # hop / floor figures come from the untimed session above)
        self.timed = model.stream(source="bench-stages", keep_windows=False)
        self.timed.push(self.signal[:self.window], self.rate)
        self.stages = self.timed.time_stages()
        # the checked floor (CheckedFloor): the floor plus the session's checks and statistics written by hand
        self.checked_run = checked_run
        self.checked = self._new_checked()
        self.k = 0

    def _new_checked(self) -> CheckedFloor | None:
        if self.checked_run is None:
            return None
        return CheckedFloor(self.model, self.checked_run, self.signal[:self.window])

    def agreement(self) -> int:
        """Hops on which a fresh session's raw decision and usable-window count equal a fresh checked floor's, over
        the whole test signal (the two compute the same facts); raises when any differs."""
        session = self.model.stream(source="agreement", keep_windows=False)
        session.push(self.signal[:self.window], self.rate)
        floor = self._new_checked()
        for k in range(self.n_hops):
            s = self.window + k * self.hop
            update = session.push(self.signal[s:s + self.hop], self.rate)[-1]
            decision = floor.hop(self.signal[s:s + self.hop])
            if (update.raw_decision, update.n_windows - update.n_excluded) != (decision, floor.count):
                raise RuntimeError(f"{self.model.bundle_dir}: hop {k}: the checked floor decides {decision} on "
                                   f"{floor.count} usable windows, the session {update.raw_decision} on "
                                   f"{update.n_windows - update.n_excluded}; the comparison would be meaningless")
        return self.n_hops

    def _piece(self) -> np.ndarray:
        k = self.k % self.n_hops
        if k == 0 and self.k:  # wrap: a new recording (untimed)
            for session in (self.session, self.timed):
                session.reset()
                session.push(self.signal[:self.window], self.rate)
            self.stream.reset()
            self.frames[:] = self.stream.push(self.signal[:self.window])
            self.checked = self._new_checked()
        self.k += 1
        s = self.window + k * self.hop
        return self.signal[s:s + self.hop]

    def _floor(self, piece: np.ndarray) -> int:
        t0 = clock()
        new = self.stream.push(piece)
        k = new.shape[0]
        self.frames[:-k] = self.frames[k:]
        self.frames[-k:] = new
        window = self.normalise(self.frames, self.model.frontend)
        self.raw(window.reshape(1, 1, *window.shape))
        return clock() - t0

    def _checked(self, piece: np.ndarray) -> int:
        t0 = clock()
        self.checked.hop(piece)
        return clock() - t0

    def _session(self, piece: np.ndarray) -> int:
        t0 = clock()
        self.session.push(piece, self.rate)
        return clock() - t0

    def _breakdown(self, piece: np.ndarray) -> dict[str, int]:
        for name in self.stages:
            self.stages[name] = 0
        t0 = clock()
        self.timed.push(piece, self.rate)
        total = clock() - t0
        parts = {f"stage:{n}": self.stages[f"{n}_cpu"] for n in STAGES}
        return {**parts, "stage:total": total}

    def _steady(self, run: Callable[[np.ndarray], int]) -> int:
        """Mean CPU time of the burst's hops after its first (both runs see the same hops: the pieces repeat)."""
        pieces = [self._piece() for _ in range(self.burst)]
        run(pieces[0])
        return sum(run(p) for p in pieces[1:]) // (self.burst - 1)

    def step(self) -> dict[str, int]:
        piece = self._piece()
        runs = [("floor", self._floor), ("hop", self._session)]
        if self.checked is not None:
            runs.append(("checked", self._checked))
        shift = self.k % len(runs)  # rotate which runs first (the later ones find the model's weights in cache)
        out = {name: run(piece) for name, run in runs[shift:] + runs[:shift]}
        return {**out, **self._breakdown(piece)}

    def steady_step(self) -> dict[str, int]:
        k, out = self.k, {}
        order = [("floor:steady", self._floor), ("hop:steady", self._session)]
        if self.checked is not None:
            order.append(("checked:steady", self._checked))
        shift = k % len(order)
        for name, run in order[shift:] + order[:shift]:  # rotate which burst runs first
            self.k = k  # the same stretch of the signal for each
            out[name] = self._steady(run)
        return out


# -- statistics ----------------------------------------------------------------------------------------------------

def ratio_ci(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n: int = 500) -> tuple[float, float, float]:
    """Median(a) / median(b) and its 90 % bootstrap interval, resampling rounds (a[i], b[i] share round i)."""
    idx = rng.integers(0, a.shape[0], size=(n, a.shape[0]))
    boots = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    return float(np.median(a) / np.median(b)), float(np.percentile(boots, 5)), float(np.percentile(boots, 95))


def cpu_flags() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no lscpu)"
    model, flags = "", []
    for line in out.splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("Flags:"):
            flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx")) or "vnni" in f]
    return f"{model}; SIMD flags: {' '.join(flags) or 'none'}"


# -- report ----------------------------------------------------------------------------------------------------------

BEGIN, END = "<!-- int8_runtime.py: begin -->", "<!-- int8_runtime.py: end -->"


def splice(path: Path, section: str) -> None:
    """Put ``section`` between this script's markers in ``path`` (after the title block when absent), leaving the
    rest of the file (benchmarks/stream_rtf.py's part) as it is."""
    text = path.read_text() if path.is_file() else "# Runtime\n"
    block = f"{BEGIN}\n{section.rstrip()}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        cut = text.find("\n## ")
        text = text + "\n" + block if cut < 0 else text[:cut + 1] + "\n" + block + "\n" + text[cut + 1:]
    path.write_text(text)


def report(doc: dict) -> str:
    """The markdown section: per-window raw latency, int8 / fp32 and int8 / reference, SDK overhead, hop / floor."""
    rng = np.random.default_rng(0)
    s = {k: np.asarray(v, dtype=np.float64) for k, v in doc["samples_ns"].items()}
    med = {k: float(np.median(v)) / 1e3 for k, v in s.items()}

    def ratio(a: str, b: str) -> str:
        r, lo, hi = ratio_ci(s[a], s[b], rng)
        return f"{r:.2f} [{lo:.2f}, {hi:.2f}]"

    variants = list(dict.fromkeys(m["variant"] for m in doc["meta"] if m["variant"] != "reference"))
    kib = {(m["variant"], m["target"], m["precision"]): m["model_bytes"] / 1024 for m in doc["meta"]}
    size = {m["variant"]: (m["parameters"], m["macs_per_window"] / 1e6) for m in doc["meta"]}
    runtime = {m["target"]: m["runtime"] for m in doc["meta"] if m["runtime"]}
    lines = [
        "## Does int8 pay? Per window, per hop, per SDK call (one interleaved run)", "",
        f"- command: `{doc['command']}`; {doc['date']}",
        f"- CPU: {doc['cpu']}; process pinned to CPUs {doc['affinity']}; 1 runtime thread; load average at start "
        f"{doc['load_average']:.1f} on a machine shared with other jobs: absolute times are inflated, the ratios "
        f"(every row measured in the same rounds) are the figures to read",
        f"- {doc['rounds']} interleaved rounds over {doc['seconds']:.0f} s; CPU time of the process; medians, "
        "ratio intervals are 90 % bootstrap intervals over rounds",
        "- students: random weights (latency does not depend on them), exported by `acula-edge export`; "
        "`small:plain-stem` is `small` exported with its 1-channel stem conv as trained (before the space-to-depth "
        "export form); "
        "reference: benchmarks/reference_dscnn.py, exported per each runtime's docs", "",
        "Raw runtime call per window (µs), and int8 against fp32 and against the reference's int8:", "",
        "| model | params / MMACs | runtime | fp32 µs | int8 µs | int8 / fp32 | int8 / reference int8 | int8 µs per "
        "MMAC | KiB fp32 / int8 |",
        "|---|---|---|---|---|---|---|---|---|"]
    for v in variants + ["reference"]:
        for t in TARGETS:
            f32, i8, ref = f"{v}|{t}|fp32|raw", f"{v}|{t}|int8|raw", f"reference|{t}|int8|raw"
            if f32 not in s:
                continue
            vs_ref = "—" if v == "reference" else ratio(i8, ref)
            params, mmacs = size[v]
            lines.append(f"| {v} | {params / 1e3:.1f}K / {mmacs:.1f} | {runtime.get(t, t)} | {med[f32]:.0f} | "
                         f"{med[i8]:.0f} | {ratio(i8, f32)} | {vs_ref} | {med[i8] / mmacs:.1f} | "
                         f"{kib[(v, t, 'fp32')]:.0f} / {kib[(v, t, 'int8')]:.0f} |")
    lines += ["", "SDK overhead per window: `EdgeModel.run_window` (float window in; quantize, run, checks, "
              "dequantize, softmax) minus the raw call on the same window in the same step (order alternating), "
              "median of the per-step differences (µs) [90 % bootstrap interval]:", "",
              "| model | runtime | fp32 | int8 |", "|---|---|---|---|"]

    def overhead(key: str) -> str:
        d = s[key + "|sdk"] - s[key + "|raw"]
        boots = np.median(d[rng.integers(0, d.shape[0], size=(500, d.shape[0]))], axis=1) / 1e3
        return f"{np.median(d) / 1e3:.1f} [{np.percentile(boots, 5):.1f}, {np.percentile(boots, 95):.1f}]"

    for v in variants:
        for t in TARGETS:
            lines.append(f"| {v} | {runtime.get(t, t)} | {overhead(f'{v}|{t}|fp32')} | "
                         f"{overhead(f'{v}|{t}|int8')} |")
    lines += ["", "Streaming, int8 bundles: CPU per 1 s hop pushed into a `StreamSession` (front-end, quality, "
              "model, aggregate) against the floor (incremental front-end on the same hop + window assembly + "
              "the model called through its runtime's own API: int8 input quantized, logits read back and "
              "turned into probabilities, `window_runner`). `after other rows`: one hop each, timed right after "
              "the round's other rows ran (caches hold other models' data, as on a device doing other work "
              "between hops); `steady`: the mean of 3 consecutive hops each after a first, untimed one (a device "
              "streaming one recording with nothing else running), in a second interleaved run of "
              f"{doc.get('steady_rounds', '?')} rounds over the hop rows only:", "",
              "| model | runtime | floor µs | session hop µs | hop / floor (after other rows) | steady floor µs | "
              "steady hop µs | hop / floor (steady) |", "|---|---|---|---|---|---|---|---|"]
    for v in variants:
        for t in TARGETS:
            k = f"{v}|{t}|int8|stream"
            if f"{k}|hop" in s:
                steady = (f"{med[k + '|floor:steady']:.0f} | {med[k + '|hop:steady']:.0f} | "
                          f"{ratio(k + '|hop:steady', k + '|floor:steady')}" if f"{k}|hop:steady" in s
                          else "— | — | —")
                lines.append(f"| {v} | {runtime.get(t, t)} | {med[k + '|floor']:.0f} | {med[k + '|hop']:.0f} | "
                             f"{ratio(k + '|hop', k + '|floor')} | {steady} |")
    checked = [(v, t) for v in variants for t in TARGETS if f"{v}|{t}|int8|stream|checked" in s]
    if checked:
        counts = sorted({m["checked_floor_agreeing_hops"] for m in doc["meta"] if "checked_floor_agreeing_hops" in m})
        agree = f"{'/'.join(map(str, counts))} hops per bundle" if counts else "not recorded"
        lines += ["", "The same hops against the *checked floor* (`CheckedFloor`): the floor plus every check and "
                  "statistic a session hop gives, written by hand in plain numpy (input finiteness; level, DC and "
                  "clip fraction from per-hop sums; per-frame band power and the window's flatness; the flags at "
                  "the model's thresholds; embedding and probabilities; the running mean and decision; site-shift "
                  "sums), timed in the same steps (order rotating). Its decisions and usable-window counts equal the "
                  f"session's on every hop ({agree}, checked before timing). `features` = checked floor minus floor: what "
                  "the product's checks cost per hop however they are written:", "",
                  "| model | runtime | checked floor µs | features µs | hop / checked floor (after other rows) | "
                  "steady checked floor µs | hop / checked floor (steady) |", "|---|---|---|---|---|---|---|"]
        for v, t in checked:
            k = f"{v}|{t}|int8|stream"
            steady = (f"{med[k + '|checked:steady']:.0f} | {ratio(k + '|hop:steady', k + '|checked:steady')}"
                      if f"{k}|checked:steady" in s else "— | —")
            lines.append(f"| {v} | {runtime.get(t, t)} | {med[k + '|checked']:.0f} | "
                         f"{med[k + '|checked'] - med[k + '|floor']:.0f} | {ratio(k + '|hop', k + '|checked')} | "
                         f"{steady} |")
    lines += ["", "Where a session hop's CPU time goes (a twin session with its stage timers on, same rounds; medians "
              "in µs; `other` = the timed push minus its stages: input checks, buffers, events, timer calls):", "",
              "| model | runtime | front-end | quality | model | aggregate | other | timed push |",
              "|---|---|---|---|---|---|---|---|"]
    for v in variants:
        for t in TARGETS:
            k = f"{v}|{t}|int8|stream"
            if f"{k}|stage:total" in s:
                parts = [float(np.median(s[f"{k}|stage:{n}"])) / 1e3 for n in STAGES]
                total = float(np.median(s[f"{k}|stage:total"])) / 1e3
                other = float(np.median(s[f"{k}|stage:total"] - sum(s[f"{k}|stage:{n}"] for n in STAGES))) / 1e3
                lines.append(f"| {v} | {runtime.get(t, t)} | " + " | ".join(f"{p:.0f}" for p in parts)
                             + f" | {other:.0f} | {total:.0f} |")
    lines += ["", "Against the bars (medians of this run): " + "; ".join(verdicts(med, s, variants))]
    if doc.get("accuracy"):
        lines += accuracy_lines(doc["accuracy"])
    return "\n".join(lines) + "\n"


def verdicts(med: dict, s: dict, variants: list[str]) -> list[str]:
    """One line per bar: small int8 <= 0.75 x fp32 and <= reference int8, tiny int8 <= fp32, SDK overhead <= 30 us,
    session hop <= 1.15 x floor."""
    out = []
    for v, bar in (("small", 0.75), ("tiny", 1.0)):
        if v not in variants:
            continue
        r = {t: med[f"{v}|{t}|int8|raw"] / med[f"{v}|{t}|fp32|raw"] for t in TARGETS}
        out.append(f"{v} int8 / fp32 <= {bar}: {'met' if max(r.values()) <= bar else 'NOT met'} "
                   f"(max {max(r.values()):.2f})")
    if "small" in variants:
        r = {t: med[f"small|{t}|int8|raw"] / med[f"reference|{t}|int8|raw"] for t in TARGETS}
        out.append(f"small int8 / reference int8 <= 1.0: {'met' if max(r.values()) <= 1.0 else 'NOT met'} "
                   f"(max {max(r.values()):.2f})")
    over = [float(np.median(s[f"{v}|{t}|int8|sdk"] - s[f"{v}|{t}|int8|raw"])) / 1e3
            for v in variants for t in TARGETS]
    out.append(f"SDK overhead <= 30 µs (int8 rows): {'met' if max(over) <= 30 else 'NOT met'} "
               f"(max {max(over):.0f} µs, min {min(over):.0f} µs)")
    for kind, suffix in (("after other rows", ""), ("steady", ":steady")):
        hop = [med[f"{v}|{t}|int8|stream|hop{suffix}"] / med[f"{v}|{t}|int8|stream|floor{suffix}"]
               for v in variants for t in TARGETS if f"{v}|{t}|int8|stream|hop{suffix}" in med]
        if hop:
            out.append(f"session hop <= 1.15 x floor ({kind}): {'met' if max(hop) <= 1.15 else 'NOT met'} "
                       f"({min(hop):.2f}-{max(hop):.2f})")
        vs_checked = [med[f"{v}|{t}|int8|stream|hop{suffix}"] / med[f"{v}|{t}|int8|stream|checked{suffix}"]
                      for v in variants for t in TARGETS if f"{v}|{t}|int8|stream|checked{suffix}" in med]
        if vs_checked:
            out.append(f"session hop / checked floor ({kind}): {min(vs_checked):.2f}-{max(vs_checked):.2f}")
    return out


def accuracy_lines(acc: dict) -> list[str]:
    """The stem-form accuracy check from a benchmarks/distill_physionet.py --json file."""
    a = acc["args"]
    lines = ["", f"Accuracy of `small` trained from scratch with each stem form, PhysioNet 2016 leave-one-subset-out "
             f"(held-out subset {', '.join(a['folds'])}; {a['epochs']} epochs, {a['max_windows']} training windows "
             f"per recording, {a['test_windows']} test windows; command `python benchmarks/distill_physionet.py "
             f"--scratch-only --sizes small --stems {' '.join(a['stems'])} --folds {' '.join(a['folds'])} --epochs "
             f"{a['epochs']} --seeds {' '.join(map(str, a['seeds']))}`):", "",
             "`space_to_depth` trains that form from scratch (27 more free taps per output channel than the plain "
             "stem's 45, other initialisation); `conv` is the plain stem students train with.", "",
             "| stem form while training | seed | recording AUROC | MAcc |", "|---|---|---|---|"]
    for r in acc["rows"]:
        _, _, tags = r["model"].partition(",")
        stem, _, seed = tags.partition(",")
        lines.append(f"| {stem} | {seed.removeprefix('seed')} | {r['auroc']:.3f} | {r['macc']:.3f} |")
    means = {}
    for r in acc["rows"]:
        means.setdefault(r["model"].split(",")[1], []).append(r["auroc"])
    lines += ["", "Mean AUROC: " + ", ".join(f"{k} {np.mean(v):.3f} (n={len(v)})" for k, v in means.items())
              + ". Students keep training with the plain stem; export converts it to the space-to-depth form, "
              "which computes the same function (max |difference| of the outputs ~2e-7, "
              "tests/test_distill_students.py), so the shipped model's accuracy is the trained one's."]
    return lines


# -- main -----------------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="small,tiny,small:plain-stem",
                    help="Student variants: a size, or size:plain-stem (exported without the space-to-depth stem).")
    ap.add_argument("--work", default="/tmp/acula-int8-runtime", help="Where bundles are cached.")
    ap.add_argument("--seconds", type=float, default=20.0, help="Steady-state time, all rows together.")
    ap.add_argument("--rounds", type=int, default=200, help="At least this many rounds.")
    ap.add_argument("--json", default="/tmp/acula-int8-runtime.json", help="Raw samples (kept out of the repo).")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_runtime.md"), help="Report to update.")
    ap.add_argument("--report-only", action="store_true", help="Rewrite the report from --json, no measuring.")
    ap.add_argument("--accuracy", help="A distill_physionet.py --json file (stem forms) to add to the report.")
    args = ap.parse_args()
    if args.report_only:
        doc = json.loads(Path(args.json).read_text())
        if args.accuracy:
            doc["accuracy"] = json.loads(Path(args.accuracy).read_text())
        splice(Path(args.out), report(doc))
        return
    import reference_dscnn

    from acula_edge.bench.latency import measure_interleaved
    from acula_edge.distill.students import build_student, model_report
    from acula_edge.runtime.model import load

    def student_size(variant: str) -> dict[str, int]:
        size, _, form = variant.partition(":")
        student = build_student(size, 128, 2)
        return model_report(student if form else student.for_export(), *x.shape[2:])

    work = Path(args.work)
    variants = [v for v in args.sizes.split(",") if v]
    bundles = {v: build_bundles(work, v) for v in variants}
    calib = calibration_windows()
    reference = reference_dscnn.export_all(calib, work / "reference")
    window = calib[0]  # (1, frames, n_mels)
    x = window[None]  # (1, 1, frames, n_mels)

    names, steps, meta = [], [], []
    hops = {}
    for v in variants:  # SDK loads first: the first ExecuTorch load sizes its threadpool (1 thread)
        for (target, precision), path in bundles[v].items():
            model = load(path, num_threads=1)
            mfile = path / model.manifest.model_file
            raw = raw_runner(mfile, x)
            w = window[0]
            names.append(f"{v}|{target}|{precision}")
            steps.append(paired(raw=raw, sdk=lambda m=model, w=w: m.run_window(w)))
            meta.append({"variant": v, "target": target, "precision": precision, "runtime": model.backend.name,
                         "model_bytes": mfile.stat().st_size, **student_size(v)})
            if precision == "int8":
                hops[(v, target)] = pair = HopPair(model, window_runner(mfile),
                                                   checked_run=window_runner(mfile, embedding=True))
                meta[-1]["checked_floor_agreeing_hops"] = pair.agreement()
    for (target, precision), path in reference.items():
        names.append(f"reference|{target}|{precision}")
        ref = raw_runner(path, x)
        steps.append(paired(raw=ref, again=ref))  # timed like the students' rows: alternately first and second
        meta.append({"variant": "reference", "target": target, "precision": precision, "runtime": "",
                     "model_bytes": path.stat().st_size, **model_report(reference_dscnn.build(), *x.shape[2:])})
    hop_keys = list(hops)
    steps += [hops[k].step for k in hop_keys]
    names += [f"{v}|{t}|int8|stream" for v, t in hop_keys]
    print(f"{len(steps)} rows, interleaved", flush=True)
    date = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    load_avg = os.getloadavg()[0]
    samples, elapsed, rounds = measure_interleaved(steps, warmup=20, runs=args.rounds, min_seconds=args.seconds)
    # the steady hops: a run of their own (bursts of hops would change what the rows above find in the caches)
    steady, steady_s, steady_rounds = measure_interleaved([hops[k].steady_step for k in hop_keys], warmup=5,
                                                          runs=args.rounds, min_seconds=args.seconds / 3)
    series = {}
    for name, runs in (*zip(names, samples), *zip(names[-len(hop_keys):], steady)):
        for key in runs[0]:
            series[name if key == "t" else f"{name}|{key}"] = [r[key] for r in runs]
    doc = {"command": "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
           "date": date, "cpu": cpu_flags(), "load_average": load_avg, "rounds": rounds, "seconds": elapsed,
           "steady_rounds": steady_rounds, "steady_seconds": steady_s,
           "affinity": sorted(os.sched_getaffinity(0)), "meta": meta,
           "medians_us": {k: float(np.median(v)) / 1e3 for k, v in series.items()}, "samples_ns": series}
    Path(args.json).write_text(json.dumps(doc) + "\n")
    section = report(doc)
    splice(Path(args.out), section)
    print(section)
    print(f"wrote {args.out} (samples: {args.json})")


if __name__ == "__main__":
    main()
