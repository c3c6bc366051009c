"""Site adaptation from unlabeled recordings: the estimators (what is re-estimated on the new site's audio).

- front-end correction (:class:`~acula_edge.runtime.site_shift.FrontendCorrection`): per-band log-mel mean and
  spread moved onto the training audio's. No weight changes; needs only a bundle with a site description.
- AdaBN (:func:`adabn`): every batch-norm layer's running mean and variance re-estimated on the site's windows.
  Changes the model: needs the checkpoint, and a re-export through the parity gate.
- operating point (:func:`prior_threshold`): the decision threshold re-chosen so that the site's share of positive
  decisions equals the training prevalence. Needs only the model's scores on the site (bundle or checkpoint).

Torch is imported inside :func:`adabn` only: the front-end and threshold estimators run on the device path.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from acula_edge import atomic
from acula_edge.checkpoint import read_checkpoint_info
from acula_edge.data import Dataset, load_dataset
from acula_edge.errors import ConfigError, DatasetError
from acula_edge.features import LogMel
from acula_edge.frontend import FrontendConfig, Windowing
from acula_edge.manifest import MANIFEST_NAME, Manifest, read_manifest, verify_model_file, write_manifest
from acula_edge.operating_point import overridden
from acula_edge.runtime import site_shift
from acula_edge.runtime.site_shift import SiteDescription
from acula_edge.windows import choose_windows, frame_windows


def prior_threshold(scores: np.ndarray, prevalence: float) -> float:
    """Threshold on the positive-class probability that calls the top ``prevalence`` share of ``scores`` positive.

    ``scores``: per-recording P(positive) on the site's unlabeled recordings; ``prevalence`` in (0, 1): the training
    data's share of positive recordings.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0 or not 0.0 < prevalence < 1.0:
        raise ValueError(f"need scores and a prevalence in (0, 1); got {s.size} scores, prevalence {prevalence}")
    return float(np.quantile(s, 1.0 - prevalence))


def adabn(model: Any, windows: np.ndarray, batch_size: int = 64, seed: int = 0) -> Any:
    """A copy of ``model`` whose batch-norm running statistics are re-estimated on ``windows`` (N, frames, n_mels).

    Every BatchNorm layer's running mean and variance become the cumulative average over shuffled batches of
    ``batch_size`` windows (``momentum=None``); all weights, and dropout (kept in eval mode), are unchanged.
    """
    import copy

    import torch

    m = copy.deepcopy(model).float().eval()
    norms = [mod for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no batch-norm layer: AdaBN has nothing to re-estimate")
    x = np.asarray(windows, dtype=np.float32)
    if len(x) < 2:
        raise ValueError(f"AdaBN needs at least 2 windows, got {len(x)}")
    momenta = [mod.momentum for mod in norms]
    for mod in norms:
        mod.reset_running_stats()
        mod.momentum = None  # cumulative moving average: every batch weighs the same
        mod.train()
    order = np.random.default_rng(seed).permutation(len(x))
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            idx = order[s:s + batch_size]
            if len(idx) < 2:  # a batch of one has no variance
                continue
            m(torch.from_numpy(np.ascontiguousarray(x[idx]))[:, None])
    for mod, momentum in zip(norms, momenta):
        mod.momentum = momentum
        mod.eval()
    return m


# ---------------------------------------------------------------------------------------------------------------------
# The adapt command: a bundle or checkpoint + a site's unlabeled recordings -> a new, adapted bundle.

METHODS = ("fe-norm", "adabn", "threshold")
# "auto": what measured best per source on the leave-one-subset-out folds (RESULTS_cross_site.md, section 4): from a
# checkpoint, AdaBN (mean MAcc at the shipped threshold 0.64 vs 0.56 unadapted); from a bundle, the re-chosen
# operating point (0.61 vs 0.56). Neither moved AUROC beyond the seed spread.
AUTO_METHODS = {"checkpoint": ("adabn",), "bundle": ("threshold",)}
NEEDS_CHECKPOINT = ("adabn",)  # changes weights: a bundle's model file cannot be re-estimated
ADAPTATION_KEY = "adaptation"  # manifest ``extra`` key recording what an adaptation estimated, and from what
# Fewest site recordings adaptation accepts. From benchmarks/adapt_cross_site.py (RESULTS_cross_site.md, "how many
# recordings"): below this the AUROC after adaptation varied too much between random draws of the site's recordings.
MIN_RECORDINGS = 20
DEFAULT_TARGET = "tflite"


@dataclass(frozen=True)
class AdaptConfig:
    """Options of :func:`adapt`."""

    methods: tuple[str, ...] = ("auto",)  # subset of METHODS, or ("auto",): AUTO_METHODS for the source kind
    min_recordings: int = MIN_RECORDINGS  # refuse fewer site recordings than this
    windows_per_recording: int = 8  # evenly spaced windows per site recording (AdaBN statistics, threshold scores)
    train_data: str | None = None  # training recordings, when the source carries no description of its audio
    target: str = DEFAULT_TARGET  # export target when adapting a checkpoint
    quantize: str = "none"  # "none" or "int8" when adapting a checkpoint
    calib_data: str | None = None  # int8 calibration recordings (default: the site's own recordings)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if self.methods == ("auto",):
            unknown = []
        if not self.methods or unknown:
            raise ConfigError(f"adaptation methods {list(self.methods)}: choose one or more of {list(METHODS)}")
        if self.min_recordings < 2 or self.windows_per_recording < 1:
            raise ConfigError(f"min_recordings must be >= 2 and windows_per_recording >= 1, got "
                              f"{self.min_recordings}, {self.windows_per_recording}")


def describe_dataset(dataset: Dataset, frontend: FrontendConfig, windowing: Windowing,
                     positive: str | None = None) -> SiteDescription:
    """The site description of ``dataset``'s audio under the model's front-end; ``positive`` names the label whose
    share is the prevalence (None: unknown)."""
    need = windowing.window_samples(frontend)
    feats = site_shift.features_of((r.load(frontend.sample_rate, min_samples=need, pad=True) for r in dataset),
                                   frontend)
    if feats.shape[0] < 2:
        raise DatasetError(f"{dataset.name}: {feats.shape[0]} usable recording(s); describing training audio needs "
                           f"at least 2")
    labelled = [r.label for r in dataset if r.label is not None]
    prevalence = None
    if positive is not None and labelled:
        share = sum(lab == positive for lab in labelled) / len(labelled)
        prevalence = share if 0.0 < share < 1.0 else None
    return site_shift.describe(feats, prevalence)


def _check_paths(src: Path, dst: Path) -> None:
    """The adapted bundle goes to a new folder: never the source, nothing inside it or above it, and never over a
    folder that adapt did not write."""
    if dst == src or src in dst.parents or dst in src.parents:
        raise ConfigError(f"--out {dst} is (or contains, or is inside) the source {src}; the source is never "
                          f"replaced: choose a new folder")
    atomic.check_replaceable(dst)  # not the current folder, not a symlink, no user files
    if dst.exists():
        manifest = dst / MANIFEST_NAME
        adapted = False
        if manifest.is_file():
            try:
                adapted = ADAPTATION_KEY in (json.loads(manifest.read_text(encoding="utf-8")).get("extra") or {})
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                adapted = False
        if not dst.is_dir() or (any(dst.iterdir()) and not adapted):
            raise ConfigError(f"--out {dst} exists and is not a bundle written by 'acula-edge adapt'; choose a new "
                              f"folder (nothing was written)")


def _site_windows(dataset: Dataset, logmel: LogMel, frontend: FrontendConfig, windowing: Windowing,
                  per_recording: int) -> np.ndarray:
    """Up to ``per_recording`` evenly spaced model windows of every site recording (N, frames, n_mels)."""
    need = windowing.window_samples(frontend)
    out = []
    for r in dataset:
        w = frame_windows(logmel(r.load(frontend.sample_rate, min_samples=need, pad=True)), frontend, windowing)
        out.append(w[choose_windows(len(w), per_recording)])
    return np.concatenate(out)


def adapt(source: str | Path, data: str, out: str | Path, config: AdaptConfig = AdaptConfig(),
          progress: Callable[[str], None] | None = None) -> Manifest:
    """Adapt the bundle or checkpoint folder ``source`` to the site whose **unlabeled** recordings ``data`` (a
    dataset spec; labels, if any, are ignored) holds, and write a new bundle to ``out``.

    ``config.methods``: ("auto",) picks :data:`AUTO_METHODS` for the source kind; "fe-norm" (front-end correction,
    any source), "adabn" (checkpoint only; the re-estimated model is re-exported through the parity gate, on the
    site's recordings), "threshold" (operating point re-chosen so that the site's share of positive decisions equals
    the training prevalence). What was estimated, from how many recordings and their digest, and the site-shift
    check of the site's audio are recorded in the manifest's ``extra["adaptation"]``. Raises DatasetError for too
    few recordings, ConfigError for bad paths or methods.
    """
    say = progress or (lambda _msg: None)
    src, dst = Path(source).resolve(), Path(out).resolve()
    is_bundle = (src / MANIFEST_NAME).is_file()
    if not is_bundle and not (src / "config.json").is_file():
        raise ConfigError(f"{src}: neither a bundle (no {MANIFEST_NAME}) nor a checkpoint (no config.json)")
    _check_paths(src, dst)
    if config.methods == ("auto",):
        config = dataclasses.replace(config, methods=AUTO_METHODS["bundle" if is_bundle else "checkpoint"])
    needs = [m for m in config.methods if m in NEEDS_CHECKPOINT]
    if is_bundle and needs:
        raise ConfigError(f"{src} is a bundle: {', '.join(needs)} re-estimates the model's weights and needs the "
                          f"checkpoint folder; pass the checkpoint, or use methods fe-norm / threshold")
    site = load_dataset(data)
    if len(site) < config.min_recordings:
        raise DatasetError(f"{data}: {len(site)} recording(s); adaptation needs at least {config.min_recordings} "
                           f"unlabeled recordings of the site (fewer gave unstable results, see "
                           f"RESULTS_cross_site.md); record more")
    if is_bundle:
        manifest = read_manifest(src)
        fe, win, labels, extra = manifest.frontend, manifest.windowing, manifest.labels, manifest.extra
    else:
        info = read_checkpoint_info(src)
        fe, win, labels, extra = info.frontend, info.windowing, info.labels, info.extra
    desc = site_shift.description_of(extra, str(src))
    if desc is None:
        if not config.train_data:
            raise ConfigError(f"{src} carries no description of its training audio; pass --train-data SPEC (the "
                              f"recordings it was trained on) so the site can be compared with them")
        say(f"describing the training audio from {config.train_data}")
        desc = describe_dataset(load_dataset(config.train_data), fe, win, labels[-1])
    if "threshold" in config.methods and desc.prevalence is None:
        raise ConfigError(f"{src}: the training prevalence is unknown (its description has none); pass --train-data "
                          f"SPEC with labels, or drop the threshold method")
    need = win.window_samples(fe)
    say(f"{len(site)} site recordings from {data}")
    feats = site_shift.features_of((r.load(fe.sample_rate, min_samples=need, pad=True) for r in site), fe)
    shift = desc.check(feats)
    record: dict[str, Any] = {
        "methods": list(config.methods), "source": str(src), "source_kind": "bundle" if is_bundle else "checkpoint",
        "site_data": data, "n_recordings": len(site), "recordings_sha256": site_shift.features_sha256(feats),
        "site_shift": {k: shift[k] for k in ("n", "fraction_flagged", "median_score", "threshold", "batch_flagged")},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "estimated": {}}
    if shift["batch_flagged"]:
        say(f"warning: {shift['fraction_flagged']:.0%} of the site's recordings look unlike the training audio "
            f"(median shift score {shift['median_score']:.2f} > {shift['threshold']:.2f}); check the adapted "
            f"bundle on labelled recordings of this site before relying on it")
    new_extra: dict[str, Any] = {site_shift.DESCRIPTION_KEY: desc.to_dict()}
    correction = None
    if "fe-norm" in config.methods:
        correction = site_shift.FrontendCorrection.between(site_shift.site_stats(feats), desc)
        new_extra[site_shift.CORRECTION_KEY] = correction.to_dict()
        record["estimated"]["fe-norm"] = (f"per-band log-mel mean and std of {feats.shape[0]} recordings, mapped onto "
                                          f"the training audio's ({desc.n_recordings} recordings)")
    else:
        new_extra[site_shift.CORRECTION_KEY] = None  # a re-adapted bundle drops an earlier correction
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent if dst.parent.exists() else None) as tmp:
        stage = Path(tmp) / "bundle"
        if is_bundle:
            _copy_bundle(src, stage)
            manifest = read_manifest(stage)
        else:
            manifest = _export_adapted(src, stage, site, data, correction, config, record, say)
        extra = {k: v for k, v in {**manifest.extra, **new_extra}.items() if v is not None}
        manifest = dataclasses.replace(manifest, extra=extra)
        write_manifest(manifest, stage)
        if "threshold" in config.methods:
            scores = _site_scores(stage, site, need)
            new = prior_threshold(scores, desc.prevalence)
            record["estimated"]["threshold"] = (f"{manifest.threshold:.4f} -> {new:.4f}: the {1 - desc.prevalence:.3f} "
                                                f"quantile of {len(scores)} site recordings' P({labels[-1]}) "
                                                f"(training prevalence {desc.prevalence:.3f})")
            # the operating point records the threshold it replaced (unlabeled: no Se/Sp figures on the site)
            point = overridden(manifest.operating_point, repr(new), "acula-edge adapt --method threshold")
            manifest = dataclasses.replace(manifest, threshold=new, operating_point=point)
        manifest = dataclasses.replace(manifest, extra={**manifest.extra, ADAPTATION_KEY: record})
        write_manifest(manifest, stage)
        from acula_edge.export.bundle import set_default_permissions

        with atomic.atomic_dir(dst) as final:
            for f in stage.iterdir():
                shutil.copy2(f, final / f.name)
            set_default_permissions(final)
    say(f"adapted bundle written to {dst}")
    return read_manifest(dst)


def _copy_bundle(src: Path, stage: Path) -> None:
    """Copy the bundle's checksummed files (the model file is unchanged: same bytes, same sha256)."""
    manifest = read_manifest(src)
    verify_model_file(manifest, src)
    stage.mkdir()
    files = set((manifest.extra.get("files") or {}).keys()) | {manifest.model_file, MANIFEST_NAME}
    for name in sorted(files):
        if (src / name).is_file():
            shutil.copy2(src / name, stage / name)


def _export_adapted(src: Path, stage: Path, site: Dataset, data: str,
                    correction: site_shift.FrontendCorrection | None, config: AdaptConfig, record: dict[str, Any],
                    say: Callable[[str], None]) -> Manifest:
    """Load the checkpoint, re-estimate batch norm when asked, export through the parity gate (parity windows from
    the site's recordings)."""
    from acula_edge.checkpoint import load_checkpoint, weights_sha256
    from acula_edge.export.api import export_model, precision_of
    from acula_edge.export.calibration import prepare_data

    model, info = load_checkpoint(src)
    if "adabn" in config.methods:
        logmel = LogMel(info.frontend) if correction is None else site_shift.CorrectedLogMel(info.frontend, correction)
        x = _site_windows(site, logmel, info.frontend, info.windowing, config.windows_per_recording)
        model = adabn(model, x, seed=config.seed)
        import torch

        n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        record["estimated"]["adabn"] = (f"running mean and variance of {n_bn} batch-norm layers from {len(x)} windows "
                                        f"of {len(site)} recordings" + (" (front-end corrected)" if correction else ""))
    source_sha, source_path = weights_sha256(src), str(src)
    if "adabn" in config.methods:
        # The exported weights are not the source checkpoint's: record the adapted weights' digest and no source
        # path, so 'verify' checks the bundle against the reference outputs stored at export (of these weights).
        from acula_edge.checkpoint import save_checkpoint

        save_checkpoint(model, info, stage.parent / "adapted-checkpoint")
        source_sha, source_path = weights_sha256(stage.parent / "adapted-checkpoint"), ""
        record["adapted_weights_sha256"] = source_sha
        record["source_weights_sha256"] = weights_sha256(src)
    precision = precision_of(config.quantize)
    say(f"exporting to {config.target} {precision} (parity gate on the site's recordings)")
    if precision == "int8":  # calibration on the site's audio unless given; parity then on held-out site recordings
        edata = prepare_data(info, precision, config.calib_data or data, data if config.calib_data else None)
    else:
        edata = prepare_data(info, precision, None, data)
    return export_model(model, info, stage, config.target, precision, data=edata, source_sha256=source_sha,
                        source_path=source_path)


def _site_scores(bundle: Path, site: Dataset, need: int) -> np.ndarray:
    """Per-recording P(positive label) of the (adapted) bundle on the site's recordings, on the device runtime."""
    from acula_edge.runtime.model import load

    model = load(bundle, num_threads=1)
    return np.array([model.classify(r.load(model.sample_rate, min_samples=need, pad=True),
                                    model.sample_rate).probabilities[-1] for r in site], dtype=np.float64)
