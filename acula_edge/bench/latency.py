"""Latency of bundles on this machine, measured the way a device streams: one hop of audio at a time.

Per bundle: load time (manifest, checksum, runtime init) twice: ``cold_load_ms`` (includes importing the runtime
when it is the first bundle of its runtime in the process: ExecuTorch imports torch) and ``load_ms`` (the bundle
alone, runtime already imported); the first inference; then steady state. Each steady-state
step pushes one hop of a seeded test signal and times

- ``model_switch``: one model call on the previous window before anything else in the step. With several bundles
  this is the first call after the other bundles ran, with this model's weights evicted from the CPU caches
  (what a device that alternates models pays); it also warms the caches, so the stages below are measured as on a
  device running this one model continuously;
- ``session``: a :class:`~acula_edge.runtime.StreamSession` push of the hop (front-end, model, window quality
  checks and the recording aggregate): what an application pays per hop. The stages below are parts of that same
  push, timed by the session itself (:meth:`StreamSession.time_stages`), so the benchmark runs the application's
  code and nothing beside it:
- ``frontend``: the incremental log-mel (:class:`~acula_edge.features.LogMelStream`, only the new frames) and the
  window assembly (rolling frame buffer, window normalisation);
- ``model``: the model on that window (:meth:`EdgeModel.run_window`: quantize, invoke, dequantize, softmax);
- ``hop``: front-end + model (``session`` minus ``hop`` is the quality checks and the aggregate);
- ``hop_cpu``, ``session_cpu``: the same two in CPU time of this process (all its threads) instead of wall
  time. On a busy machine wall time includes the time the process waited for a core; CPU time does not, so it is
  the steadier figure there (with ``--threads`` > 1 it adds up the threads' work and exceeds wall time).

The real-time factor is compute per hop / hop duration (1e-3 = a thousand times faster than real time).

Several bundles are measured interleaved: round ``r`` runs one step of every bundle, starting at bundle
``r mod n``, so slow drifts of a shared, noisy machine (other jobs, thermal throttling) hit every bundle alike and
their ratios hold. Peak RSS is per process: to attribute memory to one bundle, benchmark it alone.
"""

from __future__ import annotations

import gc
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from acula_edge.errors import ConfigError

STAGES = ("model_switch", "frontend", "model", "hop", "session", "hop_cpu", "session_cpu")
# A session keeps every window event of its recording; start a new "recording" (untimed) after this many hops.
SESSION_RESET_HOPS = 1000


@dataclass(frozen=True)
class LatencyConfig:
    """How long and how to measure."""

    threads: int | None = 1  # runtime threads; None = the runtime's default
    warmup: int = 20  # untimed steps per bundle before the steady state
    runs: int = 200  # at least this many timed steps per bundle
    min_seconds: float = 5.0  # and the steady state lasts at least this long (all bundles together), seconds
    seed: int = 0  # seed of the test signal

    def __post_init__(self) -> None:
        problems = []
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be >= 1, got {self.threads}")
        if self.warmup < 0:
            problems.append(f"warmup must be >= 0, got {self.warmup}")
        if self.runs < 1:
            problems.append(f"runs must be >= 1, got {self.runs}")
        if not self.min_seconds >= 0 or math.isinf(self.min_seconds):
            problems.append(f"min_seconds must be a finite number >= 0, got {self.min_seconds}")
        if problems:
            raise ConfigError("invalid latency settings: " + "; ".join(problems))


def test_signal(sample_rate: int, seconds: float, fmin: float, fmax: float, seed: int = 0) -> np.ndarray:
    """Seeded float32 audio in the front-end's band: tone bursts (about 1.2 per second) over low noise.

    Its content does not change the compute of a window, but it keeps the quality checks on their usual path
    (not silence, not noise-like).
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = math.sqrt(max(fmin, 1.0) * fmax)
    env = np.exp(-((((t * 1.2) % 1.0) - 0.1) / 0.04) ** 2)
    x = 0.2 * env * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.standard_normal(n)
    return x.astype(np.float32)


def rss_bytes() -> int | None:
    """Current resident set size of this process (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * resource.getpagesize()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (getrusage; kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class HopBench:
    """One loaded bundle stepped hop by hop through a :class:`~acula_edge.runtime.StreamSession`, the path an
    application runs; the stage breakdown comes from the session's own timers (see the module docstring)."""

    def __init__(self, model: Any, seed: int = 0) -> None:
        from acula_edge.windows import recording_windows

        self.model = model
        fe = model.frontend
        self.rate = model.sample_rate
        self.hop = model.hop_samples
        self.window = model.window_samples
        # A loop of signal long enough that consecutive hops differ; read circularly.
        self.signal = test_signal(self.rate, (self.window + 64 * self.hop) / self.rate, fe.fmin, fe.fmax, seed)
        self._pos = 0
        # the first window, for the first inference and the model_switch call
        self._window = recording_windows(self._take(self.window), fe, model.windowing, model.logmel)[0]
        self.session: Any = None  # started by the first step, so first_inference_ns sees a model never called
        self._stages: dict[str, int] = {}
        self._session_hops = 0

    def _take(self, n: int) -> np.ndarray:
        """The next ``n`` samples of the looped test signal."""
        idx = (self._pos + np.arange(n)) % self.signal.shape[0]
        self._pos = (self._pos + n) % self.signal.shape[0]
        return self.signal[idx]

    def first_inference_ns(self) -> int:
        """Time of the model's first call, on the first window (call once, right after loading, before step)."""
        t0 = time.perf_counter_ns()
        self.model.run_window(self._window)
        return time.perf_counter_ns() - t0

    def _start(self) -> None:
        self.session = self.model.stream(source="bench", keep_windows=False)
        self.session.push(self.signal[:self.window], self.rate)
        self._stages = self.session.time_stages()

    def step(self) -> dict[str, int]:
        """One hop: nanoseconds per stage."""
        if self.session is None:
            self._start()
        piece = self._take(self.hop)
        ts = time.perf_counter_ns()
        self.model.run_window(self._window)
        for name in self._stages:
            self._stages[name] = 0
        c0 = time.process_time_ns()
        t0 = time.perf_counter_ns()
        self.session.push(piece, self.rate)
        t1 = time.perf_counter_ns()
        c1 = time.process_time_ns()
        st = self._stages
        self._session_hops += 1
        if self._session_hops >= SESSION_RESET_HOPS:  # a new recording (untimed)
            self._session_hops = 0
            self._start()
        return {"model_switch": t0 - ts, "frontend": st["frontend"], "model": st["model"],
                "hop": st["frontend"] + st["model"], "session": t1 - t0,
                "hop_cpu": st["frontend_cpu"] + st["model_cpu"], "session_cpu": c1 - c0}


def round_order(round_index: int, n: int) -> list[int]:
    """Bundle indices in round ``round_index``: all ``n``, starting at ``round_index mod n``."""
    return [(round_index + k) % n for k in range(n)]


def measure_interleaved(steps: Sequence[Callable[[], dict[str, int]]], warmup: int, runs: int,
                        min_seconds: float, clock: Callable[[], float] = time.perf_counter,
                        ) -> tuple[list[list[dict[str, int]]], float, int]:
    """Run ``warmup`` untimed rounds, then rounds until every step ran ``runs`` times and ``min_seconds``
    passed. Returns (samples per step, steady-state seconds, rounds). Garbage collection is paused while timing
    (as ``timeit`` does), so a collection of unrelated objects does not land in one bundle's numbers."""
    n = len(steps)
    for r in range(warmup):
        for i in round_order(r, n):
            steps[i]()
    samples: list[list[dict[str, int]]] = [[] for _ in range(n)]
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        r = 0
        while r < runs or clock() - start < min_seconds:
            for i in round_order(r, n):
                samples[i].append(steps[i]())
            r += 1
        elapsed = clock() - start
    finally:
        if was_enabled:
            gc.enable()
    return samples, elapsed, r


def summarise_ms(values_ns: Sequence[int]) -> dict[str, float]:
    """n, mean, std, p50, p90, p99, min, max of nanosecond samples, in milliseconds."""
    v = np.asarray(values_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"n": int(v.shape[0]), "mean": float(v.mean()), "std": float(v.std()), "p50": float(p50),
            "p90": float(p90), "p99": float(p99), "min": float(v.min()), "max": float(v.max())}


def _bundle_info(model: Any, bundle: Path) -> dict[str, Any]:
    m = model.manifest
    model_path = bundle / m.model_file
    return {"bundle": str(bundle), "target": m.target, "precision": m.precision, "runtime": model.backend.name,
            "model_file": m.model_file, "model_bytes": model_path.stat().st_size,
            "labels": list(m.labels), "sample_rate": model.sample_rate, "window_s": m.windowing.window_s,
            "hop_s": m.windowing.hop_s, "input_shape": list(m.inputs[0].shape)}


def bench_latency(bundles: Sequence[str | Path], config: LatencyConfig = LatencyConfig(),
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure ``bundles`` (interleaved) and return the latency JSON document (see :mod:`acula_edge.bench.report`).

    Raises BundleError / MissingDependencyError from loading, before any timing starts.
    """
    from acula_edge.bench.fingerprint import fingerprint
    from acula_edge.bench.report import LATENCY_SCHEMA, LATENCY_SCHEMA_VERSION
    from acula_edge.runtime.model import load

    if not bundles:
        raise ConfigError("give at least one bundle folder to benchmark")
    say = progress or (lambda _msg: None)
    records, benches = [], []
    for b in bundles:
        path = Path(b)
        rss0 = rss_bytes()
        t0 = time.perf_counter_ns()
        cold = load(path, num_threads=config.threads)  # the first bundle of a runtime also imports the runtime
        cold_ns = time.perf_counter_ns() - t0
        t0 = time.perf_counter_ns()
        model = load(path, num_threads=config.threads)  # runtime already imported: the bundle's own cost
        load_ns = time.perf_counter_ns() - t0
        del cold
        bench = HopBench(model, config.seed)
        first_ns = bench.first_inference_ns()
        rss1 = rss_bytes()
        rec = _bundle_info(model, path)
        # the threads the runtime really runs (ExecuTorch's pool is process-wide and sized by its first load)
        threads = getattr(model.backend, "threads", None) or config.threads
        rec.update(threads=threads, cold_load_ms=cold_ns / 1e6, load_ms=load_ns / 1e6,
                   first_inference_ms=first_ns / 1e6,
                   rss_after_load_bytes=rss1, load_rss_delta_bytes=None if rss0 is None or rss1 is None
                   else rss1 - rss0, peak_rss_after_load_bytes=peak_rss_bytes())
        say(f"loaded {path} ({rec['target']} {rec['precision']}, {rec['runtime']}) in {rec['cold_load_ms']:.1f} ms "
            f"cold, {rec['load_ms']:.1f} ms warm; first inference {rec['first_inference_ms']:.3f} ms")
        records.append(rec)
        benches.append(bench)
    say(f"measuring {len(benches)} bundle(s) interleaved: {config.warmup} warm-up rounds, then >= {config.runs} "
        f"rounds and >= {config.min_seconds:g} s")
    samples, elapsed, rounds = measure_interleaved([b.step for b in benches], config.warmup, config.runs,
                                                   config.min_seconds)
    for rec, bench, runs in zip(records, benches, samples):
        hop_s = bench.hop / bench.rate
        stages = {s: summarise_ms([r[s] for r in runs]) for s in STAGES}
        rec["runs"] = len(runs)
        rec["stages_ms"] = stages
        rec["rtf"] = {s: {"mean": stages[s]["mean"] / 1e3 / hop_s, "p50": stages[s]["p50"] / 1e3 / hop_s,
                          "p99": stages[s]["p99"] / 1e3 / hop_s} for s in ("hop", "session", "session_cpu")}
        rec["samples_ms"] = {s: [round(r[s] / 1e6, 6) for r in runs] for s in STAGES}
    return {
        "schema": LATENCY_SCHEMA,
        "schema_version": LATENCY_SCHEMA_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {**asdict(config), "interleaved": True, "order": "round-robin, start rotates each round",
                   "gc_paused_while_timing": True},
        "machine": fingerprint(),
        "steady_seconds": elapsed,
        "rounds": rounds,
        "peak_rss_bytes": peak_rss_bytes(),
        "bundles": records,
    }
