"""Soak: stream a long synthetic recording through ONE session, faster than real time, and show that memory stays
flat and the results stay identical to offline processing.

    python benchmarks/soak.py [--bundle DIR | --kind onnx-fp32] [--minutes 60] [--chunk-s 1]
                              [--report-every-min 10] [--check-minutes 5] [--full-check] [--keep-windows]

The audio is generated chunk by chunk from the absolute sample index (heart-like beats whose rate drifts, noise
seeded per chunk, a silent stretch every 7th minute and a clipped one every 11th), so any span can be regenerated
for the offline check without holding the whole recording. Per window the script keeps only what the check needs,
in arrays allocated before the run (probabilities and a quality-flag bit mask), so the benchmark itself does not
grow. The session runs with ``keep_windows=False``, the documented constant-memory mode; ``--keep-windows`` shows
the growth of the per-window history instead.

Prints the process RSS every ``--report-every-min`` minutes of audio and its growth after the first report (the
first minutes warm up the allocator and the runtime), the CPU time and real-time factor, and the check: the windows
of a ``--check-minutes`` span in the middle (``--full-check``: of the whole recording, plus the recording summary)
against ``EdgeModel.classify`` of the same samples. Default bundle: the tiny onnx-fp32 test bundle of
tests/runtime_fixtures.py (built with torch on first use, then cached).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread: a shared machine
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLAG_BITS = {"silence": 1, "clipping": 2, "too_loud": 4, "dc_offset": 8, "noise": 16}


def synth(start: int, n: int, rate: int, chunk: int) -> np.ndarray:
    """Samples ``[start, start + n)`` of the soak recording at ``rate`` Hz, float32; ``chunk`` (samples) is the
    unit the noise is seeded by, so any span regenerates exactly."""
    out = np.empty(n, dtype=np.float32)
    i = start
    while i < start + n:
        c = i // chunk
        lo, hi = i, min((c + 1) * chunk, start + n)
        t = np.arange(lo, hi, dtype=np.float64) / rate
        minute = int(lo / rate // 60)
        bpm = 60.0 + 30.0 * (0.5 + 0.5 * np.sin(2 * np.pi * t / 900.0))  # drifts over 15 minutes
        phase = (t * bpm / 60.0) % 1.0
        env = np.exp(-((phase - 0.05) / 0.03) ** 2) + 0.7 * np.exp(-((phase - 0.4) / 0.03) ** 2)
        x = 0.2 * env * (np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 120 * t + 1.0))
        noise = np.random.default_rng(c).standard_normal(chunk)[lo - c * chunk:hi - c * chunk]
        x += 0.005 * (1 + minute % 5) * noise
        sec = t - 60.0 * np.floor(t / 60.0)
        if minute % 7 == 3:
            x[(sec >= 20) & (sec < 30)] = 0.0
        if minute % 11 == 5:
            m = (sec >= 40) & (sec < 45)
            x[m] = np.clip(x[m] * 30.0, -1.0, 1.0)
        out[lo - start:hi - start] = x
        i = hi
    return out


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


@dataclass
class SoakResult:
    seconds: float  # audio streamed
    cpu_s: float  # process CPU time of the streaming loop
    wall_s: float
    reports: list[tuple[float, int]]  # (audio minutes, memory bytes) every report interval
    probabilities: np.ndarray  # (windows, classes) per window, from the events push() returned
    flags: np.ndarray  # (windows,) quality-flag bit mask (FLAG_BITS)
    summary: object  # the session's ClassificationResult
    checks: dict[str, float] = field(default_factory=dict)

    @property
    def growth(self) -> int:
        """Memory growth from the first report to the last, bytes."""
        return self.reports[-1][1] - self.reports[0][1] if len(self.reports) > 1 else 0


def soak(model, seconds: float, chunk_s: float = 1.0, report_every_s: float = 600.0, keep_windows: bool = False,
         memory: Callable[[], int] = rss_bytes, on_report: Callable[[float, int], None] | None = None) -> SoakResult:
    """Stream ``seconds`` of :func:`synth` audio at the model's rate through one session in ``chunk_s`` chunks."""
    rate = model.sample_rate
    chunk = int(round(chunk_s * rate))
    total = int(seconds * rate)
    n_windows = model.count_windows(total)
    probs = np.zeros((max(n_windows, 1), len(model.labels)), dtype=np.float32)
    flags = np.zeros(max(n_windows, 1), dtype=np.uint8)
    session = model.stream(keep_windows=keep_windows, source="<soak>")
    every = int(round(report_every_s * rate))
    reports: list[tuple[float, int]] = []
    from acula_edge.runtime.results import WindowEvent

    def take(events) -> None:
        for ev in events:
            if isinstance(ev, WindowEvent):
                probs[ev.index] = ev.probabilities
                flags[ev.index] = sum(FLAG_BITS[f] for f in ev.quality.flags)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    pos = 0
    while pos < total:
        n = min(chunk, total - pos)
        take(session.push(synth(pos, n, rate, chunk), rate))
        pos += n
        if pos % every == 0 or pos == total:
            reports.append((pos / rate / 60.0, memory()))
            if on_report is not None:
                on_report(*reports[-1])
    summary = session.finish()
    take(session.tail_events)
    return SoakResult(seconds=total / rate, cpu_s=time.process_time() - cpu0, wall_s=time.perf_counter() - wall0,
                      reports=reports, probabilities=probs[:n_windows], flags=flags[:n_windows], summary=summary)


def check_span(model, result: SoakResult, start_s: float, end_s: float, chunk_s: float = 1.0) -> dict[str, float]:
    """Offline ``classify`` of the samples [start_s, end_s) against the streamed windows inside that span (the span
    starts on a hop). Returns the largest probability difference and the number of windows compared; raises
    AssertionError on a different window count, flag or probability beyond 1e-5."""
    rate, hop = model.sample_rate, model.hop_samples
    a, b = int(start_s * rate), int(end_s * rate)
    if a % hop:
        raise ValueError(f"span start {start_s} s is not on a window hop ({hop / rate} s)")
    offline = model.classify(synth(a, b - a, rate, int(round(chunk_s * rate))), rate)
    k0 = a // hop
    got = result.probabilities[k0:k0 + offline.n_windows]
    want = np.stack([w.probabilities for w in offline.windows])
    want_flags = np.array([sum(FLAG_BITS[f] for f in w.quality.flags) for w in offline.windows], dtype=np.uint8)
    assert got.shape == want.shape, f"{got.shape} streamed windows vs {want.shape} offline"
    assert np.array_equal(result.flags[k0:k0 + offline.n_windows], want_flags), "quality flags differ"
    diff = float(np.abs(got - want).max())
    assert diff <= 1e-5, f"window probabilities differ by {diff}"
    return {"windows": float(offline.n_windows), "max_abs_diff": diff, "excluded": float((want_flags > 0).sum())}


def check_summary(model, result: SoakResult, chunk_s: float = 1.0) -> float:
    """Offline ``classify`` of the whole recording vs the session's summary; returns the largest difference."""
    rate = model.sample_rate
    offline = model.classify(synth(0, int(result.seconds * rate), rate, int(round(chunk_s * rate))), rate)
    s = result.summary
    assert (s.n_windows, s.n_excluded, s.decision) == (offline.n_windows, offline.n_excluded, offline.decision)
    diff = float(np.abs(s.probabilities - offline.probabilities).max())
    assert diff <= 1e-5, f"recording probabilities differ by {diff}"
    return diff


def _bundle(args: argparse.Namespace) -> Path:
    if args.bundle:
        return Path(args.bundle)
    sys.path.insert(0, str(ROOT / "tests"))
    import runtime_fixtures as rf

    return rf.get_bundle(args.kind)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="Bundle folder (default: the tiny test bundle of --kind).")
    p.add_argument("--kind", default="onnx-fp32", help="Test bundle kind when no --bundle (runtime_fixtures.KINDS).")
    p.add_argument("--minutes", type=float, default=60.0, help="Audio to stream, minutes.")
    p.add_argument("--chunk-s", type=float, default=1.0, help="Chunk pushed per call, seconds.")
    p.add_argument("--report-every-min", type=float, default=10.0, help="RSS report interval, minutes of audio.")
    p.add_argument("--check-minutes", type=float, default=5.0, help="Span in the middle checked against offline.")
    p.add_argument("--full-check", action="store_true", help="Also check every window and the summary offline.")
    p.add_argument("--keep-windows", action="store_true", help="Keep every WindowEvent in the session.")
    p.add_argument("--max-growth-mb", type=float, default=2.0, help="Fail when RSS grows more than this.")
    args = p.parse_args(argv)

    import acula_edge

    model = acula_edge.load(_bundle(args), num_threads=1)
    print(f"# soak {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()} "
          f"{platform.processor() or ''} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {model!r}")
    print(f"# {args.minutes:g} min of {model.sample_rate} Hz audio in {args.chunk_s:g} s chunks, keep_windows="
          f"{args.keep_windows}")
    start = rss_bytes()
    print(f"RSS before streaming: {start / 2**20:.1f} MiB")

    def report(minutes: float, rss: int) -> None:
        print(f"  {minutes:6.1f} min of audio: RSS {rss / 2**20:7.2f} MiB", flush=True)

    result = soak(model, args.minutes * 60.0, args.chunk_s, args.report_every_min * 60.0, args.keep_windows,
                  on_report=report)
    s = result.summary
    print(f"windows {s.n_windows} ({s.n_excluded} excluded for quality), decision {s.decision}, "
          f"p={np.round(s.probabilities, 4).tolist()}")
    print(f"CPU {result.cpu_s:.1f} s, wall {result.wall_s:.1f} s for {result.seconds / 60:.0f} min of audio: "
          f"real-time factor {result.cpu_s / result.seconds:.2e} (CPU), {result.wall_s / result.seconds:.2e} (wall)")
    growth = result.growth
    print(f"RSS growth after the first report: {growth / 2**20:+.2f} MiB "
          f"({'ok' if growth <= args.max_growth_mb * 2**20 else 'FAIL'}, bound {args.max_growth_mb:g} MiB)")
    hop_s = model.hop_samples / model.sample_rate
    mid = np.floor(args.minutes * 30.0 / hop_s) * hop_s
    span = check_span(model, result, mid, mid + args.check_minutes * 60.0, args.chunk_s)
    print(f"offline check [{mid / 60:.1f}, {(mid / 60 + args.check_minutes):.1f}) min: {span['windows']:.0f} windows "
          f"({span['excluded']:.0f} flagged), max |p_stream - p_offline| {span['max_abs_diff']:.2e}")
    if args.full_check:
        cpu = time.process_time()
        full = check_span(model, result, 0.0, result.seconds, args.chunk_s)
        diff = check_summary(model, result, args.chunk_s)
        print(f"offline check, whole recording: {full['windows']:.0f} windows, max window diff "
              f"{full['max_abs_diff']:.2e}, summary diff {diff:.2e} ({time.process_time() - cpu:.1f} s CPU)")
    return 0 if growth <= args.max_growth_mb * 2**20 else 1


if __name__ == "__main__":
    sys.exit(main())
