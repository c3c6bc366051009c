"""The bundle manifest: one versioned schema, written by acula_edge.export and read by the device runtime.

A bundle is a folder holding one model file, any target files it lists and ``manifest.json``. The model's single
input is one window of log-mel frames, shape given by ``inputs[0].shape`` (NCHW: (1, 1, frames, n_mels)); its
outputs are named ``embedding`` (text-aligned space, shape (1, D)) and ``logits`` (shape (1, len(labels)); softmax
gives class probabilities). Quantized tensors carry ``scale`` and ``zero_point`` (real = scale * (q - zero_point)).

Integrity: ``bundle_sha256`` is one digest over the whole bundle: the manifest's content (every field but the
digest itself, as canonical JSON, so a field added later is covered without changing this code) and the sha256 of
every file the manifest names (``model_file`` and ``extra.files``). The manifest file must be byte-for-byte the
canonical text :func:`manifest_bytes` writes, so no byte of it can change without changing what is hashed.
:func:`read_bundle` reads each file once, hashes those bytes and hands the same bytes to the runtime: what was
checked is what runs. Every value is read strictly (:mod:`acula_edge.typed`): exact types, finite numbers, ranges
and size limits, so no manifest can crash the runtime or make it allocate without bound.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from acula_edge import atomic, typed
from acula_edge.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from acula_edge.errors import BundleError, ConfigError
from acula_edge.frontend import FrontendConfig, Windowing
from acula_edge.operating_point import OperatingPoint
from acula_edge.typed import SchemaError

# 2: bundle_sha256 over the whole bundle, strict typed schema (version 1 bundles carried no manifest digest).
SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
DIGEST_FIELD = "bundle_sha256"
PRECISIONS = ("fp32", "int8")
DTYPES = ("float32", "int8", "uint8", "int16", "int32")


class TargetTable(Mapping[str, str]):
    """A read-only view {target name: one field of its Target}, over acula_edge.export.registry (the one place a
    target is declared). The registry is read on first use (no torch, no converter), not at import."""

    def __init__(self, attribute: str) -> None:
        self._attribute = attribute

    def _table(self) -> dict[str, str]:
        from acula_edge.export.registry import targets

        return {name: getattr(t, self._attribute) for name, t in targets().items()}

    def __getitem__(self, name: str) -> str:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return repr(tuple(self._table()))


TARGETS = TargetTable("name")  # the targets a manifest may name
RUNTIME_EXTRA = TargetTable("extra")  # target -> pip extra providing its runtime (named in "not installed" errors)

# Size limits, read before anything is allocated from a manifest value. Each is far above what a health-audio
# model uses (the largest preset: 64 mels, 250 frames, 8 s windows) and far below what exhausts a device's memory
# (n_mels 1e6 with a matching model made the runtime allocate 4 GB before failing).
MAX_MANIFEST_BYTES = 8 * 1024 * 1024  # prompt embeddings dominate: 1000 prompts x 512 dims ~ 10 chars each
MAX_FILE_BYTES = 512 * 1024 * 1024  # one bundle file (a model far beyond any device budget)
MAX_N_FFT = 1 << 16
MAX_N_MELS = 512
MAX_FRAMES = 8192  # log-mel frames in one model window
MAX_WINDOW_S = 600.0  # seconds in one model window
MAX_LABELS = 1000
MAX_EMBEDDING_DIM = 1 << 16
MAX_PROMPTS = 10_000
MAX_TENSOR_DIMS = 8
MAX_TENSOR_ELEMENTS = 1 << 24
MAX_TEXT = 10_000  # characters of one label or prompt text
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
               "int32": (-2147483648, 2147483647)}


def _sha256(v: Any, what: str, optional: bool = False) -> str:
    if optional and v == "":
        return v
    if not isinstance(v, str) or not _SHA256.fullmatch(v):
        raise SchemaError(f"{what} must be a sha256 (64 lowercase hex digits), got {str(v)[:80]!r}")
    return v


def _file_name(v: Any, what: str) -> str:
    name = typed.string(v, what, max_len=255, non_empty=True)
    if not typed.is_plain_name(name):
        raise SchemaError(f"{what} {name!r} must be a plain file name inside the bundle (no '/', '..', absolute "
                          f"path or leading '.')")
    return name


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # one of DTYPES
    scale: float | None = None  # quantization scale, for integer tensors
    zero_point: int | None = None  # quantization zero point, for integer tensors

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "tensor") -> "TensorSpec":
        d = typed.mapping(d, what)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise SchemaError(f"{what} has unknown keys {unknown}")
        shape = tuple(typed.integer(s, f"{what}.shape[{i}]", 1, MAX_TENSOR_ELEMENTS)
                      for i, s in enumerate(typed.array(d.get("shape"), f"{what}.shape", MAX_TENSOR_DIMS, 1)))
        total = 1
        for s in shape:
            total *= s
        if total > MAX_TENSOR_ELEMENTS:
            raise SchemaError(f"{what}.shape {shape} has {total} elements, more than the {MAX_TENSOR_ELEMENTS} "
                              f"allowed")
        dtype = typed.string(d.get("dtype"), f"{what}.dtype", 16)
        if dtype not in DTYPES:
            raise SchemaError(f"{what}.dtype {dtype!r} not in {DTYPES}")
        scale = zero_point = None
        if d.get("scale") is not None:
            scale = typed.number(d["scale"], f"{what}.scale", 0.0, None, open_lo=True)
        if d.get("zero_point") is not None:
            lo, hi = _INT_RANGES.get(dtype, (None, None))
            zero_point = typed.integer(d["zero_point"], f"{what}.zero_point", lo, hi)
        if dtype != "float32" and (scale is None or zero_point is None):
            raise SchemaError(f"{what} is {dtype} but has no scale and zero_point")
        return cls(name=typed.string(d.get("name"), f"{what}.name", 200, non_empty=True), shape=shape,
                   dtype=dtype, scale=scale, zero_point=zero_point)


@dataclass(frozen=True)
class Prompts:
    """Text prompts and their embeddings in the model's shared space, for zero-shot scoring on the device."""

    texts: tuple[str, ...] = ()
    embeddings: tuple[tuple[float, ...], ...] = ()  # one row per text, same dim as the "embedding" output
    labels: tuple[str, ...] = ()  # the class each prompt stands for ("" if none)

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "prompts") -> "Prompts":
        d = typed.mapping(d, what)
        unknown = sorted(set(d) - {"texts", "embeddings", "labels"})
        if unknown:
            raise SchemaError(f"{what} has unknown keys {unknown}")
        texts = tuple(typed.string(t, f"{what}.texts[{i}]", MAX_TEXT)
                      for i, t in enumerate(typed.array(d.get("texts", []), f"{what}.texts", MAX_PROMPTS)))
        rows = typed.array(d.get("embeddings", []), f"{what}.embeddings", MAX_PROMPTS)
        embeddings = tuple(tuple(typed.number(v, f"{what}.embeddings[{i}][{j}]")
                                 for j, v in enumerate(typed.array(r, f"{what}.embeddings[{i}]", MAX_EMBEDDING_DIM)))
                           for i, r in enumerate(rows))
        labels = tuple(typed.string(t, f"{what}.labels[{i}]", MAX_TEXT) for i, t in
                       enumerate(typed.array(d.get("labels", [""] * len(texts)), f"{what}.labels", MAX_PROMPTS)))
        if embeddings and len(embeddings) != len(texts):
            raise SchemaError(f"{what} has {len(texts)} texts but {len(embeddings)} embedding rows")
        if len({len(r) for r in embeddings}) > 1:
            raise SchemaError(f"{what}.embeddings rows have different lengths")
        if len(labels) != len(texts):
            raise SchemaError(f"{what} has {len(texts)} texts but {len(labels)} labels")
        return cls(texts=texts, embeddings=embeddings, labels=labels)


def frontend_from_json(d: Any, what: str = "frontend") -> FrontendConfig:
    """A FrontendConfig from untrusted JSON: exact types, finite numbers, the config's own checks and the size caps
    above (so that no value makes the front-end allocate without bound). Raises SchemaError."""
    try:
        fe = FrontendConfig(**typed.scalar_fields(FrontendConfig, d, what))
    except ConfigError as e:
        raise SchemaError(f"{what}: {e}") from e
    typed.integer(fe.sample_rate, f"{what}.sample_rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    typed.integer(fe.n_fft, f"{what}.n_fft", 1, MAX_N_FFT)
    typed.integer(fe.n_mels, f"{what}.n_mels", 1, MAX_N_MELS)
    return fe


def windowing_from_json(d: Any, frontend: FrontendConfig, what: str = "windowing") -> Windowing:
    """A Windowing from untrusted JSON, checked against ``frontend`` (whole samples, frame-aligned hops, at most
    MAX_FRAMES frames per window). Raises SchemaError."""
    d = typed.scalar_fields(Windowing, d, what)
    win = Windowing(window_s=typed.number(d.get("window_s"), f"{what}.window_s", 0.0, MAX_WINDOW_S, open_lo=True),
                    hop_s=typed.number(d.get("hop_s"), f"{what}.hop_s", 0.0, MAX_WINDOW_S, open_lo=True))
    try:
        win.validate(frontend)
    except ConfigError as e:
        raise SchemaError(f"{what}: {e}") from e
    typed.integer(win.frames_per_window(frontend), f"{what}: frames per window", 1, MAX_FRAMES)
    return win


def labels_from_json(v: Any, what: str = "labels") -> tuple[str, ...]:
    """Class names: 1..MAX_LABELS non-empty, distinct strings. Raises SchemaError."""
    labels = tuple(typed.string(x, f"{what}[{i}]", MAX_TEXT, non_empty=True)
                   for i, x in enumerate(typed.array(v, what, MAX_LABELS, 1)))
    if len(set(labels)) != len(labels):
        raise SchemaError(f"{what} {list(labels)} repeat a name; each class needs its own")
    return labels


def threshold_from_json(v: Any, what: str = "threshold") -> float:
    """The decision threshold on a probability: finite, strictly between 0 and 1 (0 or 1 would make the decision
    constant). Raises SchemaError."""
    return typed.number(v, what, 0.0, 1.0, open_lo=True, open_hi=True)


@dataclass(frozen=True)
class Manifest:
    """Everything the device needs to run a bundle; see the module docstring for tensor conventions."""

    target: str  # one of TARGETS
    precision: str  # one of PRECISIONS
    model_file: str  # file name inside the bundle folder
    model_sha256: str
    frontend: FrontendConfig
    windowing: Windowing
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...]
    threshold: float = 0.5  # decision threshold on the probability of the last label (binary tasks)
    prompts: Prompts = field(default_factory=Prompts)
    parity: dict[str, Any] = field(default_factory=dict)  # the export-time parity report
    source_checkpoint_sha256: str = ""
    versions: dict[str, str] = field(default_factory=dict)  # torch, converter and runtime versions at export
    extra: dict[str, Any] = field(default_factory=dict)  # target specific (e.g. TFLM arena bytes, delegation)
    operating_point: OperatingPoint | None = None  # the decision rule and how it was chosen (None: not recorded)
    schema_version: int = SCHEMA_VERSION
    bundle_sha256: str = ""  # the whole-bundle digest (see the module docstring); set by write_manifest

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise BundleError(f"the manifest has no output {name!r}; outputs: {[o.name for o in self.outputs]}")

    def files(self) -> tuple[str, ...]:
        """Every file of the bundle the manifest names (the model first), all covered by the digest."""
        return (self.model_file, *sorted(n for n in (self.extra.get("files") or {}) if n != self.model_file))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["frontend"] = self.frontend.to_dict()
        d["windowing"] = self.windowing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> "Manifest":
        """Parse untrusted manifest JSON strictly; BundleError naming ``source`` and the field otherwise."""
        if not isinstance(d, dict):
            raise BundleError(f"{source}: the manifest must be a JSON object")
        version = d.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise BundleError(f"{source}: no integer schema_version; this is not an acula-edge manifest")
        if version > SCHEMA_VERSION:
            raise BundleError(f"{source}: schema version {version} is newer than this acula-edge reads "
                              f"({SCHEMA_VERSION}); upgrade acula-edge to load this bundle")
        if version < SCHEMA_VERSION:
            raise BundleError(f"{source}: schema version {version} was written by an older acula-edge, without a "
                              f"digest over the whole bundle; re-export the bundle with this acula-edge")
        required = ("target", "precision", "model_file", "model_sha256", "frontend", "windowing", "inputs",
                    "outputs", "labels", DIGEST_FIELD)
        missing = [k for k in required if k not in d]
        if missing:
            raise BundleError(f"{source}: malformed manifest: missing {missing}; re-export the bundle")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise BundleError(f"{source}: malformed manifest: unknown keys {unknown}; re-export the bundle")
        try:
            fe = frontend_from_json(d["frontend"])
            extra = typed.mapping(d.get("extra", {}), "extra")
            files = typed.mapping(extra.get("files", {}), "extra.files")
            for name, digest in files.items():
                _sha256(digest, f"extra.files[{_file_name(name, 'extra.files name')!r}]")
            if "reference_file" in extra and _file_name(extra["reference_file"], "extra.reference_file") not in files:
                raise SchemaError(f"extra.reference_file {extra['reference_file']!r} is not among extra.files")
            if "arena_bytes" in extra:
                typed.integer(extra["arena_bytes"], "extra.arena_bytes", 1, MAX_FILE_BYTES)
            m = cls(
                target=typed.string(d["target"], "target", 32), precision=typed.string(d["precision"], "precision", 16),
                model_file=_file_name(d["model_file"], "model_file"),
                model_sha256=_sha256(d["model_sha256"], "model_sha256"), frontend=fe,
                windowing=windowing_from_json(d["windowing"], fe),
                inputs=tuple(TensorSpec.from_dict(t, f"inputs[{i}]")
                             for i, t in enumerate(typed.array(d["inputs"], "inputs", 1, 1))),
                outputs=tuple(TensorSpec.from_dict(t, f"outputs[{i}]")
                              for i, t in enumerate(typed.array(d["outputs"], "outputs", 16, 1))),
                labels=labels_from_json(d["labels"]), threshold=threshold_from_json(d.get("threshold", 0.5)),
                prompts=Prompts.from_dict(d.get("prompts", {})),
                parity=dict(typed.mapping(d.get("parity", {}), "parity")),
                source_checkpoint_sha256=_sha256(d.get("source_checkpoint_sha256", ""), "source_checkpoint_sha256",
                                                 optional=True),
                versions={k: typed.string(v, f"versions[{k!r}]", 200)
                          for k, v in typed.mapping(d.get("versions", {}), "versions").items()},
                extra=dict(extra), schema_version=version, bundle_sha256=_sha256(d[DIGEST_FIELD], DIGEST_FIELD),
                operating_point=OperatingPoint.from_json(d.get("operating_point")))
        except SchemaError as e:
            raise BundleError(f"{source}: invalid manifest: {e}; re-export the bundle") from e
        m.validate(source)
        return m

    def validate(self, source: str = "manifest") -> None:
        """Cross-field checks (every problem listed at once); BundleError if any."""
        problems = []
        if self.target not in TARGETS:
            problems.append(f"target {self.target!r} not in {TARGETS}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} not in {PRECISIONS}")
        if not typed.is_plain_name(self.model_file):
            problems.append(f"model_file {self.model_file!r} must be a plain file name inside the bundle")
        for t in (*self.inputs, *self.outputs):
            if t.dtype not in DTYPES:
                problems.append(f"tensor {t.name!r} dtype {t.dtype!r} not in {DTYPES}")
        if len(self.inputs) != 1:
            problems.append(f"expected exactly one input, found {len(self.inputs)}")
        names = [o.name for o in self.outputs]
        if not {"embedding", "logits"} <= set(names) or len(set(names)) != len(names):
            problems.append(f"outputs must include 'embedding' and 'logits' once each, found {names}")
        elif _elements(self.output("logits").shape) != len(self.labels):
            problems.append(f"{len(self.labels)} labels but the logits output has shape "
                            f"{self.output('logits').shape}")
        if not self.labels:
            problems.append("no labels")
        if not (isinstance(self.threshold, float) and 0.0 < self.threshold < 1.0):
            problems.append(f"threshold {self.threshold!r} must be a number strictly between 0 and 1")
        if self.inputs and self.inputs[0].shape != (1, 1, self.windowing.frames_per_window(self.frontend),
                                                    self.frontend.n_mels):
            problems.append(f"input shape {self.inputs[0].shape} is not (1, 1, frames per window "
                            f"{self.windowing.frames_per_window(self.frontend)}, n_mels {self.frontend.n_mels})")
        if problems:
            raise BundleError(f"{source}: invalid manifest: " + "; ".join(problems))


def _elements(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# -- the digest and the manifest's bytes --------------------------------------------------------------------------

def manifest_bytes(data: dict[str, Any]) -> bytes:
    """The one canonical text of a manifest (sorted keys, 2-space indent, ASCII, trailing newline)."""
    return (json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("ascii")


def bundle_digest(data: dict[str, Any], file_sha256: dict[str, str]) -> str:
    """sha256 over the manifest ``data`` minus its digest field (canonical compact JSON) and the sha256 of every
    bundle file (name, NUL, hex digest, newline; names sorted)."""
    h = hashlib.sha256(b"acula-edge bundle digest v1\n")
    content = {k: v for k, v in data.items() if k != DIGEST_FIELD}
    h.update(json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii"))
    h.update(b"\n")
    for name in sorted(file_sha256):
        h.update(name.encode("utf-8") + b"\0" + file_sha256[name].encode("ascii") + b"\n")
    return h.hexdigest()


def _read_file(path: Path) -> bytes:
    """A bundle file's bytes, read once, refusing anything but a regular file of at most MAX_FILE_BYTES."""
    try:
        return typed.read_regular_file(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise BundleError(f"{path}: the file named in the manifest is missing; re-export the bundle") from None
    except IsADirectoryError:
        raise BundleError(f"{path}: the manifest names a folder, not a file; re-export the bundle") from None
    except SchemaError as e:
        raise BundleError(f"{path}: it {e}; re-export the bundle") from e
    except OSError as e:
        raise BundleError(f"{path}: unreadable ({e})") from e


def seal(data: dict[str, Any], bundle_dir: str | os.PathLike) -> bytes:
    """Set ``data[DIGEST_FIELD]`` from the bundle files now in ``bundle_dir`` and return the manifest's bytes.

    Every file the manifest names must already be written (the manifest is the last file of a bundle)."""
    folder = Path(bundle_dir)
    names = [data["model_file"], *sorted(n for n in (data.get("extra") or {}).get("files", {})
                                         if n != data["model_file"])]
    hashes = {n: hashlib.sha256(_read_file(folder / n)).hexdigest() for n in names}
    return manifest_bytes({**data, DIGEST_FIELD: bundle_digest(data, hashes)})


def write_manifest(manifest: Manifest, bundle_dir: str | Path) -> Path:
    """Write ``bundle_dir/manifest.json`` with the whole-bundle digest; the files it names must be written."""
    manifest.validate()
    path = Path(bundle_dir) / MANIFEST_NAME
    atomic.write_bytes(path, seal(manifest.to_dict(), bundle_dir))
    return path


@dataclass(frozen=True)
class BundleContents:
    """A bundle read once and checked: its manifest and the model bytes the digest covered (give these, not the
    file's path, to the runtime)."""

    folder: Path
    manifest: Manifest
    model_bytes: bytes
    digest: str

    @property
    def model_path(self) -> Path:
        return self.folder / self.manifest.model_file


def read_bundle(bundle_dir: str | Path) -> BundleContents:
    """Read ``bundle_dir`` once and check it whole: the manifest (size, canonical bytes, strict schema) and every
    file it names against their sha256 and the bundle digest. BundleError naming the file otherwise."""
    bundle = Path(bundle_dir)
    path = bundle / MANIFEST_NAME
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: no such bundle folder")
    if not path.exists():
        raise BundleError(f"{bundle}: no {MANIFEST_NAME}; this folder is not an exported bundle "
                          f"(create one with 'acula-edge export')")
    try:
        raw, data = typed.read_json_file(path, MAX_MANIFEST_BYTES)
    except OSError as e:
        raise BundleError(f"{path}: unreadable manifest ({e})") from e
    except SchemaError as e:
        raise BundleError(f"{path}: unreadable manifest: it {e}; re-export the bundle") from e
    if not isinstance(data, dict):
        raise BundleError(f"{path}: the manifest must be a JSON object")
    manifest = Manifest.from_dict(data, str(path))
    if raw != manifest_bytes(data):
        raise BundleError(f"{path}: the manifest was edited after export (its text is not the one acula-edge "
                          f"writes); re-export the bundle")
    hashes, model = {}, b""
    for name in manifest.files():
        content = _read_file(bundle / name)
        hashes[name] = hashlib.sha256(content).hexdigest()
        want = manifest.model_sha256 if name == manifest.model_file else manifest.extra["files"][name]
        if hashes[name] != want:
            raise BundleError(f"{bundle / name}: sha256 {hashes[name][:12]}... does not match the manifest "
                              f"({want[:12]}...): the file is corrupt or was replaced; re-export the bundle")
        if name == manifest.model_file:
            model = content
    digest = bundle_digest(data, hashes)
    if digest != manifest.bundle_sha256:
        raise BundleError(f"{path}: the bundle digest {digest[:12]}... does not match the manifest's "
                          f"{DIGEST_FIELD} ({manifest.bundle_sha256[:12]}...): the manifest was altered after "
                          f"export; re-export the bundle")
    return BundleContents(bundle, manifest, model, digest)


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """The checked manifest of ``bundle_dir`` (the whole bundle is verified; see :func:`read_bundle`)."""
    return read_bundle(bundle_dir).manifest


def verify_model_file(manifest: Manifest, bundle_dir: str | Path) -> Path:
    """Path of the model file after checking it exists and its sha256 matches the manifest (for callers that need
    a path, e.g. converters' runners; the runtime loads the checked bytes from :func:`read_bundle` instead)."""
    path = Path(bundle_dir) / manifest.model_file
    digest = hashlib.sha256(_read_file(path)).hexdigest()
    if digest != manifest.model_sha256:
        raise BundleError(f"{path}: sha256 {digest[:12]}... does not match the manifest ({manifest.model_sha256[:12]}"
                          f"...): the file is corrupt or was replaced; re-export the bundle")
    return path
