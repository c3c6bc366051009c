"""The loaded bundle: :func:`load` and :class:`EdgeModel` (classify, embed, zero-shot, stream).

Windows are cut exactly as in :mod:`acula_edge.windows`: window ``k`` covers samples
``[k * hop, k * hop + window)`` at the model's rate and the log-mel frames inside them; a window exists when all of
its samples are there (the tail after the last whole window is not scored). A recording shorter than one window is
refused as too short (AudioError), unless the caller asks for zero-padding to one window (``pad=True``, CLI
``--pad``): a padded result rests on less audio than the model was trained on.

Sample rates: offline calls resample the whole input to the model's rate (``resample_poly``); the streaming
session resamples on the fly with a stateful polyphase filter that gives the same samples (see
:mod:`acula_edge.runtime.resampling`). ``classify_file`` streams the file from disk in blocks through a session, so
very long recordings never sit in memory, at any file rate.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from acula_edge.audio import check_audio_file, check_sample_rate, prepare_samples, to_mono_float
from acula_edge.errors import AudioError, BundleError, ConfigError
from acula_edge.manifest import Manifest, read_bundle
from acula_edge.operating_point import OperatingPoint, argmax_rule, fixed, overridden
from acula_edge.runtime.aggregation import DecisionConfig, RecordingAccumulator
from acula_edge.runtime.backends import Backend, open_backend
from acula_edge.runtime import site_shift
from acula_edge.runtime.quality import BlockQuality, QualityConfig
from acula_edge.runtime.results import ClassificationResult, WindowEvent, WindowQuality, ZeroShotResult
from acula_edge.runtime.streaming import StreamSession
from acula_edge.windows import frame_windows

# Samples read per block when classify_file streams a file from disk (2M samples: 8 MB of float32).
FILE_BLOCK_SAMPLES = 1 << 21


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities (C,) float32 of logits (C,); a new array."""
    return _softmax(np.asarray(logits).tolist())


def _softmax(values: list[float]) -> np.ndarray:
    # In Python floats: for the few classes of a head this is a few times faster than numpy's per-call overhead.
    top = max(values)
    e = [math.exp(v - top) for v in values]
    total = sum(e)
    return np.array([v / total for v in e], dtype=np.float32)


class EdgeModel:
    """A bundle loaded on its runtime. Thread-safe: one model can serve many :class:`StreamSession` s."""

    def __init__(self, manifest: Manifest, backend: Backend, bundle_dir: Path,
                 quality: QualityConfig | None = None, threshold: float | None = None) -> None:
        self.manifest = manifest
        self.backend = backend
        self.bundle_dir = bundle_dir
        self.quality = quality or QualityConfig()
        fe, win = manifest.frontend, manifest.windowing
        try:
            win.validate(fe)
        except ConfigError as e:
            raise BundleError(f"{bundle_dir}: the manifest's windowing does not fit its front-end: {e}") from e
        self.frontend = fe
        self.windowing = win
        self.labels = manifest.labels
        self.sample_rate = fe.sample_rate
        self.window_samples = win.window_samples(fe)
        self.hop_samples = win.hop_samples(fe)
        self.frames_per_window = win.frames_per_window(fe)
        self.frames_per_hop = win.frames_per_hop(fe)
        want = (1, 1, self.frames_per_window, fe.n_mels)
        if tuple(manifest.inputs[0].shape) != want:
            raise BundleError(f"{bundle_dir}: the model input shape {manifest.inputs[0].shape} does not match the "
                              f"front-end and windowing {want}; the manifest is inconsistent, re-export the bundle")
        n_classes = int(np.prod(manifest.output("logits").shape))
        if n_classes != len(self.labels):
            raise BundleError(f"{bundle_dir}: {len(self.labels)} labels but the logits output has {n_classes} values")
        # read-only after construction: shared by every session (with an adapted bundle's front-end correction)
        self.logmel = site_shift.bundle_logmel(fe, manifest.extra, str(bundle_dir))
        self.site = site_shift.description_of(manifest.extra, str(bundle_dir))  # training audio, for the warning
        self.meter = BlockQuality(fe, self.window_samples, self.hop_samples, self.quality)  # read-only too
        self._input_shape = want
        self._hop_s, self._window_s = win.hop_s, win.window_s  # a window's times (score_window, every hop)
        self.operating_point = bundle_operating_point(manifest, threshold)

    @property
    def threshold(self) -> float | None:
        """The decision threshold every path applies (None: multi-class, most probable label)."""
        return self.operating_point.threshold

    def __repr__(self) -> str:
        m = self.manifest
        return (f"EdgeModel({self.bundle_dir}, target={m.target}, precision={m.precision}, "
                f"runtime={self.backend.name!r}, labels={list(self.labels)})")

    # -- one window -------------------------------------------------------------------------------------------

    def count_windows(self, num_samples: int) -> int:
        """Windows in a recording of ``num_samples`` samples at the model's rate."""
        if num_samples < self.window_samples:
            return 0
        return 1 + (num_samples - self.window_samples) // self.hop_samples

    def run_window(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A normalised log-mel window (frames, n_mels), float32 -> (embedding (D,), probabilities (C,)), float32.

        A window from outside the SDK is checked here (finite); the SDK's own windows come from a front-end that
        cannot make a non-finite value out of finite samples (checked where they entered), so :meth:`score_window`
        skips that pass over the window."""
        x = window.reshape(self._input_shape)
        # one dot product finds a NaN or Inf (np.vdot: no overflow warning); the full check runs only then
        if not math.isfinite(np.vdot(x, x)) and not np.isfinite(x).all():
            raise AudioError("a log-mel window is not finite: the audio's magnitude is beyond what the front-end can "
                             "represent (full scale is 1.0); check the input's scaling")
        return self._run(x)

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model on window ``x`` (input-shaped). One check on the outputs' sums (a NaN or Inf anywhere makes
        them non-finite); the slower search for the culprit runs only then."""
        emb, logits = self.backend.run(x)
        values = logits.tolist()
        # np.vdot: no overflow warning, and on ExecuTorch's outputs half the cost of a sum; an overflow of a
        # finite embedding's squares is told apart from a NaN by the full check, which runs only then
        if not math.isfinite(np.vdot(emb, emb) + sum(values)) and not (
                np.isfinite(emb).all() and all(map(math.isfinite, values))):
            if not np.isfinite(x).all():  # a window from a front-end overflow, not the model file's fault
                raise AudioError("a log-mel window is not finite: the audio's magnitude is beyond what the "
                                 "front-end can represent (full scale is 1.0); check the input's scaling")
            # A corrupt weight (a flipped exponent bit under a recomputed checksum) would otherwise give NaN
            # probabilities and a silent "negative" decision.
            raise BundleError(f"{self.backend.path}: the model gave NaN or Inf outputs for a finite input window; "
                              f"the model file is corrupt or was exported wrongly; re-export the bundle")
        return emb, _softmax(values)

    def score_window(self, index: int, window: np.ndarray, quality: WindowQuality) -> WindowEvent:
        """Run window ``index`` (normalised log-mel ``window`` from the SDK's front-end) and return its event with
        ``quality``."""
        emb, probs = self._run(window.reshape(self._input_shape))
        start = index * self._hop_s
        return WindowEvent(index, start, start + self._window_s, self.labels, probs, emb, quality)

    def accumulator(self, aggregation: str = "mean", ema_alpha: float = 0.3, decision: DecisionConfig | None = None,
                    keep_windows: bool = True) -> RecordingAccumulator:
        return RecordingAccumulator(self.labels, self.threshold, aggregation, ema_alpha, decision, keep_windows)

    # -- batch use --------------------------------------------------------------------------------------------

    def classify(self, samples: np.ndarray, sample_rate: int, aggregation: str = "mean", ema_alpha: float = 0.3,
                 pad: bool = False, source: str = "<buffer>") -> ClassificationResult:
        """Classify a whole recording.

        ``samples``: int or float PCM, shape (n,) or (n, channels), at ``sample_rate`` Hz (resampled to the
        model's rate). Returns the recording-level probabilities (``aggregation`` of the usable windows), the
        decision, the recording embedding and every window with its times and quality.
        """
        self.accumulator(aggregation, ema_alpha)  # validates the options before any work
        n_in = np.asarray(samples).shape[0]
        x = prepare_samples(samples, sample_rate, self.sample_rate, min_samples=self.window_samples, pad=pad,
                            source=source)
        return self.score_prepared(self.prepare(x), n_in / sample_rate, source, aggregation, ema_alpha)

    def prepare(self, x: np.ndarray, site_features: bool | None = None) -> "PreparedRecording":
        """The front-end's part of classifying ``x`` (float32 at the model's rate, at least one window): the
        normalised windows, each window's quality and (``site_features``, default: when the bundle describes its
        training audio) the recording's site-shift features. Models that share a front-end, windowing and quality
        settings can share one preparation (the accuracy benchmark does)."""
        frames, bands = self.logmel.with_bands(x, self.meter.bands)
        windows = frame_windows(frames, self.frontend, self.windowing)
        quality = self.meter.windows(x, self.count_windows(x.shape[0]), bands)
        want = self.site is not None if site_features is None else site_features
        features = site_shift.recording_features(frames) if want and frames.shape[0] else None
        return PreparedRecording(windows, tuple(quality), features)

    def score_prepared(self, prepared: "PreparedRecording", duration_s: float, source: str = "<buffer>",
                       aggregation: str = "mean", ema_alpha: float = 0.3) -> ClassificationResult:
        """The recording result from prepared windows: every window scored in order and accumulated exactly as a
        stream session does (the one path from windows to a recording result)."""
        acc = self.accumulator(aggregation, ema_alpha)
        for k, q in enumerate(prepared.quality):
            acc.add(self.score_window(k, prepared.windows[k], q))
        return self.with_site_shift(acc.result(duration_s=duration_s, source=source), prepared.site_features)

    def with_site_shift(self, result: ClassificationResult, features: np.ndarray | None) -> ClassificationResult:
        """``result`` with the site-shift verdict of the recording's front-end ``features`` (unchanged when the
        bundle carries no description of its training audio)."""
        if self.site is None or features is None:
            return result
        return dataclasses.replace(result, site_shift=site_shift.recording_verdict(self.site, features))

    def classify_file(self, path: str | os.PathLike, aggregation: str = "mean", ema_alpha: float = 0.3,
                      pad: bool = False, keep_windows: bool = True) -> ClassificationResult:
        """Classify an audio file (WAV/FLAC/OGG), read from disk in blocks and streamed through a session (any
        sample rate). Equals ``classify`` of the whole file. ``keep_windows=False`` drops the per-window results
        (the summary still counts them), so memory does not grow with the file's length (day-long recordings)."""
        p = Path(path)
        rate = file_sample_rate(p)
        session = self.stream(aggregation=aggregation, ema_alpha=ema_alpha, pad=pad, source=str(p),
                              keep_windows=keep_windows)
        for block in file_blocks(p, FILE_BLOCK_SAMPLES):
            session.push(block, rate)
        return session.finish()

    def embed(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """The recording embedding (D,), float32: mean of the usable windows' embeddings."""
        return self.classify(samples, sample_rate).embedding

    def zero_shot(self, samples: np.ndarray, sample_rate: int,
                  prompts: Sequence[str] | None = None) -> ZeroShotResult:
        """Cosine similarity of the recording embedding to the bundle's text-prompt embeddings.

        ``prompts``: None scores every prompt in the bundle; a list of prompt texts selects among them. The device
        has no text encoder, so only texts embedded at export time can be scored.
        """
        pr = self.manifest.prompts
        if not pr.texts or not pr.embeddings:
            raise BundleError(f"{self.bundle_dir}: the bundle has no text-prompt embeddings; export it with prompts "
                              f"to use zero-shot scoring")
        if prompts is None:
            idx = list(range(len(pr.texts)))
        else:
            unknown = [t for t in prompts if t not in pr.texts]
            if unknown:
                raise ConfigError(f"prompts {unknown} are not in the bundle, and the device has no text encoder to "
                                  f"embed new text; choose from {list(pr.texts)} or re-export with these prompts")
            idx = [pr.texts.index(t) for t in prompts]
        table = np.asarray([pr.embeddings[i] for i in idx], dtype=np.float64)
        emb = self.embed(samples, sample_rate).astype(np.float64)
        if table.shape[1] != emb.shape[0]:
            raise BundleError(f"{self.bundle_dir}: prompt embeddings have dimension {table.shape[1]} but the model's "
                              f"embedding has {emb.shape[0]}; re-export the bundle")
        denom = np.maximum(np.linalg.norm(table, axis=1) * np.linalg.norm(emb), 1e-12)
        scores = (table @ emb) / denom
        labels = pr.labels if len(pr.labels) == len(pr.texts) else ("",) * len(pr.texts)
        return ZeroShotResult(texts=tuple(pr.texts[i] for i in idx), labels=tuple(labels[i] for i in idx),
                              scores=scores.astype(np.float32), embedding=emb.astype(np.float32))

    # -- streaming --------------------------------------------------------------------------------------------

    def stream(self, aggregation: str = "mean", ema_alpha: float = 0.3, decision: DecisionConfig | None = None,
               pad: bool = False, source: str = "<stream>", keep_windows: bool = True) -> StreamSession:
        """A new streaming session (one recording) on this model; see :class:`StreamSession`.

        ``aggregation``: "mean" of the usable windows' probabilities, or "ema" (weight ``ema_alpha`` on the newest);
        ``decision``: hysteresis/debounce of the live decision; ``pad``: zero-pad a recording shorter than one
        window (default: refuse it as too short); ``keep_windows``: keep every WindowEvent for the summary
        (False: counts only, constant memory).
        """
        return StreamSession(self, aggregation=aggregation, ema_alpha=ema_alpha, decision=decision, pad=pad,
                             source=source, keep_windows=keep_windows)


@dataclasses.dataclass(frozen=True)
class PreparedRecording:
    """A recording through the front-end (:meth:`EdgeModel.prepare`), ready to be scored."""

    windows: np.ndarray  # (n_windows, frames, n_mels) float32, normalised
    quality: tuple[WindowQuality, ...]  # one per window
    site_features: np.ndarray | None  # site-shift features of the whole recording (None: not computed)


def file_sample_rate(path: Path) -> int:
    """The sample rate of an audio file, after checking it exists, is a non-empty file and decodes."""
    import soundfile as sf

    check_audio_file(path)
    try:
        rate = sf.info(str(path)).samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:  # TypeError: headerless (RAW) data
        raise AudioError(f"{path}: cannot decode as audio ({e}); supported: WAV, FLAC, OGG/Vorbis") from e
    check_sample_rate(rate, str(path))
    return int(rate)


def file_blocks(path: Path, block_samples: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks of an audio file, read with soundfile (same values as :func:`read_audio`)."""
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            declared, got = f.frames, 0
            while True:
                data = f.read(block_samples, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                got += data.shape[0]
                yield to_mono_float(data, str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{path}: cannot decode as audio ({e}); supported: WAV, FLAC, OGG/Vorbis") from e
    if got < declared:
        raise AudioError(f"{path}: truncated: the header promises {declared} samples but only {got} could be read")


def bundle_operating_point(manifest: Manifest, threshold: float | None = None) -> OperatingPoint:
    """The operating point a loaded bundle applies: the manifest's (bundles exported before it was recorded: their
    ``threshold``, method "manifest threshold"), or ``threshold`` given to :func:`load` (recorded as overridden)."""
    point = manifest.operating_point
    if point is not None and point.threshold is not None and point.threshold != manifest.threshold:
        raise BundleError(f"the manifest's threshold {manifest.threshold} differs from its operating point's "
                          f"{point.threshold}: the manifest was edited by hand; re-export the bundle (or override "
                          f"with load(..., threshold=...))")
    if point is None:
        point = fixed(manifest.threshold, "manifest threshold") if len(manifest.labels) == 2 else argmax_rule()
    if threshold is None:
        return point
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) < 1.0:
        raise ConfigError(f"threshold={threshold!r}: give a probability strictly between 0 and 1 for the positive "
                          f"label {manifest.labels[-1]!r}")
    return overridden(point, repr(float(threshold)), "load(threshold=...)")


def load(bundle_dir: str | os.PathLike, num_threads: int | None = None,
         quality: QualityConfig | None = None, threshold: float | None = None, *, probe: bool = True) -> EdgeModel:
    """Open an exported bundle folder on the runtime its manifest names.

    Reads every file of the bundle once and checks it (strict manifest schema, the sha256 of each file and the
    digest over the whole bundle, manifest included), then hands those very bytes to onnxruntime / LiteRT /
    ExecuTorch / TFLite Micro (nothing is re-read from disk, so a file swapped meanwhile is never run), and checks
    the model's real input/output shapes and types against the manifest. ``num_threads``: runtime threads (None =
    the runtime's default). Raises BundleError (bad/corrupt/altered/newer bundle) or MissingDependencyError
    (runtime not installed; names the pip extra). ``probe=False`` skips the child-process crash probe of runtimes
    that can abort the process (ExecuTorch, TFLM): only for bytes this process itself just wrote (the export gate).
    """
    contents = read_bundle(bundle_dir)
    backend = open_backend(contents.model_path, contents.manifest, num_threads, contents.model_bytes, probe=probe)
    return EdgeModel(contents.manifest, backend, contents.folder, quality, threshold)
